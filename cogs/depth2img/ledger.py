"""The durable job ledger: every accepted request is a row in SQLite (``BOT_DATA_DIR/jobs.sqlite3``),
moving through explicit states with timestamps, so that no job is lost or submitted twice across a
crash or a restart. Discord-free; it stores the few Discord ids a delivery needs as plain numbers.

States::

    received ──► submitting ──► submitted ──► processing ──► delivered
        │             │             │              │
        └─────────────┴─────────────┴──────────────┴──► failed / cancelled

``submitting`` is written *before* the (paid) submission goes out. A job found in ``submitting``
after a crash may or may not exist at the API, and is never sent again: it fails with a message that
says so. A job in ``submitted``/``processing`` has the API's request id and is resumed by polling.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiosqlite

from .models import GenerationParams


class JobState(StrEnum):
    RECEIVED = "received"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = frozenset({JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED})


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    state: JobState
    user_id: int
    channel_id: int
    guild_id: int | None
    application_id: int
    interaction_token: str = field(repr=False)
    interaction_created_at: float  # unix time; the token is valid for 15 minutes from here
    message_id: int | None
    upload_limit_bytes: int
    params: GenerationParams
    source_path: str | None = None
    source_url: str | None = None
    source_changed: bool = False
    api_job_id: str | None = None
    fetch_url: str | None = None
    output_urls: tuple[str, ...] = ()
    generation_time_s: float | None = None
    api_seed: int | None = None
    error_kind: str | None = None
    error_text: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    submitted_at: float | None = None
    finished_at: float | None = None
    resumes: int = 0
    parent_id: str | None = None  # the job this one was made from (buttons, edits)
    kind: str = "command"  # command | seed | edit | closer | more | reuse | menu
    result_path: str | None = None  # the first delivered image, kept for "Use as source" and /show

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_COLUMNS = [f.name for f in fields(Job)]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    guild_id INTEGER,
    application_id INTEGER NOT NULL,
    interaction_token TEXT NOT NULL,
    interaction_created_at REAL NOT NULL,
    message_id INTEGER,
    upload_limit_bytes INTEGER NOT NULL,
    params TEXT NOT NULL,
    source_path TEXT,
    source_url TEXT,
    source_changed INTEGER NOT NULL DEFAULT 0,
    api_job_id TEXT,
    fetch_url TEXT,
    output_urls TEXT NOT NULL DEFAULT '[]',
    generation_time_s REAL,
    api_seed INTEGER,
    error_kind TEXT,
    error_text TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    submitted_at REAL,
    finished_at REAL,
    resumes INTEGER NOT NULL DEFAULT 0,
    parent_id TEXT,
    kind TEXT NOT NULL DEFAULT 'command',
    result_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_user_created ON jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_guild_created ON jobs(guild_id, created_at);
CREATE TABLE IF NOT EXISTS guild_settings (
    guild_id INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    updated_at REAL NOT NULL,
    updated_by INTEGER
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id);
"""


def _to_row(job: Job) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(job, name) for name in _COLUMNS}
    row["state"] = str(job.state)
    row["params"] = json.dumps(
        {
            "prompt": job.params.prompt,
            "negative_prompt": job.params.negative_prompt,
            "strength": job.params.strength,
            "steps": job.params.steps,
            "guidance": job.params.guidance,
            "seed": job.params.seed,
            "samples": job.params.samples,
            "safety_checker": job.params.safety_checker,
        }
    )
    row["output_urls"] = json.dumps(list(job.output_urls))
    row["source_changed"] = int(job.source_changed)
    return row


def _from_row(row: aiosqlite.Row) -> Job:
    data = dict(zip(row.keys(), tuple(row), strict=True))
    data["state"] = JobState(data["state"])
    data["params"] = GenerationParams(**json.loads(data["params"]))
    data["output_urls"] = tuple(json.loads(data["output_urls"]))
    data["source_changed"] = bool(data["source_changed"])
    return Job(**data)


