"""One job's run, from whatever state the ledger has it in to its images: within the job's deadline,
wait for a generation slot, hand the source to the image service, submit, poll, download and check the
outputs. Every step is recorded in the ledger before the next one. Progress goes out as data
(:class:`ProgressEvent`) through a plain callable; nothing here reads anything back from the UI.

Never submits a job twice: ``received`` is submitted once, ``submitting`` (interrupted while sending)
fails, ``submitted``/``processing`` are polled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from cogs.depth2img.backends.base import DEPTH_MAP, Answer, Backend, is_depth_map
from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.errors import (
    Depth2ImgError,
    InternalError,
    InvalidInput,
    JobInterrupted,
    JobLost,
    JobTimedOut,
    MalformedResponseError,
    OutputUnavailable,
    RateLimitError,
    is_transient,
    said,
)
from cogs.depth2img.models import GeneratedImage, GenerationResult, ProgressEvent, Stage
from cogs.depth2img.store import Job, JobState, Ledger

from .admission import Admission, AnswerFirst
from .budget import ByteBudget, Hold
from .pictures import Pictures

log = logging.getLogger(__name__)

# Outputs downloaded from the image service at once, process-wide (as for the members' pictures: on
# loopback every ready download is read in one iteration of the event loop).
DOWNLOADS_AT_ONCE = 8

Emit = Callable[[ProgressEvent], None]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended: images to deliver, or an error to explain. Nothing is marked finished in
    the ledger until the member has been told."""

    job: Job
    result: GenerationResult | None = None
    error: Depth2ImgError | None = None
    api_s: float | None = None  # submission to images ready at the service, when this run saw both
    later: bool = False  # not ended: left in the ledger for a later run (the service has the job)
    hold: Hold | None = None  # the output budget the result's images hold until they are delivered

    def release(self) -> None:
        if self.hold is not None:
            self.hold.release()


