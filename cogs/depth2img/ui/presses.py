"""What a press of a result's (or a progress line's) button does, and a submitted form: the context
menu's prompt form and a result's edit form. Each ends in something the member sees."""

from __future__ import annotations

import functools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from cogs.depth2img.core.params import build_params
from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.errors import Depth2ImgError, InvalidInput
from cogs.depth2img.models import DERIVING, Action, GenerationParams, JobKind
from cogs.depth2img.store import FINISHED, Job
from cogs.i18n import text as say

from . import cards, text
from .acknowledge import defer, send, show_form
from .channels import is_age_restricted
from .components import JOB_ID_RE, PromptModal, modal_values, upload
from .delivery import NO_MENTIONS, edit_original, failed, tell
from .flow import RequestFlow
from .langs import channels, members

log = logging.getLogger(__name__)

_MODAL_RE = re.compile(rf"d2i:(edited|menu):({JOB_ID_RE})")
MENU_TARGETS_KEPT = 1000  # pictures whose prompt form is open (the oldest forgotten past it)


class Presses:
    def __init__(
        self,
        service: Depth2ImgService,
        flow: RequestFlow,
        tracked: Callable[[Awaitable[None]], Awaitable[None]],
    ) -> None:
        self.service = service
        self.flow = flow
        self._tracked = tracked  # (runs a job's request so that unloading can cancel it)
        self._menu_targets: dict[str, discord.Attachment] = {}

    async def menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """Apps → Depth to image on a message: its picture, and a form for the prompt."""
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
        if len(self._menu_targets) > MENU_TARGETS_KEPT:
            self._menu_targets.pop(next(iter(self._menu_targets)))
        lang = members(interaction)
        await show_form(
            interaction,
            PromptModal(custom_id=f"d2i:menu:{key}", title=say(lang, "form.menu_title"), lang=lang),
        )

    async def button(self, interaction: discord.Interaction[Any], action: Action, job_id: str) -> None:
        """A press of any result's or progress line's button. Whatever goes wrong, the member hears."""
        try:
            await self._on_button(interaction, action, job_id)
        except Exception as exc:
            await failed(interaction, exc, f"button {action}")

    async def form(self, interaction: discord.Interaction) -> None:
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
