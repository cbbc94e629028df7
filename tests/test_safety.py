"""What the bot keeps is private, and what members read is the bot's own words."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.conftest import bot_busy, bot_env, busy, free_port, service_of, slash, spawn_bot, stop_bot
from tests.ledger_queries import count_by_state


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_data_folder_and_everything_in_it_are_private(bot, fake_discord, fake_api, tmp_path):
    _, final = await slash(fake_discord, {"prompt": "a lighthouse"})
    assert final.results
    data = tmp_path / "data"
    assert mode(data) == 0o700
    for folder in (data / "sources", data / "results"):
        assert mode(folder) == 0o700
        files = list(folder.iterdir())
        assert files
        assert {mode(f) for f in files} == {0o600}
    for name in ("jobs.sqlite3", "jobs.sqlite3-wal"):
        assert mode(data / name) == 0o600, name
    (job,) = await service_of(bot).history(final_user_of(fake_discord, final))
    assert job.interaction_token == ""  # nothing needs the token once the job is over


def final_user_of(fake_discord, message) -> int:
    return fake_discord.interactions[message.interaction_id].user_id


def test_the_key_is_redacted_in_any_disguise():
    from cogs.botcore.redact import Redactor

    key = "sk-Live_9fA3kQ7zX2"
    redact = Redactor([key])
    disguises = [
        key,
        key.upper(),
        key.lower(),
        "".join(f"%{ord(c):02X}" for c in key),
        "".join(f"%{ord(c):02x}" if i % 2 else c for i, c in enumerate(key)),
        " ".join(key),
        "-".join(key),
        "\u200b".join(key),
    ]
    for disguise in disguises:
        assert "[redacted]" in redact(f"error: invalid key {disguise} (check it)"), disguise
        assert key.lower() not in redact(f"x{disguise}x").lower()
    assert redact("an ordinary message about keys") == "an ordinary message about keys"


async def test_what_the_api_writes_never_reaches_a_member(bot, fake_discord, fake_api, caplog):
    """The API's error text, hostile: mentions, Markdown, backticks, a link, and the key in
    disguise. The member reads the bot's words; the owner's log has the API's text, redacted."""
    import logging

    from tests.test_e2e import assert_clean, log_text

    caplog.set_level(logging.INFO)
    key = fake_api.api_key
    fake_api.scenario = "error_message"
    fake_api.error_message = (
        f"@everyone <@123456789012345678> **urgent** ``` see https://evil.example ``` "
        f"bad value {key.upper()} / {' '.join(key)} / {''.join(f'%{ord(c):02x}' for c in key)}"
    )
    _, final = await slash(fake_discord, {"prompt": "castle"})
    assert "refused this request" in final.content
    for hostile in ("@everyone", "<@123456789012345678>", "urgent", "evil.example", "```", key.upper()):
        assert hostile not in final.content
    logs = log_text(caplog)
    assert "said=" in logs and "[redacted]" in logs and "evil.example" in logs
    assert_clean(fake_discord, fake_api, caplog)


# --- direct messages -----------------------------------------------------------------------------------


async def test_commands_that_spend_credits_are_offered_in_servers_only(bot, fake_discord, fake_api):
    contexts = {name: fake_discord.command(name).get("contexts") for name in fake_discord.command_names()}
    assert (
        contexts["depth2img"] == [0]
        and contexts["Depth to image"] == [0]
        and contexts["depth2img-show"] == [0]
    )
    assert contexts["depth2img-settings"] == [0]
    assert sorted(contexts["depth2img-history"]) == sorted(contexts["depth2img-forget-me"]) == [0, 1]
    assert {tuple(fake_discord.command(n).get("integration_types")) for n in contexts} == {(0,)}
    # an old or hostile client that sends it from a DM anyway is refused, privately, at no cost
    record, final = await slash(fake_discord, {"prompt": "free credits?"}, dm=True, check_options=False)
    assert record.ack_type == 4 and final.ephemeral
    assert "servers only" in final.content
    assert fake_api.submissions == []


