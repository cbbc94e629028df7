"""What the bot knows of a channel from Discord's gateway events: whether it is age-restricted, and so
whether a picture asked for in such a channel may be shown there now."""

from __future__ import annotations

import discord

from cogs.depth2img.store import Job


def is_age_restricted(channel: object) -> bool:
    """Whether ``channel`` is age-restricted: a channel with Discord's "Age-Restricted Channel" setting,
    or a thread in one (a thread, a forum's post included, has no setting of its own: it is its
    parent's, as discord.py's ``Thread.is_nsfw`` reads it). A channel the bot cannot tell (a direct
    message, a thread whose parent is not in the cache): not."""
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def may_show_there(client: discord.Client, job: Job) -> bool:
    """Whether the job's picture may be shown in its channel now, as /depth2img-show decides: one asked
    for in an age-restricted channel (or without the safety checker), only while the channel still is
    one. (A moderator may have changed that since; the bot's cache follows Discord's CHANNEL_UPDATE
    events.)"""
    if not (job.age_restricted or not job.params.safety_checker):
        return True
    guild = client.get_guild(job.guild_id) if job.guild_id is not None else None
    return guild is not None and is_age_restricted(guild.get_channel_or_thread(job.channel_id))
