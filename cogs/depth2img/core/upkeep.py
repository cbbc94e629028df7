"""The service's upkeep, each a coroutine that runs for as long as the service lives: lease renewal
and the takeover of stopped processes' jobs, and the removal of old pictures."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection

from cogs.depth2img.store import Job, Ledger

from .jobs import Sleep
from .pictures import Pictures

log = logging.getLogger(__name__)


async def keep_leases(
    ledger: Ledger,
    on_claimed: Callable[[Job], None],
    *,
    running: Callable[[], Collection[str]],
    sleep: Sleep,
) -> None:
    """Renew the leases of the jobs this process is running (``running()``), and take over the jobs
    no process runs any more (their leases ran out: a stopped process's, or one of its own whose run
    ended before its final state could be written); ``on_claimed`` gets each job taken over."""
    interval = max(0.5, ledger.lease_s / 3)
    while True:
        await sleep(interval)
        try:
            await ledger.heartbeat(running())
            for job in await ledger.claim_orphans(running=running()):
                log.info("job taken over from a stopped process", extra={"job": job.id})
                on_claimed(job)
        except Exception as exc:  # a database hiccup must not end the loop; try again next time
            log.warning("lease upkeep failed", extra={"error": type(exc).__name__})


async def prune_pictures(ledger: Ledger, pictures: Pictures, keep_days: float) -> int:
    """Remove the stored pictures of jobs finished more than ``keep_days`` ago (their buttons then
    say the pictures are no longer stored). Returns how many jobs were pruned."""
    return await _prune(ledger.release_pictures, pictures, keep_days, "old pictures removed")


async def prune_jobs(ledger: Ledger, pictures: Pictures, keep_days: float) -> int:
    """Delete the jobs finished more than ``keep_days`` ago (rows, prompts, events) and any pictures
    they still had. Returns how many jobs were deleted."""
    return await _prune(ledger.forget_finished, pictures, keep_days, "old jobs removed from the ledger")


async def _prune(
    take: Callable[[float], Awaitable[list[Job]]], pictures: Pictures, keep_days: float, said: str
) -> int:
    """``take`` the jobs finished before ``keep_days`` ago, a batch at a time, and remove their files."""
    pruned = 0
    while True:
        jobs = await take(time.time() - keep_days * 86400)
        for job in jobs:
            await pictures.remove_of(job)
        pruned += len(jobs)
        if len(jobs) < 500:  # (the ledger's batch size)
            break
    if pruned:
        log.info(said, extra={"jobs": pruned, "keep_days": keep_days})
    return pruned


async def prune_now_and_then(
    ledger: Ledger,
    pictures: Pictures,
    pictures_days: float | None,
    jobs_days: float | None,
    *,
    sleep: Sleep,
    every_s: float = 3600.0,
) -> None:
    """Hourly: pictures past ``KEEP_PICTURES_DAYS``, jobs past ``KEEP_JOBS_DAYS`` (None: kept for ever)."""
    while True:
        try:
            if pictures_days is not None:
                await prune_pictures(ledger, pictures, pictures_days)
            if jobs_days is not None:
                await prune_jobs(ledger, pictures, jobs_days)
        except Exception as exc:  # a disk or database hiccup: try again next time
            log.warning("pruning old pictures or jobs failed", extra={"error": type(exc).__name__})
        await sleep(every_s)
