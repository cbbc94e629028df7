"""Nothing lost: the real bot process is killed or stopped mid-job and started again, on SQLite as on
PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cogs.depth2img.store import Ledger
from tests.conftest import (
    bot_busy,
    bot_env,
    create_database,
    drop_database,
    free_port,
    is_settled,
    spawn_bot,
    stop_bot,
)
from tests.fakes.fake_api import make_png
from tests.ledger_queries import count_by_state, time_passes
from tests.test_faults import assert_points_to


@dataclass
class Database:
    """Where the bot under test keeps its ledger, and how the test opens it too."""

    env: dict[str, str]
    target: str | Path

    async def open(self) -> Ledger:
        return await Ledger.open(self.target)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        yield Database({}, tmp_path / "data" / "jobs.sqlite3")
        return
    server = request.getfixturevalue("postgres_server")
    url = await create_database(server)
    yield Database({"DATABASE_URL": url}, url)
    await drop_database(server, url)


async def states(database: Database) -> dict[str, int]:
    ledger = await database.open()
    try:
        return await count_by_state(ledger)
    finally:
        await ledger.close()


def polling_env(fake_discord, fake_api, tmp_path: Path, database: Database, **extra: str) -> dict[str, str]:
    """The settings of a bot that polls the API quickly and reports on its own metrics port."""
    return bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",
        SD_POLL_INITIAL_S="0.05",
        SD_POLL_MAX_S="0.1",
        METRICS_PORT=str(free_port()),
        **extra,
        **database.env,
    )


async def test_sigkill_while_queued_then_two_restarts_deliver_exactly_once(
    fake_discord, fake_api, tmp_path, database
):
    env = polling_env(fake_discord, fake_api, tmp_path, database)
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 10**6  # queued at the API until we say so
    proc = await spawn_bot(fake_discord, env, tmp_path)
    record = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "restart me"}
    )
    await fake_discord.wait_for(lambda: len(fake_api.fetches) >= 2, timeout=20)
    await stop_bot(proc, signal.SIGKILL)  # no chance to clean up

    fake_api.polls_before_done = 0  # meanwhile the API finished the job
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=30)
        async with asyncio.timeout(10):
            while await states(database) != {"delivered": 1}:
                await asyncio.sleep(0.02)
    finally:
        log = await stop_bot(proc, signal.SIGKILL)  # killed again, once it has recorded the delivery
    assert "job resumed" in log
    # A second restart: the job delivered once stays delivered (nothing resumed, nothing sent again).
    fetches = len(fake_api.fetches)
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        await fake_discord.wait_until_idle(bot_busy(env))
    finally:
        log = await stop_bot(proc, signal.SIGTERM)
    assert "job resumed" not in log
    assert len(fake_api.fetches) == fetches
    assert len(fake_api.submissions) == 1  # polled after the restart, never submitted again
    visible = fake_discord.visible_messages(record)
    assert len(visible) == 1  # the original message, edited into the result
    assert len(visible[0].results) == 1
    assert fake_discord.channel_messages == []
    assert fake_api.api_key not in log
    assert await states(database) == {"delivered": 1}


async def test_a_job_resumed_after_its_interaction_expired_goes_to_the_channel_with_one_ping(
    fake_discord, fake_api, tmp_path, database
):
    """The bot was down for 16 minutes: the job's interaction is that old (its creation time, in the
    ledger as at the fake Discord), so its token is dead. The result is posted in the channel, the
    member mentioned once, and the dead token is never even tried."""
    env = polling_env(fake_discord, fake_api, tmp_path, database, SD_JOB_TIMEOUT_S="3600")  # (not over)
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 10**6
    proc = await spawn_bot(fake_discord, env, tmp_path)
    user = 515151515151515151
    record = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "later"},
        user_id=user,
    )
    await fake_discord.wait_for(lambda: len(fake_api.fetches) >= 1, timeout=20)
    await stop_bot(proc, signal.SIGKILL)

    fake_discord.age(record, 16 * 60)  # 16 minutes pass
    ledger = await database.open()
    try:
        await time_passes(ledger, 16 * 60)
    finally:
        await ledger.close()
    fake_api.polls_before_done = 0
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        await fake_discord.wait_for(lambda: len(fake_discord.channel_messages) == 1, timeout=30)
        await fake_discord.wait_until_idle(bot_busy(env))
    finally:
        await stop_bot(proc, signal.SIGTERM)
    assert len(fake_api.submissions) == 1
    (msg_id,) = fake_discord.channel_messages
    msg = fake_discord.messages[msg_id]
    assert len(msg.results) == 1
    assert msg.pings == [f"<@{user}>"]  # the member, once; nobody else
    assert not record.message_ids[1:]
    assert await states(database) == {"delivered": 1}


async def test_daily_quotas_survive_a_restart(fake_discord, fake_api, tmp_path, database):
    env = bot_env(fake_discord, fake_api, tmp_path / "data", SD_MEMBER_DAILY_QUOTA="1", **database.env)
    user = 616161616161616161
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        first = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "one"},
            user_id=user,
        )
        await fake_discord.wait_for(lambda: is_settled(fake_discord, first), timeout=20)
    finally:
        await stop_bot(proc, signal.SIGTERM)
    assert fake_discord.final_message(first).results
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        second = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "two"},
            user_id=user,
        )
        await fake_discord.wait_for(lambda: is_settled(fake_discord, second), timeout=20)
    finally:
        await stop_bot(proc, signal.SIGTERM)
    refusal = fake_discord.final_message(second)
    assert refusal.ephemeral and "You have made your 1 picture for today" in refusal.content
    assert len(fake_api.submissions) == 1


async def test_sigterm_lets_the_job_in_flight_finish(fake_discord, fake_api, tmp_path):
    env = bot_env(fake_discord, fake_api, tmp_path / "data")
    fake_api.latency_s = 1.5
    proc = await spawn_bot(fake_discord, env, tmp_path)
    record = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "finish me"}
    )
    await fake_discord.wait_for(lambda: len(fake_api.submissions) == 1, timeout=10)
    log = await stop_bot(proc, signal.SIGTERM)
    assert proc.returncode == 0, log
    final = fake_discord.final_message(record)
    assert final is not None
    assert final.files
    assert "draining" in log
    assert fake_discord.violations == []


async def test_sigterm_past_the_grace_period_leaves_the_job_to_resume(fake_discord, fake_api, tmp_path):
    env = bot_env(fake_discord, fake_api, tmp_path / "data", SHUTDOWN_GRACE_S="0.2", SD_POLL_INITIAL_S="0.05")
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 10**6
    proc = await spawn_bot(fake_discord, env, tmp_path)
    record = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "later"}
    )
    await fake_discord.wait_for(lambda: len(fake_api.fetches) >= 1, timeout=20)
    log = await stop_bot(proc, signal.SIGTERM)
    assert proc.returncode == 0, log
    assert "grace period over" in log
    assert "Traceback" not in log
    fake_api.polls_before_done = 0
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=30)
    finally:
        await stop_bot(proc, signal.SIGTERM)
    assert fake_discord.final_message(record).files
    assert len(fake_api.submissions) == 1


async def test_every_acknowledged_command_ends_after_a_crash(fake_discord, fake_api, tmp_path, database):
    """Killed 0.3 s after acknowledging 24 commands with large pictures (before: 24 of 24 left on
    "thinking..." for ever, their rows not yet written). After the restart each ends in a final state
    the member sees: here all of them are run (the picture is read again from Discord)."""
    env = bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",
        SD_MAX_QUEUED="100",
        METRICS_PORT=str(free_port()),
        # a job killed while its picture was being sent waits for its lease (the process that was
        # sending it might still be alive): 60 s by default, made short here
        JOB_LEASE_S="6",
        **database.env,
    )
    fake_api.latency_s = 0.5  # the first jobs may reach the API before the kill; they are polled after
    big = make_png(1400, 1400, noise=True)  # 5.9 MB each
    proc = await spawn_bot(fake_discord, env, tmp_path)
    records = [
        await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(big, f"big{n}.png"), "prompt": f"big {n}"},
            user_id=900_000_000_000_000_000 + n,
        )
        for n in range(24)
    ]
    await fake_discord.wait_for(lambda: all(r.ack_type == 5 for r in records), timeout=20)
    await asyncio.sleep(0.3)
    await stop_bot(proc, signal.SIGKILL)
    fake_api.latency_s = 0.0
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        try:
            await fake_discord.wait_for(lambda: all(is_settled(fake_discord, r) for r in records), timeout=90)
        except TimeoutError:
            log = await stop_bot(proc, signal.SIGTERM)
            pytest.fail(f"not all ended; ledger: {await states(database)}; the bot said:\n{log[-6000:]}")
        await fake_discord.wait_until_idle(bot_busy(env))
    finally:
        await stop_bot(proc, signal.SIGTERM)
    interrupted = 0
    sent = Counter(s.body["prompt"] for s in fake_api.submissions)
    for n, record in enumerate(records):
        final = fake_discord.final_message(record)
        assert final is not None
        # a picture, sent to the API once; or (being sent to the API as the process died: never sent
        # twice) the clear message, whether or not that one request had reached the API
        assert final.results or "restarted while sending your request" in final.content, final.content
        interrupted += not final.results
        assert sent[f"big {n}"] == 1 if final.results else sent[f"big {n}"] <= 1
    assert set(sent) <= {f"big {n}" for n in range(24)}
    assert await states(database) == {"delivered": 24 - interrupted} | (
        {"failed": interrupted} if interrupted else {}
    )


@pytest.mark.parametrize("nonce", ["remembered", "forgotten"])
@pytest.mark.parametrize("token", ["expired", "alive"])
async def test_a_channel_post_cut_off_by_a_crash_reaches_the_member_once(
    fake_discord, fake_api, tmp_path, database, token, nonce
):
    """The result goes to the channel, and the bot is killed after Discord posted it but before its
    answer came back (so before the ledger recorded the delivery). The restarted bot delivers the job
    again, and the member still sees the picture once:
    - "expired": the interaction is 14 minutes old, so both processes post in the channel; the second
      post carries the nonce made from the job, which Discord answers with the message it already made;
    - "alive": the job's message edit got no answer twice (not applied), so the first process went to
      the channel; the token still lives at the restart. Before, the restarted bot edited the job's
      message into the picture too: the member saw it twice. It now knows, from the ledger, that the
      job went to the channel, and posts there again (with the nonce).
    "forgotten": the restart comes after Discord's memory of the nonce ("the past few minutes"), so a
    post made again would be a second one. Before, the member then saw the picture twice; the restarted
    bot now finds the post in the channel's history and posts nothing."""
    # (on PostgreSQL a job killed while being delivered waits for its lease)
    env = polling_env(fake_discord, fake_api, tmp_path, database, SD_JOB_TIMEOUT_S="3600", JOB_LEASE_S="3")
    fake_discord.lose_next_posts = ["hang"]
    if token == "alive":
        fake_discord.lose_next_edits = ["request", "request"]
    proc = await spawn_bot(fake_discord, env, tmp_path)
    user = 525252525252525252
    record = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "crash mid-post"},
        user_id=user,
        created_ago_s=14 * 60 + 5 if token == "expired" else 0,
    )
    try:
        await fake_discord.wait_for(lambda: len(fake_discord.channel_messages) == 1, timeout=20)
        await asyncio.sleep(0.2)
    finally:
        await stop_bot(proc, signal.SIGKILL)  # Discord has the post; the bot never heard back
    assert await states(database) != {"delivered": 1}
    if nonce == "forgotten":
        fake_discord.nonce_window_s = 0.0

    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        async with asyncio.timeout(30):
            while await states(database) != {"delivered": 1}:
                await asyncio.sleep(0.05)
        await fake_discord.wait_until_idle(bot_busy(env))
    finally:
        log = await stop_bot(proc, signal.SIGTERM)
    assert "job resumed" in log
    assert "the job's result had been posted in its channel; not posting it again" in log
    assert len(fake_discord.history_reads) == 1, fake_discord.history_reads
    shown = [m for m in fake_discord.messages.values() if m.results and not m.deleted]
    assert [m.id for m in shown] == fake_discord.channel_messages, [m.content for m in shown]
    assert len(shown) == 1
    assert shown[0].pings == [f"<@{user}>"]
    assert len(fake_api.submissions) == 1
    assert not record.message_ids[1:]
    if token == "alive":  # (the job's message points to the post, instead of "thinking…")
        assert_points_to(fake_discord.visible_messages(record), shown[0])


