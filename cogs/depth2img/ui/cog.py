"""The Discord adapter for /depth2img: the commands and listeners, each handing off at once to the
request flow (``flow.py``) or to the service. Every decision about jobs lives in the service.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from collections.abc import Awaitable
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs.botcore.tasks import create_task
from cogs.depth2img.core.params import build_params
from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.errors import Depth2ImgError, InvalidInput
from cogs.depth2img.models import DERIVING, Action, GenerationParams, JobKind
from cogs.depth2img.store import FINISHED, Job
from cogs.i18n import SOURCE
from cogs.i18n import text as say

from . import cards, text
from .acknowledge import defer, send, show_form
from .channels import is_age_restricted
from .components import COG_NAME, JOB_ID_RE, JobButton, PromptModal, modal_values, result_view, spent, upload
from .delivery import NO_MENTIONS, edit_original, failed, message_gone, tell
from .flow import RequestFlow
from .langs import channels, members
from .late import post_kept

log = logging.getLogger(__name__)


MENU_NAME = say(SOURCE, "form.menu_title")  # (Discord shows it translated: translator.py)
_MODAL_RE = re.compile(rf"d2i:(edited|menu):({JOB_ID_RE})")


class Depth2ImgCog(commands.Cog, name=COG_NAME):
    def __init__(self, bot: commands.Bot, service: Depth2ImgService) -> None:
        self.bot = bot
        self.service = service
        self.flow = RequestFlow(bot, service)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._menu_targets: dict[str, discord.Attachment] = {}
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
        picture = next(
            (a for a in message.attachments if (a.content_type or "").startswith("image/") or a.width), None
        )
        if picture is None:
            picture = next(iter(message.attachments), None)
        if picture is None:
            await tell(interaction, "reply.no_picture_on_message")
            return
        key = secrets.token_hex(6)
        self._menu_targets[key] = picture
        if len(self._menu_targets) > 1000:
            self._menu_targets.pop(next(iter(self._menu_targets)))
        lang = members(interaction)
        await show_form(
            interaction,
            PromptModal(custom_id=f"d2i:menu:{key}", title=say(lang, "form.menu_title"), lang=lang),
        )

    # --- buttons and forms ------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction[Any], action: Action, job_id: str) -> None:
        """A press of any result's or progress line's button. Whatever goes wrong, the member hears."""
        try:
            await self._on_button(interaction, action, job_id)
        except Exception as exc:
            await failed(interaction, exc, f"button {action}")

    async def _on_button(self, interaction: discord.Interaction[Any], action: Action, job_id: str) -> None:
        if action is not Action.CANCEL:
            await self.service.settled(job_id)  # (a result pressed the moment it appeared: still being kept)
        job = await self.service.get(job_id)
        lang = members(interaction)
        if job is None:
            await tell(interaction, "reply.picture_gone")
            return
        if action is Action.DELETE:
            await self._delete(interaction, job)
        elif action is Action.COMPARE:
            await self._compare(interaction, job)
        elif action is Action.CANCEL:
            await self._cancel(interaction, job)
        elif action is Action.DETAILS:
            await send(
                interaction, cards.details_text(job, lang), ephemeral=True, allowed_mentions=NO_MENTIONS
            )
        elif action is Action.DEPTH:
            data = await self.service.depth_map(job)  # (InvalidInput: said to the member privately)
            await send(
                interaction,
                say(lang, "caption.depth_map", id=job.id),
                make_file=lambda: upload(data, f"depth-map-{job.id}.png", cards.depth_map_alt(lang)),
                ephemeral=True,
            )
        elif action is Action.EDIT:
            await show_form(
                interaction,
                PromptModal(
                    custom_id=f"d2i:edited:{job.id}",
                    title=say(lang, "form.edit_title"),
                    lang=lang,
                    prompt=job.params.prompt,
                    negative=job.params.negative_prompt or "",
                ),
            )
        elif action in DERIVING:
            await self._tracked(self._derived(interaction, job, action))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A submitted form, answered from its custom id: whatever happened to the modal object that
        sent it (see :class:`PromptModal`). Whatever goes wrong, the member hears."""
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        match = _MODAL_RE.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        try:
            await self._on_form(interaction, match)
        except Exception as exc:
            await failed(interaction, exc, f"form {match[1]}")

    async def _on_form(self, interaction: discord.Interaction[Any], match: re.Match[str]) -> None:
        values = modal_values(interaction.data)
        prompt, negative = values.get("prompt", ""), values.get("negative_prompt") or None
        if match[1] == "edited":
            parent = await self.service.get(match[2])
            if parent is None:
                await tell(interaction, "reply.picture_gone_short")
                return
            await self._tracked(
                self._derived(interaction, parent, Action.EDIT, prompt=prompt, negative=negative)
            )
            return
        picture = self._menu_targets.pop(match[2], None)
        if picture is None:
            await tell(interaction, "reply.form_expired", menu=say(members(interaction), "form.menu_title"))
            return
        age_restricted = is_age_restricted(interaction.channel)

        def params() -> GenerationParams:
            return build_params(prompt=prompt, negative_prompt=negative, safety_checker=not age_restricted)

        await self._tracked(
            self.flow.request(
                interaction,
                params,
                read=functools.partial(self.service.read_attachment, picture.url),
                source_url=picture.url,
                declared_size=picture.size,
                kind=JobKind.MENU,
            )
        )

    async def _derived(
        self,
        interaction: discord.Interaction[Any],
        parent: Job,
        action: Action,
        *,
        prompt: str | None = None,
        negative: str | None = None,
    ) -> None:
        def params() -> GenerationParams:
            return self.service.derive(parent, action, prompt=prompt, negative_prompt=negative)

        try:
            path = self.service.source_for(parent, action)
        except InvalidInput as exc:
            await send(interaction, text.describe(exc, members(interaction)), ephemeral=True)
            return

        async def read() -> bytes:
            return await self.service.read_stored(path)

        await self.flow.request(
            interaction,
            params,
            read=read,
            source_url=None,
            source_path=path,
            declared_size=1,
            parent=parent,
            kind=action.kind,
        )

    async def _delete(self, interaction: discord.Interaction[Any], job: Job) -> None:
        allowed = interaction.user.id == job.user_id or bool(
            interaction.permissions and interaction.permissions.manage_messages
        )
        if not allowed:
            await tell(interaction, "reply.only_requester_or_moderator_deletes")
            return
        await defer(interaction)
        # through the interaction (its "original response" is the button's message): no channel
        # permission needed, as a channel delete would be
        await interaction.delete_original_response()
        await self.service.mark_deleted(job.id)  # /depth2img-show brings it back to its requester only
        log.info("result deleted", extra={"job": job.id, "by": interaction.user.id})

    async def _compare(self, interaction: discord.Interaction[Any], job: Job) -> None:
        """The before | after view, made on request (it costs image work no one else should wait for)."""
        await defer(interaction, thinking=True)  # (in the channel: in the server's language)
        lang = channels(interaction)
        try:
            picture = await self.service.comparison(job)
        except Depth2ImgError as exc:
            await interaction.edit_original_response(content=text.describe(exc, lang))
            return
        await edit_original(
            interaction,
            say(lang, "caption.comparison", id=job.id),
            lambda: [upload(picture.data, picture.filename, cards.comparison_alt(job, lang))],
        )

    async def _cancel(self, interaction: discord.Interaction[Any], job: Job) -> None:
        if interaction.user.id != job.user_id:
            await tell(interaction, "reply.only_requester_cancels")
            return
        if not self.service.cancel(job.id):  # (not running here: finished, or to be delivered again
            # once its lease runs out, or run by another process now; a result is not thrown away then)
            await tell(
                interaction,
                "reply.already_finished" if job.state in FINISHED else "reply.finishing_elsewhere",
            )
            return
        await defer(interaction)  # the job's own final edit shows the cancellation

    # --- /depth2img-show, -history, -forget-me ----------------------------------------------------

    @app_commands.command(name="depth2img-show", description="Bring back a past picture, with its buttons.")
    @app_commands.describe(picture="The picture's id, as shown in its ℹ️ Details or in /depth2img-history.")
    async def show(self, interaction: discord.Interaction, picture: app_commands.Range[str, 1, 40]) -> None:
        found = await self.service.get(picture.strip().lower().strip("`"))
        lang = members(interaction)
        if found is None or not found.has_picture or found.result_path is None:
            await tell(interaction, "reply.not_found_for_show")
            return
        if found.guild_id is not None and found.guild_id != interaction.guild_id:
            await tell(interaction, "reply.other_server")
            return
        # what the channel decided: an age-restricted channel's picture only in such a channel
        # (jobs recorded before the channel was: asked for without the safety checker, as only there)
        from_restricted = found.age_restricted or not found.params.safety_checker
        if from_restricted and not is_age_restricted(interaction.channel):
            await tell(interaction, "reply.age_restricted_only")
            return
        # what its requester or a moderator decided: a deleted picture, to its requester, privately
        deleted = found.deleted_at is not None or await message_gone(self.bot, found)
        if deleted and found.deleted_at is None:
            await self.service.mark_deleted(found.id)  # (remembered: Discord is asked once)
        if deleted and interaction.user.id != found.user_id:
            await tell(interaction, "reply.deleted_for_others")
            return
        try:
            data, blank = await self.service.read_kept(found)
        except InvalidInput as exc:
            await send(interaction, text.describe(exc, lang), ephemeral=True)
            return
        shown_in = lang if deleted else channels(interaction)  # a public answer: the server's language
        with spent(result_view(found.id, shown_in, deletable=not deleted)) as view:
            name = found.result_path.rsplit("/", 1)[-1]
            await send(
                interaction,
                cards.shown_text(found, shown_in, deleted=deleted, blank=blank),
                make_file=lambda: upload(data, name, cards.alt_text(found, shown_in, blank=blank)),
                view=view,
                ephemeral=deleted,
                allowed_mentions=NO_MENTIONS,
            )
        if found.undelivered and not deleted and interaction.channel_id == found.channel_id:
            await self.service.late_posted(found, posted=True, shown=True)  # (not posted late as well)

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
