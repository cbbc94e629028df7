"""A bad day at the data centre, end to end (issue 12, items 8, 9, 10 and 12): the real bot against the
fake Discord and the fake API, which plays the faults a real service and a real database have. A job
the API accepted is never abandoned for a passing fault; whatever is raised, every job ends in one final
state; one bad value hurts no other member; a job may outlive its interaction's token.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from cogs.i18n import text
from tests.conftest import busy, is_settled, service_of, slash
from tests.fakes.fake_api import make_png
from tests.fakes.fake_discord import LEFT_OUT
from tests.ledger_queries import count_by_state
from tests.test_e2e import assert_clean

# How a first answer's connection breaks: (requests dropped unread, answers lost after Discord took one)
_DROPPED = {"answer": (0, 1), "request": (1, 0), "request-twice": (2, 0), "request-then-answer": (1, 1)}


def _lose_the_first_answer(fake_discord, lost: str) -> None:
    """The interaction's first answer loses its connection: after Discord took it ("answer") or before
    it read it ("request"); or twice in a row ("request-twice", "request-then-answer"). The bot then
    makes it again, which Discord answers 40060 when it had taken an earlier one: a breach the fake
    records, here expected."""
    requests, answers = _DROPPED[lost]
    fake_discord.drop_callback_requests = requests
    fake_discord.drop_callback_answers = answers
    if answers:
        fake_discord.expect_violation("interaction acknowledged twice")


async def _ask(fake_discord, user: int):
    """A member asks for a picture (a small PNG, prompt "x"); returns their interaction."""
    return await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "x"}, user_id=user
    )


async def _recorded(bot, states: dict[str, int], *, timeout: float):
    """Wait until the bot's ledger holds jobs in exactly ``states``; returns the ledger."""
    led = service_of(bot).ledger
    async with asyncio.timeout(timeout):
        while await count_by_state(led) != states:
            await asyncio.sleep(0.05)
    return led


async def _shown_after_faults(fake_discord, bot, user: int):
    """A member asks for a picture; returns their interaction and the messages that show a picture,
    once the bot is idle."""
    record = await _ask(fake_discord, user)
    await fake_discord.wait_for(lambda: any(m.results for m in fake_discord.messages.values()), timeout=20)
    await fake_discord.wait_until_idle(busy(bot))
    return record, [m for m in fake_discord.messages.values() if m.results]


def assert_points_to(visible, posted) -> None:
    """The job's own message, which the bot could not edit into the result, no longer shows "thinking…"
    (or a progress line) once the result is in the channel: it points to the post."""
    (own,) = visible
    assert not own.loading
    assert own.content.startswith("📨") and f"/{posted.channel_id}/{posted.id}" in own.content, own.content
    assert not own.files


def _slow_line_shown(final) -> bool:
    return any(h.startswith("⏳ The image service has your picture but is slow") for h in final.history)


async def test_a_queued_job_is_polled_through_every_passing_fault(start_bot, fake_discord, fake_api):
    """5xx (JSON, an HTML proxy page, an empty 503), 429 (with a retry_after past what a submission
    waits out, and with only a Retry-After header), a dropped connection, an answer that is no JSON,
    JSON nested 100 000 deep: the paid job is polled through all of them, with a backoff, and the
    member's progress line says the image service is slow. (Before: 3.5 s of 5xx, or one such 429,
    failed the job, and the member paid again.)"""
    bot = await start_bot(SD_MAX_RETRIES="0", PROGRESS_INTERVAL_S="0.1")
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 1
    faults = ["500", "502_html", "503_empty", "429", "429_header", "reset", "garbage", "deep"]
    fake_api.fetch_faults = list(faults)
    _record, final = await slash(fake_discord, {"prompt": "castle"}, timeout=30)
    assert len(final.results) == 1, final.content
    assert len(fake_api.submissions) == 1
    assert len(fake_api.fetches) >= len(faults) + 2
    assert _slow_line_shown(final)
    # the Retry-After header (1 s) was waited out before the next poll
    after_header = [f.at for f in fake_api.fetches][
        faults.index("429_header") : faults.index("429_header") + 2
    ]
    assert after_header[1] - after_header[0] >= 0.9
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}


async def test_a_paid_output_is_downloaded_through_passing_faults(start_bot, fake_discord, fake_api):
    await start_bot(SD_MAX_RETRIES="0")
    fake_api.file_faults = ["500", "reset", "503_empty", "429"]
    _record, final = await slash(fake_discord, {"prompt": "castle"}, timeout=30)
    assert len(final.results) == 1, final.content
    assert len(fake_api.downloads) == 5


async def test_a_lone_surrogate_from_the_api_hurts_no_one(start_bot, fake_discord, fake_api):
    """The API's queued answer holds "\\ud800" (valid JSON) in ``fetch_result``; no database can store
    it as it is. Before, its write failed in the middle of the run: the job hung, and a member's request
    sharing the SQLite writer was lost. Now it is cleaned: both members get their pictures."""
    bot = await start_bot()
    fake_api.scenario = "queued_surrogate"
    fake_api.polls_before_done = 3
    first = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "one"}
    )
    await fake_discord.wait_for(lambda: len(fake_api.submissions) == 1, timeout=10)
    fake_api.scenario = "success"
    second = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(seed=2), "b.png"), "prompt": "two"},
        user_id=727272727272727272,
    )
    for record in (first, second):
        await fake_discord.wait_for(lambda r=record: is_settled(fake_discord, r), timeout=20)
        assert len(fake_discord.final_message(record).results) == 1
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 2}


async def test_a_locked_ledger_is_waited_out(start_bot, fake_discord, fake_api, tmp_path):
    """Another process holds the SQLite file locked for 12 s (past SQLite's own 5 s busy wait, twice) while a
    job runs: its writes are tried again until the lock is gone, and the job completes."""
    bot = await start_bot()
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 3
    locked = threading.Event()

    def hold_the_lock() -> None:
        conn = sqlite3.connect(tmp_path / "data" / "jobs.sqlite3", isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(12)
        conn.execute("ROLLBACK")
        conn.close()

    holder = asyncio.get_running_loop().run_in_executor(None, hold_the_lock)
    await asyncio.get_running_loop().run_in_executor(None, locked.wait)
    _record, final = await slash(fake_discord, {"prompt": "castle"}, timeout=40)
    await holder
    assert len(final.results) == 1, final.content
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}


async def test_a_job_that_outlives_its_token_is_posted_in_the_channel(start_bot, fake_discord, fake_api):
    """The interaction is 14 minutes old when the job ends (a long queue at the API): the progress line
    says, while the token still lives, that the picture will come as a message; the picture is then
    posted in the channel, mentioning only the member. (Before: the token was tried, refused, and the
    downloaded picture thrown away with "Queued" left on screen.)"""
    await start_bot(SD_JOB_TIMEOUT_S="3600", PROGRESS_INTERVAL_S="0.1")
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 3
    user = 838383838383838383
    record = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "slow queue"},
        user_id=user,
        created_ago_s=14 * 60 + 5,
    )
    await fake_discord.wait_for(lambda: len(fake_discord.channel_messages) == 1, timeout=20)
    await fake_discord.wait_until_idle()
    (msg_id,) = fake_discord.channel_messages
    posted = fake_discord.messages[msg_id]
    assert len(posted.results) == 1
    assert posted.pings == [f"<@{user}>"]
    (progress,) = fake_discord.visible_messages(record)
    assert progress.content == text("en-US", "progress.long_wait")
    assert len(fake_api.submissions) == 1


