"""Every accepted job ends in exactly one final state, whatever is raised (issue 12, items 8, 9 and 12),
at the level of the service, with the in-memory image service (tests/fakes/memory_backend.py) and a
real ledger: an unforeseen exception, a job at the service whose run broke, a job past its own deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.errors import (
    APIConnectionError,
    InternalError,
    JobTimedOut,
    MalformedResponseError,
    RateLimitError,
    ServerError,
)
from cogs.depth2img.metrics import Metrics
from cogs.depth2img.models import GenerationParams, ProgressEvent, Stage
from cogs.depth2img.store import Job, JobState, Ledger
from tests.fakes.fake_api import make_png
from tests.fakes.memory_backend import MemoryAttachments, MemoryBackend
from tests.service_kit import origin, settings, take_in


async def _read() -> bytes:
    return make_png()


async def test_an_unforeseen_exception_before_the_service_ends_the_job_failed(make_service, backend, caplog):
    """Not one of the bot's own errors (here a RuntimeError whose text must go nowhere): the job ends
    failed in the ledger, the member is told in our words, and its token is cleared."""
    service = make_service()
    backend.scenario = "raise"
    backend.raises = RuntimeError("internal detail: password=hunter2")
    with service.admit(1, 20) as ticket:
        job = await take_in(service, GenerationParams(prompt="x"), origin(), _read)
        outcome = await service.run(job, ticket, emit=lambda _: None, started_at=time.monotonic())
        assert isinstance(outcome.error, InternalError) and not outcome.later
        async with service.delivering(outcome) as mine:
            assert mine
    stored = await service.get(job.id)
    assert stored is not None
    assert (stored.state, stored.error_kind, stored.interaction_token) == (
        JobState.FAILED,
        "InternalError",
        "",
    )
    assert "hunter2" not in caplog.text
    assert "job failed unexpectedly" in caplog.text


async def test_a_job_at_the_service_whose_run_broke_is_resumed_by_its_own_process(tmp_path, caplog):
    """The service has the (paid) job; the run fails for the bot's own reasons (here a RecursionError
    from the poll). The job is neither failed nor left a zombie whose lease is renewed for ever: its
    lease runs out, and the same process claims it and finishes it by polling."""
    caplog.set_level(logging.INFO)
    backend = MemoryBackend(scenario="queued", polls_before_done=1)
    backend.poll_raises = [RecursionError("maximum recursion depth exceeded")]
    ledger = await Ledger.open(tmp_path / "jobs.sqlite3", lease_s=0.3)
    service = Depth2ImgService(
        backend,
        settings(),
        ledger,
        attachments=MemoryAttachments(),
        data_dir=tmp_path,
        metrics=Metrics(CollectorRegistry()),
    )
    await service.start()
    claimed: list = []
    tasks = [asyncio.create_task(c) for c in service.background(claimed.append, _posted).values()]
    try:
        with service.admit(1, 20) as ticket:
            job = await take_in(service, GenerationParams(prompt="x"), origin(), _read)
            with service.driving(job.id):
                outcome = await service.run(job, ticket, emit=lambda _: None, started_at=time.monotonic())
                assert isinstance(outcome.error, InternalError) and outcome.later
                async with service.delivering(outcome) as mine:
                    assert not mine  # nothing said to the member yet: the job is not over
        assert (await service.get(job.id)).state is JobState.PROCESSING
        async with asyncio.timeout(5):
            while not claimed:
                await asyncio.sleep(0.05)
        (again,) = claimed
        assert (again.id, again.resumes) == (job.id, 1)
        with service.resumed(again) as ticket:
            outcome = await service.run(again, ticket, emit=lambda _: None, started_at=time.monotonic())
        async with service.delivering(outcome) as mine:
            assert mine
        assert outcome.result is not None
        assert (await service.get(job.id)).state is JobState.DELIVERED
        assert len(backend.called("submit")) == 1  # paid once
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        service.pictures.close()
        await ledger.close()


async def test_a_job_keeps_its_own_deadline_across_a_restart(make_service, backend):
    """The deadline runs from the job's creation: one resumed past it ends at once, and one that never
    reached the service says so (nothing was spent)."""
    service = make_service(job_timeout_s=60.0)
    with service.admit(1, 20) as ticket:
        job = await take_in(service, GenerationParams(prompt="x"), origin(), _read)
        old = replace(job, created_at=time.time() - 61)
        outcome = await service.run(old, ticket, emit=lambda _: None, started_at=time.monotonic())
    assert isinstance(outcome.error, JobTimedOut)
    assert not outcome.error.at_api
    assert backend.called("submit") == []


async def test_polling_goes_on_through_passing_faults_and_says_the_service_is_slow(make_service, backend):
    service = make_service()
    backend.scenario = "queued"
    backend.polls_before_done = 1
    backend.poll_raises = [
        ServerError("HTTP 502", status=502),
        RateLimitError("slow down", retry_after_s=0.05),
        APIConnectionError("connection problem: ServerDisconnectedError"),
        MalformedResponseError("response is not JSON", status=200),
    ]
    events: list[ProgressEvent] = []
    with service.admit(1, 20) as ticket:
        job = await take_in(service, GenerationParams(prompt="x"), origin(), _read)
        outcome = await service.run(job, ticket, emit=events.append, started_at=time.monotonic())
    assert outcome.error is None and outcome.result is not None
    assert [e.stage for e in events].count(Stage.SERVICE_SLOW) == 4
    assert len(backend.called("poll")) == 6


async def test_a_result_the_chat_refuses_is_kept_and_an_error_leaves_no_picture_behind(make_service, backend):
    """Telling the member raised (Discord refused the message): a result's picture is kept and its path
    recorded with the failure (/depth2img-show brings it back); an outcome without a result records no
    picture path, even if its job had planned one (nothing was kept there)."""
    from cogs.depth2img.core.jobs import Outcome

    service = make_service()
    with service.admit(1, 20) as ticket:
        job = await take_in(service, GenerationParams(prompt="cabin", seed=7), origin(), _read)
        outcome = await service.run(job, ticket, emit=lambda _: None, started_at=time.monotonic())
    assert outcome.result is not None
    with contextlib.suppress(RuntimeError):
        async with service.delivering(outcome) as mine:
            assert mine
            raise RuntimeError("refused")
    kept = await service.get(job.id)
    assert (kept.state, kept.error_kind, kept.undelivered) == (JobState.FAILED, "DeliveryFailed", True)
    assert Path(kept.result_path).read_bytes() == outcome.result.images[0].data

    other = await take_in(service, GenerationParams(prompt="cabin", seed=8), origin(), _read)
    planned = Outcome(
        replace(other, result_path=str(Path(kept.result_path).with_name("planned.png"))),
        error=InternalError("x"),
    )
    with contextlib.suppress(RuntimeError):
        async with service.delivering(planned):
            raise RuntimeError("refused")
    failed = await service.get(other.id)
    assert (failed.state, failed.result_path, failed.has_picture) == (JobState.FAILED, None, False)


async def _posted(job: Job) -> None:
    raise AssertionError(f"no kept result to post here: {job.id}")
