"""Taking a request in, after its acknowledgement: read the member's picture (bounded in time, a few at
a time), check it by its bytes off the event loop, keep it normalised, and record the job as
``received``. Nothing here calls the image service.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.errors import DISK_FULL_ADVICE, InvalidInput, StorageFull, is_disk_full
from cogs.depth2img.models import GenerationParams, JobKind
from cogs.depth2img.store import Job, JobState, Ledger

from .admission import AnswerFirst
from .pictures import Pictures

log = logging.getLogger(__name__)

# Members' pictures downloaded from Discord at once. Separate from (and more than) the turns for
# checking them, so that a few stalled downloads (each bounded by INPUT_READ_TIMEOUT_S) hold up no one:
# memory stays within this many times MAX_INPUT_BYTES. Not many more: on loopback the event loop reads
# every ready download in the same iteration, and 32 at once stalled it for 100-170 ms (`make bench`).
READS_AT_ONCE = 8

Reader = Callable[[], Awaitable[bytes]]


class Attachments(Protocol):
    """Where members' pictures are read from Discord (``backends/attachments.py``)."""

    async def read(self, url: str, *, cap: int) -> bytes:
        """The picture at ``url``, never more than ``cap`` bytes read. Raises :class:`InvalidInput`
        (``input.file_too_big``, ``input.download_gone``, ``input.download_failed``)."""
        ...

    async def close(self) -> None: ...


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
    interaction_id: str | None = None
    age_restricted: bool = False


class Intake:
    def __init__(
        self, settings: Depth2ImgSettings, ledger: Ledger, pictures: Pictures, answer_first: AnswerFirst
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.pictures = pictures
        self.answer_first = answer_first
        self._reading = asyncio.Semaphore(READS_AT_ONCE)
        # Pictures checked and stored at once: two per image worker. More only added contention
        # (`make bench`, 32-burst, 6 runs each: final p50 1.33 s with 2 or 4, 1.43 s with 8, 1.49 s
        # with 16).
        self._checking = asyncio.Semaphore(max(2, 2 * settings.image_workers))

    async def record(
        self,
        params: GenerationParams,
        origin: Origin,
        *,
        source_url: str | None,
        source_path: str | None,
        parent_id: str | None,
        kind: JobKind,
    ) -> Job:
        """The job, recorded as ``acknowledged`` the moment the member has been answered: where its
        picture is to be read from (``source_url``, or a kept ``source_path`` for a job made from an
        earlier one). Raises :class:`DuplicateInteraction` for an interaction that already has one."""
        job = Job(
            id=secrets.token_hex(6),
            state=JobState.ACKNOWLEDGED,
            user_id=origin.user_id,
            channel_id=origin.channel_id,
            guild_id=origin.guild_id,
            application_id=origin.application_id,
            interaction_token=origin.interaction_token,
            interaction_created_at=origin.interaction_created_at,
            message_id=origin.message_id,
            upload_limit_bytes=origin.upload_limit_bytes,
            params=params,
            source_path=source_path,
            source_url=source_url,
            parent_id=parent_id,
            kind=kind,
            interaction_id=origin.interaction_id,
            age_restricted=origin.age_restricted,
        )
        try:
            return await self.ledger.create(job)
        except Exception as exc:
            if is_disk_full(exc):  # (the ledger's disk: the next members are refused up front)
                self.pictures.found_full()
            raise

    async def accept(self, job: Job, *, read: Reader) -> Job:
        """Read the picture, check it by its bytes (off the loop), keep it normalised, and record the
        job as ``received``. Raises :class:`InvalidInput`, or :class:`StorageFull` when the disk
        cannot take it (nothing is sent to the image service either way)."""
        s = self.settings
        try:
            async with self._reading:
                await self.answer_first.wait_turn()
                data = await self._read(read)
                async with self._checking:
                    await self.answer_first.wait_turn()
                    path, source = await self.pictures.keep_source(
                        job.id, data, max_pixels=s.max_input_pixels, max_side=s.source_max_side
                    )
                del data
        except InvalidInput as exc:
            exc.job_id = job.id
            raise
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            log.error(
                f"the data folder's disk is full: a member's picture could not be kept; {DISK_FULL_ADVICE}",
                extra={"job": job.id},
            )
            self.pictures.found_full()
            raise StorageFull() from None
        job = await self.ledger.update(
            job,
            state=JobState.RECEIVED,
            source_path=path,
            source_url=None if source.changed else job.source_url,
            source_changed=source.changed,
            params=replace(job.params, width=source.width, height=source.height),
        )
        log.info(
            "job received", extra={"job": job.id, "user_id": job.user_id, "source_changed": source.changed}
        )
        return job

    async def _read(self, read: Reader) -> bytes:
        try:
            async with asyncio.timeout(self.settings.input_read_timeout_s):
                data = await read()
        except TimeoutError:
            raise InvalidInput("input.download_timeout") from None
        if len(data) > self.settings.max_input_bytes:
            raise InvalidInput("input.file_too_big")
        return data
