"""The bot's log lines: one line per event with ``key=value`` extras, tracebacks only at DEBUG, and
secrets redacted from the whole line, extras and tracebacks included, in any disguise, as a last line
of defence."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .redact import Redactor

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """One line per event: time, level, logger, message, then ``key=value`` for every extra field.

    Tracebacks are printed only at DEBUG level; otherwise an error shows its type and where it
    happened, never its text (which may quote user input or a server's answer).
    """

    def __init__(self, *, show_tracebacks: bool, redact: Callable[[str], str] | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.show_tracebacks = show_tracebacks
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        exc_info, record.exc_info, record.exc_text = record.exc_info, None, None
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if extras:
            line += " " + " ".join(f"{k}={_kv(v)}" for k, v in sorted(extras.items()))
        if exc_info and exc_info[1] is not None:
            exc = exc_info[1]
            frames = traceback.extract_tb(exc_info[2])
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            line += f" error={type(exc).__name__} at={where}"
            if self.show_tracebacks:
                line += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        record.exc_info = exc_info
        return self._redact(line) if self._redact is not None else line


def _kv(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


def configure_logging(level: str, secrets_: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(show_tracebacks=level == "DEBUG", redact=Redactor(secrets_)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("discord.http", "discord.gateway", "discord.client", "discord.webhook"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
