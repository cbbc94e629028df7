"""Several bot processes: discord.py's sharded client, one shard per process, sharing one job
ledger in a real PostgreSQL server. Each server's events reach only the process running its shard;
a job is delivered by exactly one process, and the jobs of a process that dies are taken over by
another one and delivered once."""

from __future__ import annotations

import signal

from cogs.depth2img.store import Ledger
from tests.conftest import bot_env, is_settled, slash, spawn_bot, stop_bot
from tests.fakes.fake_api import make_png
from tests.ledger_queries import count_by_state, event_owners


async def test_two_shard_processes_share_one_ledger_and_take_over_a_dead_ones_jobs(
    fake_discord, fake_api, tmp_path, pg_url
):
    env = bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",  # one data folder (a shared volume): pictures of unsubmitted jobs live there
        DATABASE_URL=pg_url,
        SHARD_COUNT="2",
        JOB_LEASE_S="2",
        SD_POLL_INITIAL_S="0.05",
        SD_POLL_MAX_S="0.1",
    )
    guild_on = {fake_discord.shard_of(g, 2): g for g in (fake_discord.guild_id, fake_discord.second_guild_id)}
    assert set(guild_on) == {0, 1}
    first = await spawn_bot(fake_discord, {**env, "SHARD_IDS": "0"}, tmp_path, shard=0)
    second = await spawn_bot(fake_discord, {**env, "SHARD_IDS": "1"}, tmp_path, shard=1)
    procs = [first, second]
    logs: dict[str, str] = {}
    try:
        assert sorted(tuple(i["shard"]) for i in fake_discord.identifies) == [(0, 2), (1, 2)]

        # 1. each server is served by the process of its shard; each job delivered once.
        members = []
        for shard in (0, 1):
            member, final = await slash(fake_discord, {"prompt": f"shard {shard}"}, guild_id=guild_on[shard])
            assert len(final.results) == 1, final.content
            assert len(fake_discord.visible_messages(member)) == 1
            members.append(member)

        # 2. the first process dies (SIGKILL) while its job is queued at the API ...
        fake_api.scenario = "queued"
        fake_api.polls_before_done = 10**6
        record = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "orphan"},
            guild_id=guild_on[0],
        )
        await fake_discord.wait_for(lambda: len(fake_api.fetches) >= 2, timeout=20)
        logs["first"] = await stop_bot(first, signal.SIGKILL)
        fake_api.polls_before_done = 0
        # ... and the second one, still running, takes the job over when its lease runs out.
        await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=30)
        await fake_discord.wait_until_idle()

        # 3. the first process comes back: nothing is delivered again.
        first = await spawn_bot(fake_discord, {**env, "SHARD_IDS": "0"}, tmp_path, shard=0)
        procs[0] = first
        await fake_discord.wait_until_idle(quiet_s=1.0)  # (its start, and a delivery if it made one)
    finally:
        logs["first-again"] = await stop_bot(procs[0], signal.SIGTERM)
        logs["second"] = await stop_bot(procs[1], signal.SIGTERM)

    assert len(fake_api.submissions) == 3  # the orphan was polled by the second process, never resent
    visible = fake_discord.visible_messages(record)
    assert len(visible) == 1 and len(visible[0].results) == 1
    assert fake_discord.channel_messages == []
    assert fake_discord.violations == []
    assert "job taken over from a stopped process" in logs["second"]
    assert "job resumed" not in logs["first-again"]

    ledger = await Ledger.open(pg_url)
    try:
        assert await count_by_state(ledger) == {"delivered": 3}
        jobs = {}
        for rec in (*members, record):
            jobs.update({j.params.prompt: j for j in await ledger.for_user(rec.user_id)})
        owners = await event_owners(ledger, jobs["orphan"].id)
        # the first two jobs were done start to end by the process of their server's shard
        for shard in (0, 1):
            assert {
                o.split("/")[0] for _, o in await event_owners(ledger, jobs[f"shard {shard}"].id) if o
            } == {f"shards-{shard}-of-2"}
    finally:
        await ledger.close()
    groups = [(state, (owner or "").split("/")[0]) for state, owner in owners]
    assert groups[0] == ("acknowledged", "shards-0-of-2")
    assert ("processing/claimed", "shards-1-of-2") in groups
    assert groups[-1] == ("delivered", "shards-1-of-2")
