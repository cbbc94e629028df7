"""Telling the member: an outcome rendered as a message, delivered by the one path that live and
resumed jobs share.

The "thinking…" message is edited into the result while the interaction token lives (Discord gives it
15 minutes); when it no longer can be (the token expired or is about to, the message is gone, or Discord
kept answering 5xx through discord.py's retries), the result goes to the channel as a normal message
that mentions only the member: a downloaded picture is never thrown away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import discord

from cogs.botcore.tasks import create_task
from cogs.botcore.transport import CONNECTION_LOST, NO_ANSWER
from cogs.depth2img.core.jobs import Outcome
from cogs.depth2img.errors import DeliveryInterrupted, Depth2ImgError, InternalError
from cogs.depth2img.store import Job
from cogs.i18n import text as say

from . import cards, text
from .acknowledge import send
from .channels import may_show_there
from .components import result_view, spent, upload
from .langs import members, of_job
from .posting import earlier_post, posted

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()
# Interaction tokens live 15 minutes; past this age, deliver as a channel message instead.
TOKEN_SAFE_AGE_S = 14 * 60
INVALID_WEBHOOK_TOKEN = 401
# A request to Discord that failed: refused by Discord (or rate-limited for longer than the bot waits:
# cogs/botcore/ratelimits.py), or without an answer
FAILED: tuple[type[Exception], ...] = (discord.HTTPException, discord.RateLimited, *NO_ANSWER)
# What delivering a result may end in: Discord refused it, or took nothing for it
UNDELIVERED: tuple[type[Exception], ...] = (*FAILED, DeliveryInterrupted)
NOTE_TIMEOUT_S = 10.0  # the job's message told where its result is, or that it waits (see _noted)
# What became of the job's message when it was to be edited into the result
Edited = Literal["edited", "gone", "unanswered"]
EDITED: Edited = "edited"
GONE: Edited = "gone"  # it can no longer be edited (see _gone)
UNANSWERED: Edited = "unanswered"  # no edit got an answer the bot could read, and none had landed


def render(
    outcome: Outcome, lang: str, *, full: bool = False, withheld: bool = False
) -> tuple[str, list[discord.File], discord.ui.View | None]:
    """The message for an outcome, in ``lang``: the images with their text and buttons (``full``: the
    whole card; else the compact one, its details behind a button), or one clear sentence.
    ``withheld``: the images may not be shown in the job's channel (see :func:`may_show_there`): where
    they are kept, and how to bring them back."""
    job = outcome.job
    if outcome.result is not None and withheld:
        return cards.withheld_text(job, lang), [], None
    if outcome.result is not None:
        images = outcome.result.images
        alts = cards.result_alts(job, images, lang)
        files = [upload(img.data, img.filename, alt) for img, alt in zip(images, alts, strict=True)]
        view = result_view(job.id, lang, depth_map=outcome.result.depth_map is not None, details=not full)
        if full:
            return cards.result_message(job, outcome.result, lang), files, view
        return cards.compact_card(job, outcome.result, lang), files, view
    assert outcome.error is not None
    return text.failure_message(job, outcome.error, lang), [], None


def _gone(exc: discord.HTTPException) -> bool:
    """Whether the interaction's message cannot be edited (now): the token expired, the message (or
    the interaction's webhook) is unknown, or Discord failed on its side after discord.py's retries."""
    return (
        isinstance(exc, discord.NotFound | discord.DiscordServerError) or exc.status == INVALID_WEBHOOK_TOKEN
    )


async def deliver(
    client: discord.Client,
    outcome: Outcome,
    *,
    posting: Callable[[Job], Awaitable[bool]],
    interaction: discord.Interaction[Any] | None = None,
    full: bool = False,
    limited_until: float | None = None,
) -> None:
    """Edit the job's message into the outcome (through ``interaction`` when it is at hand, else
    through the token kept in the ledger), or fall back to the channel, once ``posting`` has recorded
    that (False: another process delivers the job now). A request that gets no answer, or one that
    cannot be read, may have been done: an edit is looked at (did it land?) and made once more; a
    channel post is made again with the same nonce (Discord makes no second message), also by a job
    resumed after a crash in its middle (it goes to the channel again, not to its message, once the
    channel's history shows it is not there: see posting.py). Raises
    :class:`discord.HTTPException` when Discord refuses both, and :class:`DeliveryInterrupted` when
    the channel post failed on Discord's side (5xx), got no readable answer every time, or is
    rate-limited for longer than the bot waits. ``limited_until`` (monotonic): the job's message is
    rate-limited so until then (its progress line met that): it is not edited, the result goes to the
    channel. A message so limited is pointed to the post once the limit is over, if its token lives."""
    job = outcome.job
    lang = of_job(client, job, interaction)  # (the channel sees it: the server's language)
    withheld = outcome.result is not None and not may_show_there(client, job)
    if withheld:  # (its channel stopped being age-restricted while the job ran)
        log.info(
            "the job's picture is kept, not shown: its channel is no longer age-restricted",
            extra={"job": job.id},
        )
    fresh = time.time() - job.interaction_created_at < TOKEN_SAFE_AGE_S
    known = interaction is not None or job.message_id is not None
    free_at = limited_until if limited_until is not None and time.monotonic() < limited_until else None
    editable = fresh and free_at is None and known
    if job.channel_post_at is not None:  # (resumed after a crash in the middle of that post)
        point = editable
        earlier = await earlier_post(client, job)
        if earlier is not None:  # (Discord's nonce would not tell: it is remembered a few minutes)
            log.info(
                "the job's result had been posted in its channel; not posting it again", extra={"job": job.id}
            )
            if point:
                await _noted(client, job, interaction, _pointer(lang, earlier))
            return
        log.info("the job's result was being posted in its channel; posting it again", extra={"job": job.id})
    else:
        try:
            edited = (
                await _edited(client, outcome, lang, interaction, full=full, withheld=withheld)
                if editable
                else GONE
            )
        except discord.RateLimited as exc:  # (not applied; made again now, it would be refused again)
            log.info(
                "the job's message is rate-limited for longer than the bot waits; sending to the channel",
                extra={"job": job.id, "retry_after": round(exc.retry_after, 1)},
            )
            edited, free_at = GONE, time.monotonic() + exc.retry_after
        if edited == EDITED or not await posting(job):
            return
        point = edited == UNANSWERED  # (a message that is gone, or refused edits, is left alone)
    try:
        post = await posted(client, job, lambda: render(outcome, lang, full=full, withheld=withheld))
    except DeliveryInterrupted:  # (delivered later: its message says so, not an old progress line)
        if point:
            await _noted(client, job, interaction, say(lang, "reply.waiting_for_discord"))
        raise
    if point:
        await _noted(client, job, interaction, _pointer(lang, post))
    elif free_at is not None and fresh and known:
        _note_later(client, job, interaction, _pointer(lang, post), free_at)


async def _edited(
    client: discord.Client,
    outcome: Outcome,
    lang: str,
    interaction: discord.Interaction[Any] | None,
    *,
    full: bool,
    withheld: bool,
) -> Edited:
    """The job's message edited into the outcome; else no longer editable, or without an answer.
    Raises :class:`discord.RateLimited` for a limit longer than the bot waits."""
    job = outcome.job
    for attempt in range(2):
        content, files, view = render(outcome, lang, full=full, withheld=withheld)
        with spent(view):
            try:
                await _edit(client, job, interaction, content=content, files=files, view=view)
                return EDITED
            except discord.HTTPException as exc:
                if not _gone(exc):
                    raise
                log.info(
                    "the job's message can no longer be edited; sending to the channel",
                    extra={"job": job.id, "status": exc.status},
                )
                return GONE
            except discord.RateLimited:  # (for longer than the bot waits: see deliver)
                raise
            except Exception as exc:  # (no answer, or none discord.py could read: see NO_ANSWER)
                log.info(
                    "the job's message edit got no readable answer",
                    extra={"job": job.id, "error": type(exc).__name__, "attempt": attempt + 1},
                )
            if await _landed(client, job, interaction, content=content, files=len(files)):
                return EDITED
    return UNANSWERED


async def _landed(
    client: discord.Client,
    job: Job,
    interaction: discord.Interaction[Any] | None,
    *,
    content: str,
    files: int,
) -> bool:
    """Whether an edit that got no readable answer was applied after all: the message, asked of
    Discord, has its text and its number of files. (False when that cannot be told.)"""
    message: discord.Message
    try:
        if job.message_id is not None:  # (asked by id: discord.py keeps an earlier original_response())
            webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=client)
            message = await webhook.fetch_message(job.message_id)
        elif interaction is not None:
            message = await interaction.original_response()
        else:
            return False
    except FAILED:
        return False
    landed = _shows(message, content, files)
    if landed:
        log.info("the job's message edit had landed", extra={"job": job.id})
    return landed


def _shows(message: discord.Message, content: str, files: int) -> bool:
    """Whether ``message`` is what an edit to ``content`` with ``files`` files made of it."""
    return message.content.strip() == content.strip() and len(message.attachments) == files


async def edit_original(
    interaction: discord.Interaction[Any], content: str, make_files: Callable[[], list[discord.File]]
) -> None:
    """A button's answer edited into its "thinking…" message. An edit without a readable answer is
    looked at (did it land?), and made once more."""
    for attempt in range(2):
        files = make_files()  # (discord.py closes a file once it is sent)
        try:
            await interaction.edit_original_response(
                content=content, attachments=files, allowed_mentions=NO_MENTIONS
            )
            return
        except (discord.HTTPException, discord.RateLimited):
            raise
        except Exception as exc:  # (no answer, or none discord.py could read)
            log.info(
                "an edit got no readable answer", extra={"error": type(exc).__name__, "attempt": attempt + 1}
            )
            if attempt:
                raise
        try:
            if _shows(await interaction.original_response(), content, len(files)):
                return
        except FAILED:
            pass


async def _noted(
    client: discord.Client, job: Job, interaction: discord.Interaction[Any] | None, content: str
) -> None:
    """The job's message, which got no answer (or a long rate limit) when it was edited into the
    result, edited to point to the post in the channel, or to say that the result waits for Discord
    (without its Cancel button): else it would show "thinking…", or an old progress line, for good.
    Tried once, for at most :data:`NOTE_TIMEOUT_S`: the member has the result already, or Discord is
    not taking requests."""
    try:
        async with asyncio.timeout(NOTE_TIMEOUT_S):
            await _edit(client, job, interaction, content=content, files=[], view=None)
    except FAILED as exc:
        log.info("the job's message could not be edited", extra={"job": job.id, "error": type(exc).__name__})


def _pointer(lang: str, post: discord.Message) -> str:
    """The job's message once its result is in the channel: where to find it."""
    return say(lang, "reply.posted_in_channel", link=post.jump_url)


def _note_later(
    client: discord.Client,
    job: Job,
    interaction: discord.Interaction[Any] | None,
    content: str,
    free_at: float,
) -> None:
    """The job's message, rate-limited when its result was to be edited in (so it still shows
    "thinking…" or a progress line), pointed to the post in the channel once the limit is over (at
    ``free_at``, monotonic): in the background, if its token still lives then."""
    wait = free_at - time.monotonic()
    if not time.time() + wait < job.interaction_created_at + TOKEN_SAFE_AGE_S:
        log.info("the job's message stays limited for as long as it can be edited", extra={"job": job.id})
        return

    async def later() -> None:
        await asyncio.sleep(wait)
        await _noted(client, job, interaction, content)

    create_task(later(), name=f"note-{job.id}", keep_in=_NOTES)


_NOTES: set[asyncio.Task[None]] = set()  # (see _note_later)


async def _edit(
    client: discord.Client,
    job: Job,
    interaction: discord.Interaction[Any] | None,
    *,
    content: str,
    files: list[discord.File],
    view: discord.ui.View | None,
) -> None:
    if interaction is not None:
        await interaction.edit_original_response(
            content=content, attachments=files, view=view, allowed_mentions=NO_MENTIONS
        )
        return
    assert job.message_id is not None
    webhook = discord.Webhook.partial(job.application_id, job.interaction_token, client=client)
    await webhook.edit_message(
        job.message_id, content=content, attachments=files, view=view, allowed_mentions=NO_MENTIONS
    )


async def reply_privately(interaction: discord.Interaction[Any], message: str) -> None:
    """After a public "thinking…": remove it and tell only the member (if it cannot be removed, it
    becomes the answer)."""
    if await _removed(interaction):
        await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.edit_original_response(content=message, allowed_mentions=NO_MENTIONS)


async def _removed(interaction: discord.Interaction[Any]) -> bool:
    """Delete the interaction's "thinking…" message: whether it is gone. A deletion without an answer
    is made again; "Unknown Message" then means the first one deleted it."""
    for _ in range(2):
        try:
            await interaction.delete_original_response()
            return True
        except discord.NotFound:
            return True
        except (discord.HTTPException, discord.RateLimited):
            return False
        except NO_ANSWER:
            continue
    return False


async def message_gone(client: discord.Client, job: Job) -> bool:
    """Whether the job's result message was deleted outside the bot (by a moderator), asked of
    Discord. A message the bot may not read, or a question without an answer: counted as there."""
    if job.message_id is None:
        return False
    try:
        await client.get_partial_messageable(job.channel_id).fetch_message(job.message_id)
    except discord.NotFound:
        return True
    except FAILED:  # (refused, or no answer)
        return False
    return False


async def tell(interaction: discord.Interaction[Any], key: str, **params: object) -> None:
    """A fixed private answer, in the member's language."""
    await send(interaction, say(members(interaction), key, **params), ephemeral=True)


async def answer_anyway(interaction: discord.Interaction[Any], message: str) -> None:
    """The member's last word from a button or form handler that failed, whatever had been answered:
    privately if nothing was yet, else as a follow-up (never an edit: after a button's deferred update
    the "original response" is the result message itself). Never raises."""
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.followup.send(message, ephemeral=True, allowed_mentions=NO_MENTIONS)
    except discord.HTTPException as exc:
        log.warning("could not tell the member", extra={"status": exc.status})
    except FAILED as exc:  # (no answer, or rate-limited for long)
        log.warning("could not tell the member", extra={"error": type(exc).__name__})


async def failed(interaction: discord.Interaction[Any], exc: Exception, what: str) -> None:
    """A button's or form's handler raised ``exc``: log it, and tell the member what happened."""
    if isinstance(exc, CONNECTION_LOST):  # (Discord's trouble or the network's, not a bug: a warning)
        log.warning("a request to Discord got no answer", extra={"what": what, "error": type(exc).__name__})
        await answer_anyway(interaction, say(members(interaction), "bot.discord_no_answer"))
        return
    if isinstance(exc, discord.RateLimited):  # (for longer than the bot waits: botcore/ratelimits.py)
        log.warning("Discord rate-limits the bot for longer than it waits", extra={"what": what})
        busy = say(members(interaction), "bot.discord_busy")
        if interaction.response.type is discord.InteractionResponseType.deferred_channel_message:
            # its "thinking…" cannot be edited now (that may be what is limited): removed instead
            with contextlib.suppress(*FAILED):
                await reply_privately(interaction, busy)
                return
        await answer_anyway(interaction, busy)
        return
    error = exc if isinstance(exc, Depth2ImgError) else InternalError(type(exc).__name__)
    log.error("interaction failed", extra={"what": what, "error": type(exc).__name__})
    await answer_anyway(interaction, text.describe(error, members(interaction)))
