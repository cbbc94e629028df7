"""The one facade the UI holds: check a request, admit it, accept it (its picture, checked and kept, and
its row in the ledger), run it, and deliver it (claim, then record the final state); resume what a
restart left; server settings, history, forget-me, and the drain at shutdown. Every metric is counted
here. Discord-free and HTTP-free: the UI hands in plain values and callables, and gets plain data back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from cogs.depth2img.backends.base import Backend
from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.diagnostics import loop_monitor
from cogs.depth2img.errors import InvalidInput, JobCancelled, RequestRejected
from cogs.depth2img.metrics import Metrics
from cogs.depth2img.models import Action, GeneratedImage, GenerationParams, JobKind
from cogs.depth2img.store import DuplicateInteraction, Job, JobState, Ledger

from . import params as params_
from . import upkeep
from .admission import Admission, AnswerFirst, Rounds, Ticket, day_start
from .endings import Endings
from .gate import Gate, Where
from .intake import Attachments, Intake, Origin, Reader
from .jobs import Emit, JobRunner, Outcome, Sleep
from .late import LatePosts
from .pictures import NO_LONGER_STORED, Pictures
from .policy import GuildSettings, OwnerLimits

log = logging.getLogger(__name__)

# Acknowledgements started per round of the event loop in a burst (:class:`Rounds`): each costs the
# loop about 0.25 ms, so a round of acknowledgements stays under 10 ms.
ANSWERS_PER_ROUND = 32


class Depth2ImgService:
    def __init__(
        self,
        backend: Backend,
        settings: Depth2ImgSettings,
        ledger: Ledger,
        *,
        attachments: Attachments,
        data_dir: Path,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.ledger = ledger
        self.attachments = attachments
        self.metrics = metrics
        self._sleep = sleep
        self.admission = Admission(
            max_concurrent=settings.max_concurrent_jobs,
            max_queued=settings.max_queued_jobs,
            per_user=settings.max_jobs_per_user,
            cooldown_s=settings.user_cooldown_s,
            guild_daily_quota=settings.guild_daily_quota,
            bot_daily_quota=settings.bot_daily_quota,
            clock=clock,
        )
        self.pictures = Pictures.of(data_dir, settings)
        # ... and none of that picture work runs while new requests are being answered.
        self.answer_first = AnswerFirst()
        self.answer_rounds = Rounds(ANSWERS_PER_ROUND)
        self.runner = JobRunner(
            backend,
            ledger,
            self.pictures,
            self.admission,
            self.answer_first,
            settings,
            clock=clock,
            sleep=sleep,
        )
        metrics.watch(
            lambda: self.admission.in_flight, lambda: self.admission.waiting, lambda: self.runner.budget.held
        )
        self.intake = Intake(settings, ledger, self.pictures, self.answer_first)
        self._cancels: dict[str, asyncio.Event] = {}
        self._running: set[str] = set()  # the jobs this process is driving (their leases are renewed)
        self.gate = Gate(settings, ledger, self.admission, metrics, room=self.pictures.has_room)
        self.endings = Endings(
            ledger, self.pictures, metrics, sleep=sleep, deliverable_later=self.runner.deliverable_later
        )
        self.late = LatePosts(ledger, every_s=settings.job_lease_s, sleep=sleep)

    # --- start and stop ---

    async def start(self) -> list[Job]:
        """Load what the ledger knows (today's quota counts, the servers' settings) and start the
        image workers. Returns the jobs to resume."""
        await self.pictures.start()
        today = day_start(time.time())
        self.admission.seed_counts(
            await self.ledger.guild_counts_since(today),
            await self.ledger.member_counts_since(today),
            await self.ledger.pictures_since(today) if self.settings.bot_daily_quota else 0,
        )
        await self.gate.load_rules()
        return await self.ledger.claim_orphans(at_start=True)

    def background(
        self, on_claimed: Callable[[Job], None], on_late: Callable[[Job], Awaitable[None]]
    ) -> dict[str, Coroutine[Any, Any, None]]:
        """The service's upkeep, run as tasks for as long as it lives (:mod:`.upkeep`): leases and
        takeover (to ``on_claimed``), late posts (``on_late``: late.py), pruning, the sweep of stray
        files, and the event-loop monitor when ``LOOP_MONITOR_FILE`` is set."""
        work: dict[str, Coroutine[Any, Any, None]] = {
            "leases": upkeep.keep_leases(
                self.ledger, on_claimed, running=lambda: frozenset(self._running), sleep=self._sleep
            ),
            "late-posts": self.late.keep_posting(on_late),
            "backend": self.backend.upkeep(),
            "strays": upkeep.sweep_now_and_then(self.ledger, self.pictures, sleep=self._sleep),
        }
        days = self.settings.keep_pictures_days, self.settings.keep_jobs_days
        if days != (None, None):
            work["pruning"] = upkeep.prune_now_and_then(self.ledger, self.pictures, *days, sleep=self._sleep)
        if self.settings.loop_monitor_file is not None:
            work["loop-monitor"] = loop_monitor(self.settings.loop_monitor_file)
        return work

    async def drain(self, grace_s: float) -> bool:
        """Stop taking new work and let jobs in flight finish for at most ``grace_s`` seconds.
        Returns whether everything finished; what did not stays in the ledger and resumes later."""
        self.admission.draining = True
        log.info("draining", extra={"in_flight": self.admission.in_flight, "grace_s": grace_s})
        try:
            async with asyncio.timeout(grace_s):
                await self.admission.idle.wait()
        except TimeoutError:
            log.info(
                "grace period over; unfinished jobs will resume at the next start",
                extra={"in_flight": self.admission.in_flight},
            )
            return False
        return True

    @property
    def busy(self) -> bool:
        return self.admission.in_flight > 0

    async def close(self) -> None:
        """After every job and task has stopped: the image workers, the backend, the metrics and the ledger."""
        self.pictures.close()
        await self.backend.close()
        await self.attachments.close()
        self.metrics.close()
        await self.ledger.close()

    # --- before the acknowledgement (synchronous, cheap) ---

    def answering(self) -> contextlib.AbstractContextManager[None]:
        """Around everything from a request's arrival to its acknowledgement: picture work that can
        wait holds off meanwhile (:class:`AnswerFirst`)."""
        return self.answer_first.answering()

    @contextlib.asynccontextmanager
    async def acknowledging(self) -> AsyncIterator[None]:
        """Around the acknowledgement: a burst's acknowledgements go out ANSWERS_PER_ROUND per round of
        the event loop (:class:`Rounds`), and jobs are recorded once the others' are out
        (:meth:`acknowledgements_out`)."""
        with self.answer_first.acknowledging():
            await self.answer_rounds.pass_()
            yield

    async def acknowledgements_out(self) -> None:
        """After a request's acknowledgement: once no other is being made, or after a bound
        (:class:`AnswerFirst`)."""
        await self.answer_first.acknowledgements_out()

    def check(
        self, make_params: Callable[[], GenerationParams], where: Where, *, declared_size: int
    ) -> GenerationParams:
        """The member's options, checked and with the server's rules applied (:class:`Gate`). Raises
        :class:`RequestRejected`."""
        return self.gate.check(make_params, where, declared_size=declared_size)

    def admit(self, user_id: int, guild_id: int | None, *, pictures: int = 1) -> Ticket:
        """A ticket for one job of ``pictures`` pictures, or :class:`RequestRejected` (limits, cooldown,
        quotas, queue, draining)."""
        return self.gate.admit(user_id, guild_id, pictures=pictures)

    def first_sight(self, interaction_id: int) -> bool:
        """Whether this interaction is new to this process (the ledger guards it across restarts)."""
        return self.gate.first_sight(interaction_id)

    def rejected(self, exc: RequestRejected) -> None:
        self.gate.rejected(exc)

    def acknowledged(self, started: float) -> None:
        self.metrics.ack_seconds.observe(time.monotonic() - started)
        self.metrics.acks.labels(outcome="acknowledged").inc()

    def too_late(self, interaction_id: int) -> None:
        """Discord no longer knew the interaction when the bot answered (its 3 s were over)."""
        log.warning(
            "interaction expired before the bot could answer", extra={"interaction_id": interaction_id}
        )
        self.metrics.acks.labels(outcome="expired").inc()

    # --- after the acknowledgement ---

    async def record(
        self,
        params: GenerationParams,
        origin: Origin,
        *,
        source_url: str | None,
        source_path: str | None = None,
        parent_id: str | None = None,
        kind: JobKind = JobKind.COMMAND,
    ) -> Job:
        """Record the job the moment the member has been answered, before anything can fail: after a
        crash, a restart still ends it. Raises :class:`DuplicateInteraction` for a replayed
        interaction (its job exists: nothing is run or paid twice)."""
        try:
            return await self.intake.record(
                params, origin, source_url=source_url, source_path=source_path, parent_id=parent_id, kind=kind
            )
        except DuplicateInteraction:
            log.warning(
                "interaction seen twice; its job runs once", extra={"interaction_id": origin.interaction_id}
            )
            raise

    @contextlib.contextmanager
    def driving(self, job_id: str) -> Iterator[None]:
        """Around everything this process does with a job, from its record to its final state: its
        lease is renewed meanwhile. Once the block ends, unfinished or not, the job is left to its lease
        (and to whichever process, this one included, claims it once the lease has run out)."""
        self._running.add(job_id)
        try:
            yield
        finally:
            self._running.discard(job_id)

    async def accept(self, job: Job, *, read: Reader) -> Job:
        """Read the picture, check it by its bytes, keep it, and mark the job ``received``
        (:class:`Intake`). Raises :class:`InvalidInput`, :class:`StorageFull`; no API call is made."""
        try:
            return await self.intake.accept(job, read=read)
        except RequestRejected as exc:
            self.rejected(exc)
            raise

    async def run(self, job: Job, ticket: Ticket, *, emit: Emit, started_at: float) -> Outcome:
        """Drive ``job`` to its images within the job deadline (:class:`JobRunner`). A member's
        :meth:`cancel` ends it with :class:`JobCancelled`. Cancellation of this coroutine (shutdown)
        leaves the job as it is in the ledger, to be resumed at the next start. When it returns, the
        member may ask again."""
        cancel = self._cancels.setdefault(job.id, asyncio.Event())
        work = asyncio.create_task(
            self.runner.run(job, started_at=started_at, emit=emit), name=f"job-{job.id}"
        )
        stop = asyncio.create_task(cancel.wait(), name=f"job-{job.id}-cancel")
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait({work})
            self._cancels.pop(job.id, None)
        ticket.release_member()
        if not work.cancelled():
            outcome = work.result()
            if outcome.api_s is not None:
                self.metrics.api_seconds.observe(outcome.api_s)
            return outcome
        latest = await self.ledger.get(job.id) or job
        log.info("job cancelled", extra={"job": job.id, "state": str(latest.state)})
        if cancel.is_set() and latest.api_job_id is not None and not latest.output_urls:
            await self.backend.cancel(latest.api_job_id)  # (a service that can stop it does: best effort)
        return Outcome(
            latest,
            error=JobCancelled(
                after_submit=latest.state is not JobState.RECEIVED, paid=not self.backend.repeatable
            ),
        )

    def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop. Returns whether it was running."""
        if (event := self._cancels.get(job_id)) is not None:
            event.set()
        return event is not None

    def delivering(
        self, outcome: Outcome, *, started_at: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        """Around telling the member: yields whether this process may; once told, the final state is
        recorded (:class:`.endings.Endings`)."""
        return self.endings.delivering(outcome, started_at=started_at)

    async def posting(self, job: Job) -> bool:
        """Before a result goes to the channel: whether this process still may (see :class:`.Endings`)."""
        return await self.endings.posting(job)

    async def late_posted(self, job: Job, *, posted: bool, shown: bool = False) -> None:
        await (self.late.shown(job) if shown else self.late.posted(job) if posted else self.late.refused(job))

    @contextlib.contextmanager
    def resumed(self, job: Job) -> Iterator[Ticket]:
        """A ticket for a job left unfinished by a restart (or taken over from a stopped process)."""
        with self.driving(job.id), self.admission.admit_resumed(job.user_id) as ticket:
            log.info("job resumed", extra={"job": job.id, "state": str(job.state), "resumes": job.resumes})
            self.metrics.resumed.inc()
            yield ticket

    # --- results, iterating on them, and members' data ---

    async def settled(self, job_id: str) -> None:
        """Wait until a job whose result was just shown is kept and recorded (a button pressed at once)."""
        await self.endings.settled(job_id)

    async def get(self, job_id: str) -> Job | None:
        return await self.ledger.get(job_id)

    def derive(
        self, parent: Job, action: Action, *, prompt: str | None = None, negative_prompt: str | None = None
    ) -> GenerationParams:
        """The options of a job made from ``parent`` by a button (or the edit form)."""
        return params_.derive(parent.params, action, prompt=prompt, negative_prompt=negative_prompt)

    def source_for(self, parent: Job, action: Action) -> str:
        """The file a derived job starts from: the parent's result for "Use as source", else its source."""
        path = parent.result_path if action is Action.REUSE else parent.source_path
        if not path:
            raise InvalidInput(NO_LONGER_STORED)
        return path

    async def mark_deleted(self, job_id: str) -> None:
        """Its result was deleted (by its requester or a moderator): shown again only to its requester."""
        await self.ledger.mark_deleted(job_id)

    async def read_stored(self, path: str | None) -> bytes:
        return await self.pictures.read(path)

    async def read_kept(self, job: Job) -> tuple[bytes, bool]:  # (its result, and whether it is blank)
        return await self.pictures.read_kept(job.result_path, max_pixels=self.settings.max_input_pixels)

    async def read_attachment(self, url: str) -> bytes:
        """A member's picture on Discord: never more than ``MAX_INPUT_BYTES`` of it is read."""
        return await self.attachments.read(url, cap=self.settings.max_input_bytes)

    async def comparison(self, job: Job) -> GeneratedImage:
        return await self.pictures.comparison(
            job.id,
            job.source_path,
            job.result_path,
            limit_bytes=job.upload_limit_bytes,
            max_pixels=self.settings.max_input_pixels,
        )

    async def depth_map(self, job: Job) -> bytes:
        """The depth map kept for ``job``'s result. Raises :class:`InvalidInput` when there is none."""
        if not job.result_path:
            raise InvalidInput(NO_LONGER_STORED)
        return await self.pictures.read(self.pictures.depth_map_path(job.id))

    async def history(self, user_id: int, limit: int = 10) -> list[Job]:
        return await self.ledger.for_user(user_id, limit)

    async def forget(self, user_id: int) -> int:
        """Delete a member's finished jobs, their stored pictures and their history."""
        jobs = await self.ledger.forget_user(user_id)
        for job in jobs:
            await self.pictures.remove_of(job)
        log.info("member data deleted", extra={"user_id": user_id, "jobs": len(jobs)})
        return len(jobs)

    # --- server settings ---

    @property
    def default_cooldown_s(self) -> float:
        return self.settings.user_cooldown_s

    @property
    def owner_limits(self) -> OwnerLimits:
        s = self.settings
        return OwnerLimits(s.guild_daily_quota, s.member_daily_quota, s.bot_daily_quota)

    def settings_for(self, guild_id: int | None) -> GuildSettings:
        return self.gate.rules(guild_id)

    async def save_settings(self, guild_id: int, new: GuildSettings, *, by: int) -> GuildSettings:
        """Store and apply at once."""
        return await self.gate.save_rules(guild_id, new, by=by)
