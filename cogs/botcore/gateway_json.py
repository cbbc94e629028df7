"""discord.py reads every gateway event and every REST answer with orjson when orjson is installed (it
is, for speed: ``pyproject.toml``). orjson refuses a lone surrogate escape such as ``"\\ud800"``, which
is valid JSON (RFC 8259 §7 and §8.2: such a string is legal, only "unpredictable") and which a member's
text may hold: a JavaScript client that cuts a string inside an emoji sends one, and ``JSON.stringify``
writes it as that escape. discord.py takes a gateway event it cannot read as fatal: before this
module, one ``/depth2img`` whose prompt held ``\\ud800`` closed the whole bot (every server, every job
in flight), and the member was left on "thinking…" (tests/test_hostile.py).

:func:`install` keeps orjson for everything it reads, and lets Python's own ``json`` read what orjson
refuses. The lone surrogate then reaches our code as a character, which the prompt's cleaning drops
(:func:`cogs.depth2img.core.params.clean_text`) and the ledger replaces (:mod:`cogs.depth2img.cleaning`).
What neither parser reads (truncated JSON, nesting deeper than Python's recursion limit) still raises
orjson's error, as before.

discord.py has no setting for its JSON reader: this replaces its module-level ``_from_json`` (a
private name; checked at start, and logged and left alone if a release renames it or drops orjson).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import discord.utils

log = logging.getLogger(__name__)

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; without it discord.py uses json
    orjson = None  # type: ignore[assignment]


def loads(data: str | bytes) -> Any:
    """orjson's ``loads``, and Python's ``json.loads`` for what orjson refuses (a lone surrogate)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as refused:
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise refused from None


def install() -> bool:
    """Make discord.py read JSON with :func:`loads`. True if it does (now or already); False, logged,
    where discord.py reads JSON some other way (then nothing is changed)."""
    current = getattr(discord.utils, "_from_json", None)
    if current is json.loads or _ours(current):  # (json.loads: discord.py without orjson)
        return True
    if orjson is None or current is not orjson.loads:
        log.warning(
            "discord.py reads JSON in a way this bot does not know; a lone surrogate may stop the bot"
        )
        return False
    setattr(discord.utils, "_from_json", loads)  # noqa: B010 (a private name: mypy would refuse it)
    return True


def _ours(reader: object) -> bool:
    """:func:`loads`, from this module as loaded now or before (a test or a reload imports it anew)."""
    return getattr(reader, "__module__", None) == __name__ and getattr(reader, "__name__", None) == "loads"