def test_allowing_dms_needs_a_member_quota():
    from cogs.depth2img import settings_problems

    base = {"SD_API_KEY": "k" * 12}
    (problem,) = settings_problems(base | {"ALLOW_DMS": "on"})
    assert "ALLOW_DMS=on needs SD_MEMBER_DAILY_QUOTA" in problem
    assert settings_problems(base | {"ALLOW_DMS": "on", "SD_MEMBER_DAILY_QUOTA": "3"}) == []


async def test_with_dms_allowed_the_member_quota_applies_there(start_bot, fake_discord, fake_api):
    await start_bot(ALLOW_DMS="on", SD_MEMBER_DAILY_QUOTA="2")
    assert sorted(fake_discord.command("depth2img")["contexts"]) == [0, 1]
    member = 838383838383838383
    for prompt in ("one", "two"):
        _, final = await slash(fake_discord, {"prompt": prompt}, dm=True, user_id=member)
        assert final.results, final.content
        assert final.channel_id == fake_discord.dm_channel_id(member)
    _, refused = await slash(fake_discord, {"prompt": "three"}, dm=True, user_id=member)
    assert refused.ephemeral and "your 2 pictures for today" in refused.content
    assert len(fake_api.submissions) == 2


# --- one interaction runs once (item 5) -------------------------------------------------------------


async def test_a_replayed_interaction_runs_once(bot, fake_discord, fake_api):
    """Discord delivers the same INTERACTION_CREATE again after the first finished (a gateway replay):
    nothing is answered, submitted or paid again, and the first result stays as it was."""
    record, final = await slash(fake_discord, {"prompt": "a lighthouse"})
    edits = final.edits
    await fake_discord.replay(record)
    await fake_discord.wait_until_idle(busy(bot))
    assert record.callback_attempts == 1
    assert len(fake_api.submissions) == 1
    assert final.edits == edits and len(final.results) == 1
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}


async def test_a_replay_reaching_a_restarted_bot_is_not_run_again(fake_discord, fake_api, tmp_path):
    """The bot restarted (it no longer remembers the interaction) and Discord replays it: the bot's
    answer gets 40060 ("already acknowledged"), which ends it quietly; the ledger's record of the
    interaction would refuse a second job anyway."""
    import signal

    env = bot_env(fake_discord, fake_api, tmp_path / "data", METRICS_PORT=str(free_port()))
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        record, _ = await slash(fake_discord, {"prompt": "a lighthouse"})
    finally:
        await stop_bot(proc, signal.SIGTERM)
    proc = await spawn_bot(fake_discord, env, tmp_path)
    fake_discord.expect_violation("interaction acknowledged twice")  # (the fake records the attempt)
    try:
        await fake_discord.replay(record, answerable=True)
        await fake_discord.wait_for(lambda: record.callback_attempts == 2)
        await fake_discord.wait_until_idle(bot_busy(env))
    finally:
        log = await stop_bot(proc, signal.SIGTERM)
    assert "interaction already answered; not run again" in log
    assert "Traceback" not in log and "unhandled" not in log
    assert len(fake_api.submissions) == 1
    assert len(fake_discord.visible_messages(record)) == 1


async def test_the_ledger_refuses_a_second_job_for_one_interaction(tmp_path):
    from dataclasses import replace

    from cogs.depth2img.store import DuplicateInteraction, Ledger
    from tests.test_ledger import new_job

    ledger = await Ledger.open(tmp_path / "jobs.sqlite3")
    other = await Ledger.open(tmp_path / "jobs.sqlite3")  # another process, on the same file
    try:
        first = await ledger.create(replace(new_job("i1"), interaction_id="555"))
        assert (await ledger.create(first)).id == "i1"  # the same job again (a retried write): no harm
        with pytest.raises(DuplicateInteraction):
            await other.create(replace(new_job("i2"), interaction_id="555"))
    finally:
        await ledger.close()
        await other.close()
