"""The fake Discord is as strict as Discord: a planted bad request of each kind is refused, as Discord
would refuse it, and recorded as a violation (so any test whose bot sent it fails). Checked against
Discord's OpenAPI description (tests/fakes/discord_spec.py) and the documented rules it does not encode
(tests/fakes/discord_rules.py)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.fakes.fake_discord import FakeDiscord

CALLBACK = "/interactions/1234/tok/callback?with_response=true"
EDIT = "/webhooks/1/tok/messages/@original"
COMMANDS = "/applications/1/commands"


def button(custom_id: str = "a", label: str = "Go", style: int = 1) -> dict[str, Any]:
    return {"type": 2, "style": style, "label": label, "custom_id": custom_id}


def row(*items: dict[str, Any]) -> dict[str, Any]:
    return {"type": 1, "components": list(items)}


def command(**changes: Any) -> dict[str, Any]:
    cmd = {"name": "depth2img", "description": "Repaint a picture", "type": 1, "options": []}
    cmd.update(changes)
    return cmd


def option(name: str = "prompt", **changes: Any) -> dict[str, Any]:
    opt = {"name": name, "description": "What to paint", "type": 3, "required": True}
    opt.update(changes)
    return opt


def text_input(custom_id: str = "p", label: str = "Prompt") -> dict[str, Any]:
    return row({"type": 4, "custom_id": custom_id, "label": label, "style": 1})


def modal(**changes: Any) -> dict[str, Any]:
    data = {"custom_id": "d2i:menu:abc", "title": "Depth to image", "components": [text_input()]}
    data.update(changes)
    return {"type": 9, "data": data}


# (what, method, path, body, a fragment of the recorded violation)
PLANTED: list[tuple[str, str, str, Any, str]] = [
    # --- against the OpenAPI description -------------------------------------------------------------
    ("no such route", "GET", "/users/@me/nonsense", None, "no route"),
    (
        "unknown query parameter",
        "POST",
        "/interactions/1/tok/callback?with_respons=1",
        {"type": 5},
        "with_respons",
    ),
    ("unknown callback type", "POST", CALLBACK, {"type": 42}, "Invalid input"),
    ("content of the wrong type", "PATCH", EDIT, {"content": 12}, "content"),
    ("button style out of range", "PATCH", EDIT, {"components": [row(button(style=9))]}, "components.0"),
    ("command option type unknown", "PUT", COMMANDS, [command(options=[option(type=99)])], "options"),
    ("command name too long (spec)", "PUT", COMMANDS, [command(name="x" * 33)], "name"),
    # --- the documented rules the description does not encode -----------------------------------------
    ("content over 2000", "PATCH", EDIT, {"content": "x" * 2001}, "at most 2000"),
    ("six rows of buttons", "PATCH", EDIT, {"components": [row(button(f"b{n}")) for n in range(6)]}, "rows"),
    (
        "six buttons in a row",
        "PATCH",
        EDIT,
        {"components": [row(*(button(f"b{n}") for n in range(6)))]},
        "components.0",
    ),
    ("custom ids not unique", "PATCH", EDIT, {"components": [row(button("same"), button("same"))]}, "unique"),
    ("custom id of 101", "PATCH", EDIT, {"components": [row(button("c" * 101))]}, "custom_id"),
    ("button label of 81", "PATCH", EDIT, {"components": [row(button(label="l" * 81))]}, "label"),
    (
        "link button with a custom id",
        "PATCH",
        EDIT,
        {"components": [row(button(style=5) | {"url": "https://x.y"})]},
        "link button",
    ),
    (
        "mentions both parsed and listed",
        "PATCH",
        EDIT,
        {"content": "hi", "allowed_mentions": {"parse": ["users"], "users": ["1"]}},
        "mutually exclusive",
    ),
    ("modal title of 46", "POST", CALLBACK, modal(title="t" * 46), "title"),
    (
        "modal of six rows",
        "POST",
        CALLBACK,
        modal(components=[text_input(f"p{n}") for n in range(6)]),
        "rows",
    ),
    (
        "modal text input label of 46",
        "POST",
        CALLBACK,
        modal(components=[text_input(label="l" * 46)]),
        "label",
    ),
    ("command name in capitals", "PUT", COMMANDS, [command(name="Depth2img")], "lower-case"),
    ("command description empty", "PUT", COMMANDS, [command(description="")], "description"),
    (
        "localization of an unknown locale",
        "PUT",
        COMMANDS,
        [command(name_localizations={"en": "depth"})],
        "locales",
    ),
    (
        "localized description of 101",
        "PUT",
        COMMANDS,
        [command(description_localizations={"fr": "d" * 101})],
        "description_localizations",
    ),
    (
        "26 choices",
        "PUT",
        COMMANDS,
        [command(options=[option(choices=[{"name": f"c{n}", "value": f"v{n}"} for n in range(26)])])],
        "choices",
    ),
    (
        "required after optional",
        "PUT",
        COMMANDS,
        [command(options=[option("a", required=False), option("b")])],
        "before optional",
    ),
    (
        "sub-command mixed with options",
        "PUT",
        COMMANDS,
        [command(options=[option("sub", type=1, required=None), option("x")])],
        "mixed",
    ),
    (
        "context menu with a description",
        "PUT",
        COMMANDS,
        [{"name": "Depth to image", "type": 3, "description": "no"}],
        "context-menu",
    ),
    ("option names not unique", "PUT", COMMANDS, [command(options=[option("a"), option("a")])], "unique"),
    ("history of 101 messages", "GET", "/channels/1/messages?limit=101", None, "limit"),
    ("history before and after", "GET", "/channels/1/messages?before=5&after=2", None, "exclusive"),
]


@pytest.fixture
async def fake() -> Any:
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.stop()


async def send(fake: FakeDiscord, method: str, path: str, body: Any) -> int:
    headers = {"Authorization": f"Bot {fake.token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, fake.api_base + path, json=body, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


@pytest.mark.parametrize(("what", "method", "path", "body", "fragment"), PLANTED, ids=[p[0] for p in PLANTED])
async def test_a_planted_bad_request_is_refused_and_recorded(fake, what, method, path, body, fragment):
    status = await send(fake, method, path, body)
    assert status in (400, 404), what
    (violation,) = fake.violations
    assert fragment in violation, violation
    fake.violations.clear()  # (this fake is not the suite's: nothing else reads it)


async def test_what_discord_accepts_passes(fake):
    """The same routes with what Discord accepts (discord.py's own habits included: a snowflake as a
    number, fields Discord ignores) are not refused by the check."""
    good: list[tuple[str, str, Any]] = [
        ("POST", CALLBACK, modal()),
        ("PUT", COMMANDS, [command(options=[option(), option("seed", type=4, required=False)], nsfw=False)]),
        (
            "PATCH",
            EDIT,
            {
                "content": "x" * 2000,
                "tts": False,
                "components": [row(*(button(f"b{n}") for n in range(5)))],
                "attachments": [{"id": 0, "filename": "a.png"}],
            },
        ),
    ]
    for method, path, body in good:
        await send(fake, method, path, body)
    assert [v for v in fake.violations if v.startswith("refused by")] == []


async def test_a_channel_history_reads_as_discord_serves_it(fake):
    """Get Channel Messages: newest first; with ``after``, the messages right after it, oldest taken
    first; nothing without Read Message History; 403 without View Channel."""
    from tests.fakes.fake_discord import READ_MESSAGE_HISTORY, VIEW_CHANNEL

    made = [fake.post_user_message(f"m{n}", []).id for n in range(5)]
    headers = {"Authorization": f"Bot {fake.token}"}

    async def read(query: str) -> tuple[int, Any]:
        url = f"{fake.api_base}/channels/{fake.channel_id}/messages{query}"
        async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
            return resp.status, await resp.json()

    status, got = await read(f"?after={made[0]}&limit=2")
    assert status == 200
    assert [int(m["id"]) for m in got] == [made[2], made[1]]
    assert [int(m["id"]) for m in (await read("?limit=2"))[1]] == [made[4], made[3]]
    assert [int(m["id"]) for m in (await read(f"?before={made[4]}"))[1]] == made[3::-1]
    fake.deny(fake.channel_id, READ_MESSAGE_HISTORY)
    assert await read("") == (200, [])
    fake.deny(fake.channel_id, VIEW_CHANNEL)
    assert (await read(""))[0] == 403
    assert fake.violations == []