async def test_a_final_edit_refused_with_5xx_is_posted_in_the_channel(start_bot, fake_discord, fake_api):
    """Discord answers the result's edit with 503, five times: discord.py's webhook client tries each
    5xx five times (waiting 1 + 3 + 5 + 7 + 9 s; this test takes that long), then raises
    DiscordServerError. The downloaded picture is not thrown away but posted as a channel message for
    the member."""
    await start_bot()
    fake_discord.fail_next_edits = 5
    fake_discord.edit_failure = (503, 0, "Service Unavailable")
    user = 848484848484848484
    record = await _ask(fake_discord, user)
    await fake_discord.wait_for(lambda: len(fake_discord.channel_messages) == 1, timeout=40)
    await fake_discord.wait_until_idle()
    posted = fake_discord.messages[fake_discord.channel_messages[0]]
    assert len(posted.results) == 1
    assert posted.pings == [f"<@{user}>"]
    assert record.ack_type == 5


async def test_running_jobs_complete_across_a_postgresql_restart(start_bot, fake_discord, fake_api):
    """The ledger's PostgreSQL server restarts (down for 2 s) while three jobs are queued at the API:
    their writes wait for it, and every job completes (none a zombie, none failed for it)."""
    from tests.conftest import create_database
    from tests.postgres import PostgresUnavailable, TempPostgres

    try:
        server = TempPostgres()
        await asyncio.to_thread(server.start)
    except PostgresUnavailable as exc:
        import os

        import pytest

        if os.environ.get("D2I_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here and could not start: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        url = await create_database(server.url)
        bot = await start_bot(DATABASE_URL=url, SD_MAX_CONCURRENT="5", SD_MAX_JOBS_PER_USER="5")
        fake_api.scenario = "queued"
        fake_api.polls_before_done = 10**6
        records = [
            await fake_discord.invoke_slash(
                "depth2img",
                {"image": fake_discord.add_attachment(make_png(seed=n), f"{n}.png"), "prompt": f"job {n}"},
            )
            for n in range(3)
        ]
        await fake_discord.wait_for(lambda: len(fake_api.submissions) == 3, timeout=20)
        fake_api.polls_before_done = 0  # they are ready, to be recorded while the server is down
        await asyncio.to_thread(server.restart, 2.0)
        for record in records:
            await fake_discord.wait_for(lambda r=record: is_settled(fake_discord, r), timeout=40)
            assert len(fake_discord.final_message(record).results) == 1
        await fake_discord.wait_until_idle(busy(bot))
        assert await count_by_state(service_of(bot).ledger) == {"delivered": 3}
    finally:
        await asyncio.to_thread(server.stop)


# --- Discord's own refusals: permissions, rate limits, intents ---------------------------------------


async def test_a_channel_the_bot_may_not_post_in_ends_the_job_recorded_and_logged(
    start_bot, fake_discord, fake_api, caplog
):
    """The token has run out and the bot lacks Send Messages in the channel: Discord answers 403
    (50013). The job ends failed (DeliveryFailed) in the ledger, with a warning that tells the owner
    what to fix, and nothing else breaks. The paid-for picture is kept: once the owner has given the
    bot its permission, the member finds it in /depth2img-history, and /depth2img-show brings it back.
    (Before, it was thrown away.)"""
    from tests.fakes.fake_discord import SEND_MESSAGES

    bot = await start_bot(SD_JOB_TIMEOUT_S="3600")
    fake_discord.deny(fake_discord.channel_id, SEND_MESSAGES)
    user = 878787878787878787
    await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "x"},
        created_ago_s=14 * 60 + 5,
        user_id=user,
    )
    await fake_discord.wait_for(lambda: fake_discord.refusals, timeout=20)
    await fake_discord.wait_until_idle(busy(bot))
    assert fake_discord.refusals == [f"channel message in {fake_discord.channel_id}: Missing Permissions"]
    assert fake_discord.channel_messages == []
    assert await count_by_state(service_of(bot).ledger) == {"failed": 1}
    (job,) = await service_of(bot).history(user)
    assert job.error_kind == "DeliveryFailed"
    assert (
        "lacks View Channel, Send Messages (in a thread: Send Messages in Threads) or Attach Files"
        in caplog.text
    )
    assert "Traceback" not in caplog.text

    fake_discord.allow(fake_discord.channel_id, SEND_MESSAGES)  # (the owner gives it back)
    record = await fake_discord.invoke_slash("depth2img-history", {}, user_id=user)
    await fake_discord.wait_for(lambda: bool(fake_discord.visible_messages(record)), timeout=10)
    (listed,) = fake_discord.visible_messages(record)
    assert f"`{job.id}` · {text('en-US', 'state.kept')}" in listed.content, listed.content
    record = await fake_discord.invoke_slash("depth2img-show", {"picture": job.id}, user_id=user)
    await fake_discord.wait_for(lambda: bool(fake_discord.visible_messages(record)), timeout=10)
    await fake_discord.wait_until_idle(busy(bot))
    (shown,) = fake_discord.visible_messages(record)
    assert len(shown.results) == 1
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_result_for_a_thread_goes_to_the_thread_which_needs_send_messages_in_threads(
    start_bot, fake_discord, fake_api, caplog
):
    """The token has run out, and the job was asked for in a thread: its result is posted in the
    thread, where Discord asks for Send Messages in Threads instead of Send Messages (its permissions
    topic). Without that permission the job ends as in a channel the bot may not post in (kept), and
    the warning names what a thread needs."""
    from tests.fakes.fake_discord import SEND_MESSAGES, SEND_MESSAGES_IN_THREADS

    bot = await start_bot(SD_JOB_TIMEOUT_S="3600")
    fake_discord.deny(fake_discord.channel_id, SEND_MESSAGES)  # (a thread does not need it)
    for done, user in enumerate((868686868686868601, 868686868686868602), start=1):
        await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "x"},
            created_ago_s=14 * 60 + 5,
            user_id=user,
            channel_id=fake_discord.thread_id,
        )
        await fake_discord.wait_for(
            lambda n=done: len(fake_discord.channel_messages) + len(fake_discord.refusals) == n, timeout=20
        )
        await fake_discord.wait_until_idle(busy(bot))
        fake_discord.deny(fake_discord.channel_id, SEND_MESSAGES_IN_THREADS)  # (for the second)
    (post,) = [fake_discord.messages[i] for i in fake_discord.channel_messages]
    assert post.channel_id == fake_discord.thread_id and len(post.results) == 1
    post.pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    assert fake_discord.refusals == [f"channel message in {fake_discord.thread_id}: Missing Permissions"]
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1, "failed": 1}
    assert "in a thread: Send Messages in Threads" in caplog.text
    assert_clean(fake_discord, fake_api, caplog)


