"""Discord localizations for the command names and descriptions.

Every string of every command (names, descriptions, option names and descriptions) goes through
:class:`CatalogueTranslator`, which looks it up in ``locales/<locale>.json`` (English source text →
translation). ``en-US.json`` is complete and is checked by the test suite; to add a language, copy it
to e.g. ``fr.json``, translate the values (names must stay lowercase, without spaces, at most 32
characters), and restart the bot: the changed definitions are synced once.

``python -m cogs.depth2img.ui.translator`` rewrites ``en-US.json`` from the commands' source text.
"""

from __future__ import annotations

import json
from pathlib import Path

import discord
from discord import app_commands

LOCALES_DIR = Path(__file__).with_name("locales")


class CatalogueTranslator(app_commands.Translator):
    def __init__(self, directory: Path = LOCALES_DIR) -> None:
        self.catalogues: dict[str, dict[str, str]] = {}
        for path in sorted(directory.glob("*.json")):
            self.catalogues[path.stem] = json.loads(path.read_text("utf-8"))
        english = self.catalogues.get("en-US", {})
        self.catalogues.setdefault("en-GB", english)

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        table = self.catalogues.get(locale.value)
        if table is None:
            return None
        return table.get(string.message)


class _Recorder(app_commands.Translator):
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        self.seen[string.message] = string.message
        return None


async def source_strings(tree: app_commands.CommandTree[discord.Client]) -> dict[str, str]:
    """Every string the tree sends to Discord, as the English source text."""
    recorder = _Recorder()
    for command in tree.get_commands():
        await command.get_translated_payload(tree, recorder)
    return dict(sorted(recorder.seen.items()))


if __name__ == "__main__":  # pragma: no cover - a maintenance helper
    import asyncio

    async def _write() -> None:
        from .cog import MENU_NAME, Depth2ImgCog
        from .settings_cmds import SettingsCog

        client = discord.Client(intents=discord.Intents.none())
        tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
        for cmd in (*Depth2ImgCog.__cog_app_commands__, *SettingsCog.__cog_app_commands__):
            tree.add_command(cmd)

        async def menu(interaction: discord.Interaction, message: discord.Message) -> None: ...

        tree.add_command(app_commands.ContextMenu(name=MENU_NAME, callback=menu))
        strings = await source_strings(tree)
        (LOCALES_DIR / "en-US.json").write_text(
            json.dumps(strings, indent=2, ensure_ascii=False) + "\n", "utf-8"
        )
        print(f"wrote {len(strings)} strings")  # noqa: T201

    asyncio.run(_write())
