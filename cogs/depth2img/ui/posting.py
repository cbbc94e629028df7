"""A job's result posted in its channel (when its message could not be edited into it): once, whatever
answers went missing and whichever process crashed in the middle of it.

Two things keep a post single. Its nonce: discord.py sends it with ``enforce_nonce``, and Discord then
answers a post made again "within the past few minutes" with the message it already made. And, for a
job resumed later than that after a crash in the middle of its post, the channel's history: the post is
looked for there before it is made again.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterator, Sequence

import discord

from cogs.depth2img.errors import DeliveryInterrupted
from cogs.depth2img.store import Job

from .components import spent

log = logging.getLogger(__name__)

NONCE_MAX = 25  # Create Message's ``nonce``: "up to 25 characters"
POST_ATTEMPTS = 3  # a channel post without a readable answer, made again (its nonce makes that safe)
# The history read from this long before the post was started: the bot's clock against Discord's
# message ids (snowflakes carry Discord's time), which may differ by a little
CLOCK_SLACK_S = 120.0
# Messages read: the oldest ones from there on, where the post is (one page: Discord's most)
HISTORY_PAGE = 100
LOOK_TIMEOUT_S = 15.0
# A message as posted: its text, its files, its buttons (made anew for each attempt: discord.py closes
# the files it sent)
Message = tuple[str, list[discord.File], discord.ui.View | None]


async def posted(client: discord.Client, job: Job, make: Callable[[], Message]) -> discord.Message:
    """``make``'s message posted in the job's channel, mentioning only its member. Raises
    :class:`discord.HTTPException` when Discord refuses it, and :class:`DeliveryInterrupted` when it
    failed on Discord's side (5xx), got no readable answer every time, or is rate-limited for longer
    than the bot waits."""
    channel = client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
    ping = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
    # One nonce for every attempt, made from the job: the post of a job resumed right after a restart is
    # not doubled either.
    nonce = f"d2i-{job.id}"[:NONCE_MAX]
    unanswered: Exception | None = None
    for attempt in range(POST_ATTEMPTS):
        content, files, view = make()
        with spent(view):
            try:
                return await channel.send(
                    content=content,
                    files=files,
                    view=view or discord.utils.MISSING,
                    allowed_mentions=ping,
                    nonce=nonce,
                )
            except discord.Forbidden:
                log.warning(
                    "the job's result cannot be posted in its channel: the bot lacks View Channel, Send "
                    "Messages (in a thread: Send Messages in Threads) or Attach Files there (give its role "
                    "those, or use /depth2img-settings to keep it to channels where it has them)",
                    extra={"job": job.id, "channel_id": job.channel_id},
                )
                raise
            except discord.DiscordServerError as exc:  # (after discord.py's own tries: Discord's trouble)
                raise DeliveryInterrupted(f"{type(exc).__name__} {exc.status}") from exc
            except discord.RateLimited as exc:  # (for longer than the bot waits: posted later)
                raise DeliveryInterrupted(f"RateLimited {exc.retry_after:.0f} s") from exc
            except discord.HTTPException:
                raise
            except Exception as exc:  # (no answer, or none discord.py could read)
                log.info(
                    "the job's channel message got no readable answer",
                    extra={"job": job.id, "error": type(exc).__name__, "attempt": attempt + 1},
                )
                unanswered = exc
    raise DeliveryInterrupted(type(unanswered).__name__) from unanswered


async def earlier_post(client: discord.Client, job: Job, *, latest: bool = False) -> discord.Message | None:
    """The job's post in its channel, if a process that crashed in the middle of posting it got it
    there: looked for in the channel's history from a little before the post was started (the ledger's
    ``channel_post_at``); ``latest``: among the channel's latest messages too (a kept result posted late,
    whose answer went missing). None when it is not there, or when that cannot be told: without Read
    Message History Discord returns no messages; a refusal, no answer, or one that cannot be read."""
    me = client.user
    if me is None:
        return None
    pages: list[datetime.datetime | None] = [None] if latest else []
    if job.channel_post_at is not None:
        pages.insert(0, datetime.datetime.fromtimestamp(job.channel_post_at - CLOCK_SLACK_S, tz=datetime.UTC))
    channel = client.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
    try:
        async with asyncio.timeout(LOOK_TIMEOUT_S):
            for after in pages:
                async for message in channel.history(limit=HISTORY_PAGE, after=after):
                    if _is_post_of(message, job, me.id):
                        return message
    except Exception as exc:  # (any: the post is made again, as without this look)
        log.info(
            "the channel's history could not be read for the job's post",
            extra={"job": job.id, "error": type(exc).__name__},
        )
    return None


def _is_post_of(message: discord.Message, job: Job, me: int) -> bool:
    """Whether ``message`` is the job's post: the bot's own plain message (not an interaction's answer,
    such as the job's own message with its Cancel button) that carries the job's id: in its buttons'
    custom ids (a picture's), or, for a message without buttons (a failure's), in its text. (A picture
    made from this one names it in its text too, but its buttons carry its own id.)"""
    if (
        message.author.id != me
        or message.type is not discord.MessageType.default
        or message.id == job.message_id
    ):
        return False
    custom_ids = list(_custom_ids(message.components))
    if custom_ids:
        return any(custom_id.rsplit(":", 1)[-1] == job.id for custom_id in custom_ids)
    return f"`{job.id}`" in message.content


def _custom_ids(components: Sequence[object]) -> Iterator[str]:
    """The custom ids of the components, those in rows (or other containers) too."""
    for component in components:
        custom_id = getattr(component, "custom_id", None)
        if isinstance(custom_id, str):
            yield custom_id
        yield from _custom_ids(getattr(component, "children", ()))