async def test_discord_rate_limits_are_waited_out(start_bot, fake_discord, fake_api):
    """Discord answers the result's edit with 429 twice (its real headers and body): discord.py waits
    ``retry_after`` each time (a request before the reset would be a violation) and the member gets
    the picture."""
    await start_bot()
    fake_discord.rate_limit("webhook", times=2, retry_after=0.4)
    _, final = await slash(fake_discord, {"prompt": "castle"})
    assert len(final.results) == 1


@pytest.mark.parametrize(
    "said", [3600, 10**400, "soon", None, LEFT_OUT], ids=["an-hour", "huge", "text", "null", "left-out"]
)
async def test_a_rate_limit_longer_than_the_bot_waits_sends_the_result_to_the_channel(
    start_bot, fake_discord, fake_api, caplog, said
):
    """Discord answers the result's edit with 429 naming an hour (or a number past any clock, or no
    number at all). discord.py would sleep for it, up to five times, holding the token's lock, and the
    paid-for picture in memory: the member waited an hour (or forever). The bot waits out no rate limit
    longer than botcore/ratelimits.py's bound: the result goes to the channel at once, without another
    request on the limited token."""
    bot = await start_bot()
    fake_discord.rate_limit("webhook", retry_after=3600, said=said)
    user = 868686868686868691
    _record, shown = await _shown_after_faults(fake_discord, bot, user)
    (posted,) = shown
    assert fake_discord.channel_messages == [posted.id]
    assert posted.pings == [f"<@{user}>"]
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    posted.pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_message_rate_limited_past_the_bots_wait_points_to_the_post_once_the_limit_ends(
    start_bot, fake_discord, fake_api, caplog
):
    """The result's edit meets a 429 naming 31 s, a little more than the bot waits: the result goes to
    the channel at once, and once the limit is over the job's message, which still said "thinking…"
    (before: for good), points to the post; no request is made on the limited route before that."""
    from cogs.botcore.ratelimits import RATE_LIMIT_WAIT_MAX_S

    bot = await start_bot()
    fake_discord.rate_limit("webhook", retry_after=RATE_LIMIT_WAIT_MAX_S + 1)
    user = 868686868686868697
    record, shown = await _shown_after_faults(fake_discord, bot, user)
    (posted,) = shown
    assert fake_discord.visible_messages(record)[0].loading  # (limited: not edited yet)
    await fake_discord.wait_for(
        lambda: not fake_discord.visible_messages(record)[0].loading, timeout=RATE_LIMIT_WAIT_MAX_S + 10
    )
    assert_points_to(fake_discord.visible_messages(record), posted)
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    posted.pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_progress_line_rate_limited_for_long_sends_the_result_to_the_channel_unrefused(
    start_bot, fake_discord, fake_api, caplog
):
    """The job's first progress edit meets a 429 naming an hour: the line is not edited again while the
    limit holds, and the result goes to the channel, without the edit Discord would refuse (and count).
    Before: the progress edit slept the hour, and the result waited behind it on the token's lock."""
    bot = await start_bot(PROGRESS_INTERVAL_S="0.1")
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 3
    fake_discord.rate_limit("webhook", retry_after=3600)
    user = 868686868686868693
    _record, shown = await _shown_after_faults(fake_discord, bot, user)
    (posted,) = shown
    assert fake_discord.channel_messages == [posted.id]
    assert any(r.getMessage() == "progress edits rate-limited" for r in caplog.records)
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    posted.pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_button_answer_rate_limited_for_longer_than_the_bot_waits_tells_the_member(
    bot, fake_discord, fake_api, caplog
):
    """The before | after picture's edit into the button's "thinking…" meets a 429 naming an hour:
    the member is told at once that Discord holds the bot back, privately, and the "thinking…" is
    removed (it could not be edited). Before: the button's handler slept the hour (and four more)."""
    from tests.test_iterate import OTHER, first_result, job_id_of, settle

    final = await first_result(fake_discord)
    fake_discord.rate_limit("webhook", retry_after=3600)
    record = await fake_discord.click(final, f"d2i:compare:{job_id_of(final)}", user_id=OTHER)
    told = await settle(fake_discord, record)
    assert told.content == text("en-US", "bot.discord_busy")
    assert told.ephemeral
    assert fake_discord.visible_messages(record) == [told]  # (the "thinking…" is gone)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_channel_rate_limited_for_longer_than_the_job_may_wait_keeps_the_picture(
    start_bot, fake_discord, fake_api
):
    """The result's edit gets no answer, and the channel answers its post with 429 naming an hour: the
    job is not left asleep for an hour (discord.py's wait); it is delivered again later while its
    deadline allows, then recorded as failed with its picture kept. (Each later post meets the limit
    again: Discord answers 429 and counts it, as the fake does.)"""
    from cogs.depth2img.core.endings import LATER_MARGIN_S

    bot = await start_bot(JOB_LEASE_S="1", SD_JOB_TIMEOUT_S=str(LATER_MARGIN_S + 8))
    fake_discord.lose_next_edits = ["request", "request"]
    fake_discord.rate_limit("channel message", retry_after=3600)
    fake_discord.expect_violation("channel message request during its rate limit")
    user = 868686868686868692
    await _ask(fake_discord, user)
    led = await _recorded(bot, {"failed": 1}, timeout=40)
    (job,) = await led.for_user(user)
    assert job.error_kind == "DeliveryFailed"
    assert job.undelivered and Path(job.result_path).is_file()
    assert len(fake_api.submissions) == 1


async def test_delete_needs_no_channel_permission(start_bot, fake_discord, fake_api):
    """The bot may not even see the channel (no View Channel: a member-only channel where its commands
    still work): its Delete button deletes through the interaction, as Discord allows."""
    from tests.fakes.fake_discord import VIEW_CHANNEL
    from tests.test_iterate import job_id_of

    await start_bot()
    record, final = await slash(fake_discord, {"prompt": "castle"})
    fake_discord.deny(fake_discord.channel_id, VIEW_CHANNEL)
    await fake_discord.click(final, f"d2i:delete:{job_id_of(final)}", user_id=record.user_id)
    await fake_discord.wait_for(lambda: final.deleted, timeout=10)
    assert fake_discord.refusals == []


async def test_the_bot_asks_for_no_privileged_intent_which_discord_would_refuse(bot, fake_discord, fake_api):
    """The fake closes with 4014 a connection asking for a privileged intent the application was not
    granted (members, presences, message content), as Discord does; the bot asks for none."""
    import discord

    from tests.fakes.fake_discord import PRIVILEGED_INTENTS

    assert all(int(d["intents"]) & PRIVILEGED_INTENTS == 0 for d in fake_discord.identifies)
    greedy = discord.Client(intents=discord.Intents.default() | discord.Intents(message_content=True))
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(greedy.start(fake_discord.token), 15)
    await greedy.close()


