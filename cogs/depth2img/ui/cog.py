"""The Discord adapter for /depth2img: the commands and listeners, each handing off at once to the
request flow (``flow.py``), to the buttons' and forms' handlers (``presses.py``), to
``/depth2img-show`` (``show.py``) or to the service. Every decision about jobs lives in the service.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs.botcore.tasks import create_task
from cogs.depth2img.core.params import build_params
from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.models import Action, GenerationParams
from cogs.depth2img.store import Job
from cogs.i18n import SOURCE
from cogs.i18n import text as say

from . import text
from .acknowledge import send
from .components import COG_NAME, JobButton
from .delivery import NO_MENTIONS
from .flow import RequestFlow
from .langs import members
from .late import post_kept
from .presses import Presses
from .show import show_kept

log = logging.getLogger(__name__)


MENU_NAME = say(SOURCE, "form.menu_title")  # (Discord shows it translated: translator.py)


class Depth2ImgCog(commands.Cog, name=COG_NAME):
    def __init__(self, bot: commands.Bot, service: Depth2ImgService) -> None:
        self.bot = bot
        self.service = service
        self.flow = RequestFlow(bot, service)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.presses = Presses(service, self.flow, self._tracked)
        # Where the commands can be used (Discord's installation and interaction contexts): in the
        # servers the bot is in; what spends the owner's credits in direct messages too only with
        # ALLOW_DMS (no server's rules apply there). History and forget-me cost nothing.
        servers = app_commands.AppInstallationType(guild=True, user=False)
        spending = app_commands.AppCommandContext(guild=True, dm_channel=service.settings.allow_dms)
        private = app_commands.AppCommandContext(guild=True, dm_channel=True)
        self.menu = app_commands.ContextMenu(
            name=MENU_NAME,
            callback=self.depth_to_image_menu,
            allowed_contexts=spending,
            allowed_installs=servers,
        )
        for command, contexts in (
            (self.depth2img, spending),
            (self.show, spending),
            (self.history, private),
            (self.forget_me, private),
        ):
            command.allowed_contexts, command.allowed_installs = contexts, servers

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(JobButton)
        self.bot.tree.add_command(self.menu)
        pending = await self.service.start()
        if pending:
            log.info("resuming unfinished jobs", extra={"count": len(pending)})
        for job in pending:
            self._resume(job)
        late = functools.partial(post_kept, self.bot, self.service)
        for name, work in self.service.background(self._resume, late).items():
            create_task(work, name=name, keep_in=self._tasks)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(JobButton)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.service.close()

    def _resume(self, job: Job) -> None:
        create_task(self.flow.resume(job), name=f"resume-{job.id}", keep_in=self._tasks)

    async def _tracked(self, work: Awaitable[None]) -> None:
        """Run an interaction handler so that unloading (shutdown) can cancel it; the ledger keeps the job."""
        current = asyncio.current_task()
        if current is not None:
            self._tasks.add(current)
        try:
            await work
        finally:
            if current is not None:
                self._tasks.discard(current)

    # --- /depth2img ----------------------------------------------------------------------------

    @app_commands.command(
        name="depth2img", description="Repaint a picture from a prompt, keeping its depth and layout."
    )
    @app_commands.describe(
        image="The picture to transform (PNG, JPEG or WebP).",
        prompt="What the picture should become (1–1000 characters).",
        negative_prompt="What to keep out of the picture.",
        strength="How far to move from the original, 0 (close) to 1 (free). Default: the image service's.",
        steps="Denoising steps, 1–50: more is slower and finer. Default: the image service's.",
        guidance="How closely to follow the prompt, 1–20. Default: the image service's.",
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
        def params() -> GenerationParams:
            return build_params(
                prompt=prompt,
                negative_prompt=negative_prompt,
                strength=strength,
                steps=steps,
                guidance=guidance,
                seed=seed,
                samples=samples,
            )

        read = functools.partial(self.service.read_attachment, image.url)
        await self._tracked(
            self.flow.request(interaction, params, read=read, source_url=image.url, declared_size=image.size)
        )

    # --- Apps → Depth to image ------------------------------------------------------------------

    async def depth_to_image_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.presses.menu(interaction, message)

    # --- buttons and forms ------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction[Any], action: Action, job_id: str) -> None:
        """A press of any result's or progress line's button (``JobButton`` hands it here)."""
        await self.presses.button(interaction, action, job_id)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.presses.form(interaction)

    # --- /depth2img-show, -history, -forget-me ----------------------------------------------------

    @app_commands.command(name="depth2img-show", description="Bring back a past picture, with its buttons.")
    @app_commands.describe(picture="The picture's id, as shown in its ℹ️ Details or in /depth2img-history.")
    async def show(self, interaction: discord.Interaction, picture: app_commands.Range[str, 1, 40]) -> None:
        await show_kept(self.bot, self.service, interaction, picture)

    @app_commands.command(name="depth2img-history", description="Your recent pictures (only you see this).")
    async def history(self, interaction: discord.Interaction) -> None:
        jobs = await self.service.history(interaction.user.id, limit=10)
        await send(
            interaction,
            text.history_text(jobs, members(interaction)),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(
        name="depth2img-forget-me", description="Delete your stored pictures and your history with this bot."
    )
    async def forget_me(self, interaction: discord.Interaction) -> None:
        count = await self.service.forget(interaction.user.id)
        await send(interaction, text.forgotten_text(count, members(interaction)), ephemeral=True)
