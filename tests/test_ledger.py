"""The job ledger, on both of its databases (SQLite and a real PostgreSQL server): the same
records, and the ownership rules that let several bot processes share one ledger without a job
being delivered twice or lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cogs.depth2img.ledger import Job, JobState, JobTakenOver, Ledger
from cogs.depth2img.models import GenerationParams
from tests.conftest import create_database, drop_database

Opener = Callable[..., Awaitable[Ledger]]


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
    assert await ledger.events("a1") == ["received", "submitting", "processing", "delivered"]
    assert await ledger.count_by_state() == {"delivered": 1}
    assert [j.id for j in await ledger.for_user(1)] == ["a1"]


async def test_counts_settings_and_forgetting(open_ledger: Opener) -> None:
    ledger = await open_ledger()
    for n in range(3):
        await ledger.create(new_job(f"c{n}", user=n % 2))
    assert await ledger.guild_counts_since(0) == {2**62 + 5: 3}
    assert await ledger.member_counts_since(0) == {(2**62 + 5, 0): 2, (2**62 + 5, 1): 1}
    await ledger.save_guild_settings(2**62 + 5, '{"cooldown_s": 5}', by=9)
    await ledger.save_guild_settings(2**62 + 5, '{"cooldown_s": 6}', by=9)
    assert await ledger.all_guild_settings() == {2**62 + 5: '{"cooldown_s": 6}'}
    done = await ledger.get("c0")
    assert done is not None
    await ledger.update(done, state=JobState.FAILED)
    forgotten = await ledger.forget_user(0)
    assert [j.id for j in forgotten] == ["c0"]  # the unfinished one (c2) stays until it ends
    assert await ledger.get("c0") is None
    assert await ledger.events("c0") == []


async def test_only_the_owner_may_change_a_job(open_ledger: Opener) -> None:
    first = await open_ledger(lease_s=0.2)
    second = await open_ledger(lease_s=60)
    job = await first.create(new_job("o1"))
    assert await second.claim_orphans() == []  # the lease is alive: hands off
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
    owners = await second.event_owners("o1")
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
        assert await live.heartbeat() == 1
        assert await other.claim_orphans() == []
        assert await live.claim_orphans() == []  # a process never "takes over" its own jobs


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
    assert await ledger.count_by_state() == {"received": 81}
    assert await ledger.events("g042") == ["received"]
    assert await ledger.events("dup") == ["received"]  # the failed insert left no event


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
