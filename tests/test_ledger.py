"""The job ledger, on both of its databases (SQLite and a real PostgreSQL server): the same
records, and the ownership rules that let several bot processes share one ledger without a job
being delivered twice or lost."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from cogs.depth2img.models import GenerationParams
from cogs.depth2img.store import Job, JobState, JobTakenOver, Ledger, SchemaTooNew
from cogs.depth2img.store.base import Execute, ExecuteMany, Fetch, Op, OpFactory
from cogs.depth2img.store.schema import LATEST
from cogs.depth2img.store.sqlite import SqliteDatabase
from tests.conftest import create_database, drop_database
from tests.ledger_queries import count_by_state, event_owners, events

Opener = Callable[..., Awaitable[Ledger]]
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "postgresql"])
async def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens ledgers (one per simulated process) on the same database."""
    target: str | Path = tmp_path / "jobs.sqlite3"
    server: str | None = None
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")
        target = await create_database(server)
    opened: list[Ledger] = []

    async def opener(group: str = "main", lease_s: float = 60.0) -> Ledger:
        ledger = await Ledger.open(target, group=group, lease_s=lease_s)
        opened.append(ledger)
        return ledger

    opener.target = target  # type: ignore[attr-defined]
    yield opener
    for ledger in opened:
        await ledger.close()
    if server is not None:
        await drop_database(server, str(target))


def new_job(job_id: str, *, user: int = 1, guild: int | None = 2**62 + 5) -> Job:
    return Job(
        id=job_id,
        state=JobState.RECEIVED,
        user_id=user,
        channel_id=2**63 - 1,  # snowflakes use all 64 bits' worth of range
        guild_id=guild,
        application_id=30,
        interaction_token="tok",
        interaction_created_at=time.time(),
        message_id=40,
        upload_limit_bytes=8 << 20,
        params=GenerationParams(prompt="a cabin", strength=0.55, seed=7),
    )