@pytest.mark.parametrize(
    ("lost", "where"),
    [
        (["request"], "edited"),
        (["answer"], "edited"),
        (["garbled"], "edited"),
        (["html"], "edited"),
        (["request", "request"], "channel"),
        (["answer", "answer"], "edited"),
        (["answer", "request"], "edited"),
        (["request", "garbled"], "edited"),
    ],
    ids=[
        "request-lost",
        "answer-lost",
        "answer-garbled",
        "answer-html",
        "twice",
        "answer-lost-twice",
        "answer-then-request-lost",
        "request-lost-then-garbled",
    ],
)
async def test_a_result_whose_edit_loses_its_connection_still_reaches_the_member(
    start_bot, fake_discord, fake_api, caplog, lost, where
):
    """The connection breaks during the result's edit, before Discord read it or after it applied it
    (the answer lost): aiohttp raises, not discord.py. The bot asks Discord for the message: if the
    edit landed, that is the delivery; if not, the edit is made again, and after a second loss the
    picture goes to the channel. The paid-for picture reaches the member once, and the job is
    recorded as delivered. (Before: "Something went wrong", written over the picture when Discord had
    applied the edit; and before the bot looked, an edit applied but unanswered twice also went to
    the channel: the member saw the picture twice.)"""
    bot = await start_bot()
    fake_discord.lose_next_edits = list(lost)
    user = 868686868686868686
    record, shown = await _shown_after_faults(fake_discord, bot, user)
    assert len(shown) == 1, [m.content for m in fake_discord.visible_messages(record)]
    if where == "channel":
        assert fake_discord.channel_messages == [shown[0].id]
        assert shown[0].pings == [f"<@{user}>"]
        assert_points_to(fake_discord.visible_messages(record), shown[0])
    else:
        assert fake_discord.channel_messages == []
        assert fake_discord.visible_messages(record) == shown
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    if where == "channel":  # (assert_clean would refuse the member's ping, which is meant)
        shown[0].pings.clear()
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize(
    "lost",
    [["answer"], ["request"], ["answer", "request"], ["request", "answer"]],
    ids=["answer", "request", "answer-then-request", "request-then-answer"],
)
async def test_a_channel_post_without_an_answer_reaches_the_member_once(
    start_bot, fake_discord, fake_api, caplog, lost
):
    """The result's edit loses its connection twice, so the picture goes to the channel, and that post
    loses its connection too: after Discord posted it ("answer") or before it read it ("request"). The
    post is made again with the same nonce, which Discord keeps for a few minutes, so the member sees the
    picture exactly once; up to three times, so two losses in a row still deliver. (Before, for
    "answer": discord.py drew a new nonce for the second post, and the member got the picture twice;
    before three attempts, two losses in a row recorded the job as failed and told the member so,
    though the first post had landed in the "answer-then-request" case.)"""
    bot = await start_bot()
    fake_discord.lose_next_edits = ["request", "request"]
    fake_discord.lose_next_posts = list(lost)
    user = 868686868686868687
    record, shown = await _shown_after_faults(fake_discord, bot, user)
    assert fake_discord.channel_messages == [m.id for m in shown]
    assert len(shown) == 1
    assert_points_to(fake_discord.visible_messages(record), shown[0])
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    shown[0].pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("lost", ["request", "answer", "503"])
async def test_a_result_discord_takes_no_request_for_is_delivered_later_not_thrown_away(
    start_bot, fake_discord, fake_api, caplog, lost
):
    """For a while Discord takes nothing: the result's edit loses its connection twice, then its three
    channel posts too, unread ("request") or posted but unanswered ("answer"); or the post is answered
    503 ("503", which discord.py raises at once as DiscordServerError). The job is left to be resumed
    once its lease runs out: polled at the image service again (never submitted again), and posted in
    the channel then, once (the nonce gives back a post Discord had made). Before, the job was recorded
    as failed and the paid-for picture thrown away ("request", "503": the member never got it), or the
    member was told it failed beside the picture ("answer"). Meanwhile the job's message says that the
    picture waits for Discord, without its Cancel button (before: its old line, for the wait)."""
    bot = await start_bot(JOB_LEASE_S="1.5", SD_JOB_TIMEOUT_S="120")
    fake_discord.lose_next_edits = ["request", "request"]
    if lost == "503":
        fake_discord.fail_next_posts = 1
    else:
        fake_discord.lose_next_posts = [lost] * 3
    user = 868686868686868688
    record = await _ask(fake_discord, user)
    await _recorded(bot, {"delivered": 1}, timeout=30)
    await fake_discord.wait_until_idle(busy(bot))
    shown = [m for m in fake_discord.messages.values() if m.results]
    assert fake_discord.channel_messages == [m.id for m in shown]
    assert len(shown) == 1
    assert len(fake_api.submissions) == 1
    (own,) = fake_discord.visible_messages(record)
    assert text("en-US", "reply.waiting_for_discord") in own.history
    assert_points_to([own], shown[0])
    assert any(r.getMessage() == "job taken over from a stopped process" for r in caplog.records)
    shown[0].pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_result_kept_through_an_outage_longer_than_its_job_is_posted_once_discord_is_back(
    start_bot, fake_discord, fake_api, caplog
):
    """Discord takes nothing for longer than the job may wait (its deadline leaves no time for another
    try): every channel post is answered 503. The job ends failed, its picture kept. Once Discord
    takes posts again, the kept picture is posted in the channel, once, mentioning its member, and the
    job is delivered. Before, it stayed failed and the member never got the picture (its message had
    said it would be posted as soon as Discord takes it). The picture is a safety checker's blank one:
    the late post says so, in its text and its alt text, as the job's own message would have."""
    bot = await start_bot(JOB_LEASE_S="1", SD_JOB_TIMEOUT_S="20")
    fake_api.output_png = blank = _flat_png()
    fake_discord.lose_next_edits = ["request", "request"]
    fake_discord.fail_next_posts = 10**6
    user = 868686868686868696
    await _ask(fake_discord, user)
    led = await _recorded(bot, {"failed": 1}, timeout=20)
    refused = fake_discord.fail_next_posts
    with contextlib.suppress(TimeoutError):  # (a later try, still refused; before: none came)
        await fake_discord.wait_for(lambda: fake_discord.fail_next_posts < refused, timeout=5)
    assert fake_discord.channel_messages == []
    fake_discord.fail_next_posts = 0  # Discord is back
    await _recorded(bot, {"delivered": 1}, timeout=20)
    await fake_discord.wait_until_idle(busy(bot))
    (job,) = await led.for_user(user)
    shown = [fake_discord.messages[i] for i in fake_discord.channel_messages]
    assert len(shown) == 1 and len(shown[0].results) == 1, [m.content for m in shown]
    assert f"`{job.id}`" in shown[0].content and "kept while Discord was not taking it" in shown[0].content
    assert "⬛ Your picture came back blank" in shown[0].content
    assert [(f.data, f.description[:16]) for f in shown[0].results] == [(blank, "A blank picture:")]
    assert shown[0].pings == [f"<@{user}>"]
    assert any(c["custom_id"].endswith(job.id) for row in shown[0].components for c in row["components"])
    assert len(fake_api.submissions) == 1
    await asyncio.sleep(3)  # (rounds go on: nothing is posted again)
    assert len(fake_discord.channel_messages) == 1
    shown[0].pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_kept_result_shown_in_its_channel_is_not_posted_late_as_well(
    start_bot, fake_discord, fake_api, caplog
):
    """As above, the job ends failed, its picture kept, while Discord takes no channel post. The
    member brings the picture back in its channel with /depth2img-show (an interaction's answer, which
    Discord takes). Once Discord takes posts again, the kept picture is not posted late as well: the
    channel shows it once, and the job is delivered. (Before: a second time, by the late post.)"""
    bot = await start_bot(JOB_LEASE_S="1", SD_JOB_TIMEOUT_S="20")
    fake_discord.lose_next_edits = ["request", "request"]
    fake_discord.fail_next_posts = 10**6
    user = 868686868686868697
    await _ask(fake_discord, user)
    led = await _recorded(bot, {"failed": 1}, timeout=20)
    (job,) = await led.for_user(user)
    record = await fake_discord.invoke_slash("depth2img-show", {"picture": job.id}, user_id=user)
    await fake_discord.wait_for(lambda: bool(fake_discord.visible_messages(record)), timeout=10)
    fake_discord.fail_next_posts = 0  # Discord is back
    await _recorded(bot, {"delivered": 1}, timeout=20)
    await asyncio.sleep(4)  # (late rounds go on, each second: one would post it within two)
    await fake_discord.wait_until_idle(busy(bot))
    assert fake_discord.channel_messages == []
    (shown,) = [m for m in fake_discord.messages.values() if m.results]
    assert not shown.ephemeral and shown.channel_id == job.channel_id
    assert "kept result shown in its channel" in caplog.text
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("still", [True, False], ids=["still-age-restricted", "no-longer"])
async def test_a_kept_result_from_an_age_restricted_channel_is_posted_late_only_while_it_still_is_one(
    start_bot, fake_discord, fake_api, caplog, still
):
    """The job was asked for in an age-restricted channel, and its result kept through an outage
    longer than the job may wait. Before Discord takes posts again, a moderator may turn the channel's
    "Age-Restricted Channel" setting off (CHANNEL_UPDATE): the picture is then not posted there late,
    as /depth2img-show would not show it there; the job stays kept, and is not tried again. While the
    channel still is one, it is posted. (Before: posted in the channel either way.)"""
    bot = await start_bot(JOB_LEASE_S="1", SD_JOB_TIMEOUT_S="20")
    fake_discord.lose_next_edits = ["request", "request"]
    fake_discord.fail_next_posts = 10**6
    user = 868686868686868698
    picture = fake_discord.add_attachment(make_png(), "a.png")
    await fake_discord.invoke_slash(
        "depth2img", {"image": picture, "prompt": "x"}, user_id=user, channel_nsfw=True
    )
    led = await _recorded(bot, {"failed": 1}, timeout=20)
    if not still:
        await fake_discord.set_age_restricted(fake_discord.nsfw_channel_id, False)
    fake_discord.fail_next_posts = 0  # Discord is back
    (job,) = await led.for_user(user)
    assert job.age_restricted and job.channel_id == fake_discord.nsfw_channel_id
    if still:
        await _recorded(bot, {"delivered": 1}, timeout=20)
        await fake_discord.wait_until_idle(busy(bot))
        (shown,) = [fake_discord.messages[i] for i in fake_discord.channel_messages]
        assert shown.channel_id == fake_discord.nsfw_channel_id and len(shown.results) == 1
        shown.pings.clear()  # (assert_clean would refuse the member's ping, which is meant)
    else:
        await fake_discord.wait_for(lambda: "is not posted late" in caplog.text, timeout=20)
        await asyncio.sleep(3)  # (late rounds go on, each second: it is not tried again)
        await fake_discord.wait_until_idle(busy(bot))
        assert fake_discord.channel_messages == []
        (job,) = await led.for_user(user)
        assert job.undelivered and job.late_post_at >= (job.finished_at or 0) + 86400 - 1
        assert caplog.text.count("is not posted late") == 1
    assert_clean(fake_discord, fake_api, caplog)