class Ledger:
    """One SQLite database, one connection, WAL mode. Every write is committed at once."""

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Ledger:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        await conn.executescript(_SCHEMA)
        await conn.commit()
        return cls(conn, path)

    async def close(self) -> None:
        await self._conn.close()

    async def create(self, job: Job) -> Job:
        now = time.time()
        job = replace(job, created_at=job.created_at or now, updated_at=now)
        row = _to_row(job)
        names = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        await self._conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", row)  # noqa: S608
        await self._event(job.id, job.state, None)
        await self._conn.commit()
        return job

    async def update(self, job: Job, *, detail: str | None = None, **changes: Any) -> Job:
        """Write ``changes`` (and the new ``updated_at``) and return the updated job."""
        now = time.time()
        new = replace(job, **changes, updated_at=now)
        if new.state in FINISHED and new.finished_at is None:
            new = replace(new, finished_at=now)
        row = _to_row(new)
        changed = {k: row[k] for k in (*changes, "updated_at", "finished_at")}
        assignments = ", ".join(f"{k} = :{k}" for k in changed)
        await self._conn.execute(f"UPDATE jobs SET {assignments} WHERE id = :id", {**changed, "id": job.id})  # noqa: S608
        if "state" in changes and new.state != job.state:
            await self._event(job.id, new.state, detail)
        await self._conn.commit()
        return new

    async def _event(self, job_id: str, state: JobState, detail: str | None) -> None:
        await self._conn.execute(
            "INSERT INTO job_events (job_id, at, state, detail) VALUES (?, ?, ?, ?)",
            (job_id, time.time(), str(state), detail),
        )

    async def get(self, job_id: str) -> Job | None:
        async with self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return _from_row(row) if row is not None else None

    async def for_user(self, user_id: int, limit: int = 10) -> list[Job]:
        query = "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC LIMIT ?"
        async with self._conn.execute(query, (user_id, limit)) as cur:
            rows = await cur.fetchall()
        return [_from_row(r) for r in rows]

    async def forget_user(self, user_id: int) -> list[Job]:
        """Delete a member's finished jobs and their events; returns them (to remove their files)."""
        marks = ", ".join("?" for _ in FINISHED)
        query = f"SELECT * FROM jobs WHERE user_id = ? AND state IN ({marks})"  # noqa: S608
        async with self._conn.execute(query, (user_id, *(str(s) for s in FINISHED))) as cur:
            jobs = [_from_row(r) for r in await cur.fetchall()]
        ids = [(j.id,) for j in jobs]
        await self._conn.executemany("DELETE FROM job_events WHERE job_id = ?", ids)
        await self._conn.executemany("DELETE FROM jobs WHERE id = ?", ids)
        await self._conn.commit()
        return jobs

    async def unfinished(self) -> list[Job]:
        marks = ", ".join("?" for _ in FINISHED)
        query = f"SELECT * FROM jobs WHERE state NOT IN ({marks}) ORDER BY created_at"  # noqa: S608
        async with self._conn.execute(query, tuple(str(s) for s in FINISHED)) as cur:
            rows = await cur.fetchall()
        return [_from_row(r) for r in rows]

    async def count_by_state(self) -> dict[str, int]:
        async with self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state") as cur:
            rows = await cur.fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    async def all_guild_settings(self) -> dict[int, str]:
        async with self._conn.execute("SELECT guild_id, data FROM guild_settings") as cur:
            rows = await cur.fetchall()
        return {int(r[0]): str(r[1]) for r in rows}

    async def save_guild_settings(self, guild_id: int, data: str, by: int) -> None:
        await self._conn.execute(
            "INSERT INTO guild_settings (guild_id, data, updated_at, updated_by) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(guild_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at, "
            "updated_by = excluded.updated_by",
            (guild_id, data, time.time(), by),
        )
        await self._conn.commit()

    async def member_counts_since(self, since: float) -> dict[tuple[int, int], int]:
        query = (
            "SELECT guild_id, user_id, COUNT(*) FROM jobs WHERE created_at >= ? AND guild_id IS NOT NULL "
            "GROUP BY guild_id, user_id"
        )
        async with self._conn.execute(query, (since,)) as cur:
            rows = await cur.fetchall()
        return {(int(r[0]), int(r[1])): int(r[2]) for r in rows}

    async def guild_counts_since(self, since: float) -> dict[int, int]:
        query = "SELECT guild_id, COUNT(*) FROM jobs WHERE created_at >= ? AND guild_id IS NOT NULL GROUP BY guild_id"
        async with self._conn.execute(query, (since,)) as cur:
            rows = await cur.fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    async def events(self, job_id: str) -> list[str]:
        query = "SELECT state FROM job_events WHERE job_id = ? ORDER BY at, rowid"
        async with self._conn.execute(query, (job_id,)) as cur:
            rows = await cur.fetchall()
        return [str(r[0]) for r in rows]
