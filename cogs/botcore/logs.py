"""The bot's log lines: one line per event with ``key=value`` extras, tracebacks only at DEBUG, and
secrets redacted as a last line of defence."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """One line per event: time, level, logger, message, then ``key=value`` for every extra field.

    Tracebacks are printed only at DEBUG level; otherwise an error shows its type and where it
    happened, never its text (which may quote user input or a server's answer).
    """

    def __init__(self, *, show_tracebacks: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.show_tracebacks = show_tracebacks

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
        return line


def _kv(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


class RedactSecrets(logging.Filter):
    """Last line of defence: a secret that slipped into a log line is replaced."""

    def __init__(self, secrets_: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets_ if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for s in self._secrets:
            redacted = redacted.replace(s, "[redacted]")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(level: str, secrets_: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(show_tracebacks=level == "DEBUG"))
    handler.addFilter(RedactSecrets(secrets_))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("discord.http", "discord.gateway", "discord.client", "discord.webhook"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