async def test_cancel_on_a_result_waiting_for_discord_says_it_is_being_finished(
    start_bot, fake_discord, fake_api, caplog
):
    """The result is ready but Discord takes no request for it: its edit is refused (the token is no
    longer valid: 401 50027) and its channel post answered 503. The job waits for its lease to run out,
    to be delivered again. The member presses the progress line's Cancel meanwhile: they are told the
    picture can no longer be cancelled and will be posted, and it is, once. (Before: "This picture is
    already finished", then the picture came.)"""
    from tests.test_iterate import job_id_of, settle

    bot = await start_bot(JOB_LEASE_S="3", SD_JOB_TIMEOUT_S="120", PROGRESS_INTERVAL_S="30")
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 10**6
    user = 868686868686868694
    record = await _ask(fake_discord, user)
    await fake_discord.wait_for(
        lambda: any(m.components for m in fake_discord.visible_messages(record)), timeout=20
    )
    (progress,) = fake_discord.visible_messages(record)  # (one progress edit: the next is 30 s away)
    fake_discord.edit_failure = (401, 50027, "Invalid Webhook Token")
    fake_discord.fail_next_edits = 1
    fake_discord.fail_next_posts = 1
    fake_api.polls_before_done = 0
    waiting = "Discord took no request for the result; the job is delivered again later"
    await fake_discord.wait_for(lambda: any(r.getMessage() == waiting for r in caplog.records), timeout=20)
    pressed = await fake_discord.click(progress, f"d2i:cancel:{job_id_of(progress)}", user_id=user)
    told = await settle(fake_discord, pressed)
    assert told.ephemeral
    assert told.content == text("en-US", "reply.finishing_elsewhere")
    await _recorded(bot, {"delivered": 1}, timeout=30)
    await fake_discord.wait_until_idle(busy(bot))
    assert len([m for m in fake_discord.messages.values() if m.results]) == 1
    assert len(fake_api.submissions) == 1


async def test_a_long_discord_outage_is_waited_out_until_the_jobs_deadline(start_bot, fake_discord, fake_api):
    """Discord takes no request for the result through six rounds of delivery (each: three channel
    posts dropped unread), then takes the seventh's: the job, resumed each time its lease runs out,
    is delivered, once, and was never submitted again. A Discord outage is waited out until the job's
    own deadline (SD_JOB_TIMEOUT_S), not for three resumes only (JobRunner.MAX_RESUMES, which bounds
    the runs that broke for the bot's own reasons). Before, the job failed after three resumes."""
    bot = await start_bot(JOB_LEASE_S="1", SD_JOB_TIMEOUT_S="120")
    fake_discord.lose_next_edits = ["request", "request"]
    fake_discord.lose_next_posts = ["request"] * (6 * 3)
    user = 868686868686868690
    await _ask(fake_discord, user)
    led = await _recorded(bot, {"delivered": 1}, timeout=60)
    await fake_discord.wait_until_idle(busy(bot))
    (job,) = await led.for_user(user)
    assert job.resumes == 6
    assert [m.id for m in fake_discord.messages.values() if m.results] == fake_discord.channel_messages
    assert len(fake_discord.channel_messages) == 1
    assert len(fake_api.submissions) == 1


