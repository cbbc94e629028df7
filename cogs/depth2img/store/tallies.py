"""What the ledger counts and remembers besides the jobs' own lives: a few named values the bot learnt,
the servers' settings, and the day's counts (quotas survive a restart). Mixed into
:class:`~.ledger.Ledger`, whose ``_run`` runs each operation as one transaction."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from typing import TypeVar

from cogs.depth2img.cleaning import clean_text

from .base import Execute, Fetch, Op, OpFactory

T = TypeVar("T")


class Tallies:
    async def _run(self, op: OpFactory[T]) -> T:
        raise NotImplementedError  # (the Ledger's)

    # --- what the bot learnt (a few named values) ---

    async def recall(self, name: str) -> str | None:
        def op() -> Op[str | None]:
            rows = yield Fetch("SELECT value FROM bot_state WHERE name = ?", (name,))
            return str(rows[0]["value"]) if rows else None

        return await self._run(op)

    async def remember(self, name: str, value: str) -> None:
        sql = (
            "INSERT INTO bot_state (name, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
        )
        args = (name, clean_text(value), time.time())

        def op() -> Op[None]:
            yield Execute(sql, args)

        await self._run(op)

    async def first_value(self, name: str, value: str) -> str:
        """The value remembered under ``name``; ``value`` if there was none (remembered then: when
        several processes ask at once, the first one's)."""
        sql = "INSERT INTO bot_state (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING"
        args = (name, clean_text(value), time.time())

        def op() -> Op[str]:
            yield Execute(sql, args)
            rows = yield Fetch("SELECT value FROM bot_state WHERE name = ?", (name,))
            return str(rows[0]["value"])

        return await self._run(op)

    async def pictures_since(self, since: float) -> int:
        """Pictures asked for (each job's ``samples``) since ``since``, across every server."""

        def op() -> Op[int]:
            rows = yield Fetch("SELECT params FROM jobs WHERE created_at >= ?", (float(since),))
            total = 0
            for r in rows:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    total += max(1, int(json.loads(r["params"]).get("samples", 1)))
            return total

        return await self._run(op)

    # --- servers' settings and counts ---

    async def all_guild_settings(self) -> dict[int, str]:
        def op() -> Op[dict[int, str]]:
            rows = yield Fetch("SELECT guild_id, data FROM guild_settings")
            return {int(r["guild_id"]): str(r["data"]) for r in rows}

        return await self._run(op)

    async def save_guild_settings(self, guild_id: int, data: str, by: int) -> None:
        sql = (
            "INSERT INTO guild_settings (guild_id, data, updated_at, updated_by) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by"
        )
        args = (guild_id, clean_text(data), time.time(), by)

        def op() -> Op[None]:
            yield Execute(sql, args)

        await self._run(op)

    # The day's counts, at start-up: the day's rows read from the index ``jobs_created`` alone and
    # counted here. Grouped in SQL, SQLite's planner (which knows nothing of how few rows a day holds)
    # chose to walk the whole ``jobs_guild_created`` index for its order instead: at 1,000,000 jobs over
    # 90 days, 44 and 115 ms against 11 and 13 (`python -m bench.ledger`).
    _TODAY = "SELECT guild_id, user_id FROM jobs WHERE created_at >= ? AND guild_id IS NOT NULL"

    async def member_counts_since(self, since: float) -> dict[tuple[int, int], int]:
        def op() -> Op[dict[tuple[int, int], int]]:
            rows = yield Fetch(self._TODAY, (float(since),))
            return dict(Counter((int(r["guild_id"]), int(r["user_id"])) for r in rows))

        return await self._run(op)

    async def guild_counts_since(self, since: float) -> dict[int, int]:
        def op() -> Op[dict[int, int]]:
            rows = yield Fetch(self._TODAY, (float(since),))
            return dict(Counter(int(r["guild_id"]) for r in rows))

        return await self._run(op)
