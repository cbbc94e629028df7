"""The Discord adapter for /depth2img: thin. It turns an interaction into service calls and the
outcome back into Discord messages; every decision about jobs lives in the service.

Order of events, to meet Discord's 3-second window and keep rejections private:

1. cheap, synchronous checks (options, declared size, admission): a refusal is an ephemeral reply;
2. ``defer(thinking=True)``: nothing that can wait runs before it;
3. read the attachment and check it by its bytes; a refusal deletes the "thinking…" message and
   is sent privately; no API call was made;
4. generate, then edit the "thinking…" message into the result with the image files attached;
   every failure edits it into one clear message instead.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from .errors import Depth2ImgError, InvalidInput, RequestRejected
from .messages import describe, result_text
from .service import Depth2ImgService, Progress, build_params

if TYPE_CHECKING:
    from bot import Depth2ImgBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
# Discord counts the whole multipart request; leave room for the JSON part and the other files.
_UPLOAD_MARGIN = 64 * 1024


class Depth2ImgCog(commands.Cog):
    def __init__(self, bot: Depth2ImgBot, service: Depth2ImgService) -> None:
        self.bot = bot
        self.service = service

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
        job_ref = secrets.token_hex(4)
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
            ticket = self.service.admission.admit(interaction.user.id)
        except RequestRejected as exc:
            log.info("job rejected", extra={"job": job_ref, "reason": type(exc).__name__})
            await interaction.response.send_message(
                describe(exc), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return

        with ticket:
            # 2. acknowledge at once.
            await interaction.response.defer(thinking=True)
            log.info("job accepted", extra={"job": job_ref, "user_id": interaction.user.id})
            # 3. the bytes decide whether this is an image; still no API call.
            try:
                await self.service.check_source(image.read)
            except InvalidInput as exc:
                log.info("job rejected", extra={"job": job_ref, "reason": "invalid image"})
                await self._reject_privately(interaction, describe(exc))
                return

            # 4. generate and deliver.
            limit = max(1024, interaction.filesize_limit - _UPLOAD_MARGIN)

            async def progress(event: Progress) -> None:
                await self._show_progress(interaction, event)

            try:
                result = await self.service.generate(
                    ticket,
                    params,
                    image.url,
                    started_at=started,
                    output_limit_bytes=limit,
                    on_progress=progress,
                    job_ref=job_ref,
                )
            except Depth2ImgError as exc:
                log.warning("job failed", extra={"job": job_ref, "error": type(exc).__name__})
                await interaction.edit_original_response(
                    content=f"{describe(exc)}\n-# ref `{job_ref}`", allowed_mentions=NO_MENTIONS
                )
                return

            files = [discord.File(io.BytesIO(img.data), filename=img.filename) for img in result.images]
            text = result_text(params, result, user_mention=interaction.user.mention)
            await interaction.edit_original_response(
                content=text, attachments=files, allowed_mentions=NO_MENTIONS
            )
            log.info(
                "job delivered",
                extra={"job": job_ref, "total_s": round(time.monotonic() - started, 3), "files": len(files)},
            )

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
            log.warning("progress edit failed", exc_info=False)
