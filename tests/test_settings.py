"""/depth2img-settings: only for Manage Server, stored in the ledger, applied at once, kept across restarts."""

from __future__ import annotations

from tests.conftest import slash
from tests.fakes.fake_discord import MANAGE_GUILD, MEMBER_PERMISSIONS, FakeDiscord
from tests.test_e2e import assert_clean
from tests.test_iterate import settle

ADMIN = MEMBER_PERMISSIONS | MANAGE_GUILD


async def configure(fake: FakeDiscord, sub: str, options: dict, *, permissions: int = ADMIN):
    record = await fake.invoke_slash("depth2img-settings", options, subcommand=sub, permissions=permissions)
    return await settle(fake, record)


async def test_settings_command_is_for_managers_only(bot, fake_discord, fake_api):
    cmd = fake_discord.command("depth2img-settings")
    assert str(cmd["default_member_permissions"]) == str(MANAGE_GUILD)
    assert {o["name"] for o in cmd["options"]} == {
        "show",
        "channel",
        "role",
        "limits",
        "content",
        "card",
        "reset",
    }
    # an admin can grant the command to anyone in Discord's integration settings: the bot checks again
    refused = await configure(fake_discord, "limits", {"daily_quota": 1}, permissions=MEMBER_PERMISSIONS)
    assert refused.ephemeral and "Manage Server" in refused.content
    shown = await configure(fake_discord, "show", {})
    assert shown.ephemeral and "no daily limit" in shown.content  # unchanged
    assert "You can view" not in shown.content
    # a member the command was granted to may look: they are told they can view, not refused
    viewed = await configure(fake_discord, "show", {}, permissions=MEMBER_PERMISSIONS)
    assert viewed.ephemeral and "no daily limit" in viewed.content
    assert (
        "You can view these settings; members with the Manage Server permission can change them."
        in viewed.content
    )
    assert_clean(fake_discord, fake_api)


async def test_show_tells_the_limits_the_owner_set_for_every_server(start_bot, fake_discord, fake_api):
    await start_bot(SD_GUILD_DAILY_QUOTA="1", SD_MEMBER_DAILY_QUOTA="20", SD_BOT_DAILY_QUOTA="1000")
    shown = await configure(fake_discord, "show", {})
    assert "**Set by the bot's owner, for every server**" in shown.content
    assert "• This server: at most 1 request a day" in shown.content  # (one: no "1 requests")
    assert "• Each member: at most 20 pictures a day" in shown.content
    assert "• The bot as a whole: at most 1,000 pictures a day, across every server" in shown.content


async def test_channels_allowed(bot, fake_discord, fake_api):
    summary = await configure(
        fake_discord, "channel", {"channel": fake_discord.other_channel_id, "allowed": True}
    )
    assert f"<#{fake_discord.other_channel_id}>" in summary.content
    _, refused = await slash(fake_discord, {"prompt": "x"})
    assert refused.ephemeral and f"only in <#{fake_discord.other_channel_id}>" in refused.content
    _, ok = await slash(fake_discord, {"prompt": "x"}, channel_id=fake_discord.other_channel_id)
    assert ok.results
    _, admin = await slash(fake_discord, {"prompt": "x"}, permissions=ADMIN)
    assert admin.results  # Manage Server may use it anywhere
    assert len(fake_api.submissions) == 2
    assert_clean(fake_discord, fake_api)


async def test_roles_allowed(bot, fake_discord, fake_api):
    await configure(fake_discord, "role", {"role": fake_discord.artist_role_id, "allowed": True})
    _, refused = await slash(fake_discord, {"prompt": "x"})
    assert refused.ephemeral and "only for some roles" in refused.content
    _, ok = await slash(fake_discord, {"prompt": "x"}, roles=[fake_discord.artist_role_id])
    assert ok.results
    await configure(fake_discord, "role", {"role": fake_discord.artist_role_id, "allowed": False})
    _, again = await slash(fake_discord, {"prompt": "x"})
    assert again.results
    assert len(fake_api.submissions) == 2