async def test_a_result_discord_never_takes_a_request_for_ends_failed_at_the_jobs_deadline(
    start_bot, fake_discord, fake_api
):
    """Discord answers nothing for the result, however often it is tried: the job is run again while
    its deadline (SD_JOB_TIMEOUT_S) leaves time for another run (two leases and
    endings.LATER_MARGIN_S), then recorded as failed, its picture kept; never submitted again. (A run
    cut short by the deadline would lose the picture.) It is then tried in the channel now and then
    (core/late.py), still taking nothing: it stays so."""
    from cogs.depth2img.core.endings import LATER_MARGIN_S

    deadline_s = LATER_MARGIN_S + 8
    bot = await start_bot(JOB_LEASE_S="1", SD_JOB_TIMEOUT_S=str(deadline_s))
    fake_discord.lose_next_edits = ["request", "request"]
    fake_discord.lose_next_posts = ["request"] * 1000
    user = 868686868686868689
    await _ask(fake_discord, user)
    led = await _recorded(bot, {"failed": 1}, timeout=40)
    lost = len(fake_discord.lose_next_posts)
    await fake_discord.wait_for(lambda: len(fake_discord.lose_next_posts) < lost, timeout=10)  # tried late
    await fake_discord.wait_until_idle(busy(bot))
    (job,) = await led.for_user(user)
    assert job.error_kind == "DeliveryFailed"
    assert job.resumes >= 1
    assert deadline_s - 2 - LATER_MARGIN_S <= job.finished_at - job.created_at < deadline_s
    assert job.undelivered  # (kept: /depth2img-show brings it back once Discord takes requests again)
    assert Path(job.result_path).is_file()
    assert not any(m.results for m in fake_discord.messages.values())
    assert len(fake_api.submissions) == 1


@pytest.mark.parametrize("lost", list(_DROPPED))
async def test_an_acknowledgement_without_an_answer_still_ends_in_the_picture(
    start_bot, fake_discord, fake_api, caplog, lost
):
    """The connection breaks during the "thinking…" acknowledgement: after Discord took it (its answer
    lost) or before; or twice in a row. The bot cannot know which: it asks Discord for the "thinking…"
    message, and acknowledges again only if there is none, up to three times. The job runs once and the
    picture arrives. (Before: the member was left on "thinking…", and the error handler acknowledged a
    second time; and before three attempts, a second loss in a row ended the command unanswered: for
    "request-then-answer", with "thinking…" on screen for good.)"""
    bot = await start_bot()
    unanswered, fake_discord.drop_callback_answers = _DROPPED[lost]
    fake_discord.drop_callback_requests = unanswered  # (each lookup after one finds no "thinking…" yet)
    for _ in range(unanswered):
        # (Discord's answer to the question, as there is no "thinking…" message yet: 404 Unknown Webhook)
        fake_discord.expect_violation("webhook call before the initial response")
    record, final = await slash(fake_discord, {"prompt": "castle"})
    assert len(final.results) == 1, final.content
    assert record.ack_type == 5
    assert record.callback_attempts == 1
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 1}
    assert len(fake_api.submissions) == 1
    assert fake_discord.violations == ["webhook call before the initial response"] * unanswered
    fake_discord.violations.clear()
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("lost", ["answer", "request"])
async def test_a_refusal_whose_thinking_message_deletion_gets_no_answer_is_still_told_privately(
    bot, fake_discord, fake_api, caplog, lost
):
    """A picture refused after the acknowledgement: its public "thinking…" is deleted and the reason
    sent privately. The deletion's connection breaks (before or after Discord deleted it): it is made
    again (a message deleted already is answered 404, which means done), and the member still gets
    the private reason, once. (Before: "Something went wrong".)"""
    fake_discord.lose_next_deletes = [lost]
    record, final = await slash(fake_discord, {"prompt": "x"}, image=b"just some text", filename="a.png")
    assert [m.ephemeral for m in fake_discord.visible_messages(record)] == [True]
    assert "not a picture" in final.content
    assert fake_api.submissions == []
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("lost", ["answer", "request"])
async def test_a_delete_whose_acknowledgement_gets_no_answer_still_deletes(
    bot, fake_discord, fake_api, caplog, lost
):
    """The member presses 🗑️ Delete and the button's acknowledgement loses its connection: after Discord
    took it (its answer lost) or before. The bot acknowledges again: Discord answers "already
    acknowledged" (40060) when it took the first, which the bot reads as done. The result is deleted.
    (Before, "answer": the error handler's reply was refused as a second acknowledgement, the member was
    told nothing, and the picture stayed.)"""
    from tests.test_iterate import MEMBER, first_result, job_id_of

    final = await first_result(fake_discord)
    _lose_the_first_answer(fake_discord, lost)
    job = job_id_of(final)
    await fake_discord.click(final, f"d2i:delete:{job}", user_id=MEMBER)
    await fake_discord.wait_for(lambda: final.deleted, timeout=10)
    await fake_discord.wait_until_idle(busy(bot))
    assert fake_discord.deleted_by_bot == [final.id]
    stored = await service_of(bot).get(job)
    assert stored is not None and stored.deleted_at is not None
    fake_discord.violations.clear()
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("lost", ["answer", "request"])
async def test_a_before_after_whose_acknowledgement_gets_no_answer_is_still_shown(
    bot, fake_discord, fake_api, caplog, lost
):
    """The same for 🪞 Before | after, which answers "thinking…" and then edits in the picture."""
    from tests.test_iterate import MEMBER, first_result, job_id_of, settle

    final = await first_result(fake_discord)
    _lose_the_first_answer(fake_discord, lost)
    record = await fake_discord.click(final, f"d2i:compare:{job_id_of(final)}", user_id=MEMBER)
    shown = await settle(fake_discord, record)
    assert [f.filename for f in shown.files] == [f"before-after-{job_id_of(final)}.jpg"], shown.content
    assert [m.id for m in fake_discord.visible_messages(record)] == [shown.id]
    fake_discord.violations.clear()
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("lost", ["answer", "garbled", "html", "request"])
async def test_a_before_after_whose_edit_gets_no_readable_answer_is_shown_once(
    bot, fake_discord, fake_api, caplog, lost
):
    """🪞 Before | after's picture is edited into its "thinking…" message, and that edit gets no readable
    answer: applied, its answer lost, cut short or a proxy's page; or dropped unread. The bot looks at
    the message: an edit that landed is the answer, else it is made again. (Before, for the applied
    ones: "the bot ran into a problem" was sent after the picture, and logged as an error.)"""
    from tests.test_iterate import MEMBER, first_result, job_id_of, settle

    final = await first_result(fake_discord)
    fake_discord.lose_next_edits = [lost]
    record = await fake_discord.click(final, f"d2i:compare:{job_id_of(final)}", user_id=MEMBER)
    shown = await settle(fake_discord, record)
    assert [f.filename for f in shown.files] == [f"before-after-{job_id_of(final)}.jpg"], shown.content
    assert [m.id for m in fake_discord.visible_messages(record)] == [shown.id]
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == []
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_button_reply_discord_never_answers_tells_the_member_to_try_again(
    bot, fake_discord, fake_api, caplog
):
    """The before | after picture's edit loses its connection, twice: the member is told that Discord
    did not answer and to try again, and the owner's log says so as a warning, not as a bug of the
    bot's. (Before: "Something went wrong (code …)", and an "unhandled command error".)"""
    from tests.test_iterate import MEMBER, first_result, job_id_of

    final = await first_result(fake_discord)
    fake_discord.lose_next_edits = ["request", "request"]
    record = await fake_discord.click(final, f"d2i:compare:{job_id_of(final)}", user_id=MEMBER)
    await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=20)
    await fake_discord.wait_until_idle(busy(bot))
    (told,) = fake_discord.visible_messages(record)
    assert told.content == text("en-US", "bot.discord_no_answer")
    assert not told.files
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert errors == []
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_show_whose_answer_is_dropped_tells_the_member_the_connection_broke(
    bot, fake_discord, fake_api, caplog
):
    """/depth2img-show's answer (the picture) loses its connection before Discord reads it, three times
    (each time it is made again, up to acknowledge.ANSWER_ATTEMPTS): the command tree's handler tells
    the member that the connection to Discord broke, and logs a warning. (Before: "Something went wrong
    (code …)", and an "unhandled command error" in the owner's log.)"""
    from cogs.depth2img.ui.acknowledge import ANSWER_ATTEMPTS
    from tests.test_iterate import MEMBER, first_result, job_id_of, settle

    final = await first_result(fake_discord)
    fake_discord.drop_callback_requests = ANSWER_ATTEMPTS
    record = await fake_discord.invoke_slash("depth2img-show", {"picture": job_id_of(final)}, user_id=MEMBER)
    told = await settle(fake_discord, record)
    assert told.content == text("en-US", "bot.discord_no_answer")
    assert told.ephemeral and not told.files
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert any(r.getMessage() == "a request to Discord got no answer" for r in caplog.records)
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_show_whose_question_to_discord_breaks_off_still_shows_the_picture(
    bot, fake_discord, fake_api, caplog
):
    """/depth2img-show asks Discord whether the result's message still exists (a moderator may have
    deleted it). When that question breaks off, the message counts as there, as when Discord refuses
    the question: the picture is shown. (Before: the broken-connection answer, and no picture.) Two
    drops: aiohttp makes a read on a dropped keep-alive connection again by itself, once."""
    from tests.test_iterate import MEMBER, first_result, job_id_of, settle

    final = await first_result(fake_discord)
    fake_discord.drop_message_reads = 2
    record = await fake_discord.invoke_slash("depth2img-show", {"picture": job_id_of(final)}, user_id=MEMBER)
    shown = await settle(fake_discord, record)
    assert len(shown.results) == 1, shown.content
    assert not shown.ephemeral
    assert fake_discord.drop_message_reads < 2  # (the question was asked)
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("how", ["dropped", "reconnect-asked", "not-resumable"])
async def test_a_gateway_connection_lost_mid_job_loses_no_picture(
    start_bot, fake_discord, fake_api, caplog, how
):
    """The gateway connection breaks (or Discord asks for a reconnect, op 7) while a job waits at the
    image service, and a member runs the command while it is down. The bot resumes its session, Discord
    replays the command, and both pictures arrive. When the session cannot be resumed (INVALID_SESSION),
    the bot identifies again: the command sent meanwhile never reaches it (Discord drops it with the
    session), the job in flight still delivers, and the next command works."""
    bot = await start_bot(PROGRESS_INTERVAL_S="0.1")
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 3
    first = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "before"}
    )
    await fake_discord.wait_for(lambda: first.ack_type == 5 and len(fake_api.submissions) == 1, timeout=10)
    fake_api.scenario = "success"
    fake_discord.resumable = how != "not-resumable"
    if how == "reconnect-asked":  # (the command may reach the old connection: RESUME replays it)
        await fake_discord.ask_to_reconnect()
    else:
        await fake_discord.drop_gateway()
    during = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "b.png"), "prompt": "during"}
    )
    assert fake_discord.kept_while_down == (how != "reconnect-asked")
    await fake_discord.wait_for(lambda: is_settled(fake_discord, first), timeout=30)
    assert len(fake_discord.final_message(first).results) == 1
    if how == "not-resumable":
        await fake_discord.wait_for(lambda: len(fake_discord.identifies) == 2, timeout=15)
        assert fake_discord.resumes == []
        assert during.ack_type is None  # (Discord's: "The application did not respond")
        _record, after = await slash(fake_discord, {"prompt": "after"}, timeout=30)
        assert len(after.results) == 1
        expected = {"delivered": 2}
    else:
        await fake_discord.wait_for(lambda: is_settled(fake_discord, during), timeout=30)
        assert len(fake_discord.final_message(during).results) == 1
        assert len(fake_discord.identifies) == 1 and len(fake_discord.resumes) == 1
        expected = {"delivered": 2}
    await fake_discord.wait_until_idle(busy(bot))
    assert await count_by_state(service_of(bot).ledger) == expected
    assert_clean(fake_discord, fake_api, caplog)


