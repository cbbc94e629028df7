"""The Discord adapter for /depth2img: thin. It turns interactions (the slash command, the buttons
on a result, the edit modal, the message context menu) into service calls and outcomes back into
Discord messages; every decision about jobs lives in the service.

Order of events for every request, to meet Discord's 3-second window and keep refusals private:

1. cheap, synchronous checks (options, declared size, admission): a refusal is an ephemeral reply;
2. ``defer(thinking=True)``: nothing that can wait runs before it;
3. read the picture, check it by its bytes, keep it, and record the job in the ledger; a refusal
   deletes the "thinking…" message and is sent privately; no API call was made;
4. run the job (progress, with a Cancel button, edited in at most every few seconds), then edit the
   message into the result with the files and buttons; every failure edits it into one clear
   message instead; only then is the job marked finished.

Buttons carry the job id in their custom id and look everything else up in the ledger, so they work
after a restart for as long as the job exists. Jobs left unfinished by a crash or a restart are
resumed at start-up and delivered exactly once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import discord
from discord import app_commands
from discord.ext import commands

from .acks import ACKNOWLEDGED, AckNotConfirmed, InteractionAcks
from .errors import DeliveryFailed, Depth2ImgError, InvalidInput, RequestRejected
from .ledger import Job, JobState, JobTakenOver
from .messages import describe, neutralise, result_text
from .policy import GuildSettings, check_request
from .service import Depth2ImgService, Origin, Outcome, Progress, Ticket, build_params

if TYPE_CHECKING:
    from bot import Depth2ImgBot

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
UNKNOWN_INTERACTION = 10062  # Discord's error codes
ALREADY_ACKNOWLEDGED = 40060
# Discord counts the whole multipart request; leave room for the JSON part.
_UPLOAD_MARGIN = 64 * 1024
# Interaction tokens live 15 minutes; past this age, deliver as a channel message instead.
TOKEN_SAFE_AGE_S = 14 * 60
JOB_ID_RE = r"[0-9a-f]{12}"
ACTIONS = ("seed", "edit", "closer", "more", "reuse", "compare", "delete", "cancel")

Reader = Callable[[], Awaitable[bytes]]


class InteractionExpired(Exception):
    """Discord no longer knows the interaction: its 3 seconds were over before it reached the bot."""


class SharedBytes(io.BytesIO):
    """A picture to upload, as the file object discord.py wants, without copying it, and freed as
    soon as the upload is done.

    - aiohttp sizes an io.BytesIO upload with ``getbuffer()``, which makes io.BytesIO copy the bytes
      it shares (~0.4 ms per MB on the event loop, fresh memory included); nothing here ever writes
      to it, so the buffer can be the picture itself.
    - discord.File keeps aiohttp from closing the file by setting ``fp.close`` on it, and afterwards
      sets it back to ``fp``'s own bound ``close``: a reference cycle through the file, which kept
      every uploaded picture in memory until the garbage collector's next full pass (measured: RSS
      283 MB against 126 MB in a 200-burst with 16 jobs at a time). So ``close`` cannot be replaced
      here (it does nothing: the picture is freed with this object, and discord.py may read it again
      to retry an upload)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)

    def close(self) -> None:
        """Nothing to release early (see the class)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "close":
            super().__setattr__(name, value)


def upload(data: bytes, filename: str) -> discord.File:
    return discord.File(SharedBytes(data), filename=filename)


# --- persistent components ---------------------------------------------------------------------------


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"d2i:(?P<action>{'|'.join(ACTIONS)}):(?P<job>{JOB_ID_RE})",
):
    """Every button of every result and progress message. Its custom id is ``d2i:<action>:<job id>``;
    everything else is looked up in the ledger, so it keeps working after a restart."""

    LOOK: ClassVar[dict[str, tuple[str, str, discord.ButtonStyle]]] = {
        "seed": ("New seed", "🎲", discord.ButtonStyle.primary),
        "edit": ("Edit prompt", "✏️", discord.ButtonStyle.secondary),
        "closer": ("Closer to source", "🎯", discord.ButtonStyle.secondary),
        "more": ("More creative", "🎨", discord.ButtonStyle.secondary),
        "reuse": ("Use as source", "🔁", discord.ButtonStyle.secondary),
        "compare": ("Before | after", "🪞", discord.ButtonStyle.secondary),
        "delete": ("Delete", "🗑️", discord.ButtonStyle.danger),
        "cancel": ("Cancel", "🛑", discord.ButtonStyle.danger),
    }

    def __init__(self, action: str, job_id: str, *, row: int | None = None) -> None:
        label, emoji, style = self.LOOK[action]
        super().__init__(
            discord.ui.Button(
                label=label, emoji=emoji, style=style, custom_id=f"d2i:{action}:{job_id}", row=row
            )
        )
        self.action = action
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> JobButton:
        return cls(match["action"], match["job"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog("Depth2ImgCog")
        if isinstance(cog, Depth2ImgCog):
            await cog.on_button(interaction, self.action, self.job_id)


def result_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for action in ("seed", "edit", "closer", "more", "reuse"):
        view.add_item(JobButton(action, job_id, row=0))
    view.add_item(JobButton("compare", job_id, row=1))
    view.add_item(JobButton("delete", job_id, row=1))
    return view


def cancel_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("cancel", job_id))
    return view


class PromptModal(discord.ui.Modal):
    """Sent to ask for a prompt. Submissions are handled by :meth:`Depth2ImgCog.on_interaction`
    from the custom id, so they work whatever happened to this object (a restart, say)."""

    def __init__(self, *, custom_id: str, title: str, prompt: str = "", negative: str = "") -> None:
        super().__init__(title=title, custom_id=custom_id, timeout=None)
        self.add_item(
            discord.ui.TextInput(
                label="Prompt",
                custom_id="prompt",
                style=discord.TextStyle.paragraph,
                default=prompt[:1000] or None,
                max_length=1000,
                required=True,
            )
        )
        self.add_item(
            discord.ui.TextInput(
                label="Negative prompt (optional)",
                custom_id="negative_prompt",
                style=discord.TextStyle.paragraph,
                default=negative[:1000] or None,
                max_length=1000,
                required=False,
            )
        )


def modal_values(data: Any) -> dict[str, str]:
    """custom_id → value for every text input of a submitted modal, whatever the nesting."""
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("custom_id"), str) and "value" in node:
                found[node["custom_id"]] = str(node.get("value") or "")
            for key in ("components", "component"):
                walk(node.get(key))
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(data.get("components") if isinstance(data, dict) else None)
    return found


# --- the cog ---------------------------------------------------------------------------------------


class Depth2ImgCog(commands.Cog):
    def __init__(
        self, bot: Depth2ImgBot, service: Depth2ImgService, *, acks: InteractionAcks | None = None
    ) -> None:
        self.bot = bot
        self.service = service
        self.acks = acks  # None: acknowledge through discord.py only (FAST_ACKS=off)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._menu_targets: dict[str, tuple[str, int, str]] = {}
        self.menu = app_commands.ContextMenu(name="Depth to image", callback=self.depth_to_image_menu)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(JobButton)
        self.bot.tree.add_command(self.menu)
        pending = await self.service.start()
        for job in pending:
            self._spawn(self._resume(job))
        if pending:
            log.info("resuming unfinished jobs", extra={"count": len(pending)})
        self._spawn(self.service.keep_leases(lambda job: self._spawn(self._resume(job))))
        if self.service.settings.keep_pictures_days > 0:
            self._spawn(self.service.prune_pictures_now_and_then(self.service.settings.keep_pictures_days))

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)
        self.bot.remove_dynamic_items(JobButton)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.service.close()
        if self.acks is not None:
            await self.acks.close()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tracked(self, coro: Awaitable[None]) -> None:
        """Run an interaction handler so that unloading (shutdown) can cancel it; the ledger keeps the job."""
        current = asyncio.current_task()
        if current is not None:
            self._tasks.add(current)
        try:
            await coro
        finally:
            if current is not None:
                self._tasks.discard(current)

    # --- /depth2img ----------------------------------------------------------------------------

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
        def params() -> Any:
            return build_params(
                prompt=prompt,
                negative_prompt=negative_prompt,
                strength=strength,
                steps=steps,
                guidance=guidance,
                seed=seed,
                samples=samples,
            )

        await self._tracked(
            self._request(
                interaction, params, read=image.read, source_url=image.url, declared_size=image.size
            )
        )

    # --- Apps → Depth to image ------------------------------------------------------------------

    async def depth_to_image_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = next(
            (a for a in message.attachments if (a.content_type or "").startswith("image/") or a.width), None
        )
        if picture is None:
            picture = next(iter(message.attachments), None)
        if picture is None:
            await interaction.response.send_message(
                "❌ That message has no picture attached. Pick a message with an image.", ephemeral=True
            )
            return
        key = secrets.token_hex(6)
        self._menu_targets[key] = (picture.url, picture.size, picture.filename)
        if len(self._menu_targets) > 1000:
            self._menu_targets.pop(next(iter(self._menu_targets)))
        await interaction.response.send_modal(
            PromptModal(custom_id=f"d2i:menu:{key}", title="Depth to image")
        )

    # --- buttons and modals ---------------------------------------------------------------------------

    async def on_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        job = await self.service.ledger.get(job_id)
        if job is None:
            await interaction.response.send_message(
                "🗑️ That picture is no longer stored (it was deleted). Start again with /depth2img.",
                ephemeral=True,
            )
            return
        if action == "delete":
            await self._delete(interaction, job)
        elif action == "compare":
            await self._compare(interaction, job)
        elif action == "cancel":
            await self._cancel(interaction, job)
        elif action == "edit":
            await interaction.response.send_modal(
                PromptModal(
                    custom_id=f"d2i:edited:{job.id}",
                    title="Edit prompt",
                    prompt=job.params.prompt,
                    negative=job.params.negative_prompt or "",
                )
            )
        else:
            await self._tracked(self._derived(interaction, job, action))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})
        custom_id = str(data.get("custom_id", ""))
        match = re.fullmatch(r"d2i:(edited|menu):([0-9a-f]{12})", custom_id)
        if match is None:
            return
        values = modal_values(interaction.data)
        prompt, negative = values.get("prompt", ""), values.get("negative_prompt") or None
        if match[1] == "edited":
            parent = await self.service.ledger.get(match[2])
            if parent is None:
                await interaction.response.send_message("🗑️ That picture is no longer stored.", ephemeral=True)
                return
            await self._tracked(self._derived(interaction, parent, "edit", prompt=prompt, negative=negative))
            return
        target = self._menu_targets.pop(match[2], None)
        if target is None:
            await interaction.response.send_message(
                "⌛ This form has expired. Use Apps → Depth to image on the message again.", ephemeral=True
            )
            return
        url, size, _ = target

        async def read_url() -> bytes:
            async with self.bot.http_session.get(url) as resp:
                if resp.status != 200:
                    raise InvalidInput("The picture could not be downloaded from Discord. Try again.")
                return await resp.read()

        def params() -> Any:
            return build_params(
                prompt=prompt, negative_prompt=negative, safety_checker=not _age_restricted(interaction)
            )

        await self._tracked(
            self._request(interaction, params, read=read_url, source_url=url, declared_size=size, kind="menu")
        )

    async def _derived(
        self,
        interaction: discord.Interaction,
        parent: Job,
        action: str,
        *,
        prompt: str | None = None,
        negative: str | None = None,
    ) -> None:
        def params() -> Any:
            return self.service.derive(parent, action, prompt=prompt, negative_prompt=negative)

        try:
            path = self.service.source_for(parent, action)
        except InvalidInput as exc:
            await interaction.response.send_message(describe(exc), ephemeral=True)
            return

        async def read() -> bytes:
            return await self.service.read_stored(path)

        await self._request(
            interaction, params, read=read, source_url=None, declared_size=1, parent=parent, kind=action
        )

    async def _delete(self, interaction: discord.Interaction, job: Job) -> None:
        allowed = interaction.user.id == job.user_id or bool(
            interaction.permissions and interaction.permissions.manage_messages
        )
        if not allowed:
            await interaction.response.send_message(
                "🚫 Only the member who asked for this picture, or someone with Manage Messages, can delete it.",
                ephemeral=True,
            )
            return
        await interaction.response.defer()
        if interaction.message is not None:
            await interaction.message.delete()
        log.info("result deleted", extra={"job": job.id, "by": interaction.user.id})

    async def _compare(self, interaction: discord.Interaction, job: Job) -> None:
        """The before | after view, made on request (it costs image work no one else should wait for)."""
        await interaction.response.defer(thinking=True)
        try:
            picture = await self.service.comparison(job)
        except Depth2ImgError as exc:
            await interaction.edit_original_response(content=describe(exc))
            return
        await interaction.edit_original_response(
            content=f"🪞 Before | after for job `{job.id}`",
            attachments=[upload(picture.data, picture.filename)],
            allowed_mentions=NO_MENTIONS,
        )

    async def _cancel(self, interaction: discord.Interaction, job: Job) -> None:
        if interaction.user.id != job.user_id:
            await interaction.response.send_message(
                "🚫 Only the member who asked can cancel this.", ephemeral=True
            )
            return
        if not self.service.cancel(job.id):
            await interaction.response.send_message("This job has already finished.", ephemeral=True)
            return
        await interaction.response.defer()  # the job's own final edit shows the cancellation

    # --- the shared request flow ----------------------------------------------------------------------

    async def _request(
        self,
        interaction: discord.Interaction,
        make_params: Callable[[], Any],
        *,
        read: Reader,
        source_url: str | None,
        declared_size: int,
        parent: Job | None = None,
        kind: str = "command",
    ) -> None:
        started = time.monotonic()
        job_id = secrets.token_hex(6)
        # 1. cheap checks, before the acknowledgement: a refusal stays private and costs nothing.
        # Until the answer is sent, picture work that can wait holds off (service.AnswerFirst).
        with self.service.answer_first.answering():
            try:
                rules = self.service.settings_for(interaction.guild_id)
                restricted = bool(rules.channels or rules.roles)  # look up only what the rules need
                params = check_request(
                    rules,
                    make_params(),
                    channel_id=interaction.channel_id,
                    role_ids=_role_ids(interaction) if rules.roles else (),
                    is_manager=restricted and _is_manager(interaction),
                    age_restricted=rules.nsfw_in_age_restricted and _age_restricted(interaction),
                )
                self.service.check_declared_size(declared_size)
                ticket = self.service.admission.admit(
                    interaction.user.id,
                    interaction.guild_id,
                    cooldown_s=rules.cooldown_s,
                    member_daily_quota=rules.member_daily_quota,
                )
            except RequestRejected as exc:
                log.info("job rejected", extra={"job": job_id, "reason": type(exc).__name__})
                self.service.metrics.rejected.labels(reason=type(exc).__name__).inc()
                await interaction.response.send_message(
                    describe(exc), ephemeral=True, allowed_mentions=NO_MENTIONS
                )
                return
            # 2. acknowledge at once.
            try:
                message_id = await self._acknowledge(interaction)
            except InteractionExpired:
                ticket.close()
                log.warning(
                    "interaction expired before the bot could answer",
                    extra={"interaction_id": interaction.id},
                )
                return
            except BaseException:
                ticket.close()
                raise

        with ticket:
            self.service.metrics.ack_seconds.observe(time.monotonic() - started)
            origin = Origin(
                user_id=interaction.user.id,
                channel_id=interaction.channel_id or 0,
                guild_id=interaction.guild_id,
                application_id=interaction.application_id,
                interaction_token=interaction.token,
                interaction_created_at=interaction.created_at.timestamp(),
                message_id=message_id,
                upload_limit_bytes=max(1024, interaction.filesize_limit - _UPLOAD_MARGIN),
            )
            # 3. the bytes decide whether this is an image; still no API call.
            try:
                job = await self.service.accept(
                    job_id,
                    params,
                    origin,
                    read=read,
                    source_url=source_url,
                    parent_id=parent.id if parent else None,
                    kind=kind,
                )
            except InvalidInput as exc:
                log.info("job rejected", extra={"job": job_id, "reason": "invalid image"})
                self.service.metrics.rejected.labels(reason=type(exc).__name__).inc()
                await self._reject_privately(interaction, describe(exc))
                return

            # 4. run with live progress, deliver, then record the final state.
            reporter = ProgressReporter(interaction, self.service, job, ticket)
            outcome = await self.service.run(job, ticket, started_at=started, on_progress=reporter.update)
            await reporter.stop()
            # The API's part is over: the member may ask again as soon as they see this outcome.
            ticket.release_member()
            if not await self._may_deliver(outcome):
                return
            content, files, view = self._render(outcome, mention=interaction.user.mention)
            try:
                await interaction.edit_original_response(
                    content=content, attachments=files, view=view, allowed_mentions=NO_MENTIONS
                )
            except discord.HTTPException:
                # Discord refused the delivery: record it as failed (never re-sent later), and let
                # the global handler tell the member, with a reference.
                await self.service.finish(Outcome(outcome.job, error=DeliveryFailed("discord refused")))
                raise
            self.service.metrics.job_seconds.observe(time.monotonic() - started)
            await self.service.finish(outcome)

    async def _acknowledge(self, interaction: discord.Interaction) -> int | None:
        """Answer "thinking…" at once; returns the id of the message Discord made for it, if known.

        Through the bot's lean connections when FAST_ACKS is on (acks.py: a fraction of discord.py's
        cost per acknowledgement, which is what members in a burst wait for), else, or when that path
        cannot confirm it, through discord.py, which succeeds or raises its usual exceptions."""
        acks = self.acks
        if acks is not None:
            try:
                message_id = await acks.defer(interaction.id, interaction.token)
            except AckNotConfirmed as exc:
                if exc.code == UNKNOWN_INTERACTION:
                    self.service.metrics.acks.labels(path="expired").inc()
                    raise InteractionExpired() from None
                if exc.code == ALREADY_ACKNOWLEDGED:
                    interaction.extras[ACKNOWLEDGED] = True
                    self.service.metrics.acks.labels(path="fast").inc()
                    return None
                log.info(
                    "acknowledging through discord.py instead",
                    extra={"interaction_id": interaction.id, "reason": str(exc), "sent": exc.sent},
                )
            else:
                interaction.extras[ACKNOWLEDGED] = True
                self.service.metrics.acks.labels(path="fast").inc()
                return message_id
        try:
            message_id = await self._acknowledge_through_discord_py(interaction)
        except discord.HTTPException as exc:
            if exc.code != ALREADY_ACKNOWLEDGED:  # the lean path's request did get through after all
                raise
            interaction.extras[ACKNOWLEDGED] = True
            message_id = None
        self.service.metrics.acks.labels(path="discord_py").inc()
        return message_id

    @staticmethod
    async def _acknowledge_through_discord_py(interaction: discord.Interaction) -> int | None:
        callback = await interaction.response.defer(thinking=True)
        return callback.message_id if callback is not None else None

    # --- resumed jobs ---------------------------------------------------------------------------

    async def _resume(self, job: Job) -> None:
        ticket = self.service.admission.admit_resumed(job.user_id)
        with ticket:
            log.info("job resumed", extra={"job": job.id, "state": str(job.state), "resumes": job.resumes})
            self.service.metrics.resumed.inc()
            outcome = await self.service.run(job, ticket, started_at=time.monotonic())
            ticket.release_member()
            if not await self._may_deliver(outcome):
                return
            try:
                await self._deliver_resumed(outcome)
            except discord.HTTPException as exc:
                log.warning("resumed delivery failed", extra={"job": job.id, "status": exc.status})
                return  # left unfinished: the next start tries again
            await self.service.finish(outcome)

    async def _may_deliver(self, outcome: Outcome) -> bool:
        """Only the process that owns a job tells the member (several processes may share the
        ledger); one that lost it stays silent, and the owner delivers."""
        if isinstance(outcome.error, JobTakenOver):
            return False
        return await self.service.claim_delivery(outcome.job)

    async def _deliver_resumed(self, outcome: Outcome) -> None:
        job = outcome.job
        fresh = time.time() - job.interaction_created_at < TOKEN_SAFE_AGE_S
        if fresh and job.message_id is not None:
            content, files, view = self._render(outcome, mention=f"<@{job.user_id}>")
            webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=self.bot)
            try:
                await webhook.edit_message(
                    job.message_id,
                    content=content,
                    attachments=files,
                    view=view,
                    allowed_mentions=NO_MENTIONS,
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
        content, files, view = self._render(outcome, mention=f"<@{job.user_id}>")
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        ping = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        await channel.send(
            content=content, files=files, view=view or discord.utils.MISSING, allowed_mentions=ping
        )

    # --- /depth2img-show, -history, -forget-me ----------------------------------------------------

    @app_commands.command(name="depth2img-show", description="Bring back a past picture, with its buttons.")
    @app_commands.describe(job="The job id, as shown under a result or in /depth2img-history.")
    async def show(self, interaction: discord.Interaction, job: app_commands.Range[str, 1, 40]) -> None:
        found = await self.service.ledger.get(job.strip().lower().strip("`"))
        if found is None or found.state in (JobState.FAILED, JobState.CANCELLED) or not found.result_path:
            await interaction.response.send_message(
                "🔎 No delivered picture has that id. See /depth2img-history for yours.", ephemeral=True
            )
            return
        if found.guild_id is not None and found.guild_id != interaction.guild_id:
            await interaction.response.send_message(
                "🔎 That picture was made in another server.", ephemeral=True
            )
            return
        try:
            data = await self.service.read_stored(found.result_path)
        except InvalidInput as exc:
            await interaction.response.send_message(describe(exc), ephemeral=True)
            return
        name = found.result_path.rsplit("/", 1)[-1]
        text = f"🖼️ Job `{found.id}` by <@{found.user_id}>\n" + _params_block(found)
        await interaction.response.send_message(
            text,
            file=upload(data, name),
            view=result_view(found.id),
            allowed_mentions=NO_MENTIONS,
        )

    @app_commands.command(name="depth2img-history", description="Your recent pictures (only you see this).")
    async def history(self, interaction: discord.Interaction) -> None:
        jobs = await self.service.history(interaction.user.id, limit=10)
        if not jobs:
            await interaction.response.send_message(
                "You have no pictures yet. Try /depth2img!", ephemeral=True
            )
            return
        lines = ["**Your recent pictures** (newest first; bring one back with /depth2img-show):"]
        for job in jobs:
            prompt = neutralise(job.params.prompt.replace("`", "'"))
            if len(prompt) > 60:
                prompt = prompt[:59] + "…"
            lines.append(f"`{job.id}` · {job.state} · <t:{int(job.created_at)}:R> · {prompt}")
        await interaction.response.send_message(
            "\n".join(lines)[:2000], ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(
        name="depth2img-forget-me", description="Delete your stored pictures and your history with this bot."
    )
    async def forget_me(self, interaction: discord.Interaction) -> None:
        count = await self.service.forget(interaction.user.id)
        await interaction.response.send_message(
            f"🧹 Done: deleted {count} job(s) with their stored pictures. Messages already posted in channels stay; "
            "use their Delete button to remove them.",
            ephemeral=True,
        )

    # --- /depth2img-settings (Manage Server) ------------------------------------------------------

    settings_group = app_commands.Group(
        name="depth2img-settings",
        description="Set where and how /depth2img may be used in this server (Manage Server).",
        default_permissions=discord.Permissions(manage_guild=True),
        guild_only=True,
    )

    async def _change(
        self, interaction: discord.Interaction, change: Callable[[GuildSettings], GuildSettings] | None
    ) -> None:
        if interaction.guild_id is None or not _is_manager(interaction):
            await interaction.response.send_message(
                "🚫 Only members with the Manage Server permission can change these settings.", ephemeral=True
            )
            return
        current = self.service.settings_for(interaction.guild_id)
        if change is not None:
            try:
                current = await self.service.save_settings(
                    interaction.guild_id, change(current), by=interaction.user.id
                )
            except InvalidInput as exc:
                await interaction.response.send_message(describe(exc), ephemeral=True)
                return
        default_cooldown = self.service.settings.user_cooldown_s
        await interaction.response.send_message(
            current.summary(default_cooldown), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @settings_group.command(name="show", description="Show this server's settings.")
    async def settings_show(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, None)

    @settings_group.command(name="channel", description="Allow or stop /depth2img in a channel.")
    @app_commands.describe(
        channel="The channel.",
        allowed="Yes: allow it there (once any channel is listed, only listed channels work). No: remove it.",
    )
    async def settings_channel(
        self, interaction: discord.Interaction, channel: discord.TextChannel, allowed: bool
    ) -> None:
        await self._change(interaction, lambda s: s.with_listed("channels", channel.id, allowed))

    @settings_group.command(name="role", description="Allow or stop a role using /depth2img.")
    @app_commands.describe(
        role="The role.",
        allowed="Yes: allow it (once any role is listed, only listed roles may use the bot). No: remove it.",
    )
    async def settings_role(
        self, interaction: discord.Interaction, role: discord.Role, allowed: bool
    ) -> None:
        await self._change(interaction, lambda s: s.with_listed("roles", role.id, allowed))

    @settings_group.command(name="limits", description="Set quotas and limits for this server's members.")
    @app_commands.describe(
        daily_quota="Pictures one member may make per day (0: no limit).",
        cooldown="Seconds a member waits between two requests.",
        max_samples="Most pictures per request (1-4).",
        max_steps="Most steps per request (1-50).",
    )
    async def settings_limits(
        self,
        interaction: discord.Interaction,
        daily_quota: app_commands.Range[int, 0, 10000] | None = None,
        cooldown: app_commands.Range[int, 0, 3600] | None = None,
        max_samples: app_commands.Range[int, 1, 4] | None = None,
        max_steps: app_commands.Range[int, 1, 50] | None = None,
    ) -> None:
        def change(s: GuildSettings) -> GuildSettings:
            return replace(
                s,
                member_daily_quota=s.member_daily_quota if daily_quota is None else daily_quota,
                cooldown_s=s.cooldown_s if cooldown is None else float(cooldown),
                max_samples=s.max_samples if max_samples is None else max_samples,
                max_steps=s.max_steps if max_steps is None else max_steps,
            )

        await self._change(interaction, change)

    @settings_group.command(name="content", description="Set the content policy.")
    @app_commands.describe(
        nsfw_in_age_restricted="Turn the API's safety checker off in age-restricted channels (it stays on elsewhere)."
    )
    async def settings_content(self, interaction: discord.Interaction, nsfw_in_age_restricted: bool) -> None:
        await self._change(interaction, lambda s: replace(s, nsfw_in_age_restricted=nsfw_in_age_restricted))

    @settings_group.command(name="reset", description="Put every setting back to its default.")
    async def settings_reset(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, lambda _: GuildSettings())

    # --- rendering and helpers --------------------------------------------------------------------

    def _render(
        self, outcome: Outcome, *, mention: str
    ) -> tuple[str, list[discord.File], discord.ui.View | None]:
        job = outcome.job
        if outcome.result is not None:
            result = outcome.result
            files = [upload(img.data, img.filename) for img in result.images]
            text = result_text(job.params, result, user_mention=mention)
            extra = _params_block(job, seed=result.seed)
            if job.parent_id:
                extra = f"↪️ from `{job.parent_id}` · " + extra
            text = f"{text}\n{extra}" if len(text) + len(extra) + 1 <= 2000 else text
            return text, files, result_view(job.id)
        assert outcome.error is not None
        text = describe(outcome.error)
        if job.resumes and mention:
            text = f"{mention} {text}"
        return f"{text}\n-# ref `{job.id}`", [], None

    async def _reject_privately(self, interaction: discord.Interaction, text: str) -> None:
        """After a public defer: remove the "thinking…" message and tell only the member."""
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            await interaction.edit_original_response(content=text, allowed_mentions=NO_MENTIONS)
            return
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


class ProgressReporter:
    """Shows where a job is while it runs: its place in the bot's queue or at the API, with an ETA as
    a live Discord timestamp and a Cancel button. Edits at most every ``PROGRESS_INTERVAL_S`` seconds."""

    def __init__(
        self, interaction: discord.Interaction, service: Depth2ImgService, job: Job, ticket: Ticket
    ) -> None:
        self.interaction = interaction
        self.service = service
        self.job = job
        self.ticket = ticket
        self.edits = 0
        self._last_text: str | None = None
        self._last_at = -math.inf
        self._timer: asyncio.Task[None] | None = None
        self._stage: Progress | None = None
        self.interval = service.settings.progress_interval_s

    async def update(self, event: Progress) -> None:
        self._stage = event
        if self._timer is None:
            self._timer = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self._show()
            await asyncio.sleep(self.interval)

    def _text(self) -> str | None:
        event = self._stage
        if event is None:
            return None
        now = time.time()
        if event.stage == "waiting_for_slot":
            position = self.service.admission.position(self.ticket)
            if position == 0:
                return None
            per_slot = self.service.typical_job_s / max(1, self.service.admission.max_concurrent)
            eta = math.ceil(now + position * per_slot + self.service.typical_job_s)
            return f"⏳ Waiting for a free slot (position {position}) — expected <t:{eta}:R>."
        if event.stage == "queued_at_api":
            if event.eta_s is not None:
                return f"⏳ Queued at the image API — expected <t:{math.ceil(now + event.eta_s)}:R>."
            return "⏳ Queued at the image API…"
        return None

    async def _show(self) -> None:
        text = self._text()
        if text is None or text == self._last_text or self.service.is_running(self.job.id) is False:
            return
        if time.monotonic() - self._last_at < self.interval:
            return
        self._last_text, self._last_at = text, time.monotonic()
        try:
            await self.interaction.edit_original_response(
                content=text, view=cancel_view(self.job.id), allowed_mentions=NO_MENTIONS
            )
            self.edits += 1
        except discord.HTTPException:
            log.warning("progress edit failed", extra={"job": self.job.id})

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.wait({self._timer})


def _is_manager(interaction: discord.Interaction) -> bool:
    return bool(interaction.permissions and interaction.permissions.manage_guild)


def _role_ids(interaction: discord.Interaction) -> tuple[int, ...]:
    roles = getattr(interaction.user, "roles", None) or []
    return tuple(r.id for r in roles)


def _age_restricted(interaction: discord.Interaction) -> bool:
    channel = interaction.channel
    return bool(getattr(channel, "nsfw", False)) if channel is not None else False


def _params_block(job: Job, seed: int | None = None) -> str:
    """The options as one line that is easy to copy on a phone (a code block, no Markdown inside)."""
    p = job.params
    parts = [f"prompt:{p.prompt}"]
    if p.negative_prompt:
        parts.append(f"negative_prompt:{p.negative_prompt}")
    for name, value in (("strength", p.strength), ("steps", p.steps), ("guidance", p.guidance)):
        if value is not None:
            parts.append(f"{name}:{value:g}" if isinstance(value, float) else f"{name}:{value}")
    if (seed if seed is not None else p.seed) is not None:
        parts.append(f"seed:{seed if seed is not None else p.seed}")
    if p.samples != 1:
        parts.append(f"samples:{p.samples}")
    line = neutralise(" ".join(parts).replace("`", "'"))
    if len(line) > 600:
        line = line[:599] + "…"
    return f"job `{job.id}` · copy:\n```\n/depth2img {line}\n```"
