"""Answering an interaction when Discord's answer to the bot may be lost.

A dropped connection leaves the bot not knowing whether Discord took its first answer to an
interaction (a deferral, or a message). Making it again tells: Discord answers "already acknowledged"
(40060) when it took the first, and the bot then records what discord.py would have recorded. (A new
job's "thinking…" asks for the message instead: there, 40060 means a replayed interaction, see
``flow``.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import discord

from cogs.botcore.transport import NO_ANSWER

log = logging.getLogger(__name__)

ALREADY_ACKNOWLEDGED = 40060  # Discord's error code: the interaction was answered already
ANSWER_ATTEMPTS = 3  # a first answer that gets no readable answer is made again, up to this many times


async def defer(interaction: discord.Interaction[Any], *, thinking: bool = False) -> None:
    """``interaction.response.defer(thinking=...)``, made again if it gets no readable answer (see
    :func:`_answered`)."""
    kind = discord.InteractionResponseType.deferred_channel_message
    if not thinking and interaction.type in (
        discord.InteractionType.component,
        discord.InteractionType.modal_submit,
    ):
        kind = discord.InteractionResponseType.deferred_message_update
    await _answered(interaction, lambda: interaction.response.defer(thinking=thinking), kind)


async def send(
    interaction: discord.Interaction[Any],
    content: str,
    *,
    make_file: Callable[[], discord.File] | None = None,
    **kwargs: Any,
) -> None:
    """``interaction.response.send_message(content, ...)`` (with a new ``make_file()`` each time: discord.py
    closes a file once it is sent), made again if it gets no readable answer."""

    def answer() -> Awaitable[object]:
        fields: dict[str, Any] = {**kwargs, "file": make_file()} if make_file is not None else kwargs
        sent: Awaitable[object] = interaction.response.send_message(content, **fields)
        return sent

    await _answered(interaction, answer, discord.InteractionResponseType.channel_message)


async def show_form(interaction: discord.Interaction[Any], form: discord.ui.Modal) -> None:
    """``interaction.response.send_modal(form)``, made again if it gets no readable answer."""
    await _answered(
        interaction, lambda: interaction.response.send_modal(form), discord.InteractionResponseType.modal
    )


async def _answered(
    interaction: discord.Interaction[Any],
    answer: Callable[[], Awaitable[object]],
    kind: discord.InteractionResponseType,
) -> None:
    """``answer()``, made again while it gets no readable answer (up to :data:`ANSWER_ATTEMPTS` times).
    40060 after the first attempt means an earlier one was taken: recorded as answered ``kind``."""
    for attempt in range(ANSWER_ATTEMPTS):
        try:
            await answer()
            return
        except discord.HTTPException as exc:
            if not attempt or exc.code != ALREADY_ACKNOWLEDGED:
                raise
            _set_response(interaction, kind)  # (an earlier attempt was taken)
            return
        except NO_ANSWER as exc:
            if attempt == ANSWER_ATTEMPTS - 1:
                raise
            log.info(
                "an interaction's answer got no answer; making it again",
                extra={"error": type(exc).__name__, "attempt": attempt + 1},
            )


def mark_deferred(interaction: discord.Interaction[Any]) -> None:
    """Record, as discord.py would have, that ``interaction`` was answered with "thinking…" (Discord
    took it, but its answer was lost): so that what follows is sent as discord.py sends it after a
    deferral."""
    _set_response(interaction, discord.InteractionResponseType.deferred_channel_message)


def _set_response(interaction: discord.Interaction[Any], kind: discord.InteractionResponseType) -> None:
    """discord.py's record of how ``interaction`` was answered. A private slot: if a release renames it,
    nothing is set, and what follows may be refused (logged)."""
    if hasattr(interaction.response, "_response_type"):
        interaction.response._response_type = kind
