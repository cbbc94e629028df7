"""Iterating on a result, through the fake Discord: buttons, the edit modal, the context menu,
cancel and progress, show/history/forget-me, and all of it after a restart too."""

from __future__ import annotations

import asyncio
import base64
import gc
import io

import discord
from PIL import Image

from tests.conftest import details_of, is_settled, slash
from tests.fakes.fake_api import make_png
from tests.fakes.fake_discord import MANAGE_MESSAGES, FakeDiscord, FakeMessage, InteractionRecord
from tests.test_e2e import assert_clean

MEMBER = 717171717171717171
OTHER = 727272727272727272


def job_id_of(msg: FakeMessage) -> str:
    ids = [c["custom_id"] for row in msg.components for c in row["components"]]
    return ids[0].split(":")[2]


async def settle(fake: FakeDiscord, record: InteractionRecord) -> FakeMessage:
    """The interaction's last message once the bot has answered it and is idle. A refusal is an
    ephemeral answer at once, so a broken check fails the test's assertions here, not a timeout."""
    await fake.wait_for(lambda: record.ack_type is not None, timeout=10)
    if record.ack_type == 5:  # "thinking…": the answer follows
        await fake.wait_for(lambda: is_settled(fake, record), timeout=20)
    await fake.wait_until_idle(quiet_s=0.1, jobs_may_run=True)  # (other jobs may be running)
    visible = fake.visible_messages(record)
    assert visible, f"the interaction was answered with type {record.ack_type} and no message"
    return visible[-1]


async def first_result(fake_discord: FakeDiscord, **options) -> FakeMessage:
    _, final = await slash(
        fake_discord, {"prompt": "a red barn", "strength": 0.6, "seed": 11, **options}, user_id=MEMBER
    )
    assert final.results
    return final


