"""The job logic of /depth2img: validation, admission, the deadline, the poll loop, downloads.

Discord-free and HTTP-free: it talks to the API through the :class:`Depth2ImgAPI` protocol and runs
Pillow work in threads. The cog hands it plain values and a ``read`` callable for the attachment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from . import images
from .config import Depth2ImgSettings
from .errors import (
    AlreadyRunning,
    InvalidInput,
    JobFailed,
    JobTimedOut,
    MalformedResponseError,
    OutputUnavailable,
    QueueFull,
)
from .models import APIResponse, GeneratedImage, GenerationParams, GenerationResult, Status

log = logging.getLogger(__name__)

PROMPT_MAX = 1000
STEPS_RANGE = (1, 50)
GUIDANCE_RANGE = (1.0, 20.0)
SEED_MAX = 2**32 - 1
SAMPLES_RANGE = (1, 4)


class Depth2ImgAPI(Protocol):
    async def submit(self, params: GenerationParams, init_image_url: str) -> APIResponse: ...

    async def fetch(self, job_id: str, fetch_url: str | None = None) -> APIResponse: ...

    async def download(self, url: str) -> bytes: ...


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
    )


# --- admission ------------------------------------------------------------------------------------


class Ticket:
    """One admitted request. Release it with ``with``/``close()`` whatever happens."""

    def __init__(self, admission: Admission, user_id: int) -> None:
        self._admission = admission
        self.user_id = user_id
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Admission:
    """Bounds the work: per member in flight, total generations at the API, and the waiting queue."""

    def __init__(self, *, max_concurrent: int, max_queued: int, per_user: int) -> None:
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.per_user = per_user
        self._slots = asyncio.Semaphore(max_concurrent)
        self._per_user: dict[int, int] = {}
        self._admitted = 0
        self._waiting = 0

    @property
    def in_flight(self) -> int:
        return self._admitted

    def admit(self, user_id: int) -> Ticket:
        """Synchronous, so it can run before the acknowledgement. Raises if the request must wait
        elsewhere."""
        if self._per_user.get(user_id, 0) >= self.per_user:
            raise AlreadyRunning(self.per_user)
        if self._admitted >= self.max_concurrent + self.max_queued:
            raise QueueFull(retry_after_s=30.0)
        self._admitted += 1
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        return Ticket(self, user_id)

    def _release(self, ticket: Ticket) -> None:
        self._admitted -= 1
        left = self._per_user.get(ticket.user_id, 1) - 1
        if left > 0:
            self._per_user[ticket.user_id] = left
        else:
            self._per_user.pop(ticket.user_id, None)

    def waiting_position(self) -> int:
        """How many requests wait for a slot (this one included once it waits)."""
        return self._waiting

    @contextlib.asynccontextmanager
    async def slot(self, on_wait: Callable[[int], Awaitable[None]] | None = None) -> AsyncIterator[None]:
        if self._slots.locked() and on_wait is not None:
            await on_wait(self._waiting + 1)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


# --- the service --------------------------------------------------------------------------------


class Depth2ImgService:
    def __init__(
        self,
        api: Depth2ImgAPI,
        settings: Depth2ImgSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api = api
        self.settings = settings
        self.admission = Admission(
            max_concurrent=settings.max_concurrent_jobs,
            max_queued=settings.max_queued_jobs,
            per_user=settings.max_jobs_per_user,
        )
        self._clock = clock
        self._sleep = sleep

    # validation helpers the cog calls before the acknowledgement (pure, cheap)

    def check_declared_size(self, size: int) -> None:
        limit = self.settings.max_input_bytes
        if size > limit:
            raise InvalidInput(
                f"The attachment is {size / 1048576:.1f} MB; the limit is {limit / 1048576:.1f} MB. "
                "Attach a smaller picture."
            )
        if size <= 0:
            raise InvalidInput("The attachment is empty (0 bytes). Attach a PNG, JPEG or WebP picture.")

    async def check_source(self, read: Callable[[], Awaitable[bytes]]) -> images.ImageInfo:
        """Read the attachment and check it by its bytes, off the event loop."""
        data = await read()
        if len(data) > self.settings.max_input_bytes:
            raise InvalidInput("The attachment is larger than the bot accepts. Attach a smaller picture.")
        return await asyncio.to_thread(images.inspect_input, data, max_pixels=self.settings.max_input_pixels)

    async def generate(
        self,
        ticket: Ticket,
        params: GenerationParams,
        source_url: str,
        *,
        started_at: float,
        output_limit_bytes: int,
        on_progress: ProgressCallback | None = None,
        job_ref: str = "",
    ) -> GenerationResult:
        """Run one job to its images, or raise one of our errors. Always within the job deadline."""
        deadline_s = self.settings.job_timeout_s
        job_id: str | None = None
        try:
            async with asyncio.timeout(deadline_s):
                wait_started = self._clock()

                async def on_wait(position: int) -> None:
                    if on_progress is not None:
                        await on_progress(Progress("waiting_for_slot", position=position))

                async with self.admission.slot(on_wait):
                    local_wait = self._clock() - wait_started
                    submitted = self._clock()
                    log.info("job submit", extra={"job": job_ref, "user_id": ticket.user_id})
                    response = await self.api.submit(params, source_url)
                    job_id = response.job_id
                    polls = 0
                    was_queued = response.status is Status.PROCESSING
                    if was_queued:
                        response, polls = await self._wait_for_result(response, on_progress, job_ref)
                    finished = self._clock()
                api_time = finished - submitted
                gen_time = response.generation_time_s
                if gen_time is not None:
                    queue_s: float | None = max(0.0, api_time - gen_time)
                elif was_queued:
                    queue_s = api_time
                else:
                    queue_s = None
                imgs = await self._download_all(response.output_urls, output_limit_bytes, job_ref)
        except TimeoutError:
            raise JobTimedOut(deadline_s, job_id=job_id) from None
        total = self._clock() - started_at
        log.info(
            "job done",
            extra={
                "job": job_ref,
                "api_job_id": job_id,
                "polls": polls,
                "images": len(imgs),
                "total_s": round(total, 3),
            },
        )
        return GenerationResult(
            images=imgs,
            job_id=response.job_id or job_id,
            seed=response.seed if response.seed is not None else params.seed,
            generation_time_s=gen_time,
            api_queue_s=queue_s,
            local_wait_s=local_wait,
            total_s=total,
            polls=polls,
        )

    async def _wait_for_result(
        self, first: APIResponse, on_progress: ProgressCallback | None, job_ref: str
    ) -> tuple[APIResponse, int]:
        job_id = first.job_id
        if job_id is None:
            # Never poll without an id (contract §2.2, pitfall 4).
            raise MalformedResponseError("the API queued the job but gave no job id")
        if on_progress is not None:
            await on_progress(Progress("queued_at_api", eta_s=first.eta_s))
        s = self.settings
        first_wait = first.eta_s if first.eta_s is not None else s.poll_initial_s
        await self._sleep(min(max(first_wait, s.poll_initial_s), 30.0))
        delay = s.poll_initial_s
        polls = 0
        while True:
            response = await self.api.fetch(job_id, first.fetch_url)
            polls += 1
            if response.status is Status.SUCCESS:
                return response, polls
            if response.status is not Status.PROCESSING:  # the client raises for error/failed
                raise JobFailed(response.message or "the job failed", job_id=job_id)
            log.debug("job poll", extra={"job": job_ref, "polls": polls})
            await self._sleep(delay)
            delay = min(delay * 1.6, s.poll_max_s)

    async def _download_all(
        self, urls: tuple[str, ...], limit_bytes: int, job_ref: str
    ) -> tuple[GeneratedImage, ...]:
        urls = urls[:10]  # Discord allows 10 files a message; the API allows 4 samples anyway
        blobs = await asyncio.gather(*(self.api.download(u) for u in urls))
        prepared: list[GeneratedImage] = []
        for index, blob in enumerate(blobs):
            stem = f"depth2img-{job_ref or 'result'}-{index}"
            image = await asyncio.to_thread(images.prepare_output, blob, limit_bytes=limit_bytes, stem=stem)
            prepared.append(image)
        if not prepared:
            raise OutputUnavailable("no output images")
        return tuple(prepared)
