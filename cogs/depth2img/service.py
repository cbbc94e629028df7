"""The job logic of /depth2img: validation, admission, the deadline, the poll loop, downloads.

Discord-free and HTTP-free: it talks to the API through the :class:`Depth2ImgAPI` protocol and runs
Pillow work in threads. The cog hands it plain values and a ``read`` callable for the attachment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import secrets
import time
import unicodedata
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import images
from .config import Depth2ImgSettings
from .errors import (
    AlreadyRunning,
    CoolingDown,
    Depth2ImgError,
    InvalidInput,
    JobCancelled,
    JobFailed,
    JobInterrupted,
    JobTimedOut,
    MalformedResponseError,
    OutputUnavailable,
    QueueFull,
    QuotaExceeded,
    ShuttingDown,
)
from .ledger import Job, JobState, JobTakenOver, Ledger
from .metrics import Metrics
from .models import APIResponse, GeneratedImage, GenerationParams, GenerationResult, Status
from .policy import GuildSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

PROMPT_MAX = 1000
STEPS_RANGE = (1, 50)
GUIDANCE_RANGE = (1.0, 20.0)
SEED_MAX = 2**32 - 1
SAMPLES_RANGE = (1, 4)
DEFAULT_STRENGTH = 0.55  # what the API uses when none is given (contract §1.4)
STRENGTH_STEP = 0.15


class Depth2ImgAPI(Protocol):
    async def submit(self, params: GenerationParams, init_image_url: str) -> APIResponse: ...

    async def fetch(self, job_id: str, fetch_url: str | None = None) -> APIResponse: ...

    async def download_pieces(self, url: str) -> list[bytes]: ...

    async def upload_image(self, data: bytes, mime: str = "image/png") -> str: ...


@dataclass(frozen=True, slots=True)
class Progress:
    """A step worth showing to the member while they wait."""

    stage: str  # "waiting_for_slot" | "queued_at_api"
    position: int | None = None
    eta_s: float | None = None


ProgressCallback = Callable[[Progress], Awaitable[None]]


# --- validation -----------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Drop control and format characters (newlines and tabs become spaces) and squeeze spaces."""
    if text.isprintable():  # no control, format, private-use, unassigned or separator but " "
        return " ".join(text.split())
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\r\t":
            kept.append(" ")
        elif cat in ("Cc", "Cf", "Cs", "Co", "Cn"):
            continue
        else:
            kept.append(ch)
    return " ".join("".join(kept).split())


def build_params(
    *,
    prompt: str,
    negative_prompt: str | None = None,
    strength: float | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int | None = None,
    samples: int | None = None,
    safety_checker: bool = True,
) -> GenerationParams:
    """Validate the member's options. Pure and synchronous; raises :class:`InvalidInput`."""
    if len(prompt) > PROMPT_MAX * 2:
        raise InvalidInput(f"The prompt is {len(prompt)} characters long; the limit is {PROMPT_MAX}.")
    cleaned = clean_text(prompt)
    if not cleaned:
        raise InvalidInput("The prompt is empty. Describe what the picture should become.")
    if len(cleaned) > PROMPT_MAX:
        raise InvalidInput(f"The prompt is {len(cleaned)} characters long; the limit is {PROMPT_MAX}.")
    negative = clean_text(negative_prompt) if negative_prompt else None
    if negative is not None and len(negative) > PROMPT_MAX:
        raise InvalidInput(
            f"The negative prompt is {len(negative)} characters long; the limit is {PROMPT_MAX}."
        )
    if strength is not None and not 0.0 <= strength <= 1.0:
        raise InvalidInput("Strength must be between 0 and 1.")
    if steps is not None and not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
        raise InvalidInput(f"Steps must be between {STEPS_RANGE[0]} and {STEPS_RANGE[1]}.")
    if guidance is not None and not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]:
        raise InvalidInput("Guidance must be between 1 and 20.")
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise InvalidInput(f"Seed must be between 0 and {SEED_MAX}.")
    if samples is not None and not SAMPLES_RANGE[0] <= samples <= SAMPLES_RANGE[1]:
        raise InvalidInput("Samples must be between 1 and 4.")
    return GenerationParams(
        prompt=cleaned,
        negative_prompt=negative or None,
        strength=strength,
        steps=steps,
        guidance=guidance,
        seed=seed,
        samples=samples or 1,
        safety_checker=safety_checker,
    )


