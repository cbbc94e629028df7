"""/depth2img-show: a past picture brought back, with its buttons, where its channel's rules, its
requester's deletion and its server allow it; a kept result not yet delivered is delivered so."""

from __future__ import annotations

import discord

from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.errors import InvalidInput

from . import cards, text
from .acknowledge import send
from .channels import is_age_restricted
from .components import result_view, spent, upload
from .delivery import NO_MENTIONS, message_gone, tell
from .langs import channels, members


async def show_kept(
    client: discord.Client, service: Depth2ImgService, interaction: discord.Interaction, picture: str
) -> None:
    found = await service.get(picture.strip().lower().strip("`"))
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
    deleted = found.deleted_at is not None or await message_gone(client, found)
    if deleted and found.deleted_at is None:
        await service.mark_deleted(found.id)  # (remembered: Discord is asked once)
    if deleted and interaction.user.id != found.user_id:
        await tell(interaction, "reply.deleted_for_others")
        return
    try:
        data, blank = await service.read_kept(found)
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
        await service.late_posted(found, posted=True, shown=True)  # (not posted late as well)