async def test_a_burst_through_lost_answers_of_every_kind_gets_every_picture_once(
    start_bot, fake_discord, fake_api, caplog
):
    """Twelve members at once, while Discord's answers go missing in every way the fake knows: two
    acknowledgements taken with their answer lost, two dropped unread, four result edits lost (before
    or after Discord applied them, or answered with JSON cut short or a proxy's page), and two channel
    posts lost. Which member meets which fault depends on the order things happen in; one member may
    meet several. Each member still gets their picture exactly once (in their message, or posted in
    the channel when both edits were lost), every job is recorded as delivered, and nothing is logged
    as an error."""
    bot = await start_bot(SD_MAX_CONCURRENT="6", SD_MAX_QUEUED="60")
    fake_api.latency_s = 0.05
    fake_discord.drop_callback_answers = 2
    fake_discord.drop_callback_requests = 2
    fake_discord.lose_next_edits = ["answer", "garbled", "request", "html"]
    fake_discord.lose_next_posts = ["answer", "request"]
    fake_discord.expect_violation("webhook call before the initial response")
    users = [900000000000000000 + n for n in range(12)]
    records = await asyncio.gather(
        *(
            fake_discord.invoke_slash(
                "depth2img",
                {"image": fake_discord.add_attachment(make_png(), f"{n}.png"), "prompt": f"p{n}"},
                user_id=user,
            )
            for n, user in enumerate(users)
        )
    )

    def pictures_of(record, user) -> list:
        posted = [fake_discord.messages[m] for m in fake_discord.channel_messages]
        mine = [m for m in posted if m.pings == [f"<@{user}>"]]
        return [m for m in [*fake_discord.visible_messages(record), *mine] if m.results]

    await fake_discord.wait_for(
        lambda: all(pictures_of(r, u) for r, u in zip(records, users, strict=True)), timeout=60
    )
    await fake_discord.wait_until_idle(busy(bot))
    for record, user in zip(records, users, strict=True):
        assert len(pictures_of(record, user)) == 1, user
    assert fake_discord.drop_callback_answers == fake_discord.drop_callback_requests == 0
    assert fake_discord.lose_next_edits == []
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 12}
    assert len(fake_api.submissions) == 12
    assert [r.getMessage() for r in caplog.records if r.levelno >= 40] == []
    assert set(fake_discord.violations) <= {"webhook call before the initial response"}
    fake_discord.violations.clear()
    for m in fake_discord.messages.values():
        m.pings.clear()  # (the channel posts mention their member, as meant)
    assert_clean(fake_discord, fake_api, caplog)