async def test_result_has_buttons_a_before_after_view_and_copyable_options(bot, fake_discord, fake_api):
    final = await first_result(fake_discord)
    job = job_id_of(final)
    rows = [[c["custom_id"] for c in row["components"]] for row in final.components]
    assert rows == [
        [f"d2i:{a}:{job}" for a in ("seed", "edit", "closer", "more", "reuse")],
        [f"d2i:compare:{job}", f"d2i:details:{job}", f"d2i:delete:{job}"],
    ]
    details = await details_of(fake_discord, final, user_id=OTHER)  # anyone may look, privately
    assert details.ephemeral and f"picture `{job}`" in details.content
    assert "```\n/depth2img prompt:a red barn strength:0.6 seed:11\n```" in details.content
    # the before | after view, for anyone who presses the button
    shown = await settle(fake_discord, await fake_discord.click(final, f"d2i:compare:{job}", user_id=OTHER))
    (comparison,) = shown.files
    assert comparison.filename == f"before-after-{job}.jpg"
    with Image.open(io.BytesIO(comparison.data)) as img:
        assert img.format == "JPEG"
        assert img.width > img.height  # side by side
        left = img.getpixel((40, img.height // 2))
        right = img.getpixel((img.width - 40, img.height // 2))
    assert left != right
    assert len(fake_api.submissions) == 1  # no API call for it
    assert_clean(fake_discord, fake_api)


async def test_every_picture_carries_alt_text_within_discords_limit(bot, fake_discord, fake_api):
    """Screen readers read an attachment's description: each picture the bot sends says what it is
    and the prompt it was made for, in the channel's language, cut to Discord's 1,024 characters
    (counted in UTF-16 units, as its API description does: an emoji is two)."""
    fake_api.scenario = "multiple_samples"
    final = await first_result(fake_discord, samples=2)
    fake_api.scenario = "success"
    job = job_id_of(final)
    assert [f.description for f in final.results] == [
        f"New picture {n} of 2, painted over the depth and layout of a member's picture, for the prompt: a red barn"
        for n in (1, 2)
    ]
    shown = await settle(fake_discord, await fake_discord.click(final, f"d2i:compare:{job}", user_id=OTHER))
    assert shown.files[0].description == (
        "Before and after, side by side: the member's picture on the left, the new one on the right. "
        "Prompt: a red barn"
    )
    again = await settle(
        fake_discord, await fake_discord.invoke_slash("depth2img-show", {"picture": job}, user_id=OTHER)
    )
    assert again.files[0].description.endswith("for the prompt: a red barn")
    _, long = await slash(fake_discord, {"prompt": "🌲" * 1000}, user_id=MEMBER)  # 2,000 UTF-16 units
    (alt,) = [f.description for f in long.results]
    assert alt.endswith("🌲…") and len(alt.encode("utf-16-le")) == 2 * 1024
    assert_clean(fake_discord, fake_api)


async def test_new_seed_makes_a_new_job_from_the_same_source(bot, fake_discord, fake_api):
    final = await first_result(fake_discord)
    parent = job_id_of(final)
    record = await fake_discord.click(final, f"d2i:seed:{parent}", user_id=MEMBER)
    child = await settle(fake_discord, record)
    assert record.ack_type == 5  # a new "thinking…" message, not an edit of the first result
    assert child.id != final.id and child.results
    assert f"Made from the source picture of `{parent}`" in (await details_of(fake_discord, child)).content
    first, second = (s.body for s in fake_api.submissions)
    assert second["seed"] != first["seed"] == 11
    assert second["prompt"] == first["prompt"]
    assert second["strength"] == first["strength"]
    assert fake_discord.messages[final.id].results  # the first result is untouched
    assert_clean(fake_discord, fake_api)


async def test_closer_and_more_creative_move_the_strength(bot, fake_discord, fake_api):
    final = await first_result(fake_discord)
    parent = job_id_of(final)
    for action, expected in (("closer", 0.45), ("more", 0.75)):
        record = await fake_discord.click(final, f"d2i:{action}:{parent}", user_id=MEMBER)
        assert (await settle(fake_discord, record)).results
        assert fake_api.submissions[-1].body["strength"] == expected
    assert_clean(fake_discord, fake_api)


async def test_use_as_source_sends_the_result_as_the_new_input(bot, fake_discord, fake_api):
    final = await first_result(fake_discord)
    record = await fake_discord.click(final, f"d2i:reuse:{job_id_of(final)}", user_id=MEMBER)
    assert (await settle(fake_discord, record)).results
    (upload,) = fake_api.uploads  # the kept result is uploaded: no Discord link involved
    raw = base64.b64decode(upload.body["base64_string"].split(",", 1)[1])
    assert raw == fake_api.output_png
    assert fake_api.submissions[-1].body["init_image"].endswith(".png")
    assert_clean(fake_discord, fake_api)


async def test_edit_prompt_opens_a_prefilled_modal_and_keeps_the_source(bot, fake_discord, fake_api):
    final = await first_result(fake_discord, negative_prompt="fog")
    parent = job_id_of(final)
    record = await fake_discord.click(final, f"d2i:edit:{parent}", user_id=MEMBER)
    await fake_discord.wait_for(lambda: record.modal is not None)
    fields = {c["custom_id"]: c for row in record.modal["components"] for c in row["components"]}
    assert fields["prompt"]["value"] == "a red barn"
    assert fields["negative_prompt"]["value"] == "fog"
    submit = await fake_discord.submit_modal(record.modal, {"prompt": "a blue barn at night"}, user_id=MEMBER)
    child = await settle(fake_discord, submit)
    assert child.results
    body = fake_api.submissions[-1].body
    assert body["prompt"] == "a blue barn at night"
    assert body["negative_prompt"] == "fog"
    (upload,) = fake_api.uploads  # the kept source picture, as the member first sent it
    assert base64.b64decode(upload.body["base64_string"].split(",", 1)[1]) == make_png()
    assert f"Made from the source picture of `{parent}`" in (await details_of(fake_discord, child)).content
    assert_clean(fake_discord, fake_api)


async def test_an_edit_form_opened_before_a_restart_is_answered_after_it(start_bot, fake_discord, fake_api):
    first_bot = await start_bot()
    final = await first_result(fake_discord)
    record = await fake_discord.click(final, f"d2i:edit:{job_id_of(final)}", user_id=MEMBER)
    await fake_discord.wait_for(lambda: record.modal is not None)
    await first_bot.close()
    fake_discord.identified.clear()
    await start_bot()  # nothing of the form is in memory now: only its custom id says what it is for
    submit = await fake_discord.submit_modal(record.modal, {"prompt": "a barn in snow"}, user_id=MEMBER)
    child = await settle(fake_discord, submit)
    assert child.results
    assert fake_api.submissions[-1].body["prompt"] == "a barn in snow"
    assert_clean(fake_discord, fake_api)


async def test_forms_the_member_closed_leave_nothing_behind(bot, fake_discord, fake_api):
    from cogs.depth2img.ui.components import PromptModal

    final = await first_result(fake_discord)
    posted = fake_discord.post_user_message("look", [(make_png(320, 240), "a.png", "image/png")])
    for _ in range(3):  # opened, then closed without submitting: Discord tells the bot nothing
        edit = await fake_discord.click(final, f"d2i:edit:{job_id_of(final)}", user_id=MEMBER)
        menu = await fake_discord.invoke_message_command("Depth to image", posted, user_id=MEMBER)
        await fake_discord.wait_for(lambda e=edit, m=menu: e.modal is not None and m.modal is not None)
    await fake_discord.wait_until_idle()
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, PromptModal)] == []
    # and a closed form is still answered if it is submitted after all
    submit = await fake_discord.submit_modal(menu.modal, {"prompt": "in the rain"}, user_id=MEMBER)
    assert (await settle(fake_discord, submit)).results
    assert_clean(fake_discord, fake_api)


async def test_only_the_requester_or_a_moderator_can_delete(bot, fake_discord, fake_api):
    final = await first_result(fake_discord)
    delete = f"d2i:delete:{job_id_of(final)}"
    refused = await settle(fake_discord, await fake_discord.click(final, delete, user_id=OTHER))
    assert refused.ephemeral and "Only the member who asked" in refused.content
    assert not final.deleted
    await fake_discord.click(final, delete, user_id=OTHER, permissions=MANAGE_MESSAGES)
    await fake_discord.wait_for(lambda: final.deleted)
    second = await first_result(fake_discord)
    await fake_discord.click(second, f"d2i:delete:{job_id_of(second)}", user_id=MEMBER)
    await fake_discord.wait_for(lambda: second.deleted)
    assert fake_discord.deleted_by_bot == [final.id, second.id]
    assert_clean(fake_discord, fake_api)


async def test_buttons_work_after_a_restart(start_bot, fake_discord, fake_api):
    first_bot = await start_bot()
    final = await first_result(fake_discord)
    await first_bot.close()
    fake_discord.identified.clear()
    await start_bot()  # a new process would look the same: nothing in memory, the ledger on disk
    record = await fake_discord.click(final, f"d2i:closer:{job_id_of(final)}", user_id=MEMBER)
    child = await settle(fake_discord, record)
    assert child.results
    assert fake_api.submissions[-1].body["strength"] == 0.45
    assert_clean(fake_discord, fake_api)


async def test_progress_is_throttled_and_cancel_works_for_the_requester_only(
    start_bot, fake_discord, fake_api
):
    await start_bot(PROGRESS_INTERVAL_S="0.3")
    fake_api.scenario = "queued"
    fake_api.eta_s = 0.01
    fake_api.polls_before_done = 10**6
    record = await fake_discord.invoke_slash(
        "depth2img",
        {"image": fake_discord.add_attachment(make_png(), "p.png"), "prompt": "slow"},
        user_id=MEMBER,
    )
    await fake_discord.wait_for(lambda: len(fake_api.fetches) >= 1)
    await asyncio.sleep(1.5)  # ~100 polls happen meanwhile
    progress = fake_discord.visible_messages(record)[0]
    polls = len(fake_api.fetches)
    edits = len(progress.history)
    assert polls > 20
    assert 2 <= edits <= 1.5 / 0.3 + 2  # at most one edit per interval, however many polls
    assert progress.history[0].startswith("⏳ Queued at the image service — expected <t:")
    assert (
        progress.content == "⏳ Queued at the image service…"
    )  # the estimate has passed: no stale time shown
    cancel = f"d2i:cancel:{job_id_of(progress)}"
    refused = await settle(fake_discord, await fake_discord.click(progress, cancel, user_id=OTHER))
    assert refused.ephemeral
    await fake_discord.click(progress, cancel, user_id=MEMBER)
    await fake_discord.wait_for(lambda: progress.content.startswith("🛑 Cancelled"))
    await fake_discord.wait_until_idle()
    assert progress.components == []
    assert "credits may have been spent" in progress.content  # it had reached the API
    stopped_at = len(fake_api.fetches)
    await fake_discord.wait_until_idle()
    assert len(fake_api.fetches) == stopped_at  # polling stopped
    assert_clean(fake_discord, fake_api)


async def test_context_menu_runs_the_job_on_a_message_picture(bot, fake_discord, fake_api):
    cmd = fake_discord.command("Depth to image")
    assert cmd["type"] == 3
    posted = fake_discord.post_user_message(
        "look at this", [(make_png(320, 240), "holiday.png", "image/png")]
    )
    record = await fake_discord.invoke_message_command("Depth to image", posted, user_id=MEMBER)
    await fake_discord.wait_for(lambda: record.modal is not None)
    submit = await fake_discord.submit_modal(record.modal, {"prompt": "as a watercolour"}, user_id=MEMBER)
    final = await settle(fake_discord, submit)
    assert final.results
    body = fake_api.submissions[0].body
    assert body["prompt"] == "as a watercolour"
    assert body["init_image"].startswith(fake_discord.base_url + "/attachments/")
    assert not posted.deleted
    assert_clean(fake_discord, fake_api)


async def test_context_menu_on_a_message_without_a_picture(bot, fake_discord, fake_api):
    posted = fake_discord.post_user_message("no picture here", [])
    record = await fake_discord.invoke_message_command("Depth to image", posted, user_id=MEMBER)
    final = await settle(fake_discord, record)
    assert final.ephemeral and "no picture" in final.content
    assert fake_api.submissions == []


async def test_show_history_and_forget_me(bot, fake_discord, fake_api):
    final = await first_result(fake_discord)
    job = job_id_of(final)
    shown = await settle(
        fake_discord, await fake_discord.invoke_slash("depth2img-show", {"picture": job}, user_id=OTHER)
    )
    assert shown.results, shown.content
    assert shown.results[0].data == fake_api.output_png
    assert f"d2i:seed:{job}" in [c["custom_id"] for row in shown.components for c in row["components"]]
    history = await settle(
        fake_discord, await fake_discord.invoke_slash("depth2img-history", {}, user_id=MEMBER)
    )
    assert history.ephemeral and f"`{job}` · delivered" in history.content
    gone = await settle(
        fake_discord, await fake_discord.invoke_slash("depth2img-forget-me", {}, user_id=MEMBER)
    )
    assert gone.ephemeral and "deleted 1 request of yours" in gone.content
    missing = await settle(
        fake_discord, await fake_discord.invoke_slash("depth2img-show", {"picture": job}, user_id=MEMBER)
    )
    assert missing.ephemeral and "No delivered picture" in missing.content
    button = await settle(fake_discord, await fake_discord.click(final, f"d2i:seed:{job}", user_id=MEMBER))
    assert button.ephemeral and "no longer stored" in button.content
    assert len(fake_api.submissions) == 1
    assert_clean(fake_discord, fake_api)


def _buttons(msg: FakeMessage) -> list[str]:
    return [c["custom_id"] for row in msg.components for c in row["components"]]


async def _show(fake_discord: FakeDiscord, job: str, user: int, **where) -> FakeMessage:
    return await settle(
        fake_discord,
        await fake_discord.invoke_slash("depth2img-show", {"picture": job}, user_id=user, **where),
    )


async def test_a_deleted_result_comes_back_only_to_its_requester_privately(bot, fake_discord, fake_api):
    """Deleted with its Delete button (by its requester, or a moderator), or from Discord's own menu by
    a moderator: /depth2img-show then refuses anyone else, and shows it to its requester privately,
    with no Delete button (there is nothing in the channel to delete)."""
    for how in ("button", "moderator outside the bot"):
        final = await first_result(fake_discord)
        job = job_id_of(final)
        if how == "button":
            await fake_discord.click(final, f"d2i:delete:{job}", user_id=OTHER, permissions=MANAGE_MESSAGES)
            await fake_discord.wait_for(lambda f=final: f.deleted)
        else:
            final.deleted = True  # a moderator deleted it in Discord's own menu: the bot was not told
        refused = await _show(fake_discord, job, OTHER)
        assert refused.ephemeral and refused.results == []
        assert "deleted" in refused.content
        private = await _show(fake_discord, job, MEMBER)
        assert private.ephemeral and len(private.results) == 1, how
        assert f"d2i:delete:{job}" not in _buttons(private)
        assert f"d2i:seed:{job}" in _buttons(private)
    assert_clean(fake_discord, fake_api)


async def test_an_age_restricted_result_is_shown_only_in_an_age_restricted_channel(
    bot, fake_discord, fake_api
):
    _, final = await slash(fake_discord, {"prompt": "night scene"}, user_id=MEMBER, channel_nsfw=True)
    job = job_id_of(final)
    refused = await _show(fake_discord, job, OTHER)  # in an ordinary channel
    assert refused.ephemeral and refused.results == []
    assert "age-restricted channel" in refused.content
    refused_too = await _show(fake_discord, job, MEMBER)  # its requester included
    assert refused_too.ephemeral and refused_too.results == []
    shown = await _show(fake_discord, job, OTHER, channel_nsfw=True)
    assert not shown.ephemeral and len(shown.results) == 1
    assert_clean(fake_discord, fake_api)


async def test_a_result_whose_channel_stopped_being_age_restricted_is_kept_not_shown_there(
    bot, fake_discord, fake_api
):
    """A moderator turns the channel's "Age-Restricted Channel" setting off while the job runs
    (Discord sends CHANNEL_UPDATE): the picture asked for there is not shown in the channel, as
    /depth2img-show would not show it there. The job's message says why, and that it is kept; the
    member brings it back with /depth2img-show in an age-restricted channel. (Before: shown there.)"""
    fake_api.latency_s = 1.0
    picture = fake_discord.add_attachment(make_png(), "a.png")
    record = await fake_discord.invoke_slash(
        "depth2img", {"image": picture, "prompt": "night scene"}, user_id=MEMBER, channel_nsfw=True
    )
    await fake_discord.wait_for(lambda: bool(fake_api.submissions), timeout=10)
    await fake_discord.set_age_restricted(fake_discord.nsfw_channel_id, False)
    final = await settle(fake_discord, record)
    assert final.results == [] and final.components == []
    assert "no longer age-restricted" in final.content and "is kept" in final.content
    assert fake_discord.channel_messages == []
    job = final.content.split("`/depth2img-show picture:")[1].split("`")[0]
    assert f"your picture `{job}` is ready" in final.content
    refused = await _show(fake_discord, job, MEMBER, channel_nsfw=True)  # (the channel is not, now)
    assert refused.ephemeral and refused.results == []
    await fake_discord.set_age_restricted(fake_discord.nsfw_channel_id, True)
    shown = await _show(fake_discord, job, MEMBER, channel_nsfw=True)
    assert not shown.ephemeral and len(shown.results) == 1
    assert len(fake_api.submissions) == 1
    assert_clean(fake_discord, fake_api)


async def test_a_finished_request_leaves_no_reference_cycle_behind(bot, fake_discord, fake_api):
    """discord.py's interaction and its cached response refer to each other, and so do a view and its
    buttons: left as they are, every request's interaction (with its member, user, namespace and
    attachment) and every result's view stay in memory until the garbage collector's next full pass,
    which then pauses the bot to free a whole burst's. Once a request is over, nothing of it is left
    to the collector: the command, a progress line with its Cancel button, a result with its buttons,
    and a job started from a result's button."""
    fake_api.scenario = "queued"
    fake_api.eta_s = 0.2
    await first_result(fake_discord)  # first-time objects (imports, caches) are not the request's
    await fake_discord.wait_until_idle(quiet_s=0.2)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds from here is kept in gc.garbage
    try:
        final = await first_result(fake_discord)
        assert any(h.startswith("⏳") for h in final.history)  # (it had a progress line)
        pressed = await fake_discord.click(final, f"d2i:seed:{job_id_of(final)}", user_id=MEMBER)
        assert (await settle(fake_discord, pressed)).results
        await fake_discord.wait_until_idle(quiet_s=0.2)
        gc.collect()
        kinds = (discord.Interaction, discord.InteractionResponse, discord.ui.View, discord.ui.Item)
        left = sorted({type(o).__qualname__ for o in gc.garbage if isinstance(o, kinds)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == [], left
