"""The Discord adapter for /depth2img: thin. It turns an interaction into service calls and the
outcome back into Discord messages; every decision about jobs lives in the service.

Order of events, to meet Discord's 3-second window and keep rejections private:

1. cheap, synchronous checks (options, declared size, admission): a refusal is an ephemeral reply;
2. ``defer(thinking=True)``: nothing that can wait runs before it;
3. read the attachment, check it by its bytes, keep it, and record the job in the ledger; a refusal
   deletes the "thinking…" message and is sent privately; no API call was made;
4. run the job, then edit the "thinking…" message into the result with the image files attached;
   every failure edits it into one clear message instead; only then is the job marked finished.

Jobs left unfinished by a crash or a restart are resumed at start-up and delivered exactly once:
by editing the original message while the interaction token lives (15 minutes), otherwise as a
normal message in the channel that mentions the member.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import secrets
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from .errors import DeliveryFailed, Depth2ImgError, InvalidInput, RequestRejected
from .ledger import Job
from .messages import describe, result_text
from .service import Depth2ImgService, Origin, Outcome, Progress, build_params

if TYPE_CHECKING:
    from bot import Depth2ImgBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
# Discord counts the whole multipart request; leave room for the JSON part.
_UPLOAD_MARGIN = 64 * 1024
# Interaction tokens live 15 minutes; past this age, deliver as a channel message instead.
TOKEN_SAFE_AGE_S = 14 * 60


class Depth2ImgCog(commands.Cog):
    def __init__(self, bot: Depth2ImgBot, service: Depth2ImgService) -> None:
        self.bot = bot
        self.service = service
        self._tasks: set[asyncio.Task[None]] = set()

    async def cog_load(self) -> None:
        pending = await self.service.start()
        for job in pending:
            self._spawn(self._resume(job))
        if pending:
            log.info("resuming unfinished jobs", extra={"count": len(pending)})

    async def cog_unload(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @app_commands.command(
        name="depth2img",
        description="Repaint a picture from a prompt, keeping its depth and layout.",
    )
    @app_commands.describe(
        image="The picture to transform (PNG, JPEG or WebP).",
        prompt="What the picture should become (1–1000 characters).",
        negative_prompt="What to keep out of the picture.",
        strength="How far to move from the original, 0 (close) to 1 (free). Default: the API's.",
        steps="Denoising steps, 1–50: more is slower and finer. Default: the API's.",
        guidance="How closely to follow the prompt, 1–20. Default: the API's.",
        seed="A number to make the result repeatable. Default: random.",
        samples="How many pictures to make, 1–4. Default: 1.",
    )
    async def depth2img(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        prompt: app_commands.Range[str, 1, 1000],
        negative_prompt: app_commands.Range[str, 1, 1000] | None = None,
        strength: app_commands.Range[float, 0.0, 1.0] | None = None,
        steps: app_commands.Range[int, 1, 50] | None = None,
        guidance: app_commands.Range[float, 1.0, 20.0] | None = None,
        seed: app_commands.Range[int, 0, 4294967295] | None = None,
        samples: app_commands.Range[int, 1, 4] | None = None,
    ) -> None:
        started = time.monotonic()
        job_id = secrets.token_hex(6)
        current = asyncio.current_task()
        if current is not None:  # so that unloading (shutdown) can cancel it; the ledger keeps the job
            self._tasks.add(current)
        try:
            await self._handle(
                interaction,
                job_id,
                started,
                image,
                prompt,
                negative_prompt,
                strength,
                steps,
                guidance,
                seed,
                samples,
            )
        finally:
            if current is not None:
                self._tasks.discard(current)

    async def _handle(
        self,
        interaction: discord.Interaction,
        job_id: str,
        started: float,
        image: discord.Attachment,
        prompt: str,
        negative_prompt: str | None,
        strength: float | None,
        steps: int | None,
        guidance: float | None,
        seed: int | None,
        samples: int | None,
    ) -> None:
        # 1. cheap checks, before the acknowledgement: a refusal stays private and costs nothing.
        try:
            params = build_params(
                prompt=prompt,
                negative_prompt=negative_prompt,
                strength=strength,
                steps=steps,
                guidance=guidance,
                seed=seed,
                samples=samples,
            )
            self.service.check_declared_size(image.size)
            ticket = self.service.admission.admit(interaction.user.id, interaction.guild_id)
        except RequestRejected as exc:
            log.info("job rejected", extra={"job": job_id, "reason": type(exc).__name__})
            await interaction.response.send_message(
                describe(exc), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return

        with ticket:
            # 2. acknowledge at once.
            callback = await interaction.response.defer(thinking=True)
            origin = Origin(
                user_id=interaction.user.id,
                channel_id=interaction.channel_id or 0,
                guild_id=interaction.guild_id,
                application_id=interaction.application_id,
                interaction_token=interaction.token,
                interaction_created_at=interaction.created_at.timestamp(),
                message_id=callback.message_id if callback is not None else None,
                upload_limit_bytes=max(1024, interaction.filesize_limit - _UPLOAD_MARGIN),
            )
            # 3. the bytes decide whether this is an image; still no API call.
            try:
                job = await self.service.accept(job_id, params, origin, read=image.read, source_url=image.url)
            except InvalidInput as exc:
                log.info("job rejected", extra={"job": job_id, "reason": "invalid image"})
                await self._reject_privately(interaction, describe(exc))
                return

            # 4. run, deliver, then record the final state.
            async def progress(event: Progress) -> None:
                await self._show_progress(interaction, event)

            outcome = await self.service.run(job, ticket, started_at=started, on_progress=progress)
            content, files = self._render(outcome, mention=interaction.user.mention)
            try:
                await interaction.edit_original_response(
                    content=content, attachments=files, allowed_mentions=NO_MENTIONS
                )
            except discord.HTTPException:
                # Discord refused the delivery: record it as failed (never re-sent later), and let
                # the global handler tell the member, with a reference.
                await self.service.finish(Outcome(outcome.job, error=DeliveryFailed("discord refused")))
                raise
            await self.service.finish(outcome)

    # --- resumed jobs ---------------------------------------------------------------------------

    async def _resume(self, job: Job) -> None:
        ticket = self.service.admission.admit_resumed(job.user_id)
        with ticket:
            job = await self.service.ledger.update(job, resumes=job.resumes + 1)
            log.info("job resumed", extra={"job": job.id, "state": str(job.state)})
            outcome = await self.service.run(job, ticket, started_at=time.monotonic())
            try:
                await self._deliver_resumed(outcome)
            except discord.HTTPException as exc:
                log.warning("resumed delivery failed", extra={"job": job.id, "status": exc.status})
                return  # left unfinished: the next start tries again
            await self.service.finish(outcome)

    async def _deliver_resumed(self, outcome: Outcome) -> None:
        job = outcome.job
        fresh = time.time() - job.interaction_created_at < TOKEN_SAFE_AGE_S
        if fresh and job.message_id is not None:
            content, files = self._render(outcome, mention=f"<@{job.user_id}>")
            webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self.bot)
            try:
                await webhook.edit_message(
                    job.message_id, content=content, attachments=files, allowed_mentions=NO_MENTIONS
                )
                return
            except (discord.NotFound, discord.Forbidden) as exc:
                # the token expired early or the message was deleted: fall back to the channel
                log.info(
                    "resumed edit refused; sending to the channel",
                    extra={"job": job.id, "status": exc.status},
                )
            except discord.HTTPException as exc:
                if exc.status != 401:
                    raise
                log.info("interaction token expired; sending to the channel", extra={"job": job.id})
        # The interaction token has expired: a normal channel message that pings the member once.
        content, files = self._render(outcome, mention=f"<@{job.user_id}>")
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        ping = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        await channel.send(content=content, files=files, allowed_mentions=ping)

    # --- rendering and helpers --------------------------------------------------------------------

    def _render(self, outcome: Outcome, *, mention: str) -> tuple[str, list[discord.File]]:
        if outcome.result is not None:
            files = [
                discord.File(io.BytesIO(img.data), filename=img.filename) for img in outcome.result.images
            ]
            return result_text(outcome.job.params, outcome.result, user_mention=mention), files
        assert outcome.error is not None
        text = describe(outcome.error)
        if outcome.job.resumes and mention:
            text = f"{mention} {text}"
        return f"{text}\n-# ref `{outcome.job.id}`", []

    async def _reject_privately(self, interaction: discord.Interaction, text: str) -> None:
        """After a public defer: remove the "thinking…" message and tell only the member."""
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            return
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    async def _show_progress(self, interaction: discord.Interaction, event: Progress) -> None:
        if event.stage == "queued_at_api":
            if event.eta_s is not None:
                ready = math.ceil(time.time() + event.eta_s)
                text = f"⏳ Queued at the image API — expected <t:{ready}:R>."
            else:
                text = "⏳ Queued at the image API…"
        elif event.stage == "waiting_for_slot":
            text = f"⏳ Waiting for a free slot (position {event.position})…"
        else:
            return
        try:
            await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException:
            log.warning("progress edit failed")


__all__ = ["Depth2ImgCog", "Depth2ImgError"]
