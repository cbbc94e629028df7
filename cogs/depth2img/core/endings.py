"""How a job ends: the member told (by the UI, inside :meth:`Endings.delivering`), then its final state
recorded in the ledger, once, whatever went wrong in between; the result's first picture kept; the
output budget given back; the metrics counted. Discord-free and HTTP-free."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from cogs.depth2img.errors import (
    DISK_FULL_ADVICE,
    DeliveryFailed,
    DeliveryInterrupted,
    JobCancelled,
    RequestRejected,
    is_disk_full,
)
from cogs.depth2img.metrics import Metrics
from cogs.depth2img.models import GeneratedImage
from cogs.depth2img.store import Job, JobState, JobTakenOver, Ledger, LedgerClosed

from .jobs import Outcome, Sleep
from .pictures import Pictures

log = logging.getLogger(__name__)

# A result Discord took nothing for is left to be delivered later only if the job's deadline leaves this
# long for its next run (polling and downloading it again), beyond the leases it waits for; else the
# picture is kept now (see _undelivered): a run cut short by the deadline would lose it.
LATER_MARGIN_S = 30.0
# How many times a final state is tried (each try retries for a while itself: see Ledger.retry_for_s).
FINISH_ATTEMPTS = 5


class Endings:
    def __init__(
        self,
        ledger: Ledger,
        pictures: Pictures,
        metrics: Metrics,
        *,
        sleep: Sleep,
        deliverable_later: Callable[[Job, float], bool],
    ) -> None:
        self.ledger = ledger
        self.pictures = pictures
        self.metrics = metrics
        self._sleep = sleep
        self._deliverable_later = deliverable_later  # (see JobRunner.deliverable_later)
        # jobs whose member has the result while it is being kept and recorded: a button pressed on it
        # at once waits for that (else "no longer stored" for a picture that is being stored)
        self._settling: dict[str, asyncio.Event] = {}

    async def settled(self, job_id: str, timeout_s: float = 10.0) -> None:
        """Return once ``job_id`` is kept and recorded, if this process is finishing it."""
        event = self._settling.get(job_id)
        if event is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await event.wait()

    @contextlib.asynccontextmanager
    async def delivering(self, outcome: Outcome, *, started_at: float | None = None) -> AsyncIterator[bool]:
        """Around telling the member: yields whether this process may (several may share the ledger;
        one that lost the job stays silent). Once told, the final state is recorded; if telling them
        raised, the job is recorded as failed (:class:`DeliveryFailed`, never sent again). But when
        Discord took nothing for a while (:class:`DeliveryInterrupted`), a job that can be run again
        is left unfinished, and no error raised: once its lease runs out, it is taken over (by this
        process or another), polled at the image service again and delivered then. The result the
        owner paid for is not thrown away for Discord's passing trouble."""
        job = outcome.job
        if outcome.later:
            log.info("job left to be resumed by polling", extra={"job": job.id, "state": str(job.state)})
            yield False
            return
        mine = not isinstance(outcome.error, JobTakenOver) and await self.ledger.claim_delivery(job)
        if not mine:
            log.info("job owned by another process now; not delivering", extra={"job": job.id})
            outcome.release()
            yield False
            return
        settling = self._settling[job.id] = asyncio.Event()
        try:
            try:
                yield True
            except DeliveryInterrupted as exc:
                # (taken over within two leases, then polled and downloaded again before its deadline)
                if self._deliverable_later(job, 2 * self.ledger.lease_s + LATER_MARGIN_S):
                    outcome.release()
                    log.warning(
                        "Discord took no request for the result; the job is delivered again later",
                        extra={"job": job.id, "error": str(exc)},
                    )
                    return
                await self._undelivered(outcome, "discord took nothing")
                raise
            except Exception:
                await self._undelivered(outcome, "discord refused")
                raise
            await self._kept_and_recorded(outcome, started_at)
        finally:
            settling.set()
            self._settling.pop(job.id, None)

    async def posting(self, job: Job) -> bool:
        """Recorded before the job's result is posted in its channel (its message could not be edited):
        a job resumed after a crash in the middle of that post then looks for the post in the channel,
        and posts there again (with the same nonce) only if it is not there, instead of editing its
        message into a second copy. False when another process owns the job now (that one delivers it). A ledger out of reach
        does not stop the post: the picture twice is better than not at all."""
        try:
            await self.ledger.update(job, channel_post_at=time.time())
        except JobTakenOver:
            log.info("job owned by another process now; not posting it", extra={"job": job.id})
            return False
        except Exception as exc:
            log.warning(
                "the ledger could not record that the result goes to the channel",
                extra={"job": job.id, "error": type(exc).__name__},
            )
        return True

    async def _kept_and_recorded(self, outcome: Outcome, started_at: float | None) -> None:
        if started_at is not None:
            self.metrics.job_seconds.observe(time.monotonic() - started_at)
        outcome = await self._kept(outcome)
        outcome.release()  # the member has the images, and the first is kept: their bytes may go
        await self.finish(outcome)

    async def _undelivered(self, outcome: Outcome, why: str) -> None:
        """Discord refused the result (or took nothing for it for longer than the job may wait): the job
        is recorded as failed, but the picture the owner paid for is kept, as a delivered one is, so
        that /depth2img-show brings it back (once, say, the bot may post in the channel again)."""
        outcome = await self._kept(outcome)
        outcome.release()
        job = outcome.job if outcome.result is not None else replace(outcome.job, result_path=None)
        await self.finish(Outcome(job, error=DeliveryFailed(why)))

    async def _kept(self, outcome: Outcome) -> Outcome:
        """The result's first picture (and its depth map) kept on disk, off the member's way: for "Use as
        source", before | after and /depth2img-show. The outcome, without ``result_path`` if the picture
        could not be kept (a depth map that could not be is only missing: the 🗺️ button says so)."""
        job = outcome.job
        if outcome.result is None or not job.result_path:
            return outcome
        if not await self._keep(job, job.result_path, outcome.result.images[0], "result"):
            return replace(outcome, job=replace(job, result_path=None))
        if outcome.result.depth_map is not None:
            await self._keep(job, self.pictures.depth_map_path(job.id), outcome.result.depth_map, "depth map")
        return outcome

    async def _keep(self, job: Job, path: str, picture: GeneratedImage, what: str) -> bool:
        """Whether ``picture`` could be kept at ``path`` (the log says why not)."""
        try:
            await self.pictures.keep_result(path, picture)
        except OSError as exc:
            if is_disk_full(exc):  # (its member has it; its buttons and /depth2img-show will not)
                log.error(
                    f"the data folder's disk is full: a {what} was not kept; {DISK_FULL_ADVICE}",
                    extra={"job": job.id},
                )
            else:
                log.warning(
                    f"the {what} could not be kept", extra={"job": job.id, "error": type(exc).__name__}
                )
            return False
        return True

    async def finish(self, outcome: Outcome) -> None:
        """Record the final state, once the member has been told (tried again for a while if the ledger
        is out of reach: a job the member was told about must not be resumed and told again). The
        source picture and the first result stay on disk while the job exists (buttons and
        /depth2img-show use them)."""
        for attempt in range(FINISH_ATTEMPTS):
            try:
                await self._record_final(outcome)
                return
            except Exception as exc:
                log.error(
                    "the final state could not be recorded",
                    extra={"job": outcome.job.id, "error": type(exc).__name__, "attempt": attempt + 1},
                )
                if isinstance(exc, LedgerClosed):
                    return
                await self._sleep(min(30.0, 2.0**attempt))

    async def _record_final(self, outcome: Outcome) -> None:
        job, exc = outcome.job, outcome.error
        try:
            if exc is None:
                assert outcome.result is not None
                # (the interaction's token is cleared with the final state: nothing needs it any more)
                r = outcome.result
                info = {
                    "total_s": round(r.total_s, 2),
                    "generation_s": r.generation_time_s,
                    "api_queue_s": r.api_queue_s,
                    "local_wait_s": round(r.local_wait_s, 2),
                    "seed": r.seed,
                    "width": r.images[0].width,
                    "height": r.images[0].height,
                    "pictures": len(r.images),
                }
                new = await self.ledger.update(
                    job,
                    state=JobState.DELIVERED,
                    result_path=job.result_path,
                    interaction_token="",
                    result_info=json.dumps(info),
                )
                log.info("job delivered", extra={"job": job.id, "images": len(outcome.result.images)})
            else:
                state = JobState.CANCELLED if isinstance(exc, JobCancelled) else JobState.FAILED
                kind = type(exc).__name__
                # (a result Discord refused is kept: see _undelivered)
                kept = {"result_path": job.result_path} if isinstance(exc, DeliveryFailed) else {}
                new = await self.ledger.update(
                    job, state=state, error_kind=kind, detail=kind, interaction_token="", **kept
                )
                log.info(
                    "job finished without images", extra={"job": job.id, "state": str(state), "error": kind}
                )
        except JobTakenOver:
            log.warning("job taken over while finishing", extra={"job": job.id})
            return
        if not isinstance(exc, RequestRejected):  # (refusals are counted as such, when they happen)
            self.metrics.job_finished(str(new.state), exc)
