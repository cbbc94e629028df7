"""End to end: the real bot and the real discord.py against the fake Discord and the fake API.

Each test injects /depth2img interactions over the fake gateway and asserts what Discord received.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from cogs.botcore.logs import KeyValueFormatter
from tests.conftest import details_of, is_settled, metrics_text, service_of, slash
from tests.fakes.fake_api import make_png
from tests.fakes.fake_discord import FLAG_EPHEMERAL

OPTION_NAMES = ["image", "prompt", "negative_prompt", "strength", "steps", "guidance", "seed", "samples"]


def assert_clean(fake_discord, fake_api, caplog=None):
    """No Discord rule broken, no unknown route called, nobody pinged, no secret or traceback leaked."""
    assert fake_discord.violations == []
    assert fake_discord.unhandled == []
    for msg in fake_discord.messages.values():
        assert msg.pings == []
        for text in msg.history:
            assert fake_api.api_key not in text
            assert fake_discord.token not in text
            assert "Traceback" not in text
            assert "Exception" not in text
    if caplog is not None:
        logs = log_text(caplog)
        assert fake_api.api_key not in logs
        assert fake_discord.token not in logs
        assert "Traceback" not in logs


def log_text(caplog) -> str:
    """The log as the bot writes it (its own formatter, as configured by bot.py at INFO)."""
    formatter = KeyValueFormatter(show_tracebacks=False)
    return "\n".join(formatter.format(r) for r in caplog.records)


async def test_command_definition_has_every_option_described(bot, fake_discord):
    cmd = fake_discord.command("depth2img")
    assert cmd["description"]
    opts = {o["name"]: o for o in cmd["options"]}
    assert list(opts) == OPTION_NAMES
    for o in cmd["options"]:
        assert o["description"] and o["description"] != "…", o["name"]
    assert opts["image"]["type"] == 11 and opts["image"]["required"]
    assert (
        opts["prompt"]["required"]
        and opts["prompt"]["max_length"] == 1000
        and opts["prompt"]["min_length"] == 1
    )
    assert (opts["strength"]["min_value"], opts["strength"]["max_value"]) == (0, 1)
    assert (opts["guidance"]["min_value"], opts["guidance"]["max_value"]) == (1, 20)
    assert (opts["samples"]["min_value"], opts["samples"]["max_value"]) == (1, 4)
    assert not any(opts[n].get("required") for n in OPTION_NAMES[2:])


async def test_happy_path_acks_fast_and_delivers_the_png_with_timing(bot, fake_discord, fake_api, caplog):
    caplog.set_level(logging.INFO)
    fake_api.scenario = "success_list"
    record, final = await slash(fake_discord, {"prompt": "a cozy cabin, warm light", "strength": 0.6})
    # acknowledged once, as a deferral ("thinking…"), well within Discord's 3 s
    assert record.ack_type == 5
    assert record.callback_attempts == 1
    assert record.acked_at - record.sent_at < 3.0
    # one message, edited from "thinking…" into the result, public, with the image attached as a file
    assert len(fake_discord.visible_messages(record)) == 1
    assert not final.ephemeral and not final.loading
    (file,) = final.results
    assert file.filename.endswith(".png")
    assert file.data == fake_api.output_png
    # the compact card: the picture, the prompt, one line with the time; the rest behind ℹ️ Details
    assert final.content.startswith(f"🎨 <@{record.user_id}> · a cozy cabin, warm light\n⏱️ ")
    assert len(final.content.splitlines()) == 2 and "seed" not in final.content
    details = await details_of(fake_discord, final)
    assert details.ephemeral
    assert "seed `1793745243`" in details.content and "strength 0.6" in details.content
    assert "total" in details.content and "2.9 s generating" in details.content
    assert "512×512" in details.content
    job = final.components[0]["components"][0]["custom_id"].split(":")[2]
    assert f"/depth2img-show picture:{job}" in details.content  # names the source picture's job
    assert (
        "```\n/depth2img prompt:a cozy cabin, warm light strength:0.6 seed:1793745243\n```" in details.content
    )
    assert "http" not in final.content  # never only a link to the API's URL
    (sub,) = fake_api.submissions
    assert sub.body["init_image"].startswith(fake_discord.base_url + "/attachments/")
    assert sub.body["strength"] == 0.6
    assert_clean(fake_discord, fake_api, caplog)


async def test_queued_job_shows_progress_then_the_image(bot, fake_discord, fake_api):
    fake_api.scenario = "queued"
    fake_api.eta_s = 0.2
    _record, final = await slash(fake_discord, {"prompt": "castle"})
    assert final.files
    assert any(h.startswith("⏳ Queued at the image service") and "<t:" in h for h in final.history)
    assert "queued at the image service" in (await details_of(fake_discord, final)).content
    assert len(fake_api.submissions) == 1
    assert len(fake_api.fetches) == 3
    assert_clean(fake_discord, fake_api)


async def test_multiple_samples_are_attached(bot, fake_discord, fake_api):
    fake_api.scenario = "multiple_samples"
    _, final = await slash(fake_discord, {"prompt": "castle", "samples": 3})
    assert len(final.results) == 3
    assert "3 pictures" in (await details_of(fake_discord, final)).content
    assert_clean(fake_discord, fake_api)


@pytest.mark.parametrize(
    ("data", "filename", "ctype", "fragment"),
    [
        (b"this is a text file, not a picture", "photo.png", "image/png", "not a picture"),
        (b"<html>nope</html>", "cat.jpg", "image/jpeg", "not a picture"),
        (make_png()[:300], "cut.png", "image/png", "damaged"),
        (b"GIF89a" + b"\0" * 50, "anim.png", None, "not a picture"),
    ],
)
async def test_bad_bytes_get_a_private_message_and_cost_no_api_call(
    bot, fake_discord, fake_api, data, filename, ctype, fragment
):
    record, final = await slash(
        fake_discord, {"prompt": "x"}, image=data, filename=filename, content_type=ctype
    )
    assert final.ephemeral
    assert fragment in final.content
    # the public "thinking…" message is gone: only the private message is left
    assert [m.ephemeral for m in fake_discord.visible_messages(record)] == [True]
    assert fake_api.submissions == []
    assert_clean(fake_discord, fake_api)


async def test_prompt_too_long_is_refused_privately_before_the_ack(bot, fake_discord, fake_api):
    # a hostile or outdated client can send more than the declared max_length
    record, final = await slash(fake_discord, {"prompt": "y" * 1200}, check_options=False)
    assert record.ack_type == 4
    assert final.flags & FLAG_EPHEMERAL
    assert "limit is 1,000" in final.content
    assert fake_api.submissions == []
    assert_clean(fake_discord, fake_api)


async def test_whitespace_prompt_is_refused(bot, fake_discord, fake_api):
    _, final = await slash(fake_discord, {"prompt": " \u200b "})
    assert final.ephemeral and "empty" in final.content
    assert fake_api.submissions == []


async def test_attachment_over_the_size_limit_is_refused(start_bot, fake_discord, fake_api):
    await start_bot(MAX_INPUT_BYTES="2048")
    _, final = await slash(fake_discord, {"prompt": "x"}, image=make_png(256, 256, noise=True))
    assert final.ephemeral and "limit is" in final.content
    assert fake_api.submissions == []
    assert_clean(fake_discord, fake_api)


ERROR_CASES = [
    ("invalid_key_401", {}, "refused the bot's account"),
    ("invalid_key_200", {}, "refused the bot's account"),
    ("no_credits_402", {}, "run out of credit"),
    ("no_credits_200", {}, "run out of credit"),
    ("rate_limited", {}, "Try again in about 30 s"),
    ("validation_object", {}, "refused this request"),
    ("legacy_messege", {}, "refused this request"),
    ("unfetchable_image", {}, "could not fetch your picture"),
    ("server_error_always", {"SD_MAX_RETRIES": "1"}, "internal problem"),
    ("bad_gateway_html", {}, "internal problem"),
    ("queued_then_failed", {}, "could not make this picture"),
    ("queued_forever", {"SD_JOB_TIMEOUT_S": "1"}, "did not finish within"),
    ("processing_without_id", {}, "does not understand"),
    ("slow", {"SD_REQUEST_TIMEOUT_S": "1"}, "did not answer in time"),
    ("output_404", {}, "could not be downloaded"),
    ("output_not_image", {}, "a picture the bot cannot use"),
]


@pytest.mark.parametrize(("scenario", "env", "fragment"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
async def test_every_failure_ends_in_one_clear_message(
    start_bot, fake_discord, fake_api, caplog, scenario, env, fragment
):
    caplog.set_level(logging.INFO)
    fake_api.slow_s = 3
    await start_bot(**env)
    fake_api.scenario = scenario
    record, final = await slash(fake_discord, {"prompt": "castle"})
    assert fragment in final.content
    assert "code `" in final.content
    ref = final.content.split("code `")[1].split("`")[0]
    assert f"job={ref}" in log_text(caplog)  # the member's reference finds the job's log lines
    assert final.files == []
    assert len(fake_discord.visible_messages(record)) == 1
    assert not final.loading
    assert_clean(fake_discord, fake_api, caplog)


async def test_prompt_mentions_and_markdown_ping_no_one(bot, fake_discord, fake_api):
    prompt = "@everyone @here <@123456789012345678> <@&223456789012345678> **bold** `code`"
    _, final = await slash(fake_discord, {"prompt": prompt})
    assert final.files
    assert final.pings == []
    assert "@everyone" not in final.content  # shown with a zero-width space, inert even if quoted
    assert "\\*\\*bold\\*\\*" in final.content
    assert_clean(fake_discord, fake_api)


async def test_output_larger_than_the_upload_limit_is_made_to_fit(bot, fake_discord, fake_api):
    fake_discord.limits.attachment_size_limit = 1024 * 1024
    fake_api.scenario = "output_huge"
    _, final = await slash(fake_discord, {"prompt": "castle"})
    (file,) = final.results
    assert len(file.data) <= 1024 * 1024
    assert_clean(fake_discord, fake_api)


async def test_one_job_per_member_second_is_told_to_wait(bot, fake_discord, fake_api):
    fake_api.latency_s = 0.5
    user = 424242424242424242
    first = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "one"},
        user_id=user,
    )
    await fake_discord.wait_for(lambda: len(fake_api.submissions) == 1)  # the first is under way
    _second, final2 = await slash(fake_discord, {"prompt": "two"}, user_id=user)
    assert final2.ephemeral and "already have a picture in progress" in final2.content
    await fake_discord.wait_for(lambda: is_settled(fake_discord, first))
    assert fake_discord.final_message(first).files
    assert len(fake_api.submissions) == 1
    assert_clean(fake_discord, fake_api)


async def test_concurrent_members_are_all_served_and_acked_in_time(start_bot, fake_discord, fake_api):
    await start_bot(SD_MAX_CONCURRENT="3")
    fake_api.latency_s = 0.2
    records = await asyncio.gather(
        *(
            fake_discord.invoke_slash(
                "depth2img", {"image": fake_discord.add_attachment(make_png(), f"{n}.png"), "prompt": f"p{n}"}
            )
            for n in range(8)
        )
    )
    await fake_discord.wait_for(lambda: all(is_settled(fake_discord, r) for r in records), timeout=20)
    for r in records:
        assert r.acked_at - r.sent_at < 3.0
        assert fake_discord.final_message(r).files
    assert fake_api.max_in_flight <= 3
    assert_clean(fake_discord, fake_api)


async def test_unexpected_discord_error_gets_a_reference_not_a_traceback(bot, fake_discord, fake_api, caplog):
    caplog.set_level(logging.INFO)
    fake_discord.fail_next_edits = 1  # the delivery edit is refused once (403 Missing Permissions)
    record, final = await slash(fake_discord, {"prompt": "castle"})
    assert final.content.startswith("⚠️ Discord refused the bot's message with your picture (code `")
    ref = final.content.split("`")[1]
    logs = log_text(caplog)
    assert f"ref={ref}" in logs  # the member's reference finds the log line
    assert "error=Forbidden" in logs  # the log names the error type ...
    assert "Missing Permissions" not in final.content  # ... the member never sees its text
    # the paid-for picture is kept all the same, and the member is told how to bring it back
    show = final.content.split("`")[3]
    assert show.startswith("/depth2img-show picture:"), final.content
    shown = await fake_discord.invoke_slash(
        "depth2img-show", {"picture": show.split(":")[1]}, user_id=record.user_id
    )
    await fake_discord.wait_for(lambda: bool(fake_discord.visible_messages(shown)), timeout=10)
    assert len(fake_discord.visible_messages(shown)[0].results) == 1
    assert_clean(fake_discord, fake_api, caplog)


async def test_late_interaction_is_not_answered_twice(bot, fake_discord, fake_api):
    # delivered 3.5 s late by Discord: the bot's ack then misses the window; nothing else may break
    fake_discord.expect_violation("late acknowledgement")
    record = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "x"}, age_s=3.5
    )
    await fake_discord.wait_for(lambda: record.callback_attempts == 1)
    await fake_discord.wait_until_idle()
    assert record.callback_attempts == 1
    assert record.ack_type is None
    assert fake_api.submissions == []
    assert len(fake_discord.violations) == 1
    assert fake_discord.violations[0].startswith("late acknowledgement")
    assert 'depth2img_acks_total{outcome="expired"} 1.0' in metrics_text(bot)


async def test_longest_prompts_still_fit_discord_content_limit(bot, fake_discord, fake_api):
    # every character of these needs escaping, so the echo would be 4000 characters unabridged
    _record, final = await slash(
        fake_discord, {"prompt": "*" * 1000, "negative_prompt": "_" * 1000, "seed": 1}
    )
    assert final.files
    assert len(final.content) <= 2000
    assert "…" in final.content
    assert_clean(fake_discord, fake_api)


async def test_a_waiting_member_sees_their_position(start_bot, fake_discord, fake_api):
    await start_bot(SD_MAX_CONCURRENT="1")
    fake_api.latency_s = 0.6
    first = await fake_discord.invoke_slash(
        "depth2img", {"image": fake_discord.add_attachment(make_png(), "a.png"), "prompt": "one"}
    )
    await fake_discord.wait_for(lambda: len(fake_api.submissions) == 1)
    _second, final = await slash(fake_discord, {"prompt": "two"})
    assert final.files
    assert any(h.startswith("⏳ Waiting for a free slot (position 1) — expected <t:") for h in final.history)
    assert fake_discord.final_message(first).files


async def test_cooldown_between_requests(start_bot, fake_discord, fake_api):
    await start_bot(SD_USER_COOLDOWN_S="60")
    user = 616161616161616161
    _, first = await slash(fake_discord, {"prompt": "one"}, user_id=user)
    assert first.files
    _, second = await slash(fake_discord, {"prompt": "two"}, user_id=user)
    assert second.ephemeral
    assert "you can ask again in" in second.content
    assert len(fake_api.submissions) == 1


async def test_daily_quota_per_server(start_bot, fake_discord, fake_api):
    await start_bot(SD_GUILD_DAILY_QUOTA="2")
    for n in range(2):
        _, ok = await slash(fake_discord, {"prompt": f"p{n}"})
        assert ok.files
    _, refused = await slash(fake_discord, {"prompt": "p3"})
    assert refused.ephemeral
    assert "used its 2 pictures for today" in refused.content
    assert len(fake_api.submissions) == 2


async def test_a_member_can_ask_again_as_soon_as_the_result_is_shown(bot, fake_discord, fake_api):
    """The member's one-job-at-a-time limit ends when they see the outcome, not when the bot has
    finished its own bookkeeping afterwards."""
    user = 616161616161616161
    for prompt in ("first", "second", "third"):
        record = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": prompt},
            user_id=user,
        )
        await fake_discord.wait_for(lambda r=record: is_settled(fake_discord, r), timeout=20)
        final = fake_discord.visible_messages(record)[-1]
        assert len(final.results) == 1, final.content  # never "you already have a picture in progress"
    assert len(fake_api.submissions) == 3


async def test_pictures_wait_while_other_members_are_still_being_acknowledged(bot, fake_discord, fake_api):
    """Two members at once. A's acknowledgement is done while B's is still on its way to Discord:
    A's picture is not downloaded (nor anyone's) until B has been acknowledged too."""
    service = service_of(bot)
    service.answer_first.max_hold_s = 30.0  # only B's acknowledgement may let A's work through
    a_user, b_user = 10**17 + 1, 10**17 + 2
    b_arrived = asyncio.Event()
    b_released: list[float] = []

    async def gate(record):
        if record.user_id == a_user:
            await b_arrived.wait()  # B's acknowledgement is in flight before A's comes back
        elif record.user_id == b_user:
            b_arrived.set()
            await asyncio.sleep(0.3)
            b_released.append(time.monotonic())

    fake_discord.callback_gate = gate
    attachment = fake_discord.add_attachment(make_png(), "photo.png")
    records = await asyncio.gather(
        *(
            fake_discord.invoke_slash("depth2img", {"image": attachment, "prompt": "a bridge"}, user_id=u)
            for u in (a_user, b_user)
        )
    )
    await fake_discord.wait_for(lambda: all(is_settled(fake_discord, r) for r in records), timeout=20)
    assert all(fake_discord.visible_messages(r)[-1].results for r in records)
    assert len(fake_discord.cdn_fetches) == 2
    assert min(at for at, _ in fake_discord.cdn_fetches) >= b_released[0]
    assert_clean(fake_discord, fake_api)


def test_an_uploaded_picture_is_freed_at_once_not_by_the_garbage_collector():
    """discord.File sets the file's ``close`` back to the file's own bound method after sending: a
    reference cycle that kept every uploaded picture until a full garbage collection. Ours frees it
    as soon as the last reference goes."""
    import gc
    import io
    import weakref

    import discord

    from cogs.depth2img.ui.components import SharedBytes

    def freed_by_refcount(make: type[io.BytesIO]) -> bool:
        fp = make(b"x" * 1000)
        ref = weakref.ref(fp)
        file = discord.File(fp, filename="a.png")
        file.reset()
        file.close()  # what discord.py does once the request is done
        del file, fp
        return ref() is None

    gc.disable()
    try:
        assert not freed_by_refcount(io.BytesIO)  # discord.py's cycle, as it is
        assert freed_by_refcount(SharedBytes)
    finally:
        gc.enable()
    picture = b"\x89PNG" + bytes(range(256)) * 100
    fp = SharedBytes(picture)
    with fp.getbuffer() as view:
        assert view.obj is picture  # no copy
    assert fp.read() == picture


async def test_the_progress_line_stops_when_a_job_ends_at_its_deadline_in_unreadable_answers(
    start_bot, fake_discord, fake_api
):
    """Every poll is answered with JSON nested far too deep (json raises RecursionError): the job is
    polled on (an unreadable answer may be a passing fault), the member is told the service is slow,
    and at the job's deadline it ends; the member's progress line stops with it."""
    await start_bot(PROGRESS_INTERVAL_S="0.1", SD_JOB_TIMEOUT_S="2")
    fake_api.scenario = "queued"
    fake_api.eta_s = 0.01
    fake_api.fetch_body = b"[" * 100_000 + b"]" * 100_000
    record, final = await slash(fake_discord, {"prompt": "castle"})
    assert record.ack_type == 5
    assert final.files == []
    assert "did not finish within" in final.content
    assert any(h.startswith("⏳ The image service has your picture but is slow") for h in final.history)

    def progress_tasks() -> list[asyncio.Task]:
        return [
            t
            for t in asyncio.all_tasks()
            if "Progress" in getattr(t.get_coro(), "__qualname__", "") and not t.done()
        ]

    await fake_discord.wait_until_idle()
    assert progress_tasks() == []
    edits = final.edits
    await fake_discord.wait_until_idle(quiet_s=0.5)  # (more than the progress interval of 0.1 s)
    assert final.edits == edits


async def test_a_picture_discord_never_finishes_sending_gets_a_clear_private_answer(
    start_bot, fake_discord, fake_api
):
    await start_bot(INPUT_READ_TIMEOUT_S="1")
    attachment = fake_discord.add_attachment(make_png(), "slow.png")
    fake_discord.cdn_stalled.add(attachment["url"].split("?")[0].removeprefix(fake_discord.base_url))
    record, final = await slash(fake_discord, {"image": attachment, "prompt": "castle"})
    assert final.ephemeral
    assert "could not be downloaded from Discord in time" in final.content
    assert [m.ephemeral for m in fake_discord.visible_messages(record)] == [True]
    assert fake_api.submissions == []
    assert_clean(fake_discord, fake_api)


async def test_a_blank_picture_is_explained(bot, fake_discord, fake_api):
    """The service's safety checker sends a flat black picture for an unsafe one: the member is told
    why, and what the server can do (issue 14)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (512, 512)).save(buf, format="PNG")
    fake_api.output_png = buf.getvalue()
    _, final = await slash(fake_discord, {"prompt": "something unsafe"})
    assert final.results
    assert (
        "⬛ Your picture came back blank: the image service's safety checker judged it unsafe"
        in final.content
    )
    assert "/depth2img-settings content" in final.content
    assert final.results[0].description == (  # (what a screen reader says of it)
        "A blank picture: the image service's safety checker replaced the one made for the prompt: "
        "something unsafe"
    )
    fake_api.output_png = make_png(512, 512, noise=True)
    _, normal = await slash(fake_discord, {"prompt": "a cabin"})
    assert "came back blank" not in normal.content
    # Brought back with /depth2img-show, by anyone: still said to be blank (whether it was is not kept:
    # its pixels tell); before, it was described as a new picture made for the prompt.
    for card, blank in ((final, True), (normal, False)):
        job = card.components[0]["components"][0]["custom_id"].rsplit(":", 1)[-1]
        record = await fake_discord.invoke_slash(
            "depth2img-show", {"picture": job}, user_id=727272727272727272
        )
        await fake_discord.wait_for(lambda r=record: is_settled(fake_discord, r), timeout=20)
        (shown,) = fake_discord.visible_messages(record)
        assert shown.files[0].description.startswith("A blank picture:") is blank
        assert ("⬛ A blank picture: the image service's safety checker judged" in shown.content) is blank
    assert_clean(fake_discord, fake_api)


