"""The durable job ledger: every accepted request is a row, moving through explicit states with
timestamps (see :mod:`.records`), so that no job is lost or submitted twice across a crash or a
restart. Discord-free; it stores the few Discord ids a delivery needs as plain numbers.

Two databases, the same tables and the same guarantees: SQLite (``BOT_DATA_DIR/jobs.sqlite3``, the
default, for one bot process) and PostgreSQL (``DATABASE_URL``, for several processes, e.g. one per
group of shards). Every method is one transaction: all of it happens, or none of it.

Ownership: each unfinished job is owned by one bot process (``owner``) for a lease it renews while
it runs (:meth:`Ledger.heartbeat`). Only the owner may change a job (:class:`JobTakenOver`
otherwise). A process takes over (:meth:`Ledger.claim_orphans`) jobs whose lease ran out (their
process died), and at start-up the jobs of its own predecessor (same ``group``, e.g. the same
shards) at once, unless that predecessor had begun delivering them. Just before delivering, the
owner calls :meth:`Ledger.claim_delivery`: a job is delivered by at most one process.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from cogs.depth2img.cleaning import clean_text, is_clean
from cogs.depth2img.errors import is_disk_full

from .base import Database, Execute, ExecuteMany, Fetch, Op, OpFactory
from .postgres import PostgresDatabase
from .records import FINISHED, DuplicateInteraction, Job, JobState, JobTakenOver, from_row, to_row
from .sqlite import SqliteDatabase
from .tallies import Tallies

log = logging.getLogger(__name__)
T = TypeVar("T")
_FINISHED_SQL = ", ".join(f"'{s}'" for s in sorted(FINISHED))
# (named, not "NOT IN finished": an index finds these few among years of finished jobs)
UNFINISHED_SQL = ", ".join(f"'{s}'" for s in sorted(set(JobState) - FINISHED))
# A job whose result was made and kept, but never reached Discord (:attr:`Job.undelivered`)
_UNDELIVERED = "state = 'failed' AND error_kind = 'DeliveryFailed' AND result_path IS NOT NULL"
_EVENT_SQL = "INSERT INTO job_events (job_id, at, state, detail, owner) VALUES (?, ?, ?, ?, ?)"


class Ledger(Tallies):
    """The jobs, their events and the servers' settings.

    ``owner`` names this process (``<group>/<random>``); ``group`` is what a restarted process shares
    with the one it replaces (e.g. its shard ids), so that it takes over that one's jobs at once."""

    def __init__(
        self, db: Database, *, group: str, owner: str, lease_s: float, retry_for_s: float = 30.0
    ) -> None:
        self._db = db
        self.group = group
        self.owner = owner
        self.lease_s = lease_s
        self.retry_for_s = retry_for_s  # how long an operation is tried while the database is out of reach

    @classmethod
    async def open(
        cls, target: Path | str, *, group: str = "local", owner: str | None = None, lease_s: float = 60.0
    ) -> Ledger:
        """``target``: a SQLite file path, or a ``postgresql://`` URL. Brings the database's schema up
        to date (:mod:`.schema`) or raises :class:`SchemaTooNew`."""
        db = await open_database(target)
        return cls(db, group=group, owner=owner or f"{group}/{secrets.token_hex(4)}", lease_s=lease_s)

    @property
    def backend(self) -> str:
        return self._db.kind

    @property
    def schema_version(self) -> int:
        return self._db.schema_version

    @property
    def shared(self) -> bool:
        """Whether several bot processes may use this ledger (PostgreSQL); SQLite is for one."""
        return self._db.kind == "postgresql"

    async def close(self) -> None:
        await self._db.close()

    async def answers(self, timeout_s: float = 2.0) -> bool:
        """Whether the database answers now (for ``/healthz``): one trivial query, not retried."""

        def op() -> Op[bool]:
            rows = yield Fetch("SELECT 1 AS ok")
            return bool(rows)

        try:
            async with asyncio.timeout(timeout_s):
                return await self._db.run(op)
        except Exception:  # (closed, out of reach, slow: not ready)
            return False

    def _event(self, job_id: str, state: JobState, detail: str | None) -> Execute:
        detail = clean_text(detail) if detail else detail
        return Execute(_EVENT_SQL, (job_id, time.time(), str(state), detail, self.owner))

    async def _run(self, op: OpFactory[T], *, wait_out_full: bool = True) -> T:
        """Run one operation; while the database is briefly out of reach (a locked SQLite file, a
        PostgreSQL restart) or its disk full (unless not ``wait_out_full``), run it again, for up to
        ``retry_for_s`` seconds. Each operation is one transaction, and written to be run again (see
        :meth:`create`)."""
        give_up = time.monotonic() + self.retry_for_s
        delay = 0.05
        while True:
            try:
                return await self._db.run(op)
            except Exception as exc:
                full = is_disk_full(exc)
                if (
                    not self._db.transient(exc)
                    or (full and not wait_out_full)
                    or time.monotonic() + delay > give_up
                ):
                    raise
                log.warning(
                    "the ledger's disk is full; trying again"
                    if full
                    else "the ledger's database is out of reach; trying again",
                    extra={"error": type(exc).__name__, "wait_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # --- writing ---

    async def create(self, job: Job) -> Job:
        now = time.time()
        job = replace(
            job,
            created_at=job.created_at or now,
            updated_at=now,
            owner=self.owner,
            lease_until=now + self.lease_s,
        )
        row = to_row(job)
        insert = f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})"  # noqa: S608

        def op() -> Op[Job]:
            if job.interaction_id is not None:
                seen = yield Fetch("SELECT id FROM jobs WHERE interaction_id = ?", (job.interaction_id,))
                if seen and seen[0]["id"] == job.id:
                    return job  # run again after a commit whose answer was lost: it is there
                if seen:
                    raise DuplicateInteraction(job.interaction_id)
            yield Execute(insert, tuple(row.values()))
            yield self._event(job.id, job.state, None)
            return job

        # (a new job on a full disk is refused at once: nothing is paid for yet; writes about jobs
        # under way wait it out, for a paid result's sake)
        return await self._run(op, wait_out_full=False)

    async def mark_deleted(self, job_id: str) -> None:
        """The job's result message was deleted (by whoever asked for it, or a moderator)."""

        def op() -> Op[None]:
            yield Execute(
                "UPDATE jobs SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL", (time.time(), job_id)
            )

        await self._run(op)

    async def update(self, job: Job, *, detail: str | None = None, **changes: Any) -> Job:
        """Write ``changes`` (and the new ``updated_at``) and return the updated job. Only the job's
        owner may: raises :class:`JobTakenOver` if another process owns it now."""
        now = time.time()
        new = replace(job, **changes, updated_at=now, owner=self.owner)
        if new.state in FINISHED and new.finished_at is None:
            new = replace(new, finished_at=now)
        changed = to_row(new, (*changes, "updated_at", "finished_at"))
        assignments = ", ".join(f"{k} = ?" for k in changed)
        sql = f"UPDATE jobs SET {assignments} WHERE id = ? AND owner = ?"  # noqa: S608
        state_changed = "state" in changes and new.state != job.state

        def op() -> Op[Job]:
            count = yield Execute(sql, (*changed.values(), job.id, self.owner))
            if count != 1:
                raise JobTakenOver(job.id)
            if state_changed:
                yield self._event(job.id, new.state, detail)
            return new

        return await self._run(op)

    # --- ownership ---

    async def heartbeat(self, running: Collection[str]) -> int:
        """Renew the leases of the jobs this process is running (``running``: their ids); returns how
        many. A job it owns but no longer runs (its run ended in an error before its final state could
        be recorded) keeps no lease: it is claimed again, and resumed, once the lease has run out."""
        ids = sorted(running)
        lease_until = time.time() + self.lease_s

        # One job at a time, by its id: with a list of ids SQLite (which keeps no statistics) would go
        # through every job this process ever made, by the owner's index.
        sql = f"UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? AND state IN ({UNFINISHED_SQL})"  # noqa: S608

        def op() -> Op[int]:
            count = 0
            for job_id in ids:
                count += yield Execute(sql, (lease_until, job_id, self.owner))
            return count

        return await self._run(op) if ids else 0

    async def claim_orphans(self, *, at_start: bool = False, running: Collection[str] = ()) -> list[Job]:
        """Take over the unfinished jobs no live process runs: those whose lease ran out (this
        process's own included, but for those in ``running``), and, at start-up, those of this
        process's predecessor (same group) that it had not begun to deliver. Atomic: two processes
        never claim the same job."""
        now = time.time()
        condition = "lease_until < ?"
        args: list[Any] = [now]
        if at_start:
            condition = "owner <> ? AND (lease_until < ? OR (owner LIKE ? AND delivering = 0))"
            args = [self.owner, now, self.group.replace("%", "") + "/%"]
        if running:
            condition += f" AND id NOT IN ({', '.join('?' for _ in running)})"
            args += sorted(running)
        sql = (
            "UPDATE jobs SET owner = ?, lease_until = ?, resumes = resumes + 1, delivering = 0 "  # noqa: S608
            f"WHERE state IN ({UNFINISHED_SQL}) AND {condition} RETURNING *"
        )

        def op() -> Op[list[Job]]:
            rows = yield Fetch(sql, (self.owner, now + self.lease_s, *args))
            jobs = sorted((from_row(r) for r in rows), key=lambda j: j.created_at)
            if jobs:
                events = [(j.id, time.time(), str(j.state), "claimed", self.owner) for j in jobs]
                yield ExecuteMany(_EVENT_SQL, events)
            return jobs

        return await self._run(op)

    async def claim_delivery(self, job: Job) -> bool:
        """Called just before delivering: marks the job as being delivered by this process.
        False when another process owns it (then this one must not deliver). With a ledger only
        this process uses (SQLite) nothing can take a job from it, and nothing is written: the
        write would only delay every delivery."""
        if not self.shared:
            return True
        sql = (
            "UPDATE jobs SET delivering = 1, lease_until = ? "  # noqa: S608
            f"WHERE id = ? AND owner = ? AND state NOT IN ({_FINISHED_SQL})"
        )
        args = (time.time() + self.lease_s, job.id, self.owner)

        def op() -> Op[bool]:
            count = yield Execute(sql, args)
            return bool(count == 1)

        return await self._run(op)

    async def claim_late_posts(self, *, since: float, tried_before: float, limit: int = 5) -> list[Job]:
        """Take the jobs whose result is kept but was never delivered (Discord took nothing for it, or
        refused it: :attr:`Job.undelivered`), that ended after ``since`` and were not tried in their
        channel since ``tried_before``; marks them tried now, owned by this process (to record what came
        of it). Atomic: two processes never take the same job at once."""
        now = time.time()
        due = f"{_UNDELIVERED} AND deleted_at IS NULL AND (late_post_at IS NULL OR late_post_at < ?)"
        pick = f"SELECT id FROM jobs WHERE {due} AND finished_at >= ? ORDER BY finished_at LIMIT ?"  # noqa: S608
        # One job at a time, by its id: with several ids SQLite (which keeps no statistics) would scan
        # every such failure by the index; the condition again: taken by another process meanwhile,
        # it is left (PostgreSQL checks it again on the row another transaction just changed).
        take = f"UPDATE jobs SET late_post_at = ?, owner = ? WHERE id = ? AND {due} RETURNING *"  # noqa: S608

        def op() -> Op[list[Job]]:
            picked = yield Fetch(pick, (tried_before, float(since), limit))
            taken: list[Job] = []
            for row in picked:
                rows = yield Fetch(take, (now, self.owner, row["id"], tried_before))
                taken.extend(from_row(r) for r in rows)
            return sorted(taken, key=lambda j: j.finished_at or 0.0)

        return await self._run(op)

    async def shown_in_channel(self, job_id: str) -> bool:
        """A kept result never delivered, shown in its channel another way (/depth2img-show): the job
        is delivered now, so not posted late as well (a late post under way looks again before it
        posts). Whether it was still undelivered: true for one call only, whoever owns the job."""
        sql = f"UPDATE jobs SET state = 'delivered', updated_at = ? WHERE id = ? AND {_UNDELIVERED}"  # noqa: S608
        args = (time.time(), job_id)

        def op() -> Op[bool]:
            count = yield Execute(sql, args)
            if count == 1:
                yield self._event(job_id, JobState.DELIVERED, "shown with /depth2img-show")
            return bool(count == 1)

        return await self._run(op)

    # --- reading ---

    async def get(self, job_id: str) -> Job | None:
        """None also for an id no job can have and no database takes (a lone surrogate, a NUL: a
        member typed it, or a crafted button sent it)."""
        if not is_clean(job_id):
            return None

        def op() -> Op[Job | None]:
            rows = yield Fetch("SELECT * FROM jobs WHERE id = ?", (job_id,))
            return from_row(rows[0]) if rows else None

        return await self._run(op)

    async def for_user(self, user_id: int, limit: int = 10) -> list[Job]:
        def op() -> Op[list[Job]]:
            rows = yield Fetch(
                "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC LIMIT ?", (user_id, limit)
            )
            return [from_row(r) for r in rows]

        return await self._run(op)

    async def kept_paths(self, job_ids: Collection[str]) -> dict[str, tuple[str | None, str | None]]:
        """The stored pictures (``source_path``, ``result_path``) of those of ``job_ids`` (at most
        500) that are jobs in the ledger: for the sweep of files no job refers to."""
        ids = sorted({i for i in job_ids if is_clean(i)})
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        select = f"SELECT id, source_path, result_path FROM jobs WHERE id IN ({marks})"  # noqa: S608

        def op() -> Op[dict[str, tuple[str | None, str | None]]]:
            rows = yield Fetch(select, tuple(ids))
            return {r["id"]: (r["source_path"], r["result_path"]) for r in rows}

        return await self._run(op)

    async def release_pictures(self, finished_before: float, limit: int = 500) -> list[Job]:
        """Finished jobs older than ``finished_before`` that still point at stored pictures: their
        paths are cleared (the caller removes the files) and the jobs returned as they were."""
        select = (
            f"SELECT * FROM jobs WHERE state IN ({_FINISHED_SQL}) AND finished_at < ? "  # noqa: S608
            "AND (source_path IS NOT NULL OR result_path IS NOT NULL) ORDER BY finished_at LIMIT ?"
        )

        def op() -> Op[list[Job]]:
            rows = yield Fetch(select, (float(finished_before), limit))
            jobs = [from_row(r) for r in rows]
            if jobs:
                yield ExecuteMany(
                    "UPDATE jobs SET source_path = NULL, result_path = NULL WHERE id = ?",
                    [(j.id,) for j in jobs],
                )
            return jobs

        return await self._run(op)

    async def forget_user(self, user_id: int) -> list[Job]:
        """Delete a member's finished jobs and their events; returns them (to remove their files)."""
        select = f"SELECT * FROM jobs WHERE user_id = ? AND state IN ({_FINISHED_SQL})"  # noqa: S608

        return await self._run(lambda: _deleting(Fetch(select, (user_id,))))

    async def forget_finished(self, finished_before: float, limit: int = 500) -> list[Job]:
        """Delete finished jobs older than ``finished_before`` and their events (``KEEP_JOBS_DAYS``);
        returns them (to remove any pictures they still had)."""
        select = (
            f"SELECT * FROM jobs WHERE state IN ({_FINISHED_SQL}) AND finished_at < ? "  # noqa: S608
            "ORDER BY finished_at LIMIT ?"
        )

        return await self._run(lambda: _deleting(Fetch(select, (float(finished_before), limit))))


async def open_database(target: Path | str) -> Database:
    """The database at ``target`` (a SQLite file path, or a ``postgresql://`` URL), its schema brought
    up to date (:mod:`.schema`). Raises :class:`SchemaTooNew`, or ``LedgerUnavailable``."""
    text = str(target)
    if text.startswith(("postgres://", "postgresql://")):
        return await PostgresDatabase.open(text)
    return await SqliteDatabase.open(Path(target))


def _deleting(select: Fetch) -> Op[list[Job]]:
    """Delete the jobs ``select`` finds, and their events; returns them as they were."""
    rows = yield select
    jobs = [from_row(r) for r in rows]
    ids = [(j.id,) for j in jobs]
    if ids:
        yield ExecuteMany("DELETE FROM job_events WHERE job_id = ?", ids)
        yield ExecuteMany("DELETE FROM jobs WHERE id = ?", ids)
    return jobs
