"""The service's upkeep, each a coroutine that runs for as long as the service lives: lease renewal
and the takeover of stopped processes' jobs, the removal of old pictures, and the sweep of files no job
refers to."""

from __future__ import annotations

import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

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


# A file is a stray once no job has referred to it for this long: a job's own files are referred to
# within its deadline (minutes) of being written.
STRAY_AFTER_S = 86400.0
LEDGER_MARK_NAME = "pictures_mark"


async def sweep_strays(ledger: Ledger, pictures: Pictures, *, older_than_s: float = STRAY_AFTER_S) -> int:
    """Remove the bot's picture files (:data:`~.pictures.KEPT_NAME`) that no job in the ledger refers to
    and that were written more than ``older_than_s`` ago. They are what a crash leaves between two steps
    that the ledger and the disk cannot take together: a job's row deleted (pruning, a member's
    forget-me) or its paths cleared, but not yet its files; a picture written but not yet recorded; a
    half-written ``.tmp``. Files are matched by folder and name (``results/<id>.png``), so that a data
    folder moved since keeps them.
    Returns how many files were removed."""
    if not await _folders_belong_to(ledger, pictures):
        return 0
    removed = 0
    async for batch in pictures.files_before(time.time() - older_than_s):
        by_job: defaultdict[str, list[Path]] = defaultdict(list)
        for job_id, path in batch:
            by_job[job_id].append(path)
        kept = await ledger.kept_paths(by_job)
        strays = [
            str(path)
            for job_id, paths in by_job.items()
            for path in paths
            if _place(path) not in _referred(job_id, kept.get(job_id))
        ]
        await pictures.remove(*strays)
        removed += len(strays)
    if removed:
        log.info("picture files no job refers to removed", extra={"files": removed})
    return removed


async def _folders_belong_to(ledger: Ledger, pictures: Pictures) -> bool:
    """Whether the picture folders were kept with this ledger: the first call (at start) marks both
    alike (a random mark, in the ledger and in ``BOT_DATA_DIR/.ledger-mark``). Pointed at another ledger (a new
    database, say), the bot would find no job for any picture: it sweeps nothing and says why."""
    ours = await ledger.first_value(LEDGER_MARK_NAME, secrets.token_hex(8))
    if await pictures.mark(ours) == ours:
        return True
    log.warning(
        "stray picture files not swept: the data folder's pictures were kept with another ledger "
        "(remove BOT_DATA_DIR/.ledger-mark to let this ledger adopt them, and their strays be swept)"
    )
    return False


def _referred(job_id: str, paths: tuple[str | None, str | None] | None) -> set[str]:
    """The files a job (its ``source_path``, ``result_path``) refers to (:func:`_place`): those two,
    and its depth map while it has a result."""
    if paths is None:
        return set()
    source, result = paths
    places = {_place(Path(p)) for p in (source, result) if p}
    if result:
        places.add(_place(Path(result).with_name(f"{job_id}-depth.png")))
    return places


def _place(path: Path) -> str:
    """``sources/<id>.png``: a source and a result may have the same name."""
    return f"{path.parent.name}/{path.name}"


async def sweep_now_and_then(
    ledger: Ledger,
    pictures: Pictures,
    *,
    sleep: Sleep,
    first_after_s: float = 3600.0,
    every_s: float = 86400.0,
) -> None:
    """Daily, the first an hour after start (not in the burst a restarted bot may meet): :func:`sweep_strays`.
    At start, the ledger and the folders are marked (or found to differ, and the owner told) at once."""
    try:
        await _folders_belong_to(ledger, pictures)
    except Exception as exc:  # (tried again at the first sweep)
        log.warning("the picture folders' ledger mark could not be read", extra={"error": type(exc).__name__})
    await sleep(first_after_s)
    while True:
        try:
            await sweep_strays(ledger, pictures)
        except Exception as exc:  # a disk or database hiccup: try again next time
            log.warning("the sweep of stray picture files failed", extra={"error": type(exc).__name__})
        await sleep(every_s)
