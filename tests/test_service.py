"""The job logic behind the service facade, against an in-memory image service that implements the
Backend protocol (tests/fakes/memory_backend.py) and a real ledger: polling, deadlines, concurrency,
outputs, restarts, admission, progress events, reading the member's picture."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from cogs.depth2img.core.admission import AnswerFirst, Rounds
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
from cogs.depth2img.models import GenerationParams, ProgressEvent, Stage
from cogs.depth2img.store import Job, JobState
from tests.fakes.fake_api import make_png
from tests.ledger_queries import count_by_state, events
from tests.service_kit import SOURCE, origin, run, take_in


async def test_queued_job_is_polled_to_success_and_timed(make_service, backend):
    backend.scenario = "queued"
    backend.polls_before_done = 3
    seen: list[ProgressEvent] = []
    result = await run(make_service(), events=seen)
    assert len(backend.called("poll")) == 4
    assert len(backend.called("submit")) == 1
    assert len(result.images) == 1
    assert result.api_queue_s is not None and result.api_queue_s > 0
    assert result.total_s >= result.api_queue_s
    # the service's estimate first, then a word after each poll that found it still queued
    assert seen == [ProgressEvent(Stage.QUEUED_AT_API, eta_s=0.05)] + [ProgressEvent(Stage.QUEUED_AT_API)] * 3


async def test_queued_then_failed_stops_polling(make_service, backend):
    backend.scenario = "queued_then_failed"
    with pytest.raises(JobFailed):
        await run(make_service())
    assert len(backend.called("poll")) == 1


async def test_never_finishing_job_hits_the_deadline_with_bounded_polls(make_service, backend):
    backend.scenario = "queued_forever"
    started = time.monotonic()
    with pytest.raises(JobTimedOut) as info:
        await run(make_service(job_timeout_s=1.0, poll_max_s=0.2))
    assert info.value.job_id == "1000"
    assert time.monotonic() - started < 3
    # with backoff from 0.01 s capped at 0.2 s, one second allows a bounded number of polls
    assert 3 <= len(backend.called("poll")) <= 20


async def test_processing_without_id_never_polls(make_service, backend):
    backend.scenario = "processing_without_id"
    with pytest.raises(MalformedResponseError):
        await run(make_service())
    assert backend.called("poll") == []


async def test_seed_from_the_service_else_from_the_request(make_service, backend):
    backend.seed = 1793745243
    assert (await run(make_service())).seed == 1793745243
    backend.seed = None
    assert (await run(make_service())).seed == 7


async def test_concurrency_cap_holds_and_waiters_hear_their_place(make_service, backend):
    backend.latency_s = 0.1
    service = make_service(max_concurrent_jobs=2, max_queued_jobs=10)
    heard: dict[int, list[ProgressEvent]] = {u: [] for u in range(6)}
    results = await asyncio.gather(*(run(service, user=u, events=heard[u]) for u in range(6)))
    assert len(results) == 6
    assert backend.max_in_flight == 2
    assert service.admission.in_flight == 0
    assert max(r.local_wait_s for r in results) > 0.05  # later ones waited for a slot
    # the waiters were told their place, and it only ever moved up, down to 1
    places = [[e.position for e in heard[u] if e.stage is Stage.WAITING_FOR_SLOT] for u in range(6)]
    waited = [p for p in places if p]
    assert len(waited) == 4
    for p in waited:
        assert p == sorted(p, reverse=True) and p[-1] == 1
        assert all(e.eta_s is not None and e.eta_s > 0 for u in range(6) for e in heard[u])


async def test_admission_per_member_and_queue_bound(make_service):
    service = make_service(max_concurrent_jobs=1, max_queued_jobs=1, max_jobs_per_user=1)
    first = service.admit(1, None)
    with pytest.raises(AlreadyRunning):
        service.admit(1, None)
    second = service.admit(2, None)
    with pytest.raises(QueueFull):
        service.admit(3, None)
    first.close()
    second.close()
    first.close()  # idempotent
    assert service.admission.in_flight == 0
    service.admit(3, None).close()
    assert await service.drain(0.1)
    with pytest.raises(ShuttingDown):
        service.admit(4, None)


async def test_output_larger_than_the_upload_limit_is_recompressed_to_fit(make_service, backend):
    backend.output = make_png(1400, 1400, noise=True)
    result = await run(make_service(), limit=1_000_000)
    (image,) = result.images
    assert len(image.data) <= 1_000_000
    with Image.open(io.BytesIO(image.data)) as img:
        img.load()
        assert img.format == "JPEG"


@pytest.mark.parametrize("scenario", ["output_not_image", "output_missing"])
async def test_an_output_that_cannot_be_had(make_service, backend, scenario):
    backend.scenario = scenario
    with pytest.raises(OutputUnavailable):
        await run(make_service())


async def test_multiple_samples_are_all_delivered(make_service, backend):
    result = await run(make_service(), params=GenerationParams(prompt="x", samples=4))
    assert [i.filename.rsplit("-", 1)[1] for i in result.images] == [f"{n}.png" for n in range(4)]


# --- the ledger and resumption -------------------------------------------------------------------


async def test_ledger_records_every_state_of_a_delivered_job(make_service, backend, ledger):
    backend.scenario = "queued"
    await run(make_service())
    assert await count_by_state(ledger) == {"delivered": 1}
    (job,) = await ledger.for_user(1)
    assert await events(ledger, job.id) == [
        "acknowledged",
        "received",
        "submitting",
        "processing",
        "delivered",
    ]
    assert job.api_job_id == "1000"
    assert job.finished_at is not None
    assert Path(job.source_path).exists()  # kept while the job exists: buttons start from it
    assert Path(job.result_path).read_bytes() == backend.output


async def start_job_and_crash(service, *, until: JobState) -> str:
    """Run a job in a task and cancel it (as a crash would stop it) once the ledger shows ``until``."""
    ticket = service.admit(1, 20)
    data = make_png()

    async def read() -> bytes:
        return data

    job = await take_in(service, GenerationParams(prompt="x"), origin(), read)
    task = asyncio.create_task(service.run(job, ticket, emit=lambda _: None, started_at=time.monotonic()))
    async with asyncio.timeout(5):
        while (await service.get(job.id)).state is not until:
            await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    ticket.close()
    return job.id


async def resume(service, job):
    with service.resumed(job) as ticket:
        outcome = await service.run(job, ticket, emit=lambda _: None, started_at=time.monotonic())
    async with service.delivering(outcome) as mine:
        assert mine
    return outcome


async def test_restart_resumes_a_queued_job_by_polling_and_never_resubmits(make_service, backend):
    backend.scenario = "queued"
    backend.polls_before_done = 10**6  # stays queued while we "crash"
    job_id = await start_job_and_crash(make_service(), until=JobState.PROCESSING)
    assert len(backend.called("submit")) == 1
    backend.polls_before_done = 0  # now the service has finished it
    restarted = await make_service.restarted()
    (job,) = await restarted.start()
    assert (job.id, job.state, job.api_job_id, job.resumes) == (job_id, JobState.PROCESSING, "1000", 1)
    outcome = await resume(restarted, job)
    assert outcome.error is None
    assert outcome.result.images
    assert len(backend.called("submit")) == 1  # exactly one submission: no second charge
    assert await restarted.start() == []


async def test_job_interrupted_while_submitting_is_never_sent_again(make_service, backend, ledger):
    backend.scenario = "slow"
    backend.slow_s = 5
    await start_job_and_crash(make_service(), until=JobState.SUBMITTING)
    restarted = await make_service.restarted()
    (job,) = await restarted.start()
    assert job.state is JobState.SUBMITTING
    outcome = await resume(restarted, job)
    assert isinstance(outcome.error, JobInterrupted)
    assert len(backend.called("submit")) == 1
    assert (await ledger.get(job.id)).state is JobState.FAILED


async def test_a_result_goes_to_the_channel_only_while_its_process_owns_the_job(make_service, ledger):
    """Before a result is posted in the channel, that is recorded (a job resumed after a crash in the
    middle of the post reads it back, and posts there again instead of editing its message too). A
    process that lost the job to another must not post: the other delivers it. A ledger out of reach
    does not stop the post."""
    service = make_service()
    job = await service.record(GenerationParams(prompt="x"), origin(), source_url=SOURCE)
    assert (await ledger.get(job.id)).channel_post_at is None
    before = time.time()
    assert await service.posting(job)
    assert (await ledger.get(job.id)).channel_post_at >= before
    other = await make_service.restarted()
    (taken,) = await other.start()  # another process takes it over (this one stalled, say)
    assert taken.id == job.id and taken.channel_post_at is not None
    assert not await service.posting(job)
    await ledger.close()
    assert await service.posting(job)


async def test_received_job_resumed_uploads_the_kept_picture(make_service, backend):
    service = make_service()
    data = make_png()

    async def read() -> bytes:
        return data

    await take_in(service, GenerationParams(prompt="x"), origin(), read)
    restarted = await make_service.restarted()
    (job,) = await restarted.start()
    assert job.resumes == 1
    outcome = await resume(restarted, job)
    assert outcome.error is None
    assert backend.uploads == [data]  # the kept picture, never the possibly stale Discord link
    (submit,) = backend.called("submit")
    assert submit.args[1] == "mem://upload-1.png"


async def test_a_normalised_picture_is_uploaded_not_linked(make_service, backend):
    cmyk = io.BytesIO()
    Image.new("CMYK", (640, 480), (0, 100, 200, 0)).save(cmyk, format="JPEG")
    await run(make_service(), image=cmyk.getvalue())
    (upload,) = backend.uploads
    assert backend.called("submit")[0].args[1] != SOURCE
    with Image.open(io.BytesIO(upload)) as img:
        assert (img.mode, img.size) == ("RGB", (640, 480))


async def test_cooldown_and_daily_quota(make_service):
    service = make_service(user_cooldown_s=60.0, guild_daily_quota=2)
    service.admit(1, 20).close()
    with pytest.raises(CoolingDown) as cooling:
        service.admit(1, 20)
    assert 0 < cooling.value.retry_after_s <= 60
    service.admit(2, 20).close()
    with pytest.raises(QuotaExceeded):
        service.admit(3, 20)
    service.admit(3, 21).close()  # another server has its own quota


async def test_pictures_of_old_finished_jobs_are_pruned(make_service, ledger):
    from cogs.depth2img.core.upkeep import prune_pictures
    from cogs.depth2img.models import Action

    service = make_service()
    await run(service)
    (job,) = await ledger.for_user(1)
    assert Path(job.source_path).exists() and Path(job.result_path).exists()
    assert await prune_pictures(ledger, service.pictures, keep_days=1) == 0  # not old yet
    assert await prune_pictures(ledger, service.pictures, keep_days=-1) == 1  # "more than -1 days ago": now
    assert not Path(job.source_path).exists() and not Path(job.result_path).exists()
    pruned = await ledger.get(job.id)
    assert (pruned.source_path, pruned.result_path, pruned.state) == (None, None, JobState.DELIVERED)
    with pytest.raises(InvalidInput, match="no longer stored"):
        service.source_for(pruned, Action.REUSE)
    assert await prune_pictures(ledger, service.pictures, keep_days=-1) == 0


async def test_old_finished_jobs_leave_the_ledger_with_their_pictures(make_service, ledger):
    from cogs.depth2img.core.upkeep import prune_jobs

    service = make_service()
    await run(service)
    (job,) = await ledger.for_user(1)
    assert await prune_jobs(ledger, service.pictures, keep_days=1) == 0  # not old yet
    assert await prune_jobs(ledger, service.pictures, keep_days=-1) == 1
    assert await ledger.get(job.id) is None and await ledger.for_user(1) == []
    assert not Path(job.source_path).exists() and not Path(job.result_path).exists()


async def test_picture_files_no_job_refers_to_are_swept_after_a_day(make_service, ledger, tmp_path):
    """What a crash leaves between the ledger and the disk (a forgotten job's files, a picture written
    but never recorded, a half-written one) is removed once it is a day old; nothing a job refers to,
    nothing young and nothing the bot did not name is."""
    from cogs.depth2img.core.upkeep import sweep_strays

    service = make_service()
    await run(service)
    (held,) = await ledger.for_user(1)
    results = Path(held.result_path).parent
    (results / f"{held.id}-depth.png").write_bytes(b"depth")
    gone = "0123456789ab"  # a job no longer in the ledger (deleted, the files' removal cut short)
    moved = await ledger.create(replace(held, id="ba9876543210"))
    await ledger.update(  # (its pictures recorded in a data folder since moved elsewhere)
        moved,
        source_path=f"/elsewhere/sources/{moved.id}.png",
        result_path=f"/elsewhere/results/{moved.id}.png",
    )
    stray = [
        results / f"{gone}.png",
        results / f"{gone}-depth.png",
        Path(held.source_path).parent / f"{gone}.jpg",
        Path(held.source_path).parent / f"{held.id}.upload",  # the held job's, but not what it refers to
        results / f"{held.id}.png.tmp",
        results / f"{held.id}-0.download",
    ]
    young = results / "feedfacecafe.png"
    foreign = [results / "notes.txt", results / "0123456789abc.png", Path(held.source_path).parent / "x"]
    kept = [Path(held.source_path), Path(held.result_path), results / f"{held.id}-depth.png"]
    kept += [results / f"{moved.id}.png", Path(held.source_path).parent / f"{moved.id}.png"]
    for path in [*stray, young, *foreign, *kept[3:]]:
        path.write_bytes(b"x")
    day_ago = time.time() - 86400 - 60
    for path in [*stray, *foreign, *kept]:
        os.utime(path, (day_ago, day_ago))
    assert await sweep_strays(ledger, service.pictures) == len(stray)
    assert [p for p in stray if p.exists()] == []
    assert all(p.exists() for p in [young, *foreign, *kept])
    # a result no longer recorded (its paths cleared by pruning): its depth map goes too
    await ledger.update(await ledger.get(held.id), result_path=None)
    assert await sweep_strays(ledger, service.pictures) == 2
    assert Path(held.source_path).exists() and not Path(held.result_path).exists()
    assert await sweep_strays(ledger, service.pictures) == 0


async def test_pictures_kept_with_another_ledger_are_not_swept(make_service, ledger, tmp_path, caplog):
    """A bot pointed at another ledger (a new database) finds no job for any picture: it must not take
    them all for strays."""
    from cogs.depth2img.core.upkeep import sweep_strays

    service = make_service()
    await run(service)
    (job,) = await ledger.for_user(1)
    assert await sweep_strays(ledger, service.pictures) == 0  # (the first sweep marks both alike)
    await ledger.forget_user(1)  # as if this ledger had never known the job
    os.utime(job.source_path, (0, 0))
    await ledger.remember("pictures_mark", "another-ledger")
    assert await sweep_strays(ledger, service.pictures) == 0
    assert Path(job.source_path).exists()
    assert "kept with another ledger" in caplog.records[-1].getMessage()
    (tmp_path / ".ledger-mark").unlink()  # the owner lets this ledger adopt them
    assert await sweep_strays(ledger, service.pictures) == 1
    assert not Path(job.source_path).exists()


async def test_the_sweep_waits_an_hour_after_start_then_runs_daily_through_failures(
    make_service, ledger, caplog
):
    from cogs.depth2img.core.upkeep import sweep_now_and_then

    service = make_service()
    stray = service.pictures.results_dir / "0123456789ab.png"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"x")
    os.utime(stray, (0, 0))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            assert stray.exists()  # nothing swept before the first hour, but the folders marked
            assert (service.pictures.data_dir / ".ledger-mark").read_text().strip() == await ledger.recall(
                "pictures_mark"
            )
        elif len(slept) == 2:
            assert not stray.exists()  # swept after it
            stray.write_bytes(b"x")
            os.utime(stray, (0, 0))
            await ledger.close()  # the next sweep's ledger read fails (and removes nothing)
        else:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await sweep_now_and_then(ledger, service.pictures, sleep=sleep)
    assert slept == [3600.0, 86400.0, 86400.0] and stray.exists()  # ... and the one after is due
    (failed,) = [r for r in caplog.records if "sweep" in r.getMessage()]
    assert failed.levelname == "WARNING" and failed.getMessage() == "the sweep of stray picture files failed"


def test_keeping_days_take_a_number_or_forever_and_never_a_silent_zero():
    from cogs.depth2img.config import ConfigError, load_settings

    base = {"SD_API_KEY": "k" * 20}
    assert load_settings(base).keep_jobs_days == 90 and load_settings(base).keep_pictures_days == 30
    chosen = load_settings(base | {"KEEP_JOBS_DAYS": "forever", "KEEP_PICTURES_DAYS": "7"})
    assert (chosen.keep_jobs_days, chosen.keep_pictures_days) == (None, 7)
    with pytest.raises(ConfigError) as caught:
        load_settings(base | {"KEEP_PICTURES_DAYS": "0"})
    assert caught.value.problems == [
        "KEEP_PICTURES_DAYS=0 is ambiguous: write KEEP_PICTURES_DAYS=forever to keep them for ever, or a number of days."
    ]


# --- reading the member's picture ----------------------------------------------------------------


async def test_a_picture_that_never_arrives_ends_with_a_clear_refusal_and_blocks_no_one(
    make_service, backend
):
    """Discord's CDN stalls on five members' pictures: each of them is told after the read timeout,
    and a sixth member, whose picture comes at once, is served meanwhile (the slow reads hold no turn
    that others wait for; there are two picture workers' worth of turns here)."""
    service = make_service(input_read_timeout_s=1.0, image_workers=0)
    never = asyncio.Event()

    async def stalled() -> bytes:
        await never.wait()
        return b""

    async def attempt(user: int, read) -> object:
        with service.admit(user, 20) as ticket:
            try:
                job = await take_in(service, GenerationParams(prompt="x"), origin(user), read)
            except InvalidInput as exc:
                return exc
            outcome = await service.run(job, ticket, emit=lambda _: None, started_at=time.monotonic())
            async with service.delivering(outcome):
                pass
            return (outcome, time.monotonic())

    data = make_png()

    async def at_once() -> bytes:
        return data

    started = time.monotonic()
    slow = [asyncio.create_task(attempt(u, stalled)) for u in range(5)]
    await asyncio.sleep(0.05)
    outcome, served_at = await attempt(99, at_once)
    assert outcome.result is not None and served_at - started < 0.9  # before the stalled ones time out
    refusals = await asyncio.gather(*slow)
    for refusal in refusals:
        assert (
            isinstance(refusal, InvalidInput)
            and "could not be downloaded from Discord in time" in refusal.reason
        )
    assert len(backend.called("submit")) == 1


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


async def test_recording_waits_for_the_acknowledgements_still_being_made_but_not_forever():
    gate = AnswerFirst(quiet_s=0.0, max_hold_s=30.0)
    await asyncio.wait_for(gate.acknowledgements_out(), 1)  # none being made: straight through
    with gate.acknowledging():  # another member's acknowledgement, on its way to Discord
        waiter = asyncio.create_task(gate.acknowledgements_out())
        with gate.acknowledging():  # and a third, made meanwhile
            assert await _blocked(waiter)
        assert await _blocked(waiter)
    await asyncio.wait_for(waiter, 1)  # all out: the record goes on at once (no quiet period)
    stuck = AnswerFirst(quiet_s=0.0, max_hold_s=0.05)
    with stuck.acknowledging():  # an acknowledgement that hangs holds the others up 50 ms at most
        await asyncio.wait_for(stuck.acknowledgements_out(), 5)


async def test_a_burst_of_acknowledgements_goes_out_a_few_per_round_of_the_event_loop_in_order():
    """Rounds: 10 requests at once, 3 per round. Each round lets at most 3 on, first come first
    served; one that gives up while waiting takes no place; all the others go on."""
    rounds = Rounds(per_round=3)
    passed: list[int] = []

    async def answer(n: int) -> None:
        await rounds.pass_()
        passed.append(n)

    tasks = [asyncio.create_task(answer(n)) for n in range(10)]
    seen: list[int] = []
    for turn in range(40):
        await asyncio.sleep(0)  # one round of the loop
        if turn == 1:
            tasks[7].cancel()  # still waiting: it gives its place up
        seen.append(len(passed))
        if len(passed) == 9:
            break
    assert passed == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    steps = [b - a for a, b in zip([0, *seen], seen, strict=False)]
    assert max(steps) <= 3 and steps[:2] == [3, 0]  # the first 3 at once; the next 3 a round later
    assert tasks[7].cancelled()
    await asyncio.wait_for(rounds.pass_(), 1)  # the burst gone: straight through again


# --- upkeep ---------------------------------------------------------------------------------------------


async def test_a_background_task_that_fails_is_logged(caplog):
    import logging

    from cogs.botcore.tasks import create_task

    caplog.set_level(logging.INFO)
    kept: set[asyncio.Task[None]] = set()

    async def breaks() -> None:
        raise OSError("disk full")

    async def is_cancelled() -> None:
        await asyncio.sleep(3600)

    failing = create_task(breaks(), name="pruning", keep_in=kept)
    cancelled = create_task(is_cancelled(), name="leases", keep_in=kept)
    await asyncio.wait({failing})
    cancelled.cancel()
    await asyncio.wait({cancelled})
    await asyncio.sleep(0)
    assert kept == set()  # held until they ended
    (record,) = [r for r in caplog.records if r.getMessage() == "background task failed"]
    assert record.levelname == "ERROR" and record.task == "pruning" and record.exc_info[0] is OSError


async def test_the_loop_monitor_runs_only_when_asked_for(make_service, tmp_path):
    async def post(job: Job) -> None:
        pass

    usual = make_service().background(lambda job: None, post)
    asked = make_service(
        loop_monitor_file=tmp_path / "loop.txt", keep_pictures_days=None, keep_jobs_days=None
    ).background(lambda job: None, post)
    assert (set(usual), set(asked)) == (
        {"leases", "late-posts", "pruning", "backend", "strays"},
        {"leases", "late-posts", "loop-monitor", "backend", "strays"},
    )
    for coro in [*usual.values(), *asked.values()]:
        coro.close()
