"""The job logic with the real client against the fake API: polling, deadlines, concurrency, outputs."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from PIL import Image

from cogs.depth2img.client import Depth2ImgClient
from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.errors import (
    AlreadyRunning,
    JobFailed,
    JobTimedOut,
    MalformedResponseError,
    OutputUnavailable,
    QueueFull,
)
from cogs.depth2img.models import GenerationParams
from cogs.depth2img.service import Depth2ImgService, Progress
from tests.fakes.fake_api import FakeModelsLab

SOURCE = "http://127.0.0.1:1/attachments/1/2/photo.png"


def settings(fake_api: FakeModelsLab, **kw: object) -> Depth2ImgSettings:
    base = {
        "api_key": fake_api.api_key,
        "api_base_url": fake_api.base_url,
        "poll_initial_s": 0.01,
        "poll_max_s": 0.05,
        "job_timeout_s": 5.0,
        "request_timeout_s": 5.0,
    }
    base.update(kw)
    return Depth2ImgSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_service(session, fake_api, **kw) -> Depth2ImgService:
    s = settings(fake_api, **kw)
    client = Depth2ImgClient(
        session, base_url=s.api_base_url, api_key=s.api_key, request_timeout_s=s.request_timeout_s
    )
    return Depth2ImgService(client, s)


async def run(
    service: Depth2ImgService, user: int = 1, limit: int = 10 * 1024 * 1024, params=None, events=None
):
    async def progress(p: Progress) -> None:
        if events is not None:
            events.append(p)

    with service.admission.admit(user) as ticket:
        return await service.generate(
            ticket,
            params or GenerationParams(prompt="cabin", seed=7),
            SOURCE,
            started_at=time.monotonic(),
            output_limit_bytes=limit,
            on_progress=progress,
            job_ref="t",
        )


async def test_queued_job_is_polled_to_success_and_timed(session, fake_api):
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 3
    events: list[Progress] = []
    result = await run(make_service(session, fake_api), events=events)
    assert result.polls == 4
    assert len(fake_api.submissions) == 1
    assert len(result.images) == 1
    assert result.api_queue_s is not None and result.api_queue_s > 0
    assert result.total_s >= result.api_queue_s
    assert [e.stage for e in events] == ["queued_at_api"]
    assert events[0].eta_s == pytest.approx(0.05)


async def test_queued_then_failed_stops_polling(session, fake_api):
    fake_api.scenario = "queued_then_failed"
    with pytest.raises(JobFailed):
        await run(make_service(session, fake_api))
    assert len(fake_api.fetches) == 1


async def test_never_finishing_job_hits_the_deadline_with_bounded_polls(session, fake_api):
    fake_api.scenario = "queued_forever"
    started = time.monotonic()
    with pytest.raises(JobTimedOut) as info:
        await run(make_service(session, fake_api, job_timeout_s=1.0, poll_max_s=0.2))
    assert info.value.job_id == "13481504"
    assert time.monotonic() - started < 3
    # with backoff from 0.01 s capped at 0.2 s, one second allows a bounded number of polls
    assert 3 <= len(fake_api.fetches) <= 20


async def test_processing_without_id_never_polls(session, fake_api):
    fake_api.scenario = "processing_without_id"
    with pytest.raises(MalformedResponseError):
        await run(make_service(session, fake_api))
    assert fake_api.fetches == []


async def test_seed_from_meta_else_from_the_request(session, fake_api):
    fake_api.scenario = "success_list"
    assert (await run(make_service(session, fake_api))).seed == 1793745243
    fake_api.scenario = "success"
    assert (await run(make_service(session, fake_api))).seed == 7


async def test_concurrency_cap_holds_at_the_api(session, fake_api):
    fake_api.latency_s = 0.1
    service = make_service(session, fake_api, max_concurrent_jobs=2, max_queued_jobs=10)
    results = await asyncio.gather(*(run(service, user=u) for u in range(6)))
    assert len(results) == 6
    assert fake_api.max_in_flight == 2
    assert service.admission.in_flight == 0
    assert max(r.local_wait_s for r in results) > 0.05  # later ones waited for a slot


async def test_admission_per_member_and_queue_bound(session, fake_api):
    service = make_service(session, fake_api, max_concurrent_jobs=1, max_queued_jobs=1, max_jobs_per_user=1)
    first = service.admission.admit(1)
    with pytest.raises(AlreadyRunning):
        service.admission.admit(1)
    second = service.admission.admit(2)
    with pytest.raises(QueueFull):
        service.admission.admit(3)
    first.close()
    second.close()
    first.close()  # idempotent
    assert service.admission.in_flight == 0
    service.admission.admit(3).close()


async def test_output_larger_than_the_upload_limit_is_recompressed_to_fit(session, fake_api):
    fake_api.scenario = "output_huge"
    result = await run(make_service(session, fake_api), limit=1_000_000)
    (image,) = result.images
    assert len(image.data) <= 1_000_000
    with Image.open(io.BytesIO(image.data)) as img:
        img.load()
        assert img.format == "JPEG"


async def test_output_that_is_not_an_image(session, fake_api):
    fake_api.scenario = "output_not_image"
    with pytest.raises(OutputUnavailable):
        await run(make_service(session, fake_api))


async def test_output_404(session, fake_api):
    fake_api.scenario = "output_404"
    with pytest.raises(OutputUnavailable):
        await run(make_service(session, fake_api))


async def test_multiple_samples_are_all_delivered(session, fake_api):
    fake_api.scenario = "multiple_samples"
    result = await run(make_service(session, fake_api), params=GenerationParams(prompt="x", samples=4))
    assert [i.filename for i in result.images] == [f"depth2img-t-{n}.png" for n in range(4)]
