"""Every member-facing sentence in the reader's language: one catalogue per Discord locale in
``locales/<locale>.json``, holding the commands' descriptions (``"commands"``: English source text →
translation, for Discord's localizations) and the bot's replies (``"replies"``: key → text).

- A reply's ``{name}`` placeholders are filled by :func:`text`. Numbers (``int``, ``float``) are
  written as the language writes them (Babel: "1,000" / "1.000" / "1 000"); anything that is an
  identifier (a seed, a size, a code, a Discord timestamp) is passed as a ``str`` and shown as is.
- A reply may be a plural entry, ``{"one": ..., "other": ...}`` with the categories Babel (CLDR)
  gives the language, chosen by its ``n`` parameter; a :class:`Plural` parameter is such an entry
  rendered in place ("{pictures}" → "3 pictures").
- A locale without a catalogue reads the one of its language (es-419 → es-ES, en-GB → en-US), else
  English. ``en-US`` is the source: every key the code uses is there, and the test suite fails when
  another catalogue misses a key or words a placeholder differently.

Discord-free and pure: the core raises refusals as keys and parameters; the ``ui`` words them.
"""

from __future__ import annotations

import functools
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from babel import Locale
from babel.numbers import format_decimal

LOCALES_DIR = Path(__file__).with_name("locales")
SOURCE = "en-US"

Entry = str | dict[str, str]


@dataclass(frozen=True, slots=True)
class Plural:
    """A counted noun, as a parameter: ``Plural("count.pictures", 3)`` → "3 pictures"."""

    key: str
    n: int


class Catalogue:
    def __init__(self, tables: dict[str, dict[str, dict[str, Any]]]) -> None:
        if SOURCE not in tables:
            raise ValueError(f"no {SOURCE} catalogue")
        self.tables = tables
        self._babel = {name: Locale.parse(name, sep="-") for name in tables}
        self._fixed: dict[tuple[str | None, str], str] = {}

    @classmethod
    def load(cls, directory: Path = LOCALES_DIR) -> Catalogue:
        return cls({p.stem: json.loads(p.read_text("utf-8")) for p in sorted(directory.glob("*.json"))})

    def language(self, locale: str | None) -> str:
        """The catalogue that serves ``locale`` (a Discord locale such as "pt-BR", or None)."""
        if not locale:
            return SOURCE
        if locale in self.tables:
            return locale
        stem = locale.split("-")[0].lower()
        same = sorted(n for n in self.tables if n.split("-")[0].lower() == stem)
        return (stem if stem in same else same[0]) if same else SOURCE

    def entry(self, name: str, key: str) -> Entry:
        replies = self.tables[name].get("replies", {})
        found = replies.get(key)
        if found is None:
            found = self.tables[SOURCE]["replies"][key]  # a key missing in English is a bug: KeyError
        return found  # type: ignore[no-any-return]

    def text(self, locale: str | None, key: str, /, **params: object) -> str:
        if not params:  # (a button label, a fixed reply: rendered once per language)
            said = self._fixed.get((locale, key))
            if said is None:
                name = self.language(locale)
                said = self._fixed[(locale, key)] = self._render(name, self.entry(name, key), {})
            return said
        name = self.language(locale)
        return self._render(name, self.entry(name, key), params)

    def command(self, locale: str, source: str) -> str | None:
        """A command description's translation for Discord (None: Discord shows the English)."""
        table = self.tables.get(locale)
        return None if table is None else table.get("commands", {}).get(source)

    def _render(self, name: str, entry: Entry, params: dict[str, object]) -> str:
        babel = self._babel[name]
        if isinstance(entry, dict):
            count = params.get("n")
            if not isinstance(count, int):
                raise TypeError("a plural entry needs an int parameter n")
            entry = entry.get(babel.plural_form(abs(count)), entry["other"])
        values = {k: self._value(name, v) for k, v in params.items()}
        return entry.format_map(values)

    def _value(self, name: str, value: object) -> str:
        if isinstance(value, Plural):
            return self._render(name, self.entry(name, value.key), {"n": value.n})
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int | float):
            return format_decimal(value, locale=self._babel[name])
        return str(value)


@functools.cache
def catalogue() -> Catalogue:
    return Catalogue.load()


def text(locale: str | None, key: str, /, **params: object) -> str:
    """The reply ``key`` in the language of ``locale``, its placeholders filled."""
    return catalogue().text(locale, key, **params)


def placeholders(entry: Entry) -> set[str]:
    """The ``{names}`` an entry uses (all forms of a plural entry together)."""
    forms = entry.values() if isinstance(entry, dict) else [entry]
    return {field for form in forms for _, field, _, _ in string.Formatter().parse(form) if field}
