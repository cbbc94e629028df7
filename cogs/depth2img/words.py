"""Counting in words, as people write it: "1 picture", "2 pictures" (never "picture(s)"), and numbers
with thousands separators (never "5.24288e+08"). Used by every member-facing sentence."""

from __future__ import annotations

_IRREGULAR = {"person": "people"}


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun`` in the right number: ``plural(1, "picture")`` -> "1 picture"."""
    if count == 1:
        return f"1 {noun}"
    return f"{count:,} {many or _IRREGULAR.get(noun) or noun + 's'}"


def number(value: float) -> str:
    """524288000 -> "524,288,000"; 2.5 -> "2.5"."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4f}".rstrip("0").rstrip(".")