async def test_limits_per_member(bot, fake_discord, fake_api):
    summary = await configure(fake_discord, "limits", {"daily_quota": 1, "max_samples": 2, "max_steps": 30})
    assert "1 per member per day" in summary.content
    assert "At most 2 pictures per request and 30 steps" in summary.content
    member = 818181818181818181
    _, too_many = await slash(fake_discord, {"prompt": "x", "samples": 3}, user_id=member)
    assert too_many.ephemeral and "at most 2 pictures" in too_many.content
    _, too_fine = await slash(fake_discord, {"prompt": "x", "steps": 40}, user_id=member)
    assert too_fine.ephemeral and "at most 30 steps" in too_fine.content
    _, first = await slash(fake_discord, {"prompt": "x", "samples": 2}, user_id=member)
    assert len(first.results) == 1  # the fake's default scenario returns one image
    _, second = await slash(fake_discord, {"prompt": "y"}, user_id=member)
    assert second.ephemeral and "your 1 picture for today" in second.content
    _, someone_else = await slash(fake_discord, {"prompt": "z"})
    assert someone_else.results
    assert len(fake_api.submissions) == 2


async def test_content_policy_and_persistence_across_a_restart(start_bot, fake_discord, fake_api):
    first = await start_bot()
    await slash(fake_discord, {"prompt": "a"}, channel_nsfw=True)
    assert fake_api.submissions[-1].body["safety_checker"] == "yes"  # on by default, everywhere
    summary = await configure(fake_discord, "content", {"nsfw_in_age_restricted": True})
    assert "off in age-restricted channels, on everywhere else" in summary.content
    await slash(fake_discord, {"prompt": "b"}, channel_nsfw=True)
    await slash(fake_discord, {"prompt": "c"})
    assert [s.body["safety_checker"] for s in fake_api.submissions] == ["yes", "no", "yes"]
    await first.close()
    fake_discord.identified.clear()
    await start_bot()
    await slash(fake_discord, {"prompt": "d"}, channel_nsfw=True)
    assert fake_api.submissions[-1].body["safety_checker"] == "no"  # stored in the ledger's database
    reset = await configure(fake_discord, "reset", {})
    assert "always on" in reset.content
    assert_clean(fake_discord, fake_api)


async def test_a_thread_is_as_age_restricted_as_its_channel(bot, fake_discord, fake_api):
    """A thread has no age restriction of its own: Discord applies its parent channel's (discord.py's
    Thread.is_nsfw). With the safety checker off in age-restricted channels, a request in a thread of
    one goes without it, one in a thread of an ordinary channel with it; the picture comes back with
    /depth2img-show in an age-restricted channel's thread, not in an ordinary one's. (Before: a thread
    counted as ordinary, whatever its channel.)"""
    from tests.test_iterate import MEMBER, _show, job_id_of

    await configure(fake_discord, "content", {"nsfw_in_age_restricted": True})
    _, final = await slash(
        fake_discord, {"prompt": "a"}, channel_id=fake_discord.nsfw_thread_id, user_id=MEMBER
    )
    assert len(final.results) == 1 and final.channel_id == fake_discord.nsfw_thread_id
    await slash(fake_discord, {"prompt": "b"}, channel_id=fake_discord.thread_id)
    assert [s.body["safety_checker"] for s in fake_api.submissions] == ["no", "yes"]
    job = job_id_of(final)
    refused = await _show(fake_discord, job, MEMBER, channel_id=fake_discord.thread_id)
    assert refused.ephemeral and refused.results == [] and "age-restricted" in refused.content
    shown = await _show(fake_discord, job, MEMBER, channel_id=fake_discord.nsfw_thread_id)
    assert not shown.ephemeral and len(shown.results) == 1
    assert_clean(fake_discord, fake_api)


async def test_the_card_style_is_the_servers_choice(bot, fake_discord, fake_api):
    _, compact = await slash(fake_discord, {"prompt": "a red barn", "seed": 11})
    assert "seed" not in compact.content and any(
        c["custom_id"].startswith("d2i:details:") for row in compact.components for c in row["components"]
    )
    summary = await configure(fake_discord, "card", {"style": "full"})
    assert "• Result card: full" in summary.content
    _, full = await slash(fake_discord, {"prompt": "a red barn", "seed": 11})
    assert "seed `11`" in full.content and "```\n/depth2img prompt:a red barn seed:11\n```" in full.content
    assert not any(
        c["custom_id"].startswith("d2i:details:") for row in full.components for c in row["components"]
    )
    assert_clean(fake_discord, fake_api)