async def test_a_failure_posted_before_a_crash_is_not_posted_again_after_the_nonce_is_forgotten(
    fake_discord, fake_api, tmp_path, database
):
    """The same crash in the middle of a channel post, with a failure to tell (the image service failed
    the job): a message without buttons, found in the channel's history by the code in its text. The
    restart comes after Discord forgot the nonce: the member is told once."""
    env = polling_env(fake_discord, fake_api, tmp_path, database, SD_JOB_TIMEOUT_S="3600", JOB_LEASE_S="3")
    fake_api.scenario = "queued_then_failed"
    fake_discord.lose_next_posts = ["hang"]
    proc = await spawn_bot(fake_discord, env, tmp_path)
    await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "crash mid-post"},
        user_id=525252525252525253,
        created_ago_s=14 * 60 + 5,
    )
    try:
        await fake_discord.wait_for(lambda: len(fake_discord.channel_messages) == 1, timeout=20)
        await asyncio.sleep(0.2)
    finally:
        await stop_bot(proc, signal.SIGKILL)
    fake_discord.nonce_window_s = 0.0
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        async with asyncio.timeout(30):
            while await states(database) != {"failed": 1}:
                await asyncio.sleep(0.05)
        await fake_discord.wait_until_idle(bot_busy(env))
    finally:
        log = await stop_bot(proc, signal.SIGTERM)
    assert "the job's result had been posted in its channel; not posting it again" in log
    (told,) = [fake_discord.messages[i] for i in fake_discord.channel_messages]
    assert not told.components and not told.results
    assert len(fake_api.submissions) == 1