@pytest.mark.parametrize("kind", ["flat PNG", "JPEG", "WEBP"])
async def test_an_output_passed_on_as_it_came_reaches_the_member_whole_and_is_kept_whole(
    bot, fake_discord, fake_api, kind
):
    """The image workers pass some outputs on untouched: a JPEG or WebP that fits, and a PNG small
    enough to be one flat colour (which they decode to see). Such an output came back from them
    without its bytes, which the bot had already let go: the member got an empty file in place of the
    paid-for picture, and the kept result (buttons, /depth2img-show) was empty too."""
    import io

    from PIL import Image

    picture = (
        Image.new("RGB", (512, 512)) if kind == "flat PNG" else Image.open(io.BytesIO(make_png(noise=True)))
    )
    buf = io.BytesIO()
    picture.save(buf, format=kind.split()[-1])
    fake_api.output_png = output = buf.getvalue()
    _, final = await slash(fake_discord, {"prompt": "a lighthouse"})
    assert [f.data for f in final.results] == [output]
    job = final.components[0]["components"][0]["custom_id"].rsplit(":", 1)[-1]
    record = await fake_discord.invoke_slash("depth2img-show", {"picture": job})
    await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=20)
    (shown,) = fake_discord.visible_messages(record)
    assert [f.data for f in shown.files] == [output]
    assert_clean(fake_discord, fake_api)


