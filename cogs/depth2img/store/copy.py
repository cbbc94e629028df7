"""Copy a whole job ledger into an empty database: from SQLite to PostgreSQL when a bot grows to
several processes, or back. With the bot stopped:

    python -m cogs.depth2img.store.copy data/jobs.sqlite3 "postgresql://user:password@host/depth2img"

Both databases are first brought up to this bot's schema (the source is upgraded in place, as the bot
itself would at start-up). No running bot may hold a job of the source (its lease must have run
out), and the target must hold no job, server setting or remembered value. Then the
servers' settings and what the bot remembered (its image service's working route, the picture
folder's mark: see :mod:`cogs.depth2img.core.upkeep`) are copied, and the jobs in id order, a batch
at a time, each batch with its events in one transaction. The pictures stay where they are (the
jobs refer to them by path): keep ``BOT_DATA_DIR``.

If it stops half-way (a row the target refuses, a connection lost), what it wrote is removed from the
target again, so that the copy can simply be run again; when even that cannot be done (the target out
of reach), it says so: empty the target (drop and create the database) first. The source is never
changed but for its schema upgrade.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from .base import Database, Execute, ExecuteMany, Fetch, Op, StoreError
from .ledger import UNFINISHED_SQL, open_database

BATCH = 500
EVENT_COLUMNS = ("job_id", "at", "state", "detail", "owner")
TABLES = ("job_events", "jobs", "guild_settings", "bot_state")  # (emptied in this order: events first)
EMPTY_TIMEOUT_S = 60.0


class TargetNotEmpty(StoreError):
    """The target database already holds a ledger (or part of one)."""


class SourceInUse(StoreError):
    """A running bot holds jobs of the source ledger (their leases have not run out)."""


@dataclass
class Copied:
    jobs: int = 0
    events: int = 0
    settings: int = 0
    values: int = 0


class CopyStopped(Exception):
    """The copy failed once it had begun to write (the cause is chained). ``at``: the id of the first
    job of the batch it stopped at ("" before any job); ``emptied``: whether the target was emptied
    again (else it may hold part of the ledger)."""

    def __init__(self, copied: Copied, at: str, emptied: bool) -> None:
        super().__init__(f"the copy stopped after {copied.jobs} jobs")
        self.copied, self.at, self.emptied = copied, at, emptied


async def copy_ledger(
    source: Path | str,
    target: Path | str,
    *,
    batch: int = BATCH,
    progress: Callable[[Copied], None] | None = None,
) -> Copied:
    """Copy the ledger at ``source`` into the empty one at ``target`` (each a SQLite path or a
    ``postgresql://`` URL). Raises :class:`SourceInUse`, :class:`TargetNotEmpty`, or a
    :class:`StoreError` for a database that cannot be opened (too new, out of reach)."""
    _check(source, target)  # (a file system look, once, before anything runs)
    src = await open_database(source)
    try:
        await _not_in_use(src)
        dst = await open_database(target)
        try:
            return await _copy(src, dst, batch, progress or (lambda _: None))
        finally:
            await dst.close()
    finally:
        await src.close()


async def _not_in_use(src: Database) -> None:
    live, until = await src.run(partial(_live, time.time()))
    if live:
        raise SourceInUse(
            f"a running bot holds {_n(live, 'unfinished job')} of the source (for up to "
            f"{max(1, math.ceil(until - time.time()))} s more, unless it renews them): stop the bot, wait "
            "that long, and run the copy again"
        )


async def _copy(src: Database, dst: Database, batch: int, progress: Callable[[Copied], None]) -> Copied:
    held = await dst.run(_counts)
    if any(held.values()):
        what = ", ".join(f"{_n(n, 'row')} in {table}" for table, n in held.items() if n)
        raise TargetNotEmpty(f"the target database is not empty ({what}): copy into an empty one")
    copied = Copied()
    at = ""
    try:
        settings = await src.run(partial(_fetch, "SELECT * FROM guild_settings ORDER BY guild_id"))
        values = await src.run(partial(_fetch, "SELECT * FROM bot_state ORDER BY name"))
        await dst.run(partial(_insert_all, {"guild_settings": settings, "bot_state": values}))
        copied.settings, copied.values = len(settings), len(values)
        after = ""
        while True:
            jobs, events = await src.run(partial(_jobs_after, after, batch, src.event_order))
            if not jobs:
                break
            at = jobs[0]["id"]
            await dst.run(partial(_insert_all, {"jobs": jobs, "job_events": events}))
            copied.jobs += len(jobs)
            copied.events += len(events)
            after = jobs[-1]["id"]
            progress(copied)
    except BaseException as exc:  # (Ctrl-C included: what was written goes either way)
        raise CopyStopped(copied, at, await _emptied(dst)) from exc
    return copied


async def _emptied(dst: Database) -> bool:
    """Remove what the copy wrote (the target held nothing before it): whether that could be done."""
    try:
        async with asyncio.timeout(EMPTY_TIMEOUT_S):
            await dst.run(_empty)
    except Exception:
        return False
    return True


def _empty() -> Op[None]:
    for table in TABLES:
        yield Execute(f"DELETE FROM {table}")  # noqa: S608 (our own table names)


def _live(now: float) -> Op[tuple[int, float]]:
    """How many unfinished jobs a process still holds (their lease runs after ``now``), and until when."""
    rows = yield Fetch(
        f"SELECT COUNT(*) AS n, MAX(lease_until) AS until FROM jobs WHERE state IN ({UNFINISHED_SQL}) "  # noqa: S608
        "AND lease_until > ?",
        (now,),
    )
    return int(rows[0]["n"]), float(rows[0]["until"] or now)


def _counts() -> Op[dict[str, int]]:
    held = {}
    for table in TABLES:
        rows = yield Fetch(f"SELECT COUNT(*) AS n FROM {table}")  # noqa: S608 (our own table names)
        held[table] = int(rows[0]["n"])
    return held


def _fetch(sql: str) -> Op[list[dict[str, Any]]]:
    rows = yield Fetch(sql)
    return [dict(r) for r in rows]


def _jobs_after(
    after: str, limit: int, event_order: str
) -> Op[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """A batch of jobs (by id, after ``after``) and their events, read in one transaction."""
    jobs = [
        dict(r) for r in (yield Fetch("SELECT * FROM jobs WHERE id > ? ORDER BY id LIMIT ?", (after, limit)))
    ]
    if not jobs:
        return [], []
    marks = ", ".join("?" * len(jobs))
    events = yield Fetch(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM job_events WHERE job_id IN ({marks}) "  # noqa: S608
        f"ORDER BY job_id, {event_order}",
        tuple(j["id"] for j in jobs),
    )
    return jobs, [dict(e) for e in events]


def _insert(table: str, rows: Sequence[dict[str, Any]]) -> Op[None]:
    if rows:
        columns = list(rows[0])
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
        yield ExecuteMany(sql, [tuple(r[c] for c in columns) for r in rows])


def _insert_all(tables: dict[str, list[dict[str, Any]]]) -> Op[None]:
    for table, rows in tables.items():
        yield from _insert(table, rows)


def _check(source: Path | str, target: Path | str) -> None:
    if _is_url(source) == _is_url(target) and _same(source, target):
        raise TargetNotEmpty("the source and the target are the same database")
    if not _is_url(source) and not Path(source).is_file():
        raise StoreError(f"there is no ledger at {source}")


def _is_url(target: Path | str) -> bool:
    return str(target).startswith(("postgres://", "postgresql://"))


def _same(one: Path | str, other: Path | str) -> bool:
    if _is_url(one):
        return str(one) == str(other)
    return Path(one).resolve() == Path(other).resolve()


def _n(count: int, what: str) -> str:
    return f"{count} {what}" if count == 1 else f"{count} {what}s"


def _where(target: str) -> str:
    """A database named for the owner, without the password a URL may hold."""
    return "PostgreSQL" if _is_url(target) else target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cogs.depth2img.store.copy",
        description="Copy the job ledger into an empty database (stop the bot first).",
    )
    parser.add_argument(
        "source", help="the ledger now: a SQLite file (data/jobs.sqlite3) or a postgresql:// URL"
    )
    parser.add_argument("target", help="an empty database: a postgresql:// URL or a SQLite file")
    args = parser.parse_args(argv)

    so_far = Copied()

    def said(copied: Copied) -> None:
        nonlocal so_far
        if copied.jobs // 10_000 > so_far.jobs // 10_000:
            sys.stderr.write(f"  {copied.jobs} jobs…\n")
        so_far = replace(copied)

    try:
        copied = asyncio.run(copy_ledger(args.source, args.target, progress=said))
    except StoreError as exc:  # (before anything was copied)
        sys.stderr.write(f"nothing copied: {exc}\n")
        return getattr(exc, "exit_code", 2)  # (1: a database out of reach, which may pass by itself)
    except CopyStopped as exc:
        cause = type(exc.__cause__).__name__
        where = f"at the batch of jobs from {exc.at}" if exc.at else "before the first job"
        if exc.emptied:
            sys.stderr.write(
                f"the copy stopped {where} ({cause}); what it had written was removed from the target, "
                "which is empty again: mend what stopped it and run the copy again\n"
            )
        else:
            sys.stderr.write(
                f"the copy stopped {where} ({cause}) and could not empty the target again: it may hold "
                "part of the ledger; empty it (drop and create the database) and run the copy again\n"
            )
        return 1
    sys.stdout.write(
        f"copied {_n(copied.jobs, 'job')} ({_n(copied.events, 'event')}), the settings of "
        f"{_n(copied.settings, 'server')} and {_n(copied.values, 'remembered value')} "
        f"from {_where(args.source)} to {_where(args.target)}\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