class JobRunner:
    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        pictures: Pictures,
        admission: Admission,
        answer_first: AnswerFirst,
        settings: Depth2ImgSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        budget: ByteBudget | None = None,
    ) -> None:
        self.backend = backend
        self.ledger = ledger
        self.pictures = pictures
        self.admission = admission
        self.answer_first = answer_first
        self.settings = settings
        self._clock = clock
        self._sleep = sleep
        self.typical_job_s = 10.0  # moving average of the service's time, for waiting-time estimates
        self._downloading = asyncio.Semaphore(DOWNLOADS_AT_ONCE)
        self.budget = budget or ByteBudget(settings.output_memory_bytes)

    async def run(self, job: Job, *, started_at: float, emit: Emit) -> Outcome:
        """Never raises but for cancellation: whatever goes wrong is the returned outcome's error."""
        timeout_s = self.settings.job_timeout_s
        # the job's own deadline, from its creation: a resumed job does not start a new one
        remaining = job.created_at + timeout_s - time.time() if job.created_at else timeout_s
        local_wait = 0.0
        api_s: float | None = None

        def on_position(position: int) -> None:
            per_slot = self.typical_job_s / max(1, self.admission.max_concurrent)
            eta = position * per_slot + self.typical_job_s
            emit(ProgressEvent(Stage.WAITING_FOR_SLOT, position=position, eta_s=eta))

        try:
            if remaining <= 0:  # (a job resumed past its deadline: not a step more)
                raise TimeoutError
            async with asyncio.timeout(remaining):
                for last_try in (False, True):
                    try:
                        job, images, hold, local_wait, api_s = await self._make(job, emit, on_position)
                        break
                    except JobLost:
                        if last_try or not self.backend.repeatable:
                            raise
                        job = await self._again(job, "the service no longer knows it")
                # where the first image was kept; recorded with the final state
                job = replace(job, result_path=self.pictures.result_path(job.id, images[0]))
        except TimeoutError:
            job = await self._latest(job)  # (it may have gone out while the deadline struck)
            if job.output_urls:  # made, but its pictures could not be had in time
                return Outcome(job, error=OutputUnavailable("not downloaded before the job's deadline"))
            at_api = job.state not in (JobState.ACKNOWLEDGED, JobState.RECEIVED)
            return Outcome(job, error=JobTimedOut(timeout_s, job_id=job.api_job_id, at_api=at_api))
        except Depth2ImgError as exc:
            log.warning(
                "job error",
                extra={
                    "job": job.id,
                    "state": str(job.state),
                    "error": type(exc).__name__,
                    "said": said(exc),
                },
            )
            return Outcome(job, error=exc)
        except Exception as exc:  # not foreseen (a bug, a full disk, the ledger out of reach): the job
            # still ends (its text may hold anything: only its kind is logged). One the service has is
            # left to be resumed by polling (see JobRunner.resumable); any other fails, and is told.
            latest = await self._latest(job)
            later = self.resumable(latest)
            log.error(
                "job failed unexpectedly",
                extra={
                    "job": job.id,
                    "state": str(latest.state),
                    "error": type(exc).__name__,
                    "then": "resumed later" if later else "failed",
                },
            )
            return Outcome(latest, error=InternalError(type(exc).__name__), later=later)
        gen = job.generation_time_s
        queue_s: float | None = None
        if api_s is not None:
            self.typical_job_s = 0.8 * self.typical_job_s + 0.2 * api_s
            if gen is not None:
                queue_s = max(0.0, api_s - gen)
            elif job.state is JobState.PROCESSING:
                queue_s = api_s
        depth_map = await self._depth_map(job)
        result = GenerationResult(
            depth_map=depth_map,
            images=images,
            job_id=job.api_job_id,
            seed=job.api_seed if job.api_seed is not None else job.params.seed,
            generation_time_s=gen,
            api_queue_s=queue_s,
            local_wait_s=local_wait,
            total_s=self._clock() - started_at,
        )
        return Outcome(job, result=result, api_s=api_s, hold=hold)

    # A job at the image service whose run failed for the bot's own reasons is run again (by polling) at
    # most this many times, and never past its deadline.
    MAX_RESUMES = 3

    def resumable(self, job: Job) -> bool:
        return self.deliverable_later(job) and job.resumes < self.MAX_RESUMES

    def deliverable_later(self, job: Job, within_s: float = 0.0) -> bool:
        """Whether a job whose result Discord took no request for may be run again (by polling) and
        delivered later: the service has it, and its deadline is more than ``within_s`` away. However
        often: Discord's outages are waited out until then, not bound by :data:`MAX_RESUMES`."""
        at_api = job.state in (JobState.SUBMITTED, JobState.PROCESSING) and job.api_job_id is not None
        return at_api and time.time() + within_s < job.created_at + self.settings.job_timeout_s

    async def _latest(self, job: Job) -> Job:
        """The job as the ledger has it now (the run's own copy may be a step behind); ``job`` if the
        ledger cannot say."""
        try:
            return await self.ledger.get(job.id) or job
        except Exception:  # (the ledger out of reach: what the run knew will do)
            return job

    async def _make(
        self, job: Job, emit: Emit, on_position: Callable[[int], None]
    ) -> tuple[Job, tuple[GeneratedImage, ...], Hold, float, float]:
        """One slot's work: submit (or go on with) the job, poll it to its outputs, download them."""
        wait_started = self._clock()
        async with self.admission.slot(on_position):
            local_wait = self._clock() - wait_started
            api_started = self._clock()
            if job.state is JobState.SUBMITTING:
                if not self.backend.repeatable:  # it may exist at the service, and cost: never twice
                    raise JobInterrupted("interrupted while submitting", job_id=job.api_job_id)
                job = await self._again(job, "interrupted while submitting")
            first: Answer | None = None
            if job.state is JobState.RECEIVED:
                job, first = await self._submit(job)
            if not job.output_urls:
                job = await self._poll(job, first, emit)
            api_s = self._clock() - api_started
        images, hold = await self._download(job, emit)
        return job, images, hold, local_wait, api_s

    async def _again(self, job: Job, why: str) -> Job:
        """Back to ``received``, to be submitted again: only on a service where that costs nothing."""
        log.info("job run again (free on this image service)", extra={"job": job.id, "why": why})
        return await self.ledger.update(
            job,
            state=JobState.RECEIVED,
            api_job_id=None,
            fetch_url=None,
            output_urls=(),
            detail=f"run again: {why}",
        )

    async def _load_source(self, job: Job) -> tuple[bytes, str]:
        if job.source_path is None:
            raise InvalidInput("input.no_longer_stored")
        data = await self.pictures.read(job.source_path)
        return data, "image/png" if job.source_path.endswith(".png") else "image/jpeg"

    async def _submit(self, job: Job) -> tuple[Job, Answer]:
        # A resumed job's attachment link may be stale; a normalised picture was never at a link.
        fresh_url = job.source_url if job.resumes == 0 else None
        source = await self.backend.stage_source(fresh_url, lambda: self._load_source(job))
        if source != job.source_url:
            job = await self.ledger.update(job, source_url=source)
        job = await self.ledger.update(job, state=JobState.SUBMITTING, submitted_at=time.time())
        log.info("job submit", extra={"job": job.id})
        answer = await self.backend.submit(job.params, source)
        if answer.done:
            job = await self.ledger.update(
                job,
                state=JobState.SUBMITTED,
                api_job_id=answer.remote_id,
                output_urls=answer.output_urls,
                generation_time_s=answer.generation_time_s,
                api_seed=answer.seed,
            )
        elif answer.remote_id is None:
            # Never poll without an id (contract §2.2, pitfall 4).
            await self.ledger.update(job, state=JobState.SUBMITTED)
            raise MalformedResponseError("the image service queued the job but gave no job id")
        else:
            job = await self.ledger.update(
                job, state=JobState.PROCESSING, api_job_id=answer.remote_id, fetch_url=answer.poll_url
            )
        log.info(
            "job submitted", extra={"job": job.id, "api_job_id": job.api_job_id, "state": str(job.state)}
        )
        return job, answer

    async def _poll(self, job: Job, first: Answer | None, emit: Emit) -> Job:
        if job.api_job_id is None:
            raise MalformedResponseError("no job id to poll")
        s = self.settings
        eta = first.eta_s if first is not None else None
        emit(ProgressEvent(Stage.QUEUED_AT_API, eta_s=eta))
        if first is not None:
            first_wait = eta if eta is not None else s.poll_initial_s
            await self._sleep(min(max(first_wait, s.poll_initial_s), 30.0))
        delay = s.poll_initial_s
        polls = faults = 0
        while True:
            try:
                answer = await self.backend.poll(job.api_job_id, job.fetch_url)
            except Depth2ImgError as exc:
                if not is_transient(exc):
                    raise
                # The service has the (paid) job: keep asking, until the job's own deadline.
                faults += 1
                wait = self._fault_wait(exc, faults)
                log.info(
                    "poll failed; asking again",
                    extra={
                        "job": job.id,
                        "error": type(exc).__name__,
                        "faults": faults,
                        "wait_s": round(wait, 2),
                    },
                )
                emit(ProgressEvent(Stage.SERVICE_SLOW))
                await self._sleep(wait)
                continue
            polls += 1
            faults = 0
            if answer.done:
                job = await self.ledger.update(
                    job,
                    output_urls=answer.output_urls,
                    generation_time_s=answer.generation_time_s,
                    api_seed=answer.seed if answer.seed is not None else job.api_seed,
                )
                log.info("job ready", extra={"job": job.id, "polls": polls})
                return job
            if answer.progress is not None:
                emit(ProgressEvent(Stage.GENERATING, eta_s=answer.eta_s, done=answer.progress))
            else:
                emit(ProgressEvent(Stage.QUEUED_AT_API, eta_s=answer.eta_s))
            await self._sleep(delay)
            delay = min(delay * 1.6, s.poll_max_s)

    def _fault_wait(self, exc: Depth2ImgError, faults: int) -> float:
        """How long to wait before asking again after the ``faults``-th failure in a row: what a 429
        asks for (its ``retry_after`` or ``Retry-After``), else a growing backoff."""
        s = self.settings
        if isinstance(exc, RateLimitError):
            return max(exc.retry_after_s, s.poll_initial_s)
        growing: float = s.poll_initial_s * 2.0 ** min(faults - 1, 16)
        return min(growing, max(s.poll_max_s * 3, s.poll_initial_s))

    async def _download(self, job: Job, emit: Emit) -> tuple[tuple[GeneratedImage, ...], Hold]:
        """Download the outputs the member asked for (a service that sends more is not followed: ten
        URLs of 25 MB for one picture), all at once, within the process's output budget; check and fit
        each off the event loop. Returns the images and the budget they hold until delivered."""
        urls = [u for u in job.output_urls if not is_depth_map(u)][: max(1, job.params.samples)]
        # each output at its largest, and one more: the one being joined from its pieces
        hold = await self.budget.take((len(urls) + 1) * self.settings.max_output_bytes)
        try:
            await self.answer_first.wait_turn()
            downloads = await asyncio.gather(*(self._fetch(job, u, emit) for u in urls))
            sizes = [sum(map(len, pieces)) for pieces in downloads]
            hold.keep(sum(sizes) + max(sizes, default=0))
            images = await self.pictures.finish_outputs(
                job.id,
                downloads,  # (emptied as they are joined)
                limit_bytes=job.upload_limit_bytes,
                max_pixels=self.settings.max_input_pixels,  # outputs are held to the inputs' limit
            )
            hold.keep(sum(len(image.data) for image in images))
        except BaseException:
            hold.release()
            raise
        return images, hold

    async def _depth_map(self, job: Job) -> GeneratedImage | None:
        """The depth map the service sent with the result, if any (never worth failing the job for)."""
        url = next((u for u in job.output_urls if is_depth_map(u)), None)
        if url is None:
            return None
        hold = await self.budget.take(2 * self.settings.max_output_bytes)
        try:
            pieces = await self.backend.download(url.removesuffix(DEPTH_MAP))
            (picture,) = await self.pictures.finish_outputs(
                job.id,
                [pieces],
                limit_bytes=job.upload_limit_bytes,
                max_pixels=self.settings.max_input_pixels,
            )
        except Exception as exc:  # (an extra: whatever went wrong, the result goes on without it)
            log.info("no depth map", extra={"job": job.id, "error": type(exc).__name__})
            return None
        finally:
            hold.release()
        return replace(picture, filename=f"depth-map-{job.id}.{picture.filename.rsplit('.', 1)[-1]}")

    async def _fetch(self, job: Job, url: str, emit: Emit) -> list[bytes]:
        """One output, asked for again through the service's passing troubles until the job's deadline
        (the picture is paid for)."""
        faults = 0
        while True:
            try:
                async with self._downloading:
                    return await self.backend.download(url)
            except Depth2ImgError as exc:
                cause = exc.__cause__ if isinstance(exc, OutputUnavailable) else exc
                if not isinstance(cause, Depth2ImgError) or not is_transient(cause):
                    raise
                faults += 1
                log.info(
                    "download failed; trying again",
                    extra={"job": job.id, "error": type(cause).__name__, "faults": faults},
                )
                emit(ProgressEvent(Stage.SERVICE_SLOW))
                await self._sleep(self._fault_wait(cause, faults))
