"""Discord localizations for the commands, from the bot's one catalogue (:mod:`cogs.i18n`).

What is translated: descriptions (of commands, groups and options), choice names and the context
menu's name. Slash command, group and option names stay English in every language, on purpose: the
bot's replies name them (``/depth2img-show picture:…``) and the ℹ️ Details' copyable command must work
when pasted in any client.

``python -m cogs.depth2img.ui.translator`` lists the commands' English source strings into the
``"commands"`` section of ``en-US.json`` (source → itself); the other catalogues must then translate
every one (the test suite checks).
"""

from __future__ import annotations

import json

import discord
from discord import app_commands

from cogs.i18n import LOCALES_DIR, SOURCE, Catalogue, catalogue

Location = app_commands.TranslationContextLocation
_TRANSLATED = {
    Location.command_description,
    Location.group_description,
    Location.parameter_description,
    Location.choice_name,
}


def translated(context: app_commands.TranslationContextTypes) -> bool:
    """Whether this string of a command is translated (see the module)."""
    if context.location in _TRANSLATED:
        return True
    return context.location is Location.command_name and isinstance(context.data, app_commands.ContextMenu)


class CatalogueTranslator(app_commands.Translator):
    def __init__(self, source: Catalogue | None = None) -> None:
        self.catalogue = source or catalogue()

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if locale.value == SOURCE or not translated(context):
            return None
        return self.catalogue.command(locale.value, string.message)


class _Recorder(app_commands.Translator):
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        if translated(context):
            self.seen[string.message] = string.message
        return None


async def source_strings(tree: app_commands.CommandTree[discord.Client]) -> dict[str, str]:
    """Every string of the tree that is translated, as the English source text."""
    recorder = _Recorder()
    for command in tree.get_commands():
        await command.get_translated_payload(tree, recorder)
    return dict(sorted(recorder.seen.items()))


def command_tree() -> app_commands.CommandTree[discord.Client]:
    """The bot's commands in a tree of their own (no client is connected)."""
    from .cog import Depth2ImgCog
    from .settings_cmds import SettingsCog

    client = discord.Client(intents=discord.Intents.none())
    tree: app_commands.CommandTree[discord.Client] = app_commands.CommandTree(client)
    for cmd in (*Depth2ImgCog.__cog_app_commands__, *SettingsCog.__cog_app_commands__):
        tree.add_command(cmd)

    async def menu(interaction: discord.Interaction, message: discord.Message) -> None: ...

    english = catalogue().text(SOURCE, "form.menu_title")
    tree.add_command(app_commands.ContextMenu(name=english, callback=menu))
    return tree


if __name__ == "__main__":  # pragma: no cover - a maintenance helper
    import asyncio

    async def _write() -> None:
        path = LOCALES_DIR / f"{SOURCE}.json"
        table = json.loads(path.read_text("utf-8"))
        table["commands"] = await source_strings(command_tree())
        path.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", "utf-8")
        print(f"wrote {len(table['commands'])} command strings")  # noqa: T201

    asyncio.run(_write())