async def test_buttons_pressed_through_lost_answers_and_a_lost_gateway_each_end_once(
    start_bot, fake_discord, fake_api, caplog
):
    """Six members press buttons on their results at once (🎲 New seed on three, 🪞 Before | after on
    two, 🗑️ Delete on one) while acknowledgements lose their answers or are dropped, result edits are
    lost, and the gateway connection breaks. Each press ends once: one new picture per New seed, one
    before | after view per press, the deleted result gone; every job is delivered, and nothing is
    logged as an error."""
    from tests.test_iterate import job_id_of

    bot = await start_bot()
    users = [910000000000000000 + n for n in range(6)]
    finals = []
    for n, user in enumerate(users):
        _record, final = await slash(fake_discord, {"prompt": f"p{n}"}, user_id=user)
        assert final.results
        finals.append(final)
    fake_api.latency_s = 0.05
    fake_discord.drop_callback_answers = 2
    fake_discord.drop_callback_requests = 2
    fake_discord.lose_next_edits = ["answer", "garbled", "request"]
    fake_discord.expect_violation("webhook call before the initial response")
    fake_discord.expect_violation("interaction acknowledged twice")
    actions = ["seed", "seed", "seed", "compare", "compare", "delete"]
    presses = await asyncio.gather(
        *(
            fake_discord.click(final, f"d2i:{action}:{job_id_of(final)}", user_id=user)
            for final, action, user in zip(finals, actions, users, strict=True)
        )
    )
    await fake_discord.drop_gateway()

    def pictures_of(record, user) -> list:
        posted = [fake_discord.messages[m] for m in fake_discord.channel_messages]
        mine = [m for m in posted if m.pings == [f"<@{user}>"]]
        return [m for m in [*fake_discord.visible_messages(record), *mine] if m.files]

    def done() -> bool:
        return all(
            finals[n].deleted if action == "delete" else bool(pictures_of(presses[n], users[n]))
            for n, action in enumerate(actions)
        )

    await fake_discord.wait_for(done, timeout=60)
    await fake_discord.wait_until_idle(busy(bot))
    for n, action in enumerate(actions):
        if action == "delete":
            assert fake_discord.deleted_by_bot == [finals[n].id]
            continue
        (shown,) = pictures_of(presses[n], users[n])
        if action == "seed":
            assert len(shown.results) == 1
        else:
            assert [f.filename for f in shown.files] == [f"before-after-{job_id_of(finals[n])}.jpg"]
    assert fake_discord.drop_callback_answers == fake_discord.drop_callback_requests == 0
    assert await count_by_state(service_of(bot).ledger) == {"delivered": 9}
    assert len(fake_api.submissions) == 9
    assert [(r.getMessage(), getattr(r, "error", None)) for r in caplog.records if r.levelno >= 40] == []
    assert set(fake_discord.violations) <= {
        "webhook call before the initial response",
        "interaction acknowledged twice",
    }
    fake_discord.violations.clear()
    for m in fake_discord.messages.values():
        m.pings.clear()  # (a channel post mentions its member, as meant)
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("lost", list(_DROPPED))
@pytest.mark.parametrize("asked", ["details", "history", "show"])
async def test_an_answer_whose_connection_breaks_is_made_again_and_shown_once(
    bot, fake_discord, fake_api, caplog, lost, asked
):
    """A private answer given as the interaction's first answer (ℹ️ Details, /depth2img-history,
    /depth2img-show) loses its connection: after Discord made the message (its answer lost) or before
    it read it; or twice in a row. The bot makes it again, up to three times; Discord's "already
    acknowledged" (40060) means an earlier one was taken. The member sees the answer once, and nothing
    is logged above info. (Before: "request" ended in the broken-connection answer, and "answer" logged
    warnings; before three attempts, a second loss in a row did as "request" did.)"""
    from tests.conftest import details_of
    from tests.test_iterate import MEMBER, first_result, job_id_of

    final = await first_result(fake_discord)
    caplog.clear()
    _lose_the_first_answer(fake_discord, lost)
    if asked == "details":
        shown = await details_of(fake_discord, final, user_id=MEMBER)
        await fake_discord.wait_until_idle()
        assert f"picture `{job_id_of(final)}`" in shown.content
    else:
        options = {"picture": job_id_of(final)} if asked == "show" else {}
        record = await fake_discord.invoke_slash(f"depth2img-{asked}", options, user_id=MEMBER)
        await fake_discord.wait_for(lambda: bool(fake_discord.visible_messages(record)), timeout=10)
        await fake_discord.wait_until_idle()
        (shown,) = fake_discord.visible_messages(record)
        if asked == "show":
            assert len(shown.results) == 1
        else:
            assert job_id_of(final) in shown.content
    assert fake_discord.drop_callback_answers == fake_discord.drop_callback_requests == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []
    fake_discord.violations.clear()
    assert_clean(fake_discord, fake_api, caplog)


@pytest.mark.parametrize("lost", ["answer", "request"])
@pytest.mark.parametrize("asked", ["edit-button", "apps-menu"])
async def test_a_form_whose_connection_breaks_is_shown_once_and_works(
    bot, fake_discord, fake_api, caplog, lost, asked
):
    """The prompt form (✏️ Edit prompt, or Apps → Depth to image) is a first answer too: when its
    connection breaks, after Discord showed it or before it read it, it is sent again (40060 then
    means shown). The member gets the form, no error message, and its submission makes the picture.
    (Before: "request" answered with the broken-connection message instead of the form, and "answer"
    logged warnings.)"""
    from tests.test_iterate import MEMBER, first_result, job_id_of, settle

    if asked == "edit-button":
        final = await first_result(fake_discord)
    else:
        posted = fake_discord.post_user_message("look", [(make_png(320, 240), "a.png", "image/png")])
    caplog.clear()
    _lose_the_first_answer(fake_discord, lost)
    if asked == "edit-button":
        record = await fake_discord.click(final, f"d2i:edit:{job_id_of(final)}", user_id=MEMBER)
    else:
        record = await fake_discord.invoke_message_command("Depth to image", posted, user_id=MEMBER)
    await fake_discord.wait_for(lambda: record.modal is not None, timeout=10)
    await fake_discord.wait_until_idle()
    assert fake_discord.visible_messages(record) == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []
    fake_discord.violations.clear()
    submit = await fake_discord.submit_modal(record.modal, {"prompt": "in the rain"}, user_id=MEMBER)
    assert (await settle(fake_discord, submit)).results
    assert_clean(fake_discord, fake_api, caplog)


def _flat_png() -> bytes:
    """What a safety checker sends in place of an unsafe picture: one flat colour."""
    buf = io.BytesIO()
    Image.new("RGB", (512, 512)).save(buf, format="PNG")
    return buf.getvalue()
