"""Results kept because Discord took nothing for them, posted in their channel once it does.

A job whose result Discord took no request for, for longer than its deadline let it wait (an outage),
ends failed with its picture kept (see :class:`.Endings`); its message had said that the picture would
be posted as soon as Discord takes it. This keeps that word. Every round (a lease: ``JOB_LEASE_S``) the
ledger is asked for such jobs, ended within :data:`LATE_POST_WINDOW_S` and not tried in the last
:data:`ROUNDS_BETWEEN_TRIES` rounds, a few at a time; the UI posts each and says what came of it:
posted (the job is delivered then), refused (not tried again), or nothing taken yet (tried again
later). A result Discord refused at its job's end (the bot could not post there, say) is tried once
this way too: the owner may have mended that since.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from cogs.depth2img.store import Job, JobState, Ledger

from .jobs import Sleep

log = logging.getLogger(__name__)

LATE_POST_WINDOW_S = 24 * 3600.0  # a kept result is posted at most a day after its job ended
ROUNDS_BETWEEN_TRIES = 2  # a result Discord took nothing for is tried again every other round
BATCH = 5  # results tried per round (after a long outage, the channels get them a few at a time)


class LatePosts:
    def __init__(self, ledger: Ledger, *, every_s: float, sleep: Sleep) -> None:
        self.ledger = ledger
        self.every_s = every_s
        self._sleep = sleep

    async def keep_posting(self, post: Callable[[Job], Awaitable[None]]) -> None:
        """Each round, hand ``post`` (the UI's: it tells :meth:`posted` or :meth:`refused` what came
        of it) the jobs whose kept result is due to be posted."""
        while True:
            await self._sleep(self.every_s)
            now = time.time()
            try:
                jobs = await self.ledger.claim_late_posts(
                    since=now - LATE_POST_WINDOW_S,
                    tried_before=now - ROUNDS_BETWEEN_TRIES * self.every_s,
                    limit=BATCH,
                )
            except Exception as exc:  # a database hiccup: next round
                log.warning("kept results could not be looked up", extra={"error": type(exc).__name__})
                continue
            for job in jobs:
                try:
                    await post(job)
                except Exception as exc:  # (the UI's post ends each job itself; this is a bug's net)
                    log.error(
                        "posting a kept result failed", extra={"job": job.id, "error": type(exc).__name__}
                    )

    async def posted(self, job: Job) -> None:
        """The job's kept result is in its channel now: the job is delivered."""
        try:
            await self.ledger.update(job, state=JobState.DELIVERED, detail="posted later")
        except Exception as exc:  # (tried again in a later round: found in the channel's history then)
            log.warning(
                "a kept result's post could not be recorded",
                extra={"job": job.id, "error": type(exc).__name__},
            )
            return
        log.info("kept result posted in its channel", extra={"job": job.id})

    async def shown(self, job: Job) -> None:
        """The job's kept result was shown in its own channel another way (/depth2img-show, publicly):
        the job is delivered, and not posted late as well."""
        try:
            if await self.ledger.shown_in_channel(job.id):
                log.info("kept result shown in its channel", extra={"job": job.id})
        except Exception as exc:  # (posted late then: the member sees it twice, nothing is lost)
            log.warning(
                "a kept result's showing could not be recorded",
                extra={"job": job.id, "error": type(exc).__name__},
            )

    async def refused(self, job: Job) -> None:
        """Discord refused the post (or the picture is gone): the job is not tried again."""
        done = (job.finished_at or time.time()) + LATE_POST_WINDOW_S  # (past its window: never due again)
        try:
            await self.ledger.update(job, late_post_at=done)
        except Exception as exc:
            log.warning(
                "a kept result's refusal could not be recorded",
                extra={"job": job.id, "error": type(exc).__name__},
            )
