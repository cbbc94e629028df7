"""Strings made safe to keep and to send: whatever the image service or a member sent may hold lone
surrogates (``"\\ud800"`` is valid JSON, but no UTF-8 encoder, SQLite or PostgreSQL accepts it) or NUL
characters (PostgreSQL refuses them in text). Pure; no I/O.
"""

from __future__ import annotations


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD and NUL characters removed; a surrogate
    pair (as a JSON parser may leave one, two escapes for one emoji) becomes its character."""
    if not text.isascii():
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.replace("\x00", "") if "\x00" in text else text


def is_clean(text: str) -> bool:
    return clean_text(text) == text
