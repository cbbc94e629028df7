"""Nothing lost: the real bot process is killed or stopped mid-job and started again."""

from __future__ import annotations

import asyncio
import signal

from tests.conftest import bot_env, is_settled, spawn_bot, stop_bot
from tests.fakes.fake_api import make_png


async def test_sigkill_while_queued_then_restart_delivers_exactly_once(fake_discord, fake_api, tmp_path):
    env = bot_env(fake_discord, fake_api, tmp_path / "data", SD_POLL_INITIAL_S="0.05", SD_POLL_MAX_S="0.1")
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
        await asyncio.sleep(0.5)  # a duplicate would show up here
    finally:
        log = await stop_bot(proc, signal.SIGTERM)
    assert len(fake_api.submissions) == 1  # polled after the restart, never submitted again
    visible = fake_discord.visible_messages(record)
    assert len(visible) == 1  # the original message, edited into the result
    assert len(visible[0].results) == 1
    assert fake_discord.channel_messages == []
    assert fake_discord.violations == []
    assert "job resumed" in log
    assert fake_api.api_key not in log


async def test_restart_after_the_token_expired_delivers_in_the_channel_with_one_ping(
    fake_discord, fake_api, tmp_path
):
    env = bot_env(fake_discord, fake_api, tmp_path / "data", SD_POLL_INITIAL_S="0.05", SD_POLL_MAX_S="0.1")
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

    fake_discord.limits.token_ttl_s = 0  # the 15 minutes have passed
    fake_api.polls_before_done = 0
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        await fake_discord.wait_for(lambda: len(fake_discord.channel_messages) == 1, timeout=30)
        await asyncio.sleep(0.5)
    finally:
        await stop_bot(proc, signal.SIGTERM)
    assert len(fake_api.submissions) == 1
    (msg_id,) = fake_discord.channel_messages
    msg = fake_discord.messages[msg_id]
    assert len(msg.results) == 1
    assert msg.pings == [f"<@{user}>"]  # the member, once; nobody else
    assert fake_discord.violations == ["webhook call with an expired token"]  # one attempt, then the channel
    assert not record.message_ids[1:]


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
