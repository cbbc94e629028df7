"""Discord's OpenAPI description, for the fake Discord: every request the bot makes is checked against
it (route, method, query parameters, and the body against the route's request schemas, strictly: an
unknown field is an error), as Discord itself would refuse it.

The description is the npm package ``discord-api-spec`` (Zod schemas and types generated from
https://github.com/discord/discord-api-spec, MIT), pinned in ``tests/discord_spec/package-lock.json``
and installed by ``scripts/ensure-discord-spec.sh`` (``make test`` runs it). The checking runs in one
Node.js process for the whole test session (``tests/discord_spec/validate.mjs``), asked one request
at a time over a pipe.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).resolve().parent.parent / "discord_spec"


class SpecUnavailable(RuntimeError):
    pass


class SpecChecker:
    _shared: SpecChecker | None = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> SpecChecker:
        """The session's checker (started on first use)."""
        with cls._shared_lock:
            if cls._shared is None or cls._shared._proc.poll() is not None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        if not (SPEC_DIR / "node_modules" / "discord-api-spec").is_dir():
            raise SpecUnavailable(
                "Discord's OpenAPI description is not installed for the tests: run "
                "scripts/ensure-discord-spec.sh (make test does)"
            )
        self._proc = subprocess.Popen(
            ["node", "validate.mjs"],
            cwd=SPEC_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self._lock = threading.Lock()

    def check(self, method: str, path: str, query: list[str], body: Any) -> tuple[str | None, list[str]]:
        """(the route's template, or None if Discord has no such route; what is wrong, if anything)."""
        line = json.dumps({"method": method, "path": path, "query": query, "body": body})
        with self._lock:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(line + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
        if not answer:
            raise SpecUnavailable("the OpenAPI checker stopped")
        data = json.loads(answer)
        return data["route"], list(data["problems"])

    async def acheck(
        self, method: str, path: str, query: list[str], body: Any
    ) -> tuple[str | None, list[str]]:
        return await asyncio.to_thread(self.check, method, path, query, body)
