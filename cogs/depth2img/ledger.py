"""The durable job ledger: every accepted request is a row in a database, moving through explicit
states with timestamps, so that no job is lost or submitted twice across a crash or a restart.
Discord-free; it stores the few Discord ids a delivery needs as plain numbers.

Two backends, the same tables and the same guarantees: SQLite (``BOT_DATA_DIR/jobs.sqlite3``, the
default, for one bot process) and PostgreSQL (``DATABASE_URL``, for several processes, e.g. one per
group of shards).

States::

    received ──► submitting ──► submitted ──► processing ──► delivered
        │             │             │              │
        └─────────────┴─────────────┴──────────────┴──► failed / cancelled

``submitting`` is written *before* the (paid) submission goes out. A job found in ``submitting``
after a crash may or may not exist at the API, and is never sent again: it fails with a message that
says so. A job in ``submitted``/``processing`` has the API's request id and is resumed by polling.

Ownership: each unfinished job is owned by one bot process (``owner``) for a lease it renews while
it runs (:meth:`Ledger.heartbeat`). Only the owner may change a job (:class:`JobTakenOver`
otherwise). A process takes over (:meth:`Ledger.claim_orphans`) jobs whose lease ran out (their
process died), and at start-up the jobs of its own predecessor (same ``group``, e.g. the same
shards) at once, unless that predecessor had begun delivering them. Just before delivering, the
owner calls :meth:`Ledger.claim_delivery`: a job is delivered by at most one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from .errors import Depth2ImgError
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
_FINISHED_SQL = ", ".join(f"'{s}'" for s in sorted(FINISHED))


class JobTakenOver(Depth2ImgError):
    """Another bot process owns this job now (this one stalled past its lease, or was replaced):
    this process must leave it alone; the owner finishes it."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is owned by another process")
        self.job_id = job_id


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
    owner: str = ""  # the bot process that drives this job (``<group>/<random>``)
    lease_until: float = 0.0  # unix time; after it, another process may take the job over
    delivering: bool = False  # the owner has begun delivering it

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_COLUMNS = [f.name for f in fields(Job)]

