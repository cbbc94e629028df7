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

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from cogs.depth2img.core.intake import Origin
from cogs.depth2img.core.service import Depth2ImgService, Where
from cogs.depth2img.errors import InvalidInput, RequestRejected
from cogs.depth2img.models import GenerationParams, JobKind, ProgressEvent
from cogs.depth2img.store import Job

from . import text
from .delivery import NO_MENTIONS, deliver, reply_privately
from .progress import ProgressMessage

log = logging.getLogger(__name__)

UNKNOWN_INTERACTION = 10062  # Discord's error code: the interaction's 3 s were over
# Discord counts the whole multipart request; leave room for the JSON part.
UPLOAD_MARGIN = 64 * 1024

Reader = Callable[[], Awaitable[bytes]]


class InteractionExpired(Exception):
    """Discord no longer knows the interaction: its 3 seconds were over before the bot answered."""


def where(interaction: discord.Interaction[Any]) -> Where:
    def roles() -> tuple[int, ...]:
        return tuple(r.id for r in getattr(interaction.user, "roles", None) or [])

    def age_restricted() -> bool:
        return bool(getattr(interaction.channel, "nsfw", False))

    return Where(
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id,
        roles=roles,
        is_manager=lambda: is_manager(interaction),
        age_restricted=age_restricted,
    )


def is_manager(interaction: discord.Interaction[Any]) -> bool:
    return bool(interaction.permissions and interaction.permissions.manage_guild)


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
        parent: Job | None = None,
        kind: JobKind = JobKind.COMMAND,
    ) -> None:
        started = time.monotonic()
        service = self.service
        with service.answering():
            try:
                params = service.check(make_params, where(interaction), declared_size=declared_size)
                ticket = service.admit(interaction.user.id, interaction.guild_id)
            except RequestRejected as exc:
                await interaction.response.send_message(
                    text.describe(exc), ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                return
            try:
                with ticket.closed_if_raised():
                    message_id = await self._acknowledge(interaction)
            except InteractionExpired:
                return
        with ticket:
            service.acknowledged(started)
            origin = Origin(
                user_id=interaction.user.id,
                channel_id=interaction.channel_id or 0,
                guild_id=interaction.guild_id,
                application_id=interaction.application_id,
                interaction_token=interaction.token,
                interaction_created_at=interaction.created_at.timestamp(),
                message_id=message_id,
                upload_limit_bytes=max(1024, interaction.filesize_limit - UPLOAD_MARGIN),
            )
            try:
                job = await service.accept(
                    params,
                    origin,
                    read=read,
                    declared_size=declared_size,
                    source_url=source_url,
                    parent_id=parent.id if parent else None,
                    kind=kind,
                )
            except InvalidInput as exc:
                await reply_privately(interaction, text.describe(exc))
                return
            async with ProgressMessage(
                interaction, job.id, interval_s=service.settings.progress_interval_s
            ) as progress:
                outcome = await service.run(job, ticket, emit=progress.update, started_at=started)
            async with service.delivering(outcome, started_at=started) as mine:
                if mine:
                    await deliver(self.client, outcome, interaction=interaction)

    async def _acknowledge(self, interaction: discord.Interaction[Any]) -> int | None:
        """Answer "thinking…" at once. Returns the id of the message Discord made for it (None if it did
        not say). Raises :class:`InteractionExpired` when Discord no longer knew the interaction."""
        try:
            callback = await interaction.response.defer(thinking=True)
        except discord.NotFound as exc:
            if exc.code != UNKNOWN_INTERACTION:
                raise
            self.service.too_late(interaction.id)
            raise InteractionExpired() from None
        return callback.message_id if callback is not None else None

    async def resume(self, job: Job) -> None:
        """A job left unfinished by a restart, or taken over from a stopped process: run from where the
        ledger has it, and delivered through the token kept in the ledger (or to the channel)."""
        with self.service.resumed(job) as ticket:
            outcome = await self.service.run(job, ticket, emit=_nobody_watches, started_at=time.monotonic())
            try:
                async with self.service.delivering(outcome) as mine:
                    if mine:
                        await deliver(self.client, outcome)
            except discord.HTTPException as exc:
                log.warning("resumed delivery failed", extra={"job": job.id, "status": exc.status})


def _nobody_watches(event: ProgressEvent) -> None:
    """A resumed job has no progress line (its "thinking…" message may be long gone)."""
