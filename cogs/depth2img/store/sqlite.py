"""The ledger in SQLite (WAL), on one thread of its own, with *group commit*.

Operations that jobs start while the thread is busy are queued, then run together in one transaction:
a burst of jobs costs one commit per batch rather than one per operation, and an operation is still all
or nothing. Whatever an operation raises (a broken constraint, a string SQLite cannot store, an error in
its own code) rolls the batch back, and the batch runs again with each operation inside a savepoint of
its own: the one that failed rolls back its savepoint and fails only its caller; the others commit. An
error that ends the whole transaction (disk full, an I/O error) or a failed commit runs the batch again
one operation per transaction, so that each caller gets its own answer.

The WAL is checkpointed by a second connection on another thread, so a checkpoint never holds up the
jobs' statements. (Few statements per batch: the thread needs the GIL for each, and waits for it while
the event loop is busy.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

from .base import (
    Execute,
    ExecuteMany,
    Fetch,
    LedgerClosed,
    LedgerUnavailable,
    Op,
    OpFactory,
    SchemaTooNew,
    Statement,
)
from .schema import LATEST, SQLITE, VERSION_TABLE, pending, version_before_versioning

T = TypeVar("T")
_Result = tuple[bool, Any]  # (succeeded, value or exception)


class _OpFailed(Exception):
    """An operation of a batch run without savepoints failed; the transaction was rolled back."""


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


def _execute(conn: sqlite3.Connection, statement: Statement) -> Any:
    if statement.kind == Execute.kind:
        return conn.execute(statement.sql, cast(Execute, statement).args).rowcount
    if statement.kind == Fetch.kind:
        return conn.execute(statement.sql, cast(Fetch, statement).args).fetchall()
    conn.executemany(statement.sql, cast(ExecuteMany, statement).rows)
    return None


def _drive(conn: sqlite3.Connection, op: Op[Any]) -> Any:
    """Run one operation's statements in order; its return value."""
    try:
        statement = next(op)
        while True:
            statement = op.send(_execute(conn, statement))
    except StopIteration as stop:
        return stop.value
    finally:
        op.close()


# What the owner reads when SQLite refuses to open the ledger, by its primary result code (sqlite3's
# errors carry the extended one as ``sqlite_errorcode``): the words, the exit status, the advice
_DAMAGED = (
    "is damaged or not a SQLite database: restore it from a backup (README: Backups), or move it away to "
    "start with an empty ledger",
    2,
    "",
)
_HELD = (
    "is held by another process (another bot on the same file? several processes need PostgreSQL)",
    1,
    "stop the other process",
)
_REFUSALS: dict[int, tuple[str, int, str]] = {
    11: _DAMAGED,  # SQLITE_CORRUPT
    26: _DAMAGED,  # SQLITE_NOTADB
    5: _HELD,  # SQLITE_BUSY
    6: _HELD,  # SQLITE_LOCKED
    13: ("is on a full disk", 1, "free space on it"),  # SQLITE_FULL
}