async def test_a_result_kept_empty_by_an_earlier_version_is_not_shown_as_an_empty_file(
    bot, fake_discord, fake_api
):
    """Earlier versions kept some results as empty files (see above). /depth2img-show says the picture
    is no longer stored, as for one that is gone, instead of posting an empty file."""
    from pathlib import Path

    _, final = await slash(fake_discord, {"prompt": "a lighthouse"})
    job_id = final.components[0]["components"][0]["custom_id"].rsplit(":", 1)[-1]
    job = await service_of(bot).get(job_id)
    Path(job.result_path).write_bytes(b"")
    record = await fake_discord.invoke_slash("depth2img-show", {"picture": job_id})
    await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=20)
    (said,) = fake_discord.visible_messages(record)
    assert said.ephemeral and not said.files
    assert "no longer stored" in said.content
    assert_clean(fake_discord, fake_api)


async def test_a_progress_edit_discord_never_answers_does_not_hold_the_result_back(
    start_bot, fake_discord, fake_api
):
    """Discord takes a progress line's edit and never answers it. discord.py would wait for aiohttp's
    5 minutes, holding the token's lock, and the result would wait behind it (the progress line lets
    an edit on its way finish, so that it does not land after the result). The wait is bounded: the
    result comes, with its picture."""
    await start_bot(PROGRESS_INTERVAL_S="0.1")
    fake_api.scenario = "queued"
    fake_api.polls_before_done = 3
    fake_discord.hang_next_progress_edits = 1
    record, final = await slash(fake_discord, {"prompt": "castle"}, timeout=40)
    assert len(final.results) == 1, final.content
    assert record.ack_type == 5
    assert_clean(fake_discord, fake_api)
