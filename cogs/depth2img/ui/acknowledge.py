"""Acknowledging a button or a form when Discord's answer to the acknowledgement may be lost.

A dropped connection leaves the bot not knowing whether Discord took the acknowledgement. Making it
again tells: Discord answers "already acknowledged" (40060) when it took the first, and the bot then
records what discord.py would have recorded. (A new job's "thinking…" asks for the message instead:
there, 40060 means a replayed interaction, see ``flow``.)
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from cogs.botcore.transport import NO_ANSWER

log = logging.getLogger(__name__)

ALREADY_ACKNOWLEDGED = 40060  # Discord's error code: the interaction was answered already


async def defer(interaction: discord.Interaction[Any], *, thinking: bool = False) -> None:
    """``interaction.response.defer(thinking=...)``, made once more if it gets no readable answer."""
    try:
        await interaction.response.defer(thinking=thinking)
        return
    except NO_ANSWER as exc:
        log.info("an acknowledgement got no answer; making it again", extra={"error": type(exc).__name__})
    try:
        await interaction.response.defer(thinking=thinking)
    except discord.HTTPException as exc:
        if exc.code != ALREADY_ACKNOWLEDGED:
            raise
        mark_deferred(interaction, thinking=thinking)


def mark_deferred(interaction: discord.Interaction[Any], *, thinking: bool = True) -> None:
    """Record, as discord.py would have, that ``interaction`` was deferred (Discord took it, but its
    answer was lost): so that what follows is sent as discord.py sends it after a deferral. A private
    slot: if a release renames it, nothing is set, and what follows may be refused (logged)."""
    kind = discord.InteractionResponseType.deferred_channel_message
    if not thinking and interaction.type in (
        discord.InteractionType.component,
        discord.InteractionType.modal_submit,
    ):
        kind = discord.InteractionResponseType.deferred_message_update
    if hasattr(interaction.response, "_response_type"):
        interaction.response._response_type = kind