def _unavailable(exc: sqlite3.DatabaseError, path: Path) -> LedgerUnavailable:
    """One sentence for the owner for why the SQLite ledger cannot be opened (by SQLite's result code:
    no exception text goes to the log)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    what, exit_code, fix = _REFUSALS.get(
        code,
        (
            f"cannot be opened ({type(exc).__name__}, SQLite result code {code})",
            2,
            "check the file and BOT_DATA_DIR",
        ),
    )
    return LedgerUnavailable(f"the job ledger {path} {what}", exit_code=exit_code, fix=fix)


class SqliteDatabase:
    kind = "sqlite"
    event_order = "at, rowid"
    checkpoint_interval_s = 5.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.schema_version = 0
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ledger")
        self._checkpoint_thread = ThreadPoolExecutor(1, thread_name_prefix="ledger-checkpoint")
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._queue: list[tuple[OpFactory[Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._checkpoints: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        db = cls(path)
        loop = asyncio.get_running_loop()
        try:
            db._conn = await loop.run_in_executor(db._thread, db._connect_main)
            db._checkpointer = await loop.run_in_executor(db._checkpoint_thread, db._connect, False)
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise _unavailable(exc, path) from None
        except BaseException:
            await db.close()
            raise
        db._checkpoints = asyncio.create_task(db._checkpoint_now_and_then(), name="ledger-checkpoints")
        return db

    def _connect(self, main: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        conn.row_factory = _dict_row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if main:
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job
        return conn

    def _connect_main(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Readable by the bot's user only (SQLite gives its -wal and -shm files the database's mode).
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        conn = self._connect(True)
        try:
            self.schema_version = self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(VERSION_TABLE.format(real="REAL"))
            version = conn.execute("SELECT MAX(version) AS v FROM schema_version").fetchone()["v"]
            if version is None:
                columns = [r["name"] for r in conn.execute("PRAGMA table_info(jobs)")]
                version = version_before_versioning(columns or None)
                if version:
                    conn.execute(
                        "INSERT INTO schema_version (version, applied_at, what) VALUES (?, ?, ?)",
                        (version, time.time(), "found: made before schema versions were recorded"),
                    )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if version > LATEST:
            raise SchemaTooNew(version, LATEST)
        for migration in pending(version):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in migration.sql(SQLITE):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at, what) VALUES (?, ?, ?)",
                    (migration.version, time.time(), migration.what),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            version = migration.version
        return int(version)

    def transient(self, exc: BaseException) -> bool:
        # "database is locked" / "busy" (another process holds the file), an I/O error, a full disk
        if self._closed:
            return False
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            return any(word in text for word in ("locked", "busy", "disk", "i/o", "unable to open"))
        return isinstance(exc, OSError)

    async def run(self, op: OpFactory[T]) -> T:
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="ledger-flush")
        return await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                results = await loop.run_in_executor(self._thread, self._apply, [op for op, _ in batch])
            except Exception as exc:  # the thread itself could not run it (shut down): every caller is told
                results = [(False, exc)] * len(batch)
            for (_, future), (ok, value) in zip(batch, results, strict=True):
                if future.done():  # its caller was cancelled; the operation ran anyway
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _apply(self, ops: list[OpFactory[Any]]) -> list[_Result]:
        """On the ledger's thread: the batch in one transaction.

        Optimistically first, with no savepoints: two statements less per operation, and each statement
        costs this thread the GIL twice while the event loop is busy. Should an operation fail, the
        transaction is rolled back and the batch runs again with one savepoint per operation (the
        operations are pure: they only yield statements), so that only that operation's caller fails."""
        conn = self._conn
        if conn is None:
            return [(False, LedgerClosed("the ledger is closed"))] * len(ops)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # (locked by another process past the busy timeout): none could run
            return [(False, exc)] * len(ops)
        try:
            return self._together(conn, ops, savepoints=False)
        except _OpFailed as failed:
            if len(ops) == 1:
                return [(False, failed.__cause__)]
        except Exception:  # the transaction itself failed (disk full, an I/O error, the commit)
            return [self._alone(conn, factory) for factory in ops]
        try:
            conn.execute("BEGIN IMMEDIATE")
            return self._together(conn, ops, savepoints=True)
        except Exception:
            return [self._alone(conn, factory) for factory in ops]

    @classmethod
    def _together(
        cls, conn: sqlite3.Connection, ops: list[OpFactory[Any]], *, savepoints: bool
    ) -> list[_Result]:
        """``ops`` in the transaction just begun, then COMMIT. Raises whatever ends the transaction, and
        _OpFailed if an operation fails without ``savepoints`` (rolled back, either way)."""
        run = cls._in_savepoint if savepoints else cls._bare
        try:
            out = [run(conn, factory) for factory in ops]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise
        return out

    @staticmethod
    def _bare(conn: sqlite3.Connection, factory: OpFactory[Any]) -> _Result:
        try:
            value = _drive(conn, factory())
        except Exception as exc:
            if not conn.in_transaction:
                raise  # the transaction is gone, and with it what ran before (see _apply)
            raise _OpFailed from exc
        if not conn.in_transaction:  # it ended the transaction itself (what follows would autocommit)
            raise sqlite3.OperationalError("an operation ended the batch's transaction")
        return (True, value)

    @staticmethod
    def _in_savepoint(conn: sqlite3.Connection, factory: OpFactory[Any]) -> _Result:
        conn.execute("SAVEPOINT op")
        try:
            value = _drive(conn, factory())
        except Exception as exc:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return (False, exc)
        conn.execute("RELEASE op")
        return (True, value)

    @staticmethod
    def _alone(conn: sqlite3.Connection, factory: OpFactory[Any]) -> _Result:
        """One operation in a transaction of its own; never raises."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            value = _drive(conn, factory())
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            return (False, exc)
        return (True, value)

    async def _checkpoint_now_and_then(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(self._checkpoint_thread, self._checkpoint, "PASSIVE")

    def _checkpoint(self, mode: str) -> None:
        assert self._checkpointer is not None
        self._checkpointer.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        if self._flusher is not None:
            await asyncio.wait({self._flusher})
        if self._checkpointer is not None:
            with contextlib.suppress(sqlite3.Error):
                await loop.run_in_executor(self._checkpoint_thread, self._checkpoint, "TRUNCATE")
        for conn, thread in ((self._checkpointer, self._checkpoint_thread), (self._conn, self._thread)):
            if conn is not None:
                await loop.run_in_executor(thread, conn.close)
            thread.shutdown(wait=False)
        self._conn = self._checkpointer = None