# One schema, two dialects: ``{int}`` is a 64-bit integer, ``{real}`` a double.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    user_id {int} NOT NULL,
    channel_id {int} NOT NULL,
    guild_id {int},
    application_id {int} NOT NULL,
    interaction_token TEXT NOT NULL,
    interaction_created_at {real} NOT NULL,
    message_id {int},
    upload_limit_bytes {int} NOT NULL,
    params TEXT NOT NULL,
    source_path TEXT,
    source_url TEXT,
    source_changed INTEGER NOT NULL DEFAULT 0,
    api_job_id TEXT,
    fetch_url TEXT,
    output_urls TEXT NOT NULL DEFAULT '[]',
    generation_time_s {real},
    api_seed {int},
    error_kind TEXT,
    error_text TEXT,
    created_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    submitted_at {real},
    finished_at {real},
    resumes INTEGER NOT NULL DEFAULT 0,
    parent_id TEXT,
    kind TEXT NOT NULL DEFAULT 'command',
    result_path TEXT,
    owner TEXT NOT NULL DEFAULT '',
    lease_until {real} NOT NULL DEFAULT 0,
    delivering INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_user_created ON jobs(user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_guild_created ON jobs(guild_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner);
CREATE TABLE IF NOT EXISTS guild_settings (
    guild_id {int} PRIMARY KEY,
    data TEXT NOT NULL,
    updated_at {real} NOT NULL,
    updated_by {int}
);
CREATE TABLE IF NOT EXISTS job_events (
    {event_seq}job_id TEXT NOT NULL,
    at {real} NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events(job_id);
"""

# Columns added after the first release, for databases made by an older version.
_ADDED_COLUMNS = {
    "jobs": (
        ("owner", "TEXT NOT NULL DEFAULT ''"),
        ("lease_until", "{real} NOT NULL DEFAULT 0"),
        ("delivering", "INTEGER NOT NULL DEFAULT 0"),
    ),
    "job_events": (("owner", "TEXT"),),
}


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
    row["delivering"] = int(job.delivering)
    for name in _REAL_COLUMNS:
        if row[name] is not None:
            row[name] = float(row[name])
    return row


_REAL_COLUMNS = (
    "interaction_created_at",
    "generation_time_s",
    "created_at",
    "updated_at",
    "submitted_at",
    "finished_at",
    "lease_until",
)


def _from_row(row: Mapping[str, Any]) -> Job:
    data = dict(row)
    data["state"] = JobState(data["state"])
    data["params"] = GenerationParams(**json.loads(data["params"]))
    data["output_urls"] = tuple(json.loads(data["output_urls"]))
    data["source_changed"] = bool(data["source_changed"])
    data["delivering"] = bool(data["delivering"])
    return Job(**data)


# --- the two databases, behind one small interface -------------------------------------------------


class _Tx(Protocol):
    """SQL with ``?`` placeholders, inside one transaction."""

    async def execute(self, sql: str, *args: Any) -> int: ...  # rows affected

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]: ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class _Database(Protocol):
    kind: str
    event_order: str

    def tx(self) -> AbstractAsyncContextManager[_Tx]: ...

    async def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, db: _Sqlite) -> None:
        self._db = db

    async def execute(self, sql: str, *args: Any) -> int:
        result: int = await self._db.submit("exec", sql, args)
        return result

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        rows: list[Mapping[str, Any]] = await self._db.submit("fetch", sql, args)
        return rows

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._db.submit("many", sql, rows)


_Op = tuple[str, str, Any]  # (exec | fetch | many, sql, parameters)


class _Sqlite:
    """SQLite (WAL) on one thread of its own, with *group commit*: the statements that jobs issue
    while the thread is busy are queued and then run together, each in a savepoint of one
    transaction, so a burst of jobs costs one commit per batch rather than one per statement (and
    one statement's error, such as a broken constraint, fails only that statement). Each statement is atomic; every state change
    is one statement, and a claim is one ``UPDATE … RETURNING``. (Few statements per batch: the thread
    needs the GIL for each, and waits for it while the event loop is busy.) The WAL is checkpointed by a second
    connection on another thread, so a checkpoint never holds up the jobs' statements."""

    kind = "sqlite"
    event_order = "at, rowid"
    checkpoint_interval_s = 5.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._checkpoint_thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._queue: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> _Sqlite:
        db = cls(path)
        loop = asyncio.get_running_loop()
        db._conn = await loop.run_in_executor(db._thread, db._connect_main)
        db._checkpointer = await loop.run_in_executor(db._checkpoint_thread, db._connect, False)
        db._checkpoints = asyncio.create_task(db._checkpoint_now_and_then())
        return db

    def _connect(self, main: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if main:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
        return conn

    def _connect_main(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(True)
        conn.executescript(_SCHEMA.format(int="INTEGER", real="REAL", event_seq=""))
        for table, columns in _ADDED_COLUMNS.items():
            have = {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in columns:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl.format(real='REAL')}")
        return conn

    def submit(self, kind: str, sql: str, args: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(((kind, sql, args), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            results = await loop.run_in_executor(self._thread, self._apply, [op for op, _ in batch])
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled; the statement ran anyway
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _apply(self, ops: list[_Op]) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        out: list[tuple[bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for kind, sql, args in ops:
                try:
                    value: Any = None
                    if kind == "exec":
                        value = conn.execute(sql, args).rowcount
                    elif kind == "fetch":
                        value = [dict(zip(r.keys(), tuple(r), strict=True)) for r in conn.execute(sql, args)]
                    else:
                        conn.executemany(sql, args)
                    out.append((True, value))
                except sqlite3.Error as exc:
                    # A statement that breaks a constraint is undone alone and the transaction goes
                    # on; an error that ended the transaction (disk full, I/O) fails the batch.
                    if not conn.in_transaction:
                        raise
                    out.append((False, exc))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # the batch could not be committed (disk full, I/O error…)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [(False, exc)] * len(ops)
        return out

    async def _checkpoint_now_and_then(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(self._checkpoint_thread, self._checkpoint, "PASSIVE")

    def _checkpoint(self, mode: str) -> None:
        assert self._checkpointer is not None
        self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[_Tx]:
        yield _SqliteTx(self)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        if self._flusher is not None:
            await asyncio.wait({self._flusher})
        with contextlib.suppress(sqlite3.Error):
            await loop.run_in_executor(self._checkpoint_thread, self._checkpoint, "TRUNCATE")
        for conn, thread in ((self._checkpointer, self._checkpoint_thread), (self._conn, self._thread)):
            if conn is not None:
                await loop.run_in_executor(thread, conn.close)
            thread.shutdown(wait=False)


_PLACEHOLDER = re.compile(r"\?")


def _numbered(sql: str) -> str:
    """``?`` → ``$1, $2, …`` (our SQL has no ``?`` inside literals)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


class _PostgresTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._conn.execute(_numbered(sql), *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def fetch(self, sql: str, *args: Any) -> list[Mapping[str, Any]]:
        rows = await self._conn.fetch(_numbered(sql), *args)
        return [dict(r.items()) for r in rows]

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(_numbered(sql), rows)


class _Postgres:
    """A small asyncpg pool; each ledger call is one transaction."""

    kind = "postgresql"
    event_order = "at, seq"

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> _Postgres:
        import asyncpg  # only needed with DATABASE_URL

        pool = await asyncpg.create_pool(url, min_size=1, max_size=8, command_timeout=30)
        db = cls(pool)
        schema = _SCHEMA.format(
            int="BIGINT", real="DOUBLE PRECISION", event_seq="seq BIGSERIAL PRIMARY KEY, "
        )
        async with pool.acquire() as conn, conn.transaction():
            # several processes may start at once: one creates the tables, the others wait.
            await conn.execute("SELECT pg_advisory_xact_lock(4242424242)")
            await conn.execute(schema)
            for table, columns in _ADDED_COLUMNS.items():
                for name, decl in columns:
                    await conn.execute(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} "
                        + decl.format(real="DOUBLE PRECISION")
                    )
        return db

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[_Tx]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield _PostgresTx(conn)

    async def close(self) -> None:
        await self._pool.close()


# --- the ledger ---------------------------------------------------------------------------------------


class Ledger:
    """The jobs, their events and the servers' settings. Every call is committed when it returns
    (PostgreSQL: one transaction per call; SQLite: one per statement).

    ``owner`` names this process (``<group>/<random>``); ``group`` is what a restarted process shares
    with the one it replaces (e.g. its shard ids), so that it takes over that one's jobs at once."""

    def __init__(self, db: _Database, *, group: str, owner: str, lease_s: float) -> None:
        self._db = db
        self.group = group
        self.owner = owner
        self.lease_s = lease_s

    @property
    def backend(self) -> str:
        return self._db.kind

    @classmethod
    async def open(
        cls,
        target: Path | str,
        *,
        group: str = "local",
        owner: str | None = None,
        lease_s: float = 60.0,
    ) -> Ledger:
        """``target``: a SQLite file path, or a ``postgresql://`` URL."""
        text = str(target)
        if text.startswith(("postgres://", "postgresql://")):
            db: _Database = await _Postgres.open(text)
        else:
            db = await _Sqlite.open(Path(target))
        return cls(db, group=group, owner=owner or f"{group}/{secrets.token_hex(4)}", lease_s=lease_s)

    async def close(self) -> None:
        await self._db.close()

    async def create(self, job: Job) -> Job:
        now = time.time()
        job = replace(
            job,
            created_at=job.created_at or now,
            updated_at=now,
            owner=self.owner,
            lease_until=now + self.lease_s,
        )
        row = _to_row(job)
        names = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        async with self._db.tx() as tx:
            await tx.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", *row.values())  # noqa: S608
            await self._event(tx, job.id, job.state, None)
        return job

    async def update(self, job: Job, *, detail: str | None = None, **changes: Any) -> Job:
        """Write ``changes`` (and the new ``updated_at``) and return the updated job. Only the job's
        owner may: raises :class:`JobTakenOver` if another process owns it now."""
        now = time.time()
        new = replace(job, **changes, updated_at=now, owner=self.owner)
        if new.state in FINISHED and new.finished_at is None:
            new = replace(new, finished_at=now)
        row = _to_row(new)
        changed = {k: row[k] for k in (*changes, "updated_at", "finished_at")}
        assignments = ", ".join(f"{k} = ?" for k in changed)
        async with self._db.tx() as tx:
            count = await tx.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND owner = ?",  # noqa: S608
                *changed.values(),
                job.id,
                self.owner,
            )
            if count != 1:
                raise JobTakenOver(job.id)
            if "state" in changes and new.state != job.state:
                await self._event(tx, job.id, new.state, detail)
        return new

    async def _event(self, tx: _Tx, job_id: str, state: JobState, detail: str | None) -> None:
        await tx.execute(
            "INSERT INTO job_events (job_id, at, state, detail, owner) VALUES (?, ?, ?, ?, ?)",
            job_id,
            time.time(),
            str(state),
            detail,
            self.owner,
        )

    # --- ownership ---

    async def heartbeat(self) -> int:
        """Renew the lease of every unfinished job this process owns; returns how many."""
        async with self._db.tx() as tx:
            return await tx.execute(
                f"UPDATE jobs SET lease_until = ? WHERE owner = ? AND state NOT IN ({_FINISHED_SQL})",  # noqa: S608
                time.time() + self.lease_s,
                self.owner,
            )

    async def claim_orphans(self, *, at_start: bool = False) -> list[Job]:
        """Take over the unfinished jobs no live process holds: those whose lease ran out, and, at
        start-up, those of this process's predecessor (same group) that it had not begun to
        deliver. Atomic: two processes never claim the same job."""
        now = time.time()
        condition = "owner <> ? AND lease_until < ?"  # never its own: those it is running
        args: list[Any] = [self.owner, now]
        if at_start:
            condition = "owner <> ? AND (lease_until < ? OR (owner LIKE ? AND delivering = 0))"
            args += [self.group.replace("%", "") + "/%"]
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                "UPDATE jobs SET owner = ?, lease_until = ?, resumes = resumes + 1, delivering = 0 "  # noqa: S608
                f"WHERE state NOT IN ({_FINISHED_SQL}) AND {condition} RETURNING *",
                self.owner,
                now + self.lease_s,
                *args,
            )
            for row in rows:
                await self._event(tx, str(row["id"]), JobState(row["state"]), "claimed")
        jobs = [_from_row(r) for r in rows]
        jobs.sort(key=lambda j: j.created_at)
        return jobs

    @property
    def shared(self) -> bool:
        """Whether several bot processes may use this ledger (PostgreSQL); SQLite is for one."""
        return self._db.kind == "postgresql"

    async def claim_delivery(self, job: Job) -> bool:
        """Called just before delivering: marks the job as being delivered by this process.
        False when another process owns it (then this one must not deliver). With a ledger only
        this process uses (SQLite) nothing can take a job from it, and nothing is written: the
        write would only delay every delivery."""
        if not self.shared:
            return True
        async with self._db.tx() as tx:
            count = await tx.execute(
                "UPDATE jobs SET delivering = 1, lease_until = ? "  # noqa: S608
                f"WHERE id = ? AND owner = ? AND state NOT IN ({_FINISHED_SQL})",
                time.time() + self.lease_s,
                job.id,
                self.owner,
            )
        return count == 1

    # --- reading ---

    async def get(self, job_id: str) -> Job | None:
        async with self._db.tx() as tx:
            rows = await tx.fetch("SELECT * FROM jobs WHERE id = ?", job_id)
        return _from_row(rows[0]) if rows else None

    async def for_user(self, user_id: int, limit: int = 10) -> list[Job]:
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC LIMIT ?", user_id, limit
            )
        return [_from_row(r) for r in rows]

    async def release_pictures(self, finished_before: float, limit: int = 500) -> list[Job]:
        """Finished jobs older than ``finished_before`` that still point at stored pictures: their
        paths are cleared (the caller removes the files) and the jobs returned as they were."""
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                f"SELECT * FROM jobs WHERE state IN ({_FINISHED_SQL}) AND finished_at < ? "  # noqa: S608
                "AND (source_path IS NOT NULL OR result_path IS NOT NULL) ORDER BY finished_at LIMIT ?",
                float(finished_before),
                limit,
            )
            jobs = [_from_row(r) for r in rows]
            if jobs:
                await tx.executemany(
                    "UPDATE jobs SET source_path = NULL, result_path = NULL WHERE id = ?",
                    [(j.id,) for j in jobs],
                )
        return jobs

    async def forget_user(self, user_id: int) -> list[Job]:
        """Delete a member's finished jobs and their events; returns them (to remove their files)."""
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                f"SELECT * FROM jobs WHERE user_id = ? AND state IN ({_FINISHED_SQL})",  # noqa: S608
                user_id,
            )
            jobs = [_from_row(r) for r in rows]
            ids = [(j.id,) for j in jobs]
            if ids:
                await tx.executemany("DELETE FROM job_events WHERE job_id = ?", ids)
                await tx.executemany("DELETE FROM jobs WHERE id = ?", ids)
        return jobs

    async def count_by_state(self) -> dict[str, int]:
        async with self._db.tx() as tx:
            rows = await tx.fetch("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}

    async def all_guild_settings(self) -> dict[int, str]:
        async with self._db.tx() as tx:
            rows = await tx.fetch("SELECT guild_id, data FROM guild_settings")
        return {int(r["guild_id"]): str(r["data"]) for r in rows}

    async def save_guild_settings(self, guild_id: int, data: str, by: int) -> None:
        async with self._db.tx() as tx:
            await tx.execute(
                "INSERT INTO guild_settings (guild_id, data, updated_at, updated_by) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(guild_id) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at, "
                "updated_by = excluded.updated_by",
                guild_id,
                data,
                time.time(),
                by,
            )

    async def member_counts_since(self, since: float) -> dict[tuple[int, int], int]:
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                "SELECT guild_id, user_id, COUNT(*) AS n FROM jobs "
                "WHERE created_at >= ? AND guild_id IS NOT NULL GROUP BY guild_id, user_id",
                float(since),
            )
        return {(int(r["guild_id"]), int(r["user_id"])): int(r["n"]) for r in rows}

    async def guild_counts_since(self, since: float) -> dict[int, int]:
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                "SELECT guild_id, COUNT(*) AS n FROM jobs "
                "WHERE created_at >= ? AND guild_id IS NOT NULL GROUP BY guild_id",
                float(since),
            )
        return {int(r["guild_id"]): int(r["n"]) for r in rows}

    async def events(self, job_id: str) -> list[str]:
        """The states a job went through, in order (``claimed`` events left out)."""
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                f"SELECT state, detail FROM job_events WHERE job_id = ? ORDER BY {self._db.event_order}",  # noqa: S608
                job_id,
            )
        return [str(r["state"]) for r in rows if r["detail"] != "claimed"]

    async def event_owners(self, job_id: str) -> list[tuple[str, str | None]]:
        """(state, owner) of each event of a job, in order, ``claimed`` events included."""
        async with self._db.tx() as tx:
            rows = await tx.fetch(
                f"SELECT state, detail, owner FROM job_events WHERE job_id = ? ORDER BY {self._db.event_order}",  # noqa: S608
                job_id,
            )
        return [
            (str(r["state"]) + ("/claimed" if r["detail"] == "claimed" else ""), r["owner"]) for r in rows
        ]
