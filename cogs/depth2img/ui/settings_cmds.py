"""/depth2img-settings: where and how /depth2img may be used in a server (Manage Server only; the bot
checks the permission itself too, since a server's admins can grant a command to anyone)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import discord
from discord import app_commands
from discord.ext import commands

from cogs.depth2img.core.policy import GuildSettings
from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.errors import InvalidInput
from cogs.i18n import text as say

from . import text
from .acknowledge import send
from .delivery import NO_MENTIONS
from .flow import is_manager
from .langs import members

Change = Callable[[GuildSettings], GuildSettings]


class SettingsCog(commands.Cog, name="Depth2ImgSettings"):
    def __init__(self, service: Depth2ImgService) -> None:
        self.service = service

    group = app_commands.Group(
        name="depth2img-settings",
        description="Set where and how /depth2img may be used in this server (Manage Server).",
        default_permissions=discord.Permissions(manage_guild=True),
        allowed_contexts=app_commands.AppCommandContext(guild=True),
        allowed_installs=app_commands.AppInstallationType(guild=True, user=False),
    )

    async def _change(self, interaction: discord.Interaction, change: Change | None) -> None:
        viewer = interaction.guild_id is not None and not is_manager(interaction)
        lang = members(interaction)
        if interaction.guild_id is None or (viewer and change is not None):
            await send(interaction, say(lang, "settings.managers_only"), ephemeral=True)
            return
        current = self.service.settings_for(interaction.guild_id)
        if change is not None:
            try:
                current = await self.service.save_settings(
                    interaction.guild_id, change(current), by=interaction.user.id
                )
            except InvalidInput as exc:
                await send(interaction, text.describe(exc, lang), ephemeral=True)
                return
        await send(
            interaction,
            text.settings_summary(
                current, self.service.default_cooldown_s, self.service.owner_limits, lang, viewer=viewer
            ),
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    @group.command(name="show", description="Show this server's settings.")
    async def show(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, None)

    @group.command(name="channel", description="Allow or stop /depth2img in a channel.")
    @app_commands.describe(
        channel="The channel.",
        allowed="Yes: allow it there (once any channel is listed, only listed channels work). No: remove it.",
    )
    async def channel(
        self, interaction: discord.Interaction, channel: discord.TextChannel, allowed: bool
    ) -> None:
        await self._change(interaction, lambda s: s.with_listed("channels", channel.id, allowed))

    @group.command(name="role", description="Allow or stop a role using /depth2img.")
    @app_commands.describe(
        role="The role.",
        allowed="Yes: allow it (once any role is listed, only listed roles may use the bot). No: remove it.",
    )
    async def role(self, interaction: discord.Interaction, role: discord.Role, allowed: bool) -> None:
        await self._change(interaction, lambda s: s.with_listed("roles", role.id, allowed))

    @group.command(name="limits", description="Set quotas and limits for this server's members.")
    @app_commands.describe(
        daily_quota="Pictures one member may make per day (0: no limit).",
        cooldown="Seconds a member waits between two requests.",
        max_samples="Most pictures per request (1-4).",
        max_steps="Most steps per request (1-50).",
    )
    async def limits(
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

    @group.command(name="content", description="Set the content policy.")
    @app_commands.describe(
        nsfw_in_age_restricted="Turn the image service's safety checker off in age-restricted channels (it stays on elsewhere)."
    )
    async def content(self, interaction: discord.Interaction, nsfw_in_age_restricted: bool) -> None:
        await self._change(interaction, lambda s: replace(s, nsfw_in_age_restricted=nsfw_in_age_restricted))

    @group.command(name="card", description="Choose how results look in this server.")
    @app_commands.describe(
        style="compact: the picture, the prompt and the time, details behind a button; full: everything"
    )
    @app_commands.choices(
        style=[
            app_commands.Choice(name="compact", value="compact"),
            app_commands.Choice(name="full", value="full"),
        ]
    )
    async def card(self, interaction: discord.Interaction, style: app_commands.Choice[str]) -> None:
        await self._change(interaction, lambda s: replace(s, card=style.value))

    @group.command(name="reset", description="Put every setting back to its default.")
    async def reset(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, lambda _: GuildSettings())
