"""Secrets out of text, in any disguise: the exact value, but also upper- or lower-cased, URL-encoded
(``%6B%65%79``), or spaced out with separators between its characters (``k e y``, ``k-e-y``), as an
error message or a server's answer may quote them."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_LENGTH = 6  # shorter values would match ordinary words
# What may stand between two characters of a disguised secret: up to three spaces, punctuation,
# zero-width characters or their URL encodings.
_GAP = r"(?:[\s\-_.,:;/|·•\u200b\u200c\u200d\ufeff]|%20|%2[dDeEfF]|%5[fF]|\+){0,3}"


def _char(ch: str) -> str:
    forms = [re.escape(ch)]
    if ord(ch) < 128:
        forms.append(f"%{ord(ch):02x}")  # IGNORECASE covers %2F and %2f, and the letter's case
    else:
        forms += ["".join(f"%{b:02x}" for b in ch.encode("utf-8"))]
    return "(?:" + "|".join(forms) + ")"


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s and len(s) >= MIN_LENGTH}, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(_GAP.join(_char(c) for c in s) for s in values), re.IGNORECASE)
            if values
            else None
        )

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)
