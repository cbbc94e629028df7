"""The bot's own machinery, which ``bot.py`` composes: the command tree with its registry of error
formatters (``tree.py``), command sync (``sync.py``), the log format (``logs.py``) and the C
allocator's settings (``memory.py``). Loaded as an extension too (python-discord's ``exts/backend``
model), before the features, for the process's upkeep: the metrics port and paced garbage collection
(``cog.py``). Its face as an extension is the same as every extension's: ``setup``,
``settings_problems(env)``, ``secret_values(env)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from discord.ext import commands


def settings_problems(env: Mapping[str, str]) -> list[str]:
    from .config import read

    return read(env)[1]


def secret_values(env: Mapping[str, str]) -> list[str]:
    return []


async def setup(bot: commands.Bot) -> None:
    from .cog import OpsCog
    from .config import read

    settings, _ = read(bot.env)  # type: ignore[attr-defined]
    await bot.add_cog(OpsCog(bot, settings))