# --- admission ------------------------------------------------------------------------------------


class Ticket:
    """One admitted request. Release it with ``with``/``close()`` whatever happens."""

    def __init__(self, admission: Admission, user_id: int) -> None:
        self._admission = admission
        self.user_id = user_id
        self.closed = False
        self.member_released = False

    def release_member(self) -> None:
        """The member has been told the outcome: they may ask again at once, while the job's last
        bookkeeping (the ledger's final state) still counts as work in flight (shutdown waits for it)."""
        if not self.member_released:
            self.member_released = True
            self._admission._release_member(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.release_member()
            self._admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _day_start(now: float) -> float:
    return now - (now % 86400)


class AnswerFirst:
    """Answering a new request comes before work that can wait.

    A burst of requests arrives within milliseconds, and each must be answered (acknowledged) at once;
    the picture work of those already answered (downloading, checking and storing megabytes) can wait
    that long. So requests being answered are counted (:meth:`answering`), and :meth:`wait_turn` lets
    work that can wait through only once none is being answered and none has arrived for ``quiet_s``
    (the burst's later requests are often still on their way), or after ``max_hold_s`` whatever
    happens, so that a steady stream of requests cannot starve the work."""

    def __init__(
        self,
        *,
        quiet_s: float = 0.003,
        max_hold_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_s = quiet_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._answering = 0
        self._last_arrival = -float("inf")
        self._open = asyncio.Event()
        self._open.set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> int:
        return self._answering

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around everything from a request's arrival to its answer."""
        self._answering += 1
        self._last_arrival = self._clock()
        self._open.clear()
        try:
            yield
        finally:
            self._answering -= 1
            if self._answering == 0 and self._timer is None:
                self._check()

    def _check(self) -> None:
        self._timer = None
        if self._answering:
            return  # the last answer calls again
        left = self._last_arrival + self.quiet_s - self._clock()
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(left, self._check)
            return
        self._open.set()

    async def wait_turn(self) -> None:
        if self._open.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_hold_s):
                await self._open.wait()


class Admission:
    """Fair admission, decided synchronously before the acknowledgement: per member (jobs in flight
    and a cooldown), per server (a daily quota), and overall (generations at the API at once, and a
    bounded waiting queue)."""

    def __init__(
        self,
        *,
        max_concurrent: int,
        max_queued: int,
        per_user: int,
        cooldown_s: float = 0.0,
        guild_daily_quota: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.per_user = per_user
        self.cooldown_s = cooldown_s
        self.guild_daily_quota = guild_daily_quota
        self.draining = False
        self._clock = clock
        self._wall = wall_clock
        self._slots = _Slots(max_concurrent)
        self._per_user: dict[int, int] = {}
        self._last_request: dict[int, float] = {}
        self._guild_day = _day_start(wall_clock())
        self._guild_counts: dict[int, int] = {}
        self._member_counts: dict[tuple[int, int], int] = {}
        self._admitted = 0
        self._waiting = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def in_flight(self) -> int:
        return self._admitted

    def seed_counts(self, guilds: dict[int, int], members: dict[tuple[int, int], int]) -> None:
        """Today's counts per server and per member, from the ledger, so a restart resets no quota."""
        self._guild_counts = dict(guilds)
        self._member_counts = dict(members)

    def admit(
        self,
        user_id: int,
        guild_id: int | None = None,
        *,
        cooldown_s: float | None = None,
        member_daily_quota: int = 0,
    ) -> Ticket:
        """Raises a :class:`RequestRejected` when the request must not run now. ``cooldown_s`` and
        ``member_daily_quota`` are the server's own rules, when it set them."""
        if self.draining:
            raise ShuttingDown()
        if self._per_user.get(user_id, 0) >= self.per_user:
            raise AlreadyRunning(self.per_user)
        now = self._clock()
        last = self._last_request.get(user_id)
        cooldown = self.cooldown_s if cooldown_s is None else cooldown_s
        if cooldown > 0 and last is not None and now - last < cooldown:
            raise CoolingDown(cooldown - (now - last))
        if self._admitted >= self.max_concurrent + self.max_queued:
            raise QueueFull(retry_after_s=30.0)
        day = _day_start(self._wall())
        if day != self._guild_day:
            self._guild_day, self._guild_counts, self._member_counts = day, {}, {}
        guild_used = self._guild_counts.get(guild_id, 0) if guild_id is not None else 0
        if guild_id is not None and 0 < self.guild_daily_quota <= guild_used:
            raise QuotaExceeded(self.guild_daily_quota, resets_at=day + 86400)
        member_key = (guild_id or 0, user_id)
        if member_daily_quota > 0 and self._member_counts.get(member_key, 0) >= member_daily_quota:
            raise QuotaExceeded(member_daily_quota, resets_at=day + 86400, per_member=True)
        if guild_id is not None:
            self._guild_counts[guild_id] = self._guild_counts.get(guild_id, 0) + 1
        self._member_counts[member_key] = self._member_counts.get(member_key, 0) + 1
        self._last_request[user_id] = now
        if len(self._last_request) > 10_000:  # forget old cooldowns
            cutoff = now - max(self.cooldown_s, 1.0)
            self._last_request = {u: t for u, t in self._last_request.items() if t >= cutoff}
        return self._ticket(user_id)

    def admit_resumed(self, user_id: int) -> Ticket:
        """A job resumed after a restart: it was admitted once already; count it, refuse nothing."""
        return self._ticket(user_id)

    def _ticket(self, user_id: int) -> Ticket:
        self._admitted += 1
        self.idle.clear()
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        return Ticket(self, user_id)

    def _release(self, ticket: Ticket) -> None:
        self._admitted -= 1
        if self._admitted == 0:
            self.idle.set()

    def _release_member(self, ticket: Ticket) -> None:
        left = self._per_user.get(ticket.user_id, 1) - 1
        if left > 0:
            self._per_user[ticket.user_id] = left
        else:
            self._per_user.pop(ticket.user_id, None)

    def position(self, ticket: Ticket) -> int:
        """1 for the next request to get a slot; 0 when not waiting."""
        return self._slots.position(ticket)

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    @contextlib.asynccontextmanager
    async def slot(
        self, ticket: Ticket, on_wait: Callable[[int], Awaitable[None]] | None = None
    ) -> AsyncIterator[None]:
        """One of the ``max_concurrent`` generation slots, handed out first come, first served."""
        await self._slots.acquire(ticket, on_wait)
        try:
            yield
        finally:
            self._slots.release()


class _Slots:
    """A FIFO semaphore that can tell a waiter its place in the queue."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[tuple[Ticket, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def position(self, ticket: Ticket) -> int:
        for index, (waiter, _) in enumerate(self._waiters):
            if waiter is ticket:
                return index + 1
        return 0

    async def acquire(self, ticket: Ticket, on_wait: Callable[[int], Awaitable[None]] | None) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (ticket, future)
        self._waiters.append(entry)
        if on_wait is not None:
            await on_wait(len(self._waiters))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    def release(self) -> None:
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free += 1


# --- the service --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request came from and how to answer it: plain ids, no Discord objects."""

    user_id: int
    channel_id: int
    guild_id: int | None
    application_id: int
    interaction_token: str = field(repr=False)
    interaction_created_at: float
    message_id: int | None
    upload_limit_bytes: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: images to deliver, or an error to explain. Nothing is marked finished in
    the ledger until the member has been told (:meth:`Depth2ImgService.finish`)."""

    job: Job
    result: GenerationResult | None = None
    error: Depth2ImgError | None = None


class Depth2ImgService:
    def __init__(
        self,
        api: Depth2ImgAPI,
        settings: Depth2ImgSettings,
        ledger: Ledger,
        *,
        data_dir: Path,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self.api = api
        self.settings = settings
        self.ledger = ledger
        self.sources_dir = data_dir / "sources"
        self.results_dir = data_dir / "results"
        self.admission = Admission(
            max_concurrent=settings.max_concurrent_jobs,
            max_queued=settings.max_queued_jobs,
            per_user=settings.max_jobs_per_user,
            cooldown_s=settings.user_cooldown_s,
            guild_daily_quota=settings.guild_daily_quota,
            clock=clock,
        )
        self.metrics = metrics or Metrics()
        self.metrics.watch(lambda: self.admission.in_flight, lambda: self.admission.waiting)
        self._clock = clock
        self._sleep = sleep
        self._cancels: dict[str, asyncio.Event] = {}
        self.guild_settings: dict[int, GuildSettings] = {}
        # Pictures downloaded and checked at once: two per image worker. More only added contention
        # (`make bench`, 32-burst, 6 runs each: final p50 1.33 s with 2 or 4, 1.43 s with 8, 1.49 s
        # with 16), and memory stays bounded by this number times MAX_INPUT_BYTES.
        self._intake = asyncio.Semaphore(max(2, 2 * settings.image_workers))
        # ... and none of that picture work runs while new requests are being answered.
        self.answer_first = AnswerFirst()
        self.typical_job_s = 10.0  # moving average of the API's time, for waiting-time estimates
        # Pillow work runs in worker processes: it then competes with the event loop for neither
        # the GIL nor, beyond ``image_workers``, the CPU. 0 workers: threads instead.
        self._pool: ProcessPoolExecutor | None = None
        if settings.image_workers > 0:
            self._pool = ProcessPoolExecutor(
                max_workers=settings.image_workers,
                mp_context=multiprocessing.get_context("forkserver"),
            )
        # Checking and storing pictures (zlib's CRCs and file writes, which leave the GIL free) runs
        # in threads of its own, one fewer than the cores by default: the event loop keeps a core.
        # With asyncio's default pool (6 threads on 2 cores), a 200-burst's picture work ran beside
        # the loop's thread and left it waiting for a CPU: stalls >= 50 ms in 7 of 15 runs against
        # 0 of 15 with 2 threads and 0 of 10 (8-22 ms) with 1 (`make bench`). The default pool stays
        # for what else uses it (aiohttp's DNS lookups).
        self._threads = ThreadPoolExecutor(settings.picture_threads, thread_name_prefix="d2i-picture")

    async def _cpu(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run CPU-bound image work off the event loop: in an image worker process."""
        if self._pool is None:
            return await self._thread(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs)
        )

    async def _thread(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run file and checksum work (which mostly leaves the GIL free) in a picture thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, functools.partial(fn, *args, **kwargs)
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def start(self) -> list[Job]:
        """Load what the ledger knows: today's quota counts, and the jobs to resume. Starts the image
        workers now, so the first member does not wait for them."""
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._pool, images.warm_up)
                    for _ in range(self.settings.image_workers)
                )
            )
        self.sources_dir.mkdir(parents=True, exist_ok=True)
        today = _day_start(time.time())
        self.admission.seed_counts(
            await self.ledger.guild_counts_since(today), await self.ledger.member_counts_since(today)
        )
        self.guild_settings = {
            guild: GuildSettings.from_json(data)
            for guild, data in (await self.ledger.all_guild_settings()).items()
        }
        return await self.ledger.claim_orphans(at_start=True)

    async def keep_leases(self, on_claimed: Callable[[Job], None]) -> None:
        """Forever: renew the leases of this process's jobs, and take over the jobs of processes
        that stopped (their leases ran out); ``on_claimed`` is given each job taken over."""
        interval = max(0.5, self.ledger.lease_s / 3)
        while True:
            await self._sleep(interval)
            try:
                await self.ledger.heartbeat()
                for job in await self.ledger.claim_orphans():
                    log.info("job taken over from a stopped process", extra={"job": job.id})
                    on_claimed(job)
            except Exception as exc:  # a database hiccup must not end the loop; try again next time
                log.warning("lease upkeep failed", extra={"error": type(exc).__name__})

    async def claim_delivery(self, job: Job) -> bool:
        """Just before telling the member: whether this process may (it still owns the job)."""
        if await self.ledger.claim_delivery(job):
            return True
        log.info("job owned by another process now; not delivering", extra={"job": job.id})
        return False

    # --- before the acknowledgement (pure, cheap) ---

    def check_declared_size(self, size: int) -> None:
        limit = self.settings.max_input_bytes
        if size > limit:
            raise InvalidInput(
                f"The attachment is {size / 1048576:.1f} MB; the limit is {limit / 1048576:.1f} MB. "
                "Attach a smaller picture."
            )
        if size <= 0:
            raise InvalidInput("The attachment is empty (0 bytes). Attach a PNG, JPEG or WebP picture.")

    # --- after the acknowledgement ---

    async def accept(
        self,
        job_id: str,
        params: GenerationParams,
        origin: Origin,
        *,
        read: Callable[[], Awaitable[bytes]],
        source_url: str | None,
        parent_id: str | None = None,
        kind: str = "command",
    ) -> Job:
        """Read and check the attachment by its bytes (off the loop), keep the normalised picture,
        and record the job as ``received``. Raises :class:`InvalidInput`; no API call is made."""
        # At most a few pictures are downloaded and checked at once: memory stays bounded by that
        # number times the input cap, and a burst's acknowledgements don't queue behind downloads.
        async with self._intake:
            await self.answer_first.wait_turn()
            data = await read()
            if len(data) > self.settings.max_input_bytes:
                raise InvalidInput("The attachment is larger than the bot accepts. Attach a smaller picture.")
            limits = {"max_pixels": self.settings.max_input_pixels, "max_side": self.settings.source_max_side}
            # A plain PNG is checked (chunk CRCs, no decoding) and kept in one thread call; anything
            # else goes to an image worker, as a file (kept for resuming and the buttons anyway).
            kept = await self._thread(
                images.save_plain_source, data, str(self.sources_dir / f"{job_id}.png"), **limits
            )
            if kept is None:
                raw = self.sources_dir / f"{job_id}.upload"
                await self._thread(images.write_atomically, raw, data)
                kept = await self._cpu(images.prepare_source_file, str(raw), **limits)
            del data
            path, source = kept
        job = Job(
            id=job_id,
            state=JobState.RECEIVED,
            user_id=origin.user_id,
            channel_id=origin.channel_id,
            guild_id=origin.guild_id,
            application_id=origin.application_id,
            interaction_token=origin.interaction_token,
            interaction_created_at=origin.interaction_created_at,
            message_id=origin.message_id,
            upload_limit_bytes=origin.upload_limit_bytes,
            params=params,
            source_path=path,
            source_url=None if source.changed else source_url,
            source_changed=source.changed,
            parent_id=parent_id,
            kind=kind,
        )
        job = await self.ledger.create(job)
        log.info(
            "job received", extra={"job": job.id, "user_id": job.user_id, "source_changed": source.changed}
        )
        return job

    async def run(
        self,
        job: Job,
        ticket: Ticket,
        *,
        started_at: float,
        on_progress: ProgressCallback | None = None,
    ) -> Outcome:
        """Drive ``job`` from whatever state it is in to its images, within the job deadline.

        Never submits a job twice: ``received`` is submitted once, ``submitting`` (interrupted while
        sending) fails, ``submitted``/``processing`` are polled. A member's :meth:`cancel` ends it
        with :class:`JobCancelled`. Cancellation of this coroutine (shutdown) leaves the job as it is
        in the ledger, to be resumed at the next start."""
        cancel = self._cancels.setdefault(job.id, asyncio.Event())
        work = asyncio.create_task(self._run(job, ticket, started_at=started_at, on_progress=on_progress))
        stop = asyncio.create_task(cancel.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                await asyncio.wait({work})
            self._cancels.pop(job.id, None)
        if not work.cancelled():
            return work.result()
        latest = await self.ledger.get(job.id) or job
        log.info("job cancelled", extra={"job": job.id, "state": str(latest.state)})
        return Outcome(latest, error=JobCancelled(after_submit=latest.state is not JobState.RECEIVED))

    def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop. Returns whether it was running."""
        event = self._cancels.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    def is_running(self, job_id: str) -> bool:
        return job_id in self._cancels

    async def _run(
        self,
        job: Job,
        ticket: Ticket,
        *,
        started_at: float,
        on_progress: ProgressCallback | None = None,
    ) -> Outcome:
        deadline_s = self.settings.job_timeout_s
        local_wait = 0.0
        api_time: float | None = None
        try:
            async with asyncio.timeout(deadline_s):
                wait_started = self._clock()

                async def on_wait(position: int) -> None:
                    if on_progress is not None:
                        await on_progress(Progress("waiting_for_slot", position=position))

                async with self.admission.slot(ticket, on_wait):
                    local_wait = self._clock() - wait_started
                    api_started = self._clock()
                    if job.state is JobState.SUBMITTING:
                        raise JobInterrupted("interrupted while submitting", job_id=job.api_job_id)
                    if job.state is JobState.RECEIVED:
                        job, first = await self._submit(job)
                    else:
                        first = None
                    if not job.output_urls:
                        job = await self._poll(job, first, on_progress)
                    api_time = self._clock() - api_started
                imgs = await self._download_all(job)
                # where the image worker kept the first image; recorded with the final state
                job = replace(job, result_path=self._result_path(job, imgs[0]))
        except TimeoutError:
            return Outcome(job, error=JobTimedOut(deadline_s, job_id=job.api_job_id))
        except Depth2ImgError as exc:
            log.warning(
                "job error", extra={"job": job.id, "state": str(job.state), "error": type(exc).__name__}
            )
            return Outcome(job, error=exc)
        gen = job.generation_time_s
        was_queued = job.state is JobState.PROCESSING
        queue_s: float | None = None
        if api_time is not None:
            self.typical_job_s = 0.8 * self.typical_job_s + 0.2 * api_time
            self.metrics.api_seconds.observe(api_time)
        if api_time is not None and gen is not None:
            queue_s = max(0.0, api_time - gen)
        elif api_time is not None and was_queued:
            queue_s = api_time
        result = GenerationResult(
            images=imgs,
            job_id=job.api_job_id,
            seed=job.api_seed if job.api_seed is not None else job.params.seed,
            generation_time_s=gen,
            api_queue_s=queue_s,
            local_wait_s=local_wait,
            total_s=self._clock() - started_at,
        )
        return Outcome(job, result=result)

    async def finish(self, outcome: Outcome) -> Job:
        """Record the final state, once the member has been told. The source picture and the first
        result stay on disk while the job exists (buttons and /depth2img-show use them)."""
        try:
            new = await self._finish(outcome)
        except JobTakenOver:
            log.warning("job taken over while finishing", extra={"job": outcome.job.id})
            return outcome.job
        self.metrics.job_finished(str(new.state), outcome.error)
        return new

    async def _finish(self, outcome: Outcome) -> Job:
        job = outcome.job
        if outcome.error is None:
            assert outcome.result is not None
            new = await self.ledger.update(job, state=JobState.DELIVERED, result_path=job.result_path)
            log.info("job delivered", extra={"job": job.id, "images": len(outcome.result.images)})
            return new
        exc = outcome.error
        state = JobState.CANCELLED if isinstance(exc, JobCancelled) else JobState.FAILED
        new = await self.ledger.update(
            job, state=state, error_kind=type(exc).__name__, detail=type(exc).__name__
        )
        log.info(
            "job finished without images",
            extra={"job": job.id, "state": str(state), "error": type(exc).__name__},
        )
        return new

    # --- server settings ---

    def settings_for(self, guild_id: int | None) -> GuildSettings:
        return self.guild_settings.get(guild_id, GuildSettings()) if guild_id is not None else GuildSettings()

    async def save_settings(self, guild_id: int, new: GuildSettings, *, by: int) -> GuildSettings:
        """Store and apply at once."""
        await self.ledger.save_guild_settings(guild_id, new.to_json(), by)
        self.guild_settings[guild_id] = new
        log.info("server settings changed", extra={"guild_id": guild_id, "by": by})
        return new

    # --- iterating on a result ---

    def derive(
        self, parent: Job, action: str, *, prompt: str | None = None, negative_prompt: str | None = None
    ) -> GenerationParams:
        """The options of a job made from ``parent`` by a button (or the edit modal)."""
        p = parent.params
        if action == "seed" or action == "reuse":
            return replace(p, seed=secrets.randbelow(SEED_MAX + 1))
        if action in ("closer", "more"):
            current = p.strength if p.strength is not None else DEFAULT_STRENGTH
            step = -STRENGTH_STEP if action == "closer" else STRENGTH_STEP
            return replace(p, strength=round(min(1.0, max(0.05, current + step)), 2))
        if action == "edit":
            return build_params(
                prompt=prompt if prompt is not None else p.prompt,
                negative_prompt=negative_prompt,
                strength=p.strength,
                steps=p.steps,
                guidance=p.guidance,
                seed=p.seed,
                samples=p.samples,
                safety_checker=p.safety_checker,
            )
        raise ValueError(action)

    def source_for(self, parent: Job, action: str) -> str:
        """The file a derived job starts from: the parent's result for "Use as source", else its source."""
        path = parent.result_path if action == "reuse" else parent.source_path
        if not path:
            raise InvalidInput("The picture for that job is no longer stored. Start again with /depth2img.")
        return path

    async def read_stored(self, path: str) -> bytes:
        try:
            return await self._thread(Path(path).read_bytes)
        except OSError:
            raise InvalidInput(
                "The picture for that job is no longer stored. Start again with /depth2img."
            ) from None

    async def history(self, user_id: int, limit: int = 10) -> list[Job]:
        return await self.ledger.for_user(user_id, limit)

    async def prune_pictures(self, keep_days: float) -> int:
        """Remove the stored pictures of jobs finished more than ``keep_days`` ago (their buttons then
        say the pictures are no longer stored). Returns how many jobs were pruned."""
        pruned = 0
        while True:
            jobs = await self.ledger.release_pictures(time.time() - keep_days * 86400)
            for job in jobs:
                await self._thread(_remove_file, job.source_path)
                await self._thread(_remove_file, job.result_path)
            pruned += len(jobs)
            if len(jobs) < 500:
                break
        if pruned:
            log.info("old pictures removed", extra={"jobs": pruned, "keep_days": keep_days})
        return pruned

    async def prune_pictures_now_and_then(self, keep_days: float, every_s: float = 3600.0) -> None:
        """Forever: :meth:`prune_pictures` at start and then every ``every_s`` seconds."""
        while True:
            try:
                await self.prune_pictures(keep_days)
            except Exception as exc:  # a disk or database hiccup: try again next time
                log.warning("pruning old pictures failed", extra={"error": type(exc).__name__})
            await self._sleep(every_s)

    async def forget(self, user_id: int) -> int:
        """Delete a member's finished jobs, their stored pictures and their history."""
        jobs = await self.ledger.forget_user(user_id)
        for job in jobs:
            await self._thread(_remove_file, job.source_path)
            await self._thread(_remove_file, job.result_path)
        log.info("member data deleted", extra={"user_id": user_id, "jobs": len(jobs)})
        return len(jobs)

    async def _submit(self, job: Job) -> tuple[Job, APIResponse]:
        source_url = job.source_url
        if source_url is None or job.resumes > 0:
            # the normalised picture differs from the attachment, or the attachment link may be stale
            if job.source_path is None:
                raise InvalidInput("The stored picture for this job is missing.")
            data = await self._thread(Path(job.source_path).read_bytes)
            mime = "image/png" if job.source_path.endswith(".png") else "image/jpeg"
            source_url = await self.api.upload_image(data, mime)
            job = await self.ledger.update(job, source_url=source_url)
        job = await self.ledger.update(job, state=JobState.SUBMITTING, submitted_at=time.time())
        log.info("job submit", extra={"job": job.id})
        response = await self.api.submit(job.params, source_url)
        if response.status is Status.SUCCESS:
            job = await self.ledger.update(
                job,
                state=JobState.SUBMITTED,
                api_job_id=response.job_id,
                output_urls=response.output_urls,
                generation_time_s=response.generation_time_s,
                api_seed=response.seed,
            )
        else:
            if response.job_id is None:
                # Never poll without an id (contract §2.2, pitfall 4).
                await self.ledger.update(job, state=JobState.SUBMITTED)
                raise MalformedResponseError("the API queued the job but gave no job id")
            job = await self.ledger.update(
                job, state=JobState.PROCESSING, api_job_id=response.job_id, fetch_url=response.fetch_url
            )
        log.info(
            "job submitted", extra={"job": job.id, "api_job_id": job.api_job_id, "state": str(job.state)}
        )
        return job, response

    async def _poll(self, job: Job, first: APIResponse | None, on_progress: ProgressCallback | None) -> Job:
        if job.api_job_id is None:
            raise MalformedResponseError("no job id to poll")
        s = self.settings
        eta = first.eta_s if first is not None else None
        if on_progress is not None:
            await on_progress(Progress("queued_at_api", eta_s=eta))
        if first is not None:
            first_wait = eta if eta is not None else s.poll_initial_s
            await self._sleep(min(max(first_wait, s.poll_initial_s), 30.0))
        delay = s.poll_initial_s
        polls = 0
        while True:
            response = await self.api.fetch(job.api_job_id, job.fetch_url)
            polls += 1
            if response.status is Status.SUCCESS:
                job = await self.ledger.update(
                    job,
                    output_urls=response.output_urls,
                    generation_time_s=response.generation_time_s,
                    api_seed=response.seed if response.seed is not None else job.api_seed,
                )
                log.info("job ready", extra={"job": job.id, "polls": polls})
                return job
            if response.status is not Status.PROCESSING:  # the client raises for error/failed
                raise JobFailed(response.message or "the job failed", job_id=job.api_job_id)
            await self._sleep(delay)
            delay = min(delay * 1.6, s.poll_max_s)

    def _result_path(self, job: Job, first: GeneratedImage) -> str:
        """Where the first image is kept (for "Use as source" and /depth2img-show): the image worker
        put it there (see :meth:`_download_all`)."""
        return str(self.results_dir / f"{job.id}.{first.filename.rsplit('.', 1)[-1]}")

    async def comparison(self, job: Job) -> GeneratedImage:
        """The source and the result side by side (made when a member asks for it)."""
        if not job.source_path or not job.result_path:
            raise InvalidInput("The pictures for that job are no longer stored.")
        source = await self.read_stored(job.source_path)
        result = await self.read_stored(job.result_path)
        try:
            return await self._cpu(
                images.before_after,
                source,
                result,
                limit_bytes=job.upload_limit_bytes,
                stem=f"before-after-{job.id}",
            )
        except (OSError, ValueError):
            raise OutputUnavailable("the comparison could not be made") from None

    async def _download_all(self, job: Job) -> tuple[GeneratedImage, ...]:
        """Download every output at once; check and fit each in an image worker."""
        urls = job.output_urls[:10]  # Discord allows 10 files a message; the API allows 4 samples anyway
        await self.answer_first.wait_turn()
        downloads = await asyncio.gather(*(self.api.download_pieces(u) for u in urls))
        prepared = []
        for index, pieces in enumerate(downloads):
            fit: dict[str, Any] = {
                "limit_bytes": job.upload_limit_bytes,
                "stem": f"depth2img-{job.id}-{index}",
                "keep_as": str(self.results_dir / job.id) if index == 0 else None,  # the first is kept
            }
            # joined, and if a whole PNG that fits, checked and kept, in one thread call; else to a worker
            blob, image = await self._thread(images.save_fitting_png, pieces, **fit)
            del pieces
            if image is None:
                download = self.results_dir / f"{job.id}-{index}.download"
                await self._thread(images.write_atomically, download, blob)
                image = await self._cpu(images.finish_output_file, str(download), **fit)
            prepared.append(image if image.data else replace(image, data=blob))
        if not prepared:
            raise OutputUnavailable("no output images")
        return tuple(prepared)


def _remove_file(path: str | None) -> None:
    if path:
        with contextlib.suppress(OSError):
            Path(path).unlink()
