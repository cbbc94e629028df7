"""The job logic with the real client against the fake API: polling, deadlines, concurrency, outputs."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from cogs.depth2img.client import Depth2ImgClient
from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.errors import (
    AlreadyRunning,
    CoolingDown,
    InvalidInput,
    JobFailed,
    JobInterrupted,
    JobTimedOut,
    MalformedResponseError,
    OutputUnavailable,
    QueueFull,
    QuotaExceeded,
    ShuttingDown,
)
from cogs.depth2img.ledger import JobState, Ledger
from cogs.depth2img.models import GenerationParams
from cogs.depth2img.service import AnswerFirst, Depth2ImgService, Origin, Progress
from tests.fakes.fake_api import FakeModelsLab, make_png

SOURCE = "http://127.0.0.1:1/attachments/1/2/photo.png"


def settings(fake_api: FakeModelsLab, **kw: object) -> Depth2ImgSettings:
    base = {
        "api_key": fake_api.api_key,
        "api_base_url": fake_api.base_url,
        "poll_initial_s": 0.01,
        "poll_max_s": 0.05,
        "job_timeout_s": 5.0,
        "request_timeout_s": 5.0,
        "user_cooldown_s": 0.0,
        "image_workers": 0,  # threads here; the end-to-end tests run the bot's worker processes
    }
    base.update(kw)
    return Depth2ImgSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def ledger(tmp_path) -> AsyncIterator[Ledger]:
    led = await Ledger.open(tmp_path / "jobs.sqlite3")
    yield led
    await led.close()


@pytest.fixture
async def make_service(session, fake_api, ledger, tmp_path):
    reopened: list[Ledger] = []

    def make(*, restarted: bool = False, **kw) -> Depth2ImgService:
        """``restarted``: as a new process would, with its own connection to the same ledger."""
        s = settings(fake_api, **kw)
        client = Depth2ImgClient(
            session, base_url=s.api_base_url, api_key=s.api_key, request_timeout_s=s.request_timeout_s
        )
        return Depth2ImgService(client, s, reopened[-1] if restarted else ledger, data_dir=tmp_path)

    async def make_restarted(**kw) -> Depth2ImgService:
        reopened.append(await Ledger.open(tmp_path / "jobs.sqlite3"))
        return make(restarted=True, **kw)

    make.restarted = make_restarted  # type: ignore[attr-defined]
    yield make
    for led in reopened:
        await led.close()


def origin(user: int = 1, limit: int = 10 * 1024 * 1024) -> Origin:
    return Origin(
        user_id=user,
        channel_id=10,
        guild_id=20,
        application_id=30,
        interaction_token="tok",
        interaction_created_at=time.time(),
        message_id=40,
        upload_limit_bytes=limit,
    )


_ids = itertools.count()


async def run(service, user: int = 1, limit: int = 10 * 1024 * 1024, params=None, events=None, image=None):
    """accept → run → finish, as the cog does; returns the result (or raises the error)."""

    async def progress(p: Progress) -> None:
        if events is not None:
            events.append(p)

    data = image if image is not None else make_png()

    async def read() -> bytes:
        return data

    with service.admission.admit(user, 20) as ticket:
        job = await service.accept(
            f"job{next(_ids)}",
            params or GenerationParams(prompt="cabin", seed=7),
            origin(user, limit),
            read=read,
            source_url=SOURCE,
        )
        outcome = await service.run(job, ticket, started_at=time.monotonic(), on_progress=progress)
        await service.finish(outcome)
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


async def test_queued_job_is_polled_to_success_and_timed(make_service, fake_api):
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 3
    events: list[Progress] = []
    result = await run(make_service(), events=events)
    assert len(fake_api.fetches) == 4
    assert len(fake_api.submissions) == 1
    assert len(result.images) == 1
    assert result.api_queue_s is not None and result.api_queue_s > 0
    assert result.total_s >= result.api_queue_s
    assert [e.stage for e in events] == ["queued_at_api"]
    assert events[0].eta_s == pytest.approx(0.05)


async def test_queued_then_failed_stops_polling(make_service, fake_api):
    fake_api.scenario = "queued_then_failed"
    with pytest.raises(JobFailed):
        await run(make_service())
    assert len(fake_api.fetches) == 1


async def test_never_finishing_job_hits_the_deadline_with_bounded_polls(make_service, fake_api):
    fake_api.scenario = "queued_forever"
    started = time.monotonic()
    with pytest.raises(JobTimedOut) as info:
        await run(make_service(job_timeout_s=1.0, poll_max_s=0.2))
    assert info.value.job_id == "13481504"
    assert time.monotonic() - started < 3
    # with backoff from 0.01 s capped at 0.2 s, one second allows a bounded number of polls
    assert 3 <= len(fake_api.fetches) <= 20


async def test_processing_without_id_never_polls(make_service, fake_api):
    fake_api.scenario = "processing_without_id"
    with pytest.raises(MalformedResponseError):
        await run(make_service())
    assert fake_api.fetches == []


async def test_seed_from_meta_else_from_the_request(make_service, fake_api):
    fake_api.scenario = "success_list"
    assert (await run(make_service())).seed == 1793745243
    fake_api.scenario = "success"
    assert (await run(make_service())).seed == 7


async def test_concurrency_cap_holds_at_the_api(make_service, fake_api):
    fake_api.latency_s = 0.1
    service = make_service(max_concurrent_jobs=2, max_queued_jobs=10)
    results = await asyncio.gather(*(run(service, user=u) for u in range(6)))
    assert len(results) == 6
    assert fake_api.max_in_flight == 2
    assert service.admission.in_flight == 0
    assert max(r.local_wait_s for r in results) > 0.05  # later ones waited for a slot


async def test_admission_per_member_and_queue_bound(make_service, fake_api):
    service = make_service(max_concurrent_jobs=1, max_queued_jobs=1, max_jobs_per_user=1)
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
    service.admission.draining = True
    with pytest.raises(ShuttingDown):
        service.admission.admit(4)


async def test_output_larger_than_the_upload_limit_is_recompressed_to_fit(make_service, fake_api):
    fake_api.scenario = "output_huge"
    result = await run(make_service(), limit=1_000_000)
    (image,) = result.images
    assert len(image.data) <= 1_000_000
    with Image.open(io.BytesIO(image.data)) as img:
        img.load()
        assert img.format == "JPEG"


async def test_output_that_is_not_an_image(make_service, fake_api):
    fake_api.scenario = "output_not_image"
    with pytest.raises(OutputUnavailable):
        await run(make_service())


async def test_output_404(make_service, fake_api):
    fake_api.scenario = "output_404"
    with pytest.raises(OutputUnavailable):
        await run(make_service())


async def test_multiple_samples_are_all_delivered(make_service, fake_api):
    fake_api.scenario = "multiple_samples"
    result = await run(make_service(), params=GenerationParams(prompt="x", samples=4))
    assert [i.filename.rsplit("-", 1)[1] for i in result.images] == [f"{n}.png" for n in range(4)]


# --- the ledger and resumption -------------------------------------------------------------------


async def test_ledger_records_every_state_of_a_delivered_job(make_service, fake_api, ledger):
    fake_api.scenario = "queued"
    await run(make_service())
    assert await ledger.count_by_state() == {"delivered": 1}
    (job,) = await ledger.for_user(1)
    assert await ledger.events(job.id) == ["received", "submitting", "processing", "delivered"]
    assert job.api_job_id == "13481504"
    assert job.finished_at is not None
    assert Path(job.source_path).exists()  # kept while the job exists: buttons start from it
    assert Path(job.result_path).read_bytes() == fake_api.output_png


async def start_job_and_crash(service, fake_api, *, until: JobState) -> str:
    """Run a job in a task and cancel it (as a crash would stop it) once the ledger shows ``until``."""
    ticket = service.admission.admit(1, 20)
    data = make_png()

    async def read() -> bytes:
        return data

    job = await service.accept("crashy", GenerationParams(prompt="x"), origin(), read=read, source_url=SOURCE)
    task = asyncio.create_task(service.run(job, ticket, started_at=time.monotonic()))
    async with asyncio.timeout(5):
        while (await service.ledger.get(job.id)).state is not until:
            await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    ticket.close()
    return job.id


async def test_restart_resumes_a_queued_job_by_polling_and_never_resubmits(make_service, fake_api):
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 1000  # stays queued while we "crash"
    job_id = await start_job_and_crash(make_service(), fake_api, until=JobState.PROCESSING)
    assert len(fake_api.submissions) == 1
    fake_api.polls_before_done = 0  # now the API has finished it
    restarted = await make_service.restarted()
    (job,) = await restarted.start()
    assert (job.id, job.state, job.api_job_id, job.resumes) == (job_id, JobState.PROCESSING, "13481504", 1)
    with restarted.admission.admit_resumed(job.user_id) as ticket:
        outcome = await restarted.run(job, ticket, started_at=time.monotonic())
    assert outcome.error is None
    assert outcome.result.images
    await restarted.finish(outcome)
    assert len(fake_api.submissions) == 1  # exactly one submission: no second charge
    assert await restarted.start() == []


async def test_job_interrupted_while_submitting_is_never_sent_again(make_service, fake_api, ledger):
    fake_api.scenario = "slow"
    fake_api.slow_s = 5
    await start_job_and_crash(make_service(), fake_api, until=JobState.SUBMITTING)
    restarted = await make_service.restarted()
    (job,) = await restarted.start()
    assert job.state is JobState.SUBMITTING
    with restarted.admission.admit_resumed(job.user_id) as ticket:
        outcome = await restarted.run(job, ticket, started_at=time.monotonic())
    assert isinstance(outcome.error, JobInterrupted)
    await restarted.finish(outcome)
    assert len(fake_api.submissions) == 1
    assert (await ledger.get(job.id)).state is JobState.FAILED


async def test_received_job_resumed_uploads_the_kept_picture(make_service, fake_api, ledger):
    service = make_service()
    data = make_png()

    async def read() -> bytes:
        return data

    job = await service.accept("r1", GenerationParams(prompt="x"), origin(), read=read, source_url=SOURCE)
    restarted = await make_service.restarted()
    (job,) = await restarted.start()
    assert job.resumes == 1
    with restarted.admission.admit_resumed(job.user_id) as ticket:
        outcome = await restarted.run(job, ticket, started_at=time.monotonic())
    assert outcome.error is None
    (_upload,) = fake_api.uploads
    assert fake_api.submissions[0].body["init_image"].endswith(".png")
    assert fake_api.submissions[0].body["init_image"] != SOURCE  # never the possibly stale Discord link


async def test_a_normalised_picture_is_uploaded_not_linked(make_service, fake_api):
    cmyk = io.BytesIO()
    Image.new("CMYK", (640, 480), (0, 100, 200, 0)).save(cmyk, format="JPEG")
    await run(make_service(), image=cmyk.getvalue())
    (upload,) = fake_api.uploads
    assert fake_api.submissions[0].body["init_image"] != SOURCE
    raw = base64.b64decode(upload.body["base64_string"].split(",", 1)[1])
    with Image.open(io.BytesIO(raw)) as img:
        assert (img.mode, img.size) == ("RGB", (640, 480))


async def test_cooldown_and_daily_quota(make_service, fake_api):
    service = make_service(user_cooldown_s=60.0, guild_daily_quota=2)
    service.admission.admit(1, 20).close()
    with pytest.raises(CoolingDown) as cooling:
        service.admission.admit(1, 20)
    assert 0 < cooling.value.retry_after_s <= 60
    service.admission.admit(2, 20).close()
    with pytest.raises(QuotaExceeded):
        service.admission.admit(3, 20)
    service.admission.admit(3, 21).close()  # another server has its own quota


async def test_pictures_of_old_finished_jobs_are_pruned(make_service, fake_api, ledger):
    service = make_service()
    await run(service)
    (job,) = await ledger.for_user(1)
    assert Path(job.source_path).exists() and Path(job.result_path).exists()
    assert await service.prune_pictures(keep_days=1) == 0  # not old yet
    assert await service.prune_pictures(keep_days=-1) == 1  # "finished more than -1 days ago": now
    assert not Path(job.source_path).exists() and not Path(job.result_path).exists()
    pruned = await ledger.get(job.id)
    assert (pruned.source_path, pruned.result_path, pruned.state) == (None, None, JobState.DELIVERED)
    with pytest.raises(InvalidInput, match="no longer stored"):
        service.source_for(pruned, "reuse")
    assert await service.prune_pictures(keep_days=-1) == 0


# --- answering first ------------------------------------------------------------------------------


async def _blocked(waiter: asyncio.Task[None], for_s: float = 0.05) -> bool:
    """Whether ``waiter`` is still waiting after ``for_s`` (a bound for the check, not a speed)."""
    await asyncio.sleep(for_s)
    return not waiter.done()


async def test_work_that_can_wait_holds_off_while_a_request_is_being_answered():
    gate = AnswerFirst(quiet_s=0.01, max_hold_s=30.0)
    await asyncio.wait_for(gate.wait_turn(), 1)  # nothing being answered: straight through
    with gate.answering():
        waiter = asyncio.create_task(gate.wait_turn())
        assert await _blocked(waiter)
        with gate.answering():  # a second request arrives before the first is answered
            pass
        assert await _blocked(waiter)  # the first is still being answered
    await asyncio.wait_for(waiter, 5)  # both answered, then a quiet moment: the work goes on
    assert gate.pending == 0


async def test_a_request_that_just_arrived_holds_work_for_the_quiet_period():
    gate = AnswerFirst(quiet_s=0.3, max_hold_s=30.0)
    with gate.answering():
        waiter = asyncio.create_task(gate.wait_turn())
    # answered at once, but others of the same burst may still be on their way
    assert await _blocked(waiter, 0.1)
    await asyncio.wait_for(waiter, 5)


async def test_a_steady_stream_of_requests_cannot_starve_the_work():
    gate = AnswerFirst(quiet_s=0.01, max_hold_s=0.2)
    with gate.answering():  # never answered while the work waits
        await asyncio.wait_for(gate.wait_turn(), 5)
        assert gate.pending == 1