async def test_a_job_round_trips_with_its_states_and_events(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    job = await ledger.create(new_job("a1"))
    job = await ledger.update(job, state=JobState.SUBMITTING, submitted_at=time.time())
    job = await ledger.update(
        job, state=JobState.PROCESSING, api_job_id="99", output_urls=("http://x/1.png", "http://x/2.png")
    )
    job = await ledger.update(job, state=JobState.DELIVERED)
    stored = await ledger.get("a1")
    assert stored == job
    assert stored is not None and stored.finished_at is not None
    assert stored.params == GenerationParams(prompt="a cabin", strength=0.55, seed=7)
    assert stored.channel_id == 2**63 - 1
    assert await events(ledger, "a1") == ["received", "submitting", "processing", "delivered"]
    assert await count_by_state(ledger) == {"delivered": 1}
    assert [j.id for j in await ledger.for_user(1)] == ["a1"]


async def test_counts_settings_and_forgetting(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    for n in range(3):
        await ledger.create(new_job(f"c{n}", user=n % 2))
    assert await ledger.guild_counts_since(0) == {2**62 + 5: 3}
    assert await ledger.member_counts_since(0) == {(2**62 + 5, 0): 2, (2**62 + 5, 1): 1}
    # the day's counts: only jobs made since then, and none from direct messages
    await ledger.create(replace(new_job("y1"), created_at=time.time() - 2 * 86400))
    await ledger.create(new_job("d1", guild=None))
    await ledger.create(new_job("g2", guild=7, user=1))
    day = time.time() - 86400
    assert await ledger.guild_counts_since(day) == {2**62 + 5: 3, 7: 1}
    assert await ledger.member_counts_since(day) == {(2**62 + 5, 0): 2, (2**62 + 5, 1): 1, (7, 1): 1}
    assert await ledger.guild_counts_since(time.time() + 60) == {}
    await ledger.save_guild_settings(2**62 + 5, '{"cooldown_s": 5}', by=9)
    await ledger.save_guild_settings(2**62 + 5, '{"cooldown_s": 6}', by=9)
    assert await ledger.all_guild_settings() == {2**62 + 5: '{"cooldown_s": 6}'}
    done = await ledger.get("c0")
    assert done is not None
    await ledger.update(done, state=JobState.FAILED)
    forgotten = await ledger.forget_user(0)
    assert [j.id for j in forgotten] == ["c0"]  # the unfinished one (c2) stays until it ends
    assert await ledger.get("c0") is None
    assert await events(ledger, "c0") == []


async def test_only_the_owner_may_change_a_job(open_ledger: Opener) -> None:
    first = await open_ledger(lease_s=0.2)
    second = await open_ledger(lease_s=60)
    job = await first.create(new_job("o1"))
    assert await second.claim_orphans(running={"x"}) == []  # the lease is alive: hands off
    await asyncio.sleep(0.3)  # the first process "stalls" past its lease
    (taken,) = await second.claim_orphans()
    assert (taken.id, taken.owner, taken.resumes) == ("o1", second.owner, 1)
    with pytest.raises(JobTakenOver):
        await first.update(job, state=JobState.SUBMITTING)
    if first.shared:  # (a single-process ledger has no one to lose a job to: nothing to check)
        assert not await first.claim_delivery(job)  # the old owner must not deliver
    assert await second.claim_delivery(taken)
    await second.update(taken, state=JobState.DELIVERED)
    assert await second.claim_orphans() == []
    owners = await event_owners(second, "o1")
    assert owners == [
        ("received", first.owner),
        ("received/claimed", second.owner),
        ("delivered", second.owner),
    ]


async def test_heartbeat_keeps_a_live_process_jobs(open_ledger: Opener) -> None:
    live = await open_ledger(lease_s=0.3)
    other = await open_ledger()
    await live.create(new_job("h1"))
    for _ in range(4):
        await asyncio.sleep(0.1)
        assert await live.heartbeat({"h1"}) == 1
        assert await other.claim_orphans() == []
        assert await live.claim_orphans(running={"h1"}) == []  # never what it is running


async def test_a_job_its_process_no_longer_runs_is_claimed_again_by_it(open_ledger: Opener) -> None:
    """A run that ended in an error before its final state could be written leaves the job to its
    lease: no heartbeat keeps it alive for ever (a zombie), and its own process resumes it."""
    ledger = await open_ledger(lease_s=0.2)
    await ledger.create(new_job("z1"))
    await ledger.create(new_job("z2"))
    for _ in range(3):
        await asyncio.sleep(0.1)
        assert await ledger.heartbeat({"z2"}) == 1  # z1's run ended: its lease is not renewed
    (claimed,) = await ledger.claim_orphans(running={"z2"})
    assert (claimed.id, claimed.owner, claimed.resumes) == ("z1", ledger.owner, 1)
    assert await ledger.heartbeat(set()) == 0


async def test_a_restarted_process_takes_its_predecessors_jobs_at_once(open_ledger: Opener) -> None:
    old = await open_ledger(group="shards-0-of-2")
    await old.create(new_job("r1"))
    delivering = await old.create(new_job("r2"))
    assert await old.claim_delivery(delivering)
    await old.create(new_job("r3"))
    neighbour = await open_ledger(group="shards-1-of-2")
    assert await neighbour.claim_orphans(at_start=True) == []  # another group's live leases
    new = await open_ledger(group="shards-0-of-2")
    claimed = await new.claim_orphans(at_start=True)
    if new.shared:
        # r2 may already have reached the member: it waits for the lease to run out instead.
        assert [j.id for j in claimed] == ["r1", "r3"]
    else:
        assert [j.id for j in claimed] == ["r1", "r2", "r3"]


async def test_two_processes_claiming_at_once_never_share_a_job(open_ledger: Opener) -> None:
    dead = await open_ledger(lease_s=0.05)
    for n in range(60):
        await dead.create(new_job(f"m{n:02d}"))
    await asyncio.sleep(0.1)
    claimers = [await open_ledger(group=f"g{n}") for n in range(3)]
    results = await asyncio.gather(*(c.claim_orphans() for c in claimers for _ in range(3)))
    ids = [j.id for batch in results for j in batch]
    assert sorted(ids) == [f"m{n:02d}" for n in range(60)]  # every job once: none twice, none lost


async def test_kept_results_due_to_be_posted_late_are_taken_once(open_ledger: Opener) -> None:
    """Only a job whose result is kept but was never delivered, that ended within the window and was
    not tried since ``tried_before``, is due; taking it marks it tried, so two processes (here three,
    three times each, at once) never take the same one, and it is not due again at once."""
    ledger = await open_ledger()

    async def ended(job_id: str, **changes: object) -> Job:
        job = await ledger.create(new_job(job_id))
        return await ledger.update(
            job, **{"state": JobState.FAILED, "error_kind": "DeliveryFailed"} | changes
        )

    for n in range(12):
        await ended(f"k{n:02d}", result_path=f"/r/k{n:02d}.png")
    await ended("nopicture")
    await ended("deleted", result_path="/r/d.png", deleted_at=time.time())
    await ended("tried", result_path="/r/t.png", late_post_at=time.time())
    await ended("other", result_path="/r/o.png", error_kind="ApiError")
    await ledger.update(
        await ledger.create(new_job("fine")), state=JobState.DELIVERED, result_path="/r/f.png"
    )
    now = time.time()
    claimers = [await open_ledger(group=f"g{n}") for n in range(3)]
    results = await asyncio.gather(
        *(
            c.claim_late_posts(since=now - 60, tried_before=now - 30, limit=5)
            for c in claimers
            for _ in range(3)
        )
    )
    taken = [j for batch in results for j in batch]
    # (on PostgreSQL a call whose picks another took meanwhile gets fewer: those are taken next round)
    taken += await ledger.claim_late_posts(since=now - 60, tried_before=now - 30, limit=20)
    assert sorted(j.id for j in taken) == [f"k{n:02d}" for n in range(12)]  # each once, no other
    assert all(j.late_post_at is not None and j.late_post_at >= now for j in taken)
    assert await ledger.claim_late_posts(since=now - 60, tried_before=now - 30) == []
    assert await ledger.claim_late_posts(since=time.time() + 1, tried_before=time.time() + 1) == []
    owner = next(c for c in claimers if c.owner == taken[0].owner)  # (it records what came of it)
    assert (await owner.update(taken[0], state=JobState.DELIVERED)).state is JobState.DELIVERED
    again = await ledger.claim_late_posts(since=now - 60, tried_before=time.time() + 1, limit=20)
    assert sorted(j.id for j in again) == sorted([*(j.id for j in taken[1:]), "tried"])


async def test_a_kept_result_shown_in_its_channel_is_delivered_once(open_ledger: Opener) -> None:
    """/depth2img-show brought a kept, undelivered result back in its channel: whichever process owns
    the job, it is delivered (one event), and no longer due to be posted late. Only an undelivered job
    is: a second showing, a delivered job, a failure without a picture change nothing."""
    ledger = await open_ledger()
    job = await ledger.create(new_job("kept"))
    await ledger.update(job, state=JobState.FAILED, error_kind="DeliveryFailed", result_path="/r/k.png")
    failed = await ledger.update(await ledger.create(new_job("nopic")), state=JobState.FAILED)
    fine = await ledger.create(new_job("fine"))
    await ledger.update(fine, state=JobState.DELIVERED, result_path="/r/f.png")
    other = await open_ledger(group="other")  # (the job's owner is another process)
    assert await asyncio.gather(*(other.shown_in_channel("kept") for _ in range(3))) in (
        [True, False, False],
        [False, True, False],
        [False, False, True],
    )
    assert (await ledger.get("kept")).state is JobState.DELIVERED
    assert await events(ledger, "kept") == ["received", "failed", "delivered"]
    assert not await other.shown_in_channel(failed.id)
    assert not await other.shown_in_channel("fine")
    assert not await other.shown_in_channel("nosuchjob")
    assert (await ledger.get(failed.id)).state is JobState.FAILED
    now = time.time()
    assert await ledger.claim_late_posts(since=now - 60, tried_before=now + 1) == []


async def test_concurrent_writes_all_land_and_one_failure_fails_alone(open_ledger: Opener) -> None:
    """SQLite commits the statements of concurrent jobs together (group commit): a statement that
    fails (here a duplicate id) must fail alone, and every other one must be stored."""
    ledger = await open_ledger()
    await ledger.create(new_job("dup"))
    jobs = [new_job(f"g{n:03d}") for n in range(80)]
    results = await asyncio.gather(
        *(ledger.create(j) for j in jobs[:40]),
        ledger.create(new_job("dup")),
        *(ledger.create(j) for j in jobs[40:]),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert await count_by_state(ledger) == {"received": 81}
    assert await events(ledger, "g042") == ["received"]
    assert await events(ledger, "dup") == ["received"]  # the failed insert left no event


async def test_pictures_of_old_finished_jobs_are_released(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    done = await ledger.create(replace(new_job("p1"), source_path="/x/p1.png"))
    await ledger.update(done, state=JobState.DELIVERED, result_path="/x/p1-r.png")
    await ledger.create(replace(new_job("p2"), source_path="/x/p2.png"))  # unfinished: kept
    assert await ledger.release_pictures(time.time() - 3600) == []
    (released,) = await ledger.release_pictures(time.time() + 1)
    assert (released.id, released.source_path, released.result_path) == ("p1", "/x/p1.png", "/x/p1-r.png")
    stored = await ledger.get("p1")
    assert stored is not None and (stored.source_path, stored.result_path) == (None, None)
    assert await ledger.release_pictures(time.time() + 1) == []


async def test_the_pictures_jobs_refer_to_are_read_by_their_ids(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    done = await ledger.create(replace(new_job("k1"), source_path="/x/sources/k1.png"))
    await ledger.update(done, state=JobState.DELIVERED, result_path="/x/results/k1.png")
    await ledger.create(new_job("k2"))
    asked = ["k1", "k2", "gone", "bad\ud800", *(f"n{n}" for n in range(496))]
    assert await ledger.kept_paths(asked) == {
        "k1": ("/x/sources/k1.png", "/x/results/k1.png"),
        "k2": (None, None),
    }
    assert await ledger.kept_paths([]) == {}


async def test_a_first_value_is_remembered_once_whoever_asks_at_once(open_ledger: Opener) -> None:
    one, two = await open_ledger(), await open_ledger()
    asked = await asyncio.gather(*(led.first_value("mark", f"v{n}") for n, led in enumerate([one, two, one])))
    assert len(set(asked)) == 1 and asked[0] in {"v0", "v1", "v2"}
    assert await two.first_value("mark", "later") == asked[0] == await one.recall("mark")


# --- every operation is all or nothing, and fails alone ------------------------------------------------


async def test_an_operation_that_fails_halfway_leaves_nothing_behind(open_ledger: Opener) -> None:
    """An operation writes the job, then a statement of it fails (here: a table that does not exist):
    the job's new state must not stay either."""
    ledger = await open_ledger()
    job = await ledger.create(new_job("t1"))

    def writes_then_breaks() -> Op[None]:
        yield Execute("UPDATE jobs SET state = ? WHERE id = ?", ("submitting", "t1"))
        yield Execute("INSERT INTO no_such_table (x) VALUES (?)", (1,))

    with pytest.raises(Exception, match=r"no_such_table|no such table"):
        await asyncio.wait_for(ledger._db.run(writes_then_breaks), 10)
    stored = await ledger.get("t1")
    assert stored is not None and stored.state is JobState.RECEIVED
    assert await events(ledger, "t1") == ["received"]
    assert (await ledger.update(job, state=JobState.SUBMITTING)).state is JobState.SUBMITTING  # still usable


async def test_strings_no_database_can_store_are_cleaned_not_fatal(open_ledger: Opener) -> None:
    """A lone surrogate ("\\ud800" is valid JSON: an API answer or a member's option may hold one) or
    a NUL character (PostgreSQL refuses it) in any string the ledger stores: the write succeeds, with the
    character replaced, and the other members' writes of the same moment are unharmed."""
    ledger = await open_ledger()
    bad = "a\ud800b\x00c"
    job = new_job("s1")
    job = replace(job, params=replace(job.params, prompt=bad, negative_prompt=bad), source_url=bad)
    others = [new_job(f"s{n}") for n in range(2, 12)]
    created, *rest = await asyncio.wait_for(
        asyncio.gather(ledger.create(job), *(ledger.create(j) for j in others)), 10
    )
    assert len(rest) == 10
    await ledger.update(
        created, state=JobState.PROCESSING, detail=bad, api_job_id=bad, fetch_url=bad, output_urls=(bad,)
    )
    await ledger.save_guild_settings(5, '{"note": "' + bad + '"}', by=1)
    stored = await ledger.get("s1")
    assert stored is not None
    clean = "a\ufffdbc"
    assert (stored.params.prompt, stored.params.negative_prompt) == (clean, clean)
    assert (stored.source_url, stored.api_job_id, stored.fetch_url, stored.output_urls) == (
        clean,
        clean,
        clean,
        (clean,),
    )
    assert (await ledger.all_guild_settings())[5] == '{"note": "' + clean + '"}'
    assert await count_by_state(ledger) == {"processing": 1, "received": 10}


async def test_any_exception_in_an_operation_fails_only_its_caller(open_ledger: Opener) -> None:
    """Operations of many members share one SQLite commit. One that raises an exception of its own
    (not a database error) after writing is undone, and only its caller hears of it."""
    ledger = await open_ledger()

    def writes_then_fails() -> Op[None]:
        yield Execute(
            "INSERT INTO guild_settings (guild_id, data, updated_at) VALUES (?, ?, ?)", (1, "{}", 0.0)
        )
        raise RuntimeError("the operation's own code failed")

    jobs = [new_job(f"a{n:02d}") for n in range(40)]
    results = await asyncio.wait_for(
        asyncio.gather(
            *(ledger.create(j) for j in jobs[:20]),
            ledger._db.run(writes_then_fails),
            *(ledger.create(j) for j in jobs[20:]),
            return_exceptions=True,
        ),
        10,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert [type(f) for f in failures] == [RuntimeError]
    assert await count_by_state(ledger) == {"received": 40}
    assert await ledger.all_guild_settings() == {}  # its write was undone


async def test_an_error_that_ends_the_whole_transaction_fails_only_its_caller(open_ledger: Opener) -> None:
    """SQLite's group commit: an error that ends the batch's transaction (disk full, I/O; here the
    operation rolls it back itself) must not take the other members' operations with it."""
    ledger = await open_ledger()
    if ledger.shared:
        pytest.skip("on PostgreSQL each operation is a transaction of its own")

    def ends_the_transaction() -> Op[None]:
        yield Execute("ROLLBACK")

    jobs = [new_job(f"b{n:02d}") for n in range(20)]
    results = await asyncio.wait_for(
        asyncio.gather(
            *(ledger.create(j) for j in jobs[:10]),
            ledger._db.run(ends_the_transaction),
            *(ledger.create(j) for j in jobs[10:]),
            return_exceptions=True,
        ),
        10,
    )
    assert sum(isinstance(r, BaseException) for r in results) == 1
    assert isinstance(results[10], BaseException)
    assert await count_by_state(ledger) == {"received": 20}


# --- the schema's version ------------------------------------------------------------------------------


async def _schema_rows(ledger: Ledger) -> list[int]:
    def op() -> Op[list[int]]:
        rows = yield Fetch("SELECT version FROM schema_version ORDER BY version")
        return [int(r["version"]) for r in rows]

    return await ledger._db.run(op)


async def test_a_new_database_gets_every_migration_once(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    assert ledger.schema_version == LATEST
    assert await _schema_rows(ledger) == list(range(1, LATEST + 1))
    again = await open_ledger()  # a restart: nothing to do
    assert again.schema_version == LATEST
    assert await _schema_rows(again) == list(range(1, LATEST + 1))


async def test_a_database_from_a_newer_bot_is_refused_with_a_clear_message(open_ledger: Opener) -> None:
    ledger = await open_ledger()

    def from_the_future() -> Op[None]:
        yield Execute(
            "INSERT INTO schema_version (version, applied_at, what) VALUES (?, ?, ?)", (LATEST + 5, 0.0, "x")
        )

    await ledger._db.run(from_the_future)
    with pytest.raises(SchemaTooNew) as info:
        await open_ledger()
    assert f"schema version {LATEST + 5}" in str(info.value)
    assert f"up to {LATEST}" in str(info.value)
    assert "newer" in str(info.value)


def test_a_sqlite_database_from_before_schema_versions_is_recognised_and_upgraded(tmp_path: Path) -> None:
    """The first release's tables (no ownership columns, no version table): upgraded in place, its
    jobs kept."""
    import sqlite3

    from cogs.depth2img.store.schema import MIGRATIONS, SQLITE

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0].sql(SQLITE):
        conn.execute(statement)
    conn.execute(
        "INSERT INTO jobs (id, state, user_id, channel_id, application_id, interaction_token, "
        "interaction_created_at, upload_limit_bytes, params, created_at, updated_at) "
        "VALUES ('old1', 'delivered', 1, 2, 3, 't', 0, 100, ?, 0, 0)",
        ('{"prompt": "an old one"}',),
    )
    conn.commit()
    conn.close()

    async def check() -> None:
        ledger = await Ledger.open(path)
        try:
            assert ledger.schema_version == LATEST
            assert await _schema_rows(ledger) == list(range(1, LATEST + 1))
            old = await ledger.get("old1")
            assert old is not None and old.params.prompt == "an old one" and old.owner == ""
        finally:
            await ledger.close()

    asyncio.run(check())


class _Recording:
    """The real SQLite database, with every statement it runs noted (to ask SQLite how it runs it)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db, self.kind, self.event_order = db, db.kind, db.event_order
        self.schema_version = db.schema_version
        self.seen: list[Execute | Fetch | ExecuteMany] = []

    def transient(self, exc: BaseException) -> bool:
        return self.db.transient(exc)

    async def close(self) -> None:
        await self.db.close()

    async def run(self, factory: OpFactory[T]) -> T:
        seen = self.seen

        def noted() -> Op[T]:
            inner = factory()
            statement = next(inner)
            while True:
                seen.append(statement)
                result = yield statement
                try:
                    statement = inner.send(result)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]

        return await self.db.run(noted)


async def test_the_queries_a_long_running_bot_repeats_search_by_an_index(tmp_path: Path) -> None:
    """SQLite keeps no statistics, so it picks an index by the shape of a query. Each query the bot
    repeats (every lease, every hour, every button) must find its rows by an index that leads to those
    rows only: a job by its id, the unfinished ones by their state, the old or kept-back ones by their
    state and age. Before, with years of finished jobs (``python -m bench.ledger``: 1,000,000), the
    lease renewal went through every job the process had made (by its owner), the takeover of
    abandoned jobs and the hourly pruning through every job, and the late posts through every failed
    one: 150, 150, 180 and 80 ms each time, while every member's request waited on the ledger."""
    recording = _Recording(await SqliteDatabase.open(tmp_path / "jobs.sqlite3"))
    ledger = Ledger(recording, group="main", owner="main/1", lease_s=60.0)
    job = await ledger.create(new_job("a"))
    now = time.time()
    by_id = {"SEARCH jobs USING INDEX sqlite_autoindex_jobs_1 (id=?)"}
    expected: dict[str, tuple[Callable[[], Awaitable[object]], set[str]]] = {
        "heartbeat": (lambda: ledger.heartbeat(["a", *(f"r{n}" for n in range(30))]), by_id),
        "claim_orphans": (
            lambda: ledger.claim_orphans(running=["a"]),
            {"SEARCH jobs USING INDEX jobs_state_finished (state=?)"},
        ),
        "claim_late_posts": (
            lambda: ledger.claim_late_posts(since=now - 86400, tried_before=now),
            {"SEARCH jobs USING INDEX jobs_failed_kind (state=? AND error_kind=? AND finished_at>?)"},
        ),
        "release_pictures": (
            lambda: ledger.release_pictures(now),
            {"SEARCH jobs USING INDEX jobs_kept_pictures (state=? AND finished_at<?)"},
        ),
        "forget_finished": (
            lambda: ledger.forget_finished(now - 86400),
            {"SEARCH jobs USING INDEX jobs_state_finished (state=? AND finished_at<?)"},
        ),
        "get": (lambda: ledger.get("a"), by_id),
        "kept_paths": (lambda: ledger.kept_paths([f"k{n}" for n in range(500)]), by_id),
        "shown_in_channel": (lambda: ledger.shown_in_channel("a"), by_id),
        "update": (lambda: ledger.update(job, state=JobState.SUBMITTED), by_id),
    }
    plans = sqlite3.connect(tmp_path / "jobs.sqlite3")
    wrong = {}
    try:
        for name, (call, allowed) in expected.items():
            recording.seen.clear()
            await call()
            steps = set()
            for statement in recording.seen:
                args = statement.rows[0] if isinstance(statement, ExecuteMany) else statement.args
                for row in plans.execute(f"EXPLAIN QUERY PLAN {statement.sql}", args):
                    if " jobs " in f"{row[3]} ":
                        steps.add(row[3])
            if not steps or not steps <= allowed:
                wrong[name] = steps
    finally:
        plans.close()
        await ledger.close()
    assert wrong == {}


# --- copying a whole ledger into an empty database -----------------------------------------------------


async def test_a_whole_ledger_is_copied_into_an_empty_database_and_back(
    tmp_path: Path, postgres_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SQLite -> PostgreSQL (a bot growing to several processes) and back: every job as it was, its
    events in order, the servers' settings and what the bot remembered; never into a database that
    holds anything, never from one that does not exist."""
    from cogs.depth2img.store.copy import Copied, SourceInUse, TargetNotEmpty, copy_ledger, main

    sqlite_path = tmp_path / "jobs.sqlite3"
    source = await Ledger.open(sqlite_path, group="main", lease_s=0.001)  # (a bot stopped long ago)
    jobs = []
    for n in range(5):
        job = await source.create(replace(new_job(f"j{n}", user=n), source_path=f"/data/sources/j{n}.png"))
        if n % 2:
            job = await source.update(job, state=JobState.SUBMITTED, api_job_id=f"api-{n}")
            job = await source.update(
                job, state=JobState.DELIVERED, result_path=f"/data/results/j{n}.png", detail="done"
            )
        jobs.append(job)
    await source.save_guild_settings(2**62 + 5, '{"cooldown_s": 5}', by=9)
    await source.remember("pictures_mark", "abc123")
    histories = {j.id: await event_owners(source, j.id) for j in jobs}
    await source.close()

    target = await create_database(postgres_server)
    try:
        copied = await copy_ledger(sqlite_path, target, batch=2)  # three batches
        assert copied == Copied(jobs=5, events=sum(map(len, histories.values())), settings=1, values=1)
        there = await Ledger.open(target, group="main", lease_s=0.001)
        try:
            assert [await there.get(j.id) for j in jobs] == jobs
            assert {j.id: await event_owners(there, j.id) for j in jobs} == histories
            assert await there.all_guild_settings() == {2**62 + 5: '{"cooldown_s": 5}'}
            assert await there.recall("pictures_mark") == "abc123"
            # the copy is a working ledger: the unfinished jobs are taken over, the rest stay finished
            assert sorted(j.id for j in await there.claim_orphans(at_start=True)) == ["j0", "j2", "j4"]
        finally:
            await there.close()

        with pytest.raises(TargetNotEmpty, match="not empty"):
            await copy_ledger(sqlite_path, target)
        assert await asyncio.to_thread(main, [str(sqlite_path), target]) == 2  # (it runs its own loop)
        assert "nothing copied: the target database is not empty (" in capsys.readouterr().err

        back = tmp_path / "back.sqlite3"
        assert await asyncio.to_thread(main, [target, str(back)]) == 0
        said = capsys.readouterr().out
        assert said == (  # (three more events: the jobs taken over there)
            f"copied 5 jobs ({copied.events + 3} events), the settings of 1 server and 1 remembered value "
            f"from PostgreSQL to {back}\n"
        )
        assert target.rsplit("@", 1)[0] not in said  # (no password in what it says)
        again = await Ledger.open(back)
        try:
            assert [(await again.get(j.id)).state for j in jobs] == [j.state for j in jobs]
        finally:
            await again.close()
    finally:
        await drop_database(postgres_server, target)

    # a bot that still runs (or stopped less than a lease ago) holds its unfinished jobs
    running = await Ledger.open(tmp_path / "running.sqlite3", lease_s=60.0)
    await running.create(new_job("r1"))
    with pytest.raises(
        SourceInUse, match=r"a running bot holds 1 unfinished job of the source \(for up to 60 s"
    ):
        await copy_ledger(tmp_path / "running.sqlite3", tmp_path / "new.sqlite3")
    await running.close()
    with pytest.raises(Exception, match="no ledger at"):
        await copy_ledger(tmp_path / "missing.sqlite3", tmp_path / "new.sqlite3")
    assert not (tmp_path / "new.sqlite3").exists()


async def test_a_copy_that_stops_half_way_leaves_the_target_empty_again(
    tmp_path: Path, postgres_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL refuses a row of the third batch (a NUL in its text, which SQLite keeps and
    PostgreSQL's text cannot hold: a damaged old file). What the copy had written (the settings, two
    batches of jobs) is removed again, and the owner is told where it stopped; once the row is mended,
    the same command copies everything. Before, the target kept the first batches and a second run
    was refused as "not empty"."""
    from cogs.depth2img.store.copy import CopyStopped, copy_ledger, main

    sqlite_path = tmp_path / "jobs.sqlite3"
    source = await Ledger.open(sqlite_path, group="main", lease_s=0.001)
    for n in range(6):
        await source.create(new_job(f"j{n}", user=n))
    await source.save_guild_settings(7, '{"cooldown_s": 5}', by=9)
    await source.close()
    with contextlib.closing(sqlite3.connect(sqlite_path)) as raw, raw:
        raw.execute("UPDATE jobs SET source_path = ? WHERE id = 'j5'", ("/data/sources/j5\x00.png",))

    target = await create_database(postgres_server)
    try:
        assert await asyncio.to_thread(main, [str(sqlite_path), target]) == 1  # (batches of 500: one)
        said = capsys.readouterr().err
        assert said.startswith("the copy stopped at the batch of jobs from j0 (")
        assert "removed from the target, which is empty again" in said
        with pytest.raises(CopyStopped, match="stopped after 4 jobs") as stopped:
            await copy_ledger(sqlite_path, target, batch=2)  # j4 and j5: the third batch
        assert (stopped.value.at, stopped.value.emptied) == ("j4", True)
        there = await Ledger.open(target, group="main")
        try:
            assert await there.get("j0") is None and await there.all_guild_settings() == {}
        finally:
            await there.close()
        with contextlib.closing(sqlite3.connect(sqlite_path)) as raw, raw:
            raw.execute("UPDATE jobs SET source_path = '/data/sources/j5.png' WHERE id = 'j5'")
        assert await asyncio.to_thread(main, [str(sqlite_path), target]) == 0
        assert capsys.readouterr().out.startswith("copied 6 jobs (")
    finally:
        await drop_database(postgres_server, target)
