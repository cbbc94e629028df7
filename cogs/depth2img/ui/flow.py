"""The request path, top-down, for every way a job starts (the command, the context menu's form, the
buttons and the edit form of a result), and the path of a job resumed after a restart.

Order of events, to meet Discord's 3-second window and keep refusals private:

1. cheap, synchronous checks (options, declared size, server rules, admission): a refusal is a
   private reply, and costs nothing;
2. ``defer(thinking=True)``: nothing that can wait runs before it;
3. read the picture, check it by its bytes, keep it, and record the job: a refusal deletes the
   "thinking…" message and is sent privately; still no API call;
4. run the job with a progress line, then deliver it (claim, tell the member, record the final state).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import discord

from cogs.botcore.transport import NO_ANSWER
from cogs.depth2img.core.admission import Ticket
from cogs.depth2img.core.gate import Where
from cogs.depth2img.core.intake import Origin
from cogs.depth2img.core.jobs import Outcome
from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.errors import (
    DeliveryInterrupted,
    Depth2ImgError,
    InternalError,
    InvalidInput,
    RequestRejected,
    StorageFull,
    is_disk_full,
)
from cogs.depth2img.models import GenerationParams, JobKind, ProgressEvent
from cogs.depth2img.store import DuplicateInteraction, Job, JobState

from . import text
from .acknowledge import ALREADY_ACKNOWLEDGED, mark_deferred, send
from .channels import is_age_restricted
from .delivery import FAILED, NO_MENTIONS, UNDELIVERED, deliver, reply_privately
from .langs import channels, members
from .progress import ProgressMessage

log = logging.getLogger(__name__)

UNKNOWN_INTERACTION = 10062  # Discord's error code: the interaction's 3 s were over
ACK_ATTEMPTS = 3  # an acknowledgement without an answer, looked for and made again (see _acknowledge)
# Discord counts the whole multipart request; leave room for the JSON part.
UPLOAD_MARGIN = 64 * 1024

Reader = Callable[[], Awaitable[bytes]]


class InteractionExpired(Exception):
    """The interaction cannot be answered: its 3 seconds were over before the bot answered, or it was
    answered already (a replayed delivery)."""


def where(interaction: discord.Interaction[Any]) -> Where:
    def roles() -> tuple[int, ...]:
        return tuple(r.id for r in getattr(interaction.user, "roles", None) or [])

    def age_restricted() -> bool:
        return is_age_restricted(interaction.channel)

    return Where(
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        roles=roles,
        is_manager=lambda: is_manager(interaction),
        age_restricted=age_restricted,
    )


def is_manager(interaction: discord.Interaction[Any]) -> bool:
    return bool(interaction.permissions and interaction.permissions.manage_guild)


@contextlib.contextmanager
def _released(interaction: discord.Interaction[Any]) -> Iterator[None]:
    """Once a request is over (not when it failed: the command tree's error handler answers on the
    interaction then), its interaction is let go of. discord.py keeps the interaction's response
    object on it, and the response refers back to its interaction: a reference cycle that held the
    interaction, its member, user, namespace and attachment, about 40 objects per request, until the
    garbage collector's next full pass (between bursts, or every 15 s under load), which took 13-23 ms
    for a 200-burst's. Dropping discord.py's cached response (a private slot: if a release renames it,
    this does nothing) frees them at once."""
    yield
    with contextlib.suppress(AttributeError):
        delattr(interaction, "_cs_response")


class RequestFlow:
    def __init__(self, client: discord.Client, service: Depth2ImgService) -> None:
        self.client = client
        self.service = service

    async def request(
        self,
        interaction: discord.Interaction[Any],
        make_params: Callable[[], GenerationParams],
        *,
        read: Reader,
        source_url: str | None,
        declared_size: int,
        source_path: str | None = None,
        parent: Job | None = None,
        kind: JobKind = JobKind.COMMAND,
    ) -> None:
        """``source_url``: the picture on Discord; ``source_path``: a picture the bot keeps (a job made
        from an earlier one). ``read`` reads it now."""
        with _released(interaction):
            started = time.monotonic()
            service = self.service
            if not service.first_sight(interaction.id):
                return  # Discord delivered this interaction twice: it runs once
            # Answering lasts until the job is recorded: picture work waits for the row too, so a crash
            # after the answer leaves a job the restarted bot finds (not a member left on "thinking…").
            answering = contextlib.ExitStack()
            with answering:
                answering.enter_context(service.answering())
                try:
                    params = service.check(make_params, where(interaction), declared_size=declared_size)
                    ticket = service.admit(interaction.user.id, interaction.guild_id, pictures=params.samples)
                except RequestRejected as exc:
                    await send(
                        interaction,
                        text.describe(exc, members(interaction)),
                        ephemeral=True,
                        allowed_mentions=NO_MENTIONS,
                    )
                    return
                try:
                    with ticket.closed_if_raised():
                        message_id = await self._acknowledge(interaction)
                except InteractionExpired:
                    return
                with ticket:
                    service.acknowledged(started)
                    await service.acknowledgements_out()  # the burst's other members first
                    job = await self._record(
                        interaction, params, message_id, source_url, source_path, parent, kind
                    )
                    if job is None:
                        return
                    answering.close()  # answered and recorded: picture work may start
                    with service.driving(job.id):
                        await self._take_in_and_run(
                            job, ticket, read=read, started=started, interaction=interaction
                        )

    async def _record(
        self,
        interaction: discord.Interaction[Any],
        params: GenerationParams,
        message_id: int | None,
        source_url: str | None,
        source_path: str | None,
        parent: Job | None,
        kind: JobKind,
    ) -> Job | None:
        """The acknowledged job, recorded; None when there is nothing more to do (a duplicate, or the
        ledger out of reach for longer than its retries: then nothing was recorded or sent, and the
        member is told so)."""
        origin = Origin(
            user_id=interaction.user.id,
            channel_id=interaction.channel_id or 0,
            guild_id=interaction.guild_id,
            application_id=interaction.application_id,
            interaction_token=interaction.token,
            interaction_created_at=interaction.created_at.timestamp(),
            message_id=message_id,
            upload_limit_bytes=max(1024, interaction.filesize_limit - UPLOAD_MARGIN),
            interaction_id=str(interaction.id),
            age_restricted=is_age_restricted(interaction.channel),
        )
        try:
            return await self.service.record(
                params,
                origin,
                source_url=source_url,
                source_path=source_path,
                parent_id=parent.id if parent else None,
                kind=kind,
            )
        except DuplicateInteraction:
            return None
        except Exception as exc:
            log.error("the job could not be recorded", extra={"error": type(exc).__name__})
            said = StorageFull() if is_disk_full(exc) else InternalError(type(exc).__name__)
            await reply_privately(interaction, text.describe(said, members(interaction)))
            return None

    async def _take_in_and_run(
        self,
        job: Job,
        ticket: Ticket,
        *,
        read: Reader,
        started: float,
        interaction: discord.Interaction[Any] | None = None,
    ) -> None:
        """From ``acknowledged``: the picture read and checked, then the job run and delivered.
        ``interaction`` is None for a job resumed after a restart (it is answered through its token)."""
        service = self.service
        try:
            job = await service.accept(job, read=read)
        except Exception as exc:
            error: Depth2ImgError = (
                exc if isinstance(exc, InvalidInput | StorageFull) else InternalError(type(exc).__name__)
            )
            if isinstance(error, InternalError):  # (the ledger out of reach, a bug)
                log.error("the picture could not be taken in", extra={"job": job.id, "error": error.kind})
            refused = Outcome(job, error=error)
            async with service.delivering(refused) as mine:
                if mine and interaction is not None:
                    await reply_privately(interaction, text.describe(error, members(interaction)))
                elif mine:
                    await deliver(self.client, refused, posting=service.posting)
            return
        await self._run(job, ticket, started=started, interaction=interaction)

    async def _run(
        self, job: Job, ticket: Ticket, *, started: float, interaction: discord.Interaction[Any] | None
    ) -> None:
        service = self.service
        limited: float | None = None  # (the job's message rate-limited for long, until then)
        if interaction is None:  # a resumed job: no progress line (its "thinking…" may be long gone)
            outcome = await service.run(job, ticket, emit=_nobody_watches, started_at=started)
        else:
            interval = service.settings.progress_interval_s
            async with ProgressMessage(interaction, job.id, interval_s=interval) as progress:
                outcome = await service.run(job, ticket, emit=progress.update, started_at=started)
            limited = progress.limited_until
        try:
            async with service.delivering(outcome, started_at=started if interaction else None) as mine:
                if mine:
                    full = service.settings_for(job.guild_id).card == "full"
                    await deliver(
                        self.client,
                        outcome,
                        posting=service.posting,
                        interaction=interaction,
                        full=full,
                        limited_until=limited,
                    )
        except UNDELIVERED as exc:  # (recorded as DeliveryFailed by delivering())
            ref = secrets.token_hex(4)
            status = exc.status if isinstance(exc, discord.HTTPException) else None
            log.warning(
                "delivery failed",
                extra={
                    "job": job.id,
                    "ref": ref,
                    "error": type(exc.__cause__ or exc).__name__,
                    "status": status,
                },
            )
            if interaction is not None:  # the member still hears, if Discord lets anything through
                try:  # (the picture is kept all the same, unless it could not be)
                    recorded = await service.get(job.id)
                except Exception:
                    recorded = None
                kept = job.id if recorded is not None and recorded.undelivered else None
                with contextlib.suppress(*FAILED):
                    await interaction.edit_original_response(
                        content=text.delivery_failed(ref, channels(interaction), kept=kept),
                        attachments=[],
                        view=None,
                        allowed_mentions=NO_MENTIONS,
                    )

    async def _acknowledge(self, interaction: discord.Interaction[Any]) -> int | None:
        """Answer "thinking…" at once. Returns the id of the message Discord made for it (None if it did
        not say). Raises :class:`InteractionExpired` when Discord no longer knew the interaction.

        When the acknowledgement gets no answer (the connection broke), Discord may or may not have
        taken it: if its "thinking…" message exists, it did; if not, it is made again (within the
        interaction's 3 seconds, still), up to :data:`ACK_ATTEMPTS` times."""
        for attempt in range(ACK_ATTEMPTS):
            try:
                return await self._defer(interaction)
            except NO_ANSWER as exc:
                log.info(
                    "the acknowledgement got no answer",
                    extra={"error": type(exc).__name__, "attempt": attempt + 1},
                )
            try:
                message = await interaction.original_response()
            except FAILED:
                message = None
            if message is not None:
                mark_deferred(interaction)
                return message.id
        raise InteractionExpired()

    async def _defer(self, interaction: discord.Interaction[Any]) -> int | None:
        try:
            async with self.service.acknowledging():
                callback = await interaction.response.defer(thinking=True)
        except discord.NotFound as exc:
            if exc.code != UNKNOWN_INTERACTION:
                raise
            self.service.too_late(interaction.id)
            raise InteractionExpired() from None
        except discord.HTTPException as exc:
            if exc.code != ALREADY_ACKNOWLEDGED:
                raise
            # delivered twice (a replay), and answered the first time, here or by a process before
            # this one: the first delivery's job is the one
            log.info("interaction already answered; not run again", extra={"interaction_id": interaction.id})
            raise InteractionExpired() from None
        return callback.message_id if callback is not None else None

    async def resume(self, job: Job) -> None:
        """A job left unfinished by a restart, or taken over from a stopped process: run from where the
        ledger has it (an ``acknowledged`` one reads its picture again), and delivered through the
        token kept in the ledger (or to the channel)."""
        with self.service.resumed(job) as ticket:
            try:
                if job.state is JobState.ACKNOWLEDGED:
                    await self._take_in_and_run(job, ticket, read=self._reader(job), started=time.monotonic())
                else:
                    await self._run(job, ticket, started=time.monotonic(), interaction=None)
            except discord.HTTPException as exc:
                log.warning("resumed delivery failed", extra={"job": job.id, "status": exc.status})
            except DeliveryInterrupted as exc:  # (a refusal's message, which is not delivered again)
                log.warning("resumed delivery failed", extra={"job": job.id, "error": str(exc)})

    def _reader(self, job: Job) -> Reader:
        """How a resumed job reads its picture again: from Discord, or from what the bot keeps."""
        url, path = job.source_url, job.source_path

        async def read() -> bytes:
            if url is not None:
                return await self.service.read_attachment(url)
            return await self.service.read_stored(path)

        return read


def _nobody_watches(event: ProgressEvent) -> None:
    """A resumed job has no progress line (its "thinking…" message may be long gone)."""
