"""The /depth2img extension. ``setup`` builds the API client and the service from the bot's settings
and its shared aiohttp session; the Discord-free modules are imported here, lazily, so that
``cogs.depth2img.client`` and ``cogs.depth2img.service`` can be imported without discord.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from discord.ext import commands


async def setup(bot: commands.Bot) -> None:
    from .client import Depth2ImgClient
    from .cog import Depth2ImgCog
    from .service import Depth2ImgService

    settings = bot.settings.depth2img  # type: ignore[attr-defined]
    client = Depth2ImgClient(
        bot.http_session,  # type: ignore[attr-defined]
        base_url=settings.api_base_url,
        api_key=settings.api_key,
        request_timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        rate_limit_max_wait_s=settings.rate_limit_max_wait_s,
        max_download_bytes=settings.max_output_bytes,
    )
    service = Depth2ImgService(
        client,
        settings,
        bot.ledger,  # type: ignore[attr-defined]
        data_dir=bot.settings.data_dir,  # type: ignore[attr-defined]
        metrics=bot.metrics,  # type: ignore[attr-defined]
    )
    acks = None
    if bot.settings.fast_acks:  # type: ignore[attr-defined]
        import discord

        from .acks import InteractionAcks

        acks = InteractionAcks(discord.http.Route.BASE, user_agent=bot.http.user_agent)
    await bot.add_cog(Depth2ImgCog(bot, service, acks=acks))  # type: ignore[arg-type]
