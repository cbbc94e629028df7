"""Every reply in the reader's language: the catalogues are complete and agree with English, every key
the code uses exists, and members read their own language while the channel reads the server's."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from babel import Locale

from cogs.i18n import LOCALES_DIR, SOURCE, Catalogue, Plural, catalogue, placeholders, text
from tests.conftest import details_of, slash
from tests.fakes.fake_api import make_png

ROOT = Path(__file__).resolve().parent.parent
TABLES = {p.stem: json.loads(p.read_text("utf-8")) for p in sorted(LOCALES_DIR.glob("*.json"))}
ENGLISH = TABLES[SOURCE]
OTHERS = [name for name in TABLES if name != SOURCE]
# a reply key: "section.name" (see cogs/i18n/locales/en-US.json)
KEY_RE = re.compile(
    r"(refused|input|error|bot|time|count|progress|card|blank|details|caption|button|form|reply|history|state|settings|owner|alt)\.[a-z_]+"
)


def test_english_and_at_least_four_more_of_discords_most_used_languages():
    assert {"en-US", "es-ES", "pt-BR", "de", "fr"} <= set(TABLES)


@pytest.mark.parametrize("name", OTHERS)
def test_a_catalogue_has_every_key_of_english_and_no_other(name):
    table = TABLES[name]
    assert set(table["replies"]) == set(ENGLISH["replies"]), "replies differ"
    assert set(table["commands"]) == set(ENGLISH["commands"]), "command strings differ"
    untranslated = [k for k, v in table["commands"].items() if not v.strip()]
    assert untranslated == []


@pytest.mark.parametrize("name", OTHERS)
def test_a_translation_uses_the_same_placeholders_as_english(name):
    differ = {
        key: (sorted(placeholders(entry)), sorted(placeholders(ENGLISH["replies"][key])))
        for key, entry in TABLES[name]["replies"].items()
        if placeholders(entry) != placeholders(ENGLISH["replies"][key])
    }
    assert differ == {}


@pytest.mark.parametrize("name", list(TABLES))
def test_a_plural_entry_has_every_form_its_language_needs(name):
    """CLDR's categories for the language (Babel): French and Portuguese also have "many" (a round
    million: "1 000 000 d'images"); a form missing would fall back to "other"."""
    needed = set(Locale.parse(name, sep="-").plural_form.tags) | {"other"}
    wrong = {
        key: sorted(entry)
        for key, entry in TABLES[name]["replies"].items()
        if isinstance(entry, dict) and set(entry) != needed
    }
    assert wrong == {}
    english_plurals = {k for k, v in ENGLISH["replies"].items() if isinstance(v, dict)}
    assert {k for k, v in TABLES[name]["replies"].items() if isinstance(v, dict)} == english_plurals


def _string_constants() -> set[str]:
    found: set[str] = set()
    for path in [ROOT / "bot.py", *sorted((ROOT / "cogs").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def test_every_key_the_code_names_is_in_english_and_every_english_key_is_used():
    constants = _string_constants()
    named = {c for c in constants if KEY_RE.fullmatch(c)}
    assert named - set(ENGLISH["replies"]) == set(), "keys used by the code but missing in en-US.json"
    assert set(ENGLISH["replies"]) - named == set(), "keys in en-US.json that no code uses"


def test_every_command_string_is_in_the_catalogue():
    """The ``commands`` section is exactly what the commands send Discord to translate (to refresh:
    ``python -m cogs.depth2img.ui.translator``)."""
    import asyncio

    from cogs.depth2img.ui.translator import command_tree, source_strings

    strings = asyncio.run(source_strings(command_tree()))
    assert set(strings) == set(ENGLISH["commands"])


def test_a_locale_without_a_catalogue_reads_its_languages_else_english():
    books = catalogue()
    assert books.language("es-419") == "es-ES"
    assert books.language("en-GB") == SOURCE
    assert books.language("ja") == SOURCE
    assert books.language(None) == SOURCE
    assert text("es-419", "form.prompt") == "Descripción"


def test_numbers_and_counts_are_written_as_the_language_writes_them():
    assert text("en-US", "count.requests", n=1) == "1 request"
    assert (
        text("de", "refused.max_steps", steps=Plural("count.steps", 1))
        == "Dieser Server erlaubt höchstens 1 Schritt."
    )
    assert text("de", "input.prompt_too_long", length=1234, limit=1000) == (
        "Die Beschreibung ist 1.234 Zeichen lang; die Grenze liegt bei 1.000."
    )
    # identifiers are passed as text and never grouped
    assert "`4294967295`" in text("fr", "card.seed", seed="4294967295")


def test_a_missing_translation_falls_back_to_english_and_a_missing_english_key_is_an_error(tmp_path):
    (tmp_path / "en-US.json").write_text(json.dumps({"replies": {"a.b": "Hello {name}"}}))
    (tmp_path / "de.json").write_text(json.dumps({"replies": {}}))
    books = Catalogue.load(tmp_path)
    assert books.text("de", "a.b", name="x") == "Hello x"
    with pytest.raises(KeyError):
        books.text("de", "a.c")


# --- what members read ----------------------------------------------------------------------------


async def test_a_member_reads_their_language_and_the_channel_the_servers(bot, fake_discord, fake_api):
    """A German-speaking member in a French server: the refusal only they see is in German; the
    progress line, the card and its buttons (seen by the channel) in French; ℹ️ Details (private) in
    German. Command names and the copyable command stay as they are in every language."""
    fake_discord.member_locale = "de"
    fake_discord.guild_locale = "fr"
    _record, refused = await slash(fake_discord, {"prompt": "castle"}, image=make_png(8, 8))
    assert refused.ephemeral
    assert refused.content == "❌ Das Bild hat nur 8×8 Pixel; es braucht mindestens 64 auf jeder Seite."
    assert fake_api.submissions == []

    fake_api.scenario = "queued"
    fake_api.eta_s = 0.2
    _record, card = await slash(fake_discord, {"prompt": "un château", "strength": 0.5})
    assert card.files and not card.ephemeral
    assert any(h.startswith("⏳ En file d'attente au service d'images") for h in card.history)
    labels = [c.get("label") for row in card.components for c in row["components"]]
    assert "Nouvelle graine" in labels and "Détails" in labels and "New seed" not in labels
    assert re.fullmatch(r"🎨 <@\d+> · un château\n⏱️ \d+(,\d)? s", card.content)
    details = await details_of(fake_discord, card)
    assert details.ephemeral
    assert details.content.startswith("ℹ️ **Details zu Bild `")
    assert "Stärke 0,5" in details.content
    assert "```\n/depth2img prompt:un château strength:0.5\n```" in details.content
    assert fake_discord.violations == []


async def test_the_commands_are_described_in_every_catalogues_language(bot, fake_discord):
    synced = fake_discord.command("depth2img")
    localized = synced["description_localizations"]
    for name in OTHERS:
        assert localized[name] == TABLES[name]["commands"][synced["description"]]
    assert "name_localizations" not in synced or not synced["name_localizations"]  # names stay English
    prompt = next(o for o in synced["options"] if o["name"] == "prompt")
    assert prompt["description_localizations"]["de"].startswith("Was aus dem Bild werden soll")


@pytest.mark.parametrize("name", OTHERS)
def test_command_translations_fit_discords_limits(name):
    """Descriptions and choice names: 1-100 characters; the context menu's name: 1-32
    (https://discord.com/developers/docs/interactions/application-commands#application-command-object).
    The fake Discord refuses a sync that breaks them, too."""
    menu = ENGLISH["replies"]["form.menu_title"]
    too_long = {
        source: len(said)
        for source, said in TABLES[name]["commands"].items()
        if not 1 <= len(said) <= (32 if source == menu else 100)
    }
    assert too_long == {}
