"""Which language a reply is in. What only the member sees (ephemeral answers, forms, ℹ️ Details) is
in the member's own Discord language; what the channel sees (the progress line, the result card and
its buttons, a failure that replaces the public "thinking…") is in the server's language (its
Community "primary language"; in DMs, the member's). A job resumed after a restart has no interaction
left: the server's language comes from the guild cache, else English."""

from __future__ import annotations

from typing import Any

import discord

from cogs.depth2img.store import Job
from cogs.i18n import SOURCE


def members(interaction: discord.Interaction[Any]) -> str:
    return interaction.locale.value


def channels(interaction: discord.Interaction[Any]) -> str:
    return (interaction.guild_locale or interaction.locale).value


def of_job(client: discord.Client, job: Job, interaction: discord.Interaction[Any] | None = None) -> str:
    if interaction is not None:
        return channels(interaction)
    guild = client.get_guild(job.guild_id) if job.guild_id else None
    return guild.preferred_locale.value if guild is not None else SOURCE
