"""The command tree: one global error handler (bot-core's model). Each extension registers a formatter
that words its own errors, so a reloaded extension's classes still match; anything else unexpected
becomes a short message with a reference, and a log line."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable
from typing import Any

import discord
from discord import app_commands

from cogs.botcore.transport import CONNECTION_LOST, NO_ANSWER
from cogs.i18n import text as say

log = logging.getLogger(__name__)

# A request that got no answer, or that Discord rate-limits for longer than the bot waits (ratelimits.py)
UNSENT: tuple[type[Exception], ...] = (discord.RateLimited, *NO_ANSWER)

# (the error, the reader's Discord locale) -> the words, or None: not this extension's error
ErrorFormatter = Callable[[BaseException, str], str | None]


class AppCommandTree(app_commands.CommandTree[Any]):
    """Its ``error_formatters`` are asked first, in order (extensions add theirs at setup and take them
    back at teardown); then cooldowns and failed checks get a short sentence, and anything else a
    reference that finds its log line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_formatters: dict[str, ErrorFormatter] = {}

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, discord.NotFound) and original.code == 10062:
            # Discord gave up on this interaction (answered too late): nothing can be sent on it.
            log.warning(
                "interaction expired before the bot could answer", extra={"interaction_id": interaction.id}
            )
            return
        lang = interaction.locale.value
        if isinstance(original, CONNECTION_LOST):  # (Discord's trouble or the network's, not a bug)
            log.warning(
                "a request to Discord got no answer",
                extra={
                    "error": type(original).__name__,
                    "command": interaction.command.name if interaction.command else None,
                },
            )
            await send_final(interaction, say(lang, "bot.discord_no_answer"))
            return
        if isinstance(original, discord.RateLimited):  # (for longer than the bot waits: ratelimits.py)
            log.warning(
                "Discord rate-limits the bot for longer than it waits",
                extra={
                    "retry_after": round(original.retry_after, 1),
                    "command": interaction.command.name if interaction.command else None,
                },
            )
            await send_final(interaction, say(lang, "bot.discord_busy"))
            return
        worded = (formatter(original, lang) for formatter in self.error_formatters.values())
        text = next((t for t in worded if t is not None), None)
        if text is not None:
            await send_final(interaction, text)
            return
        if isinstance(error, app_commands.CommandOnCooldown):
            wait = say(lang, "time.seconds", n=math.ceil(error.retry_after))  # (one cooldown wording)
            text = say(lang, "error.cooling_down", wait=wait)
        elif isinstance(error, app_commands.CheckFailure):
            text = say(lang, "bot.not_here")
        else:
            ref = secrets.token_hex(4)
            log.error(
                "unhandled command error",
                exc_info=(type(original), original, original.__traceback__),
                extra={"ref": ref, "command": interaction.command.name if interaction.command else None},
            )
            text = say(lang, "bot.something_wrong", code=ref)
        await send_final(interaction, text)


async def send_final(interaction: discord.Interaction, text: str) -> None:
    """Tell the member, whatever state the interaction is in; never raise."""
    none = discord.AllowedMentions.none()
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=none)
            return
        try:
            await interaction.edit_original_response(content=text, attachments=[], allowed_mentions=none)
        except discord.NotFound:
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=none)
    except discord.HTTPException as exc:
        log.warning("could not deliver an error message", extra={"status": exc.status})
    except UNSENT as exc:
        log.warning("could not deliver an error message", extra={"error": type(exc).__name__})
