"""A fake Discord (REST + gateway websocket on 127.0.0.1) that the real, unmodified discord.py
connects to. Built from ``shared/docs/fake-discord.md``; only aiohttp is needed.

Tests inject ``INTERACTION_CREATE`` events with :meth:`FakeDiscord.invoke_slash` and assert on what
the fake received: acknowledgements, messages with their files, edits, deletions. Discord's rules
are enforced the way Discord answers them (status and code), and every breach is also recorded in
:attr:`FakeDiscord.violations` so a test can assert that none happened. Any route the fake does not
know is answered 404 and recorded in :attr:`FakeDiscord.unhandled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.multipart import parse_content_disposition

from tests.fakes.discord_rules import request_problems
from tests.fakes.discord_spec import SpecChecker
from tests.fakes.server import LocalServer

DISCORD_EPOCH_MS = 1420070400000
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
MANAGE_MESSAGES = 1 << 13
MANAGE_GUILD = 1 << 5
VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY = (
    1 << 10,
    1 << 11,
    1 << 14,
    1 << 15,
    1 << 16,
)
# What the bot's role has in every channel unless a test takes some away (``FakeDiscord.deny``).
SEND_MESSAGES_IN_THREADS = 1 << 38  # (in a thread, instead of SEND_MESSAGES: topics/permissions)
BOT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | SEND_MESSAGES_IN_THREADS
)
# GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT: granted to an application in the Developer Portal
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | (1 << 15)
MEMBER_PERMISSIONS = (1 << 11) | (1 << 15) | (1 << 14) | (1 << 31) | (1 << 10)
OPTION_TYPES = {"string": 3, "integer": 4, "boolean": 5, "number": 10, "attachment": 11}


@dataclass
class Limits:
    ack_deadline_s: float = 3.0
    token_ttl_s: float = 15 * 60
    content_max: int = 2000
    files_max: int = 10
    attachment_size_limit: int = 10 * 1024 * 1024
    embeds_max: int = 10


@dataclass
class FakeFile:
    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None  # alt text, from payload_json's "attachments" (max 1024: the spec)


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    content: str = ""
    files: list[FakeFile] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    interaction_id: int | None = None
    deleted: bool = False
    edits: int = 0
    pings: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    author: dict[str, Any] | None = None  # None: the bot
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def results(self) -> list[FakeFile]:
        """The generated pictures among the files (not the before | after view)."""
        return [f for f in self.files if not f.filename.startswith("before-after")]

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)


@dataclass
class InteractionRecord:
    id: int
    token: str
    user_id: int
    payload: dict[str, Any]
    sent_at: float
    acked_at: float | None = None
    ack_type: int | None = None
    original_id: int | None = None
    message_ids: list[int] = field(default_factory=list)
    callback_attempts: int = 0
    created_at: float = 0.0  # unix time, as its id says: its token lives 15 minutes from here
    modal: dict[str, Any] | None = None
    source_message_id: int | None = None  # the message whose component or menu was used


def _snowflake(at_s: float, counter: itertools.count[int]) -> int:
    return ((int(at_s * 1000) - DISCORD_EPOCH_MS) << 22) | (next(counter) & 0x3FFFFF)


def _iso(at_s: float) -> str:
    return dt.datetime.fromtimestamp(at_s, tz=dt.UTC).isoformat()


# What a rate limit's body says as its ``retry_after`` (see FakeDiscord.rate_limit): the true wait, or nothing
THE_WAIT = object()
LEFT_OUT = object()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py compares the content type exactly with "application/json" (no charset).
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    return web.Response(body=json.dumps(data).encode(), status=status, headers=hdrs)


def _parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, Any], list[FakeFile]]:
    """A multipart/form-data message body: its ``payload_json`` and its ``files[n]`` parts. Split with
    bytes.find, not aiohttp's part reader: the benchmark's fake receives hundreds of megabytes of
    uploads, and must not take the CPU the bot under test needs."""
    _, params = parse_content_disposition(content_type.replace("multipart/form-data", "form-data", 1))
    boundary = params.get("boundary", "").strip('"')
    if not boundary:
        raise web.HTTPBadRequest(text="multipart without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    payload: dict[str, Any] = {}
    files: list[FakeFile] = []
    pos = body.find(delimiter)
    while pos >= 0:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            break  # the closing delimiter
        head_end = body.find(b"\r\n\r\n", pos)
        end = body.find(b"\r\n" + delimiter, head_end)
        if head_end < 0 or end < 0:
            raise web.HTTPBadRequest(text="malformed multipart body")
        headers = {}
        for line in body[pos:head_end].decode("utf-8").split("\r\n"):
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        _, disposition = parse_content_disposition(headers.get("content-disposition"))
        data = body[head_end + 4 : end]
        name = disposition.get("name", "")
        if name == "payload_json":
            payload = json.loads(data)
        elif name.startswith("files["):
            index = int(name[6:-1])
            files.append(
                FakeFile(id=index, filename=disposition.get("filename") or f"file{index}", data=data)
            )
        pos = end + 2
    # Discord's "Uploading Files": the "attachments" of payload_json (of its "data" in an interaction's
    # response) describe the files[n] parts by id n
    body = payload.get("data") if isinstance(payload.get("data"), dict) else payload
    described = {
        str(a.get("id")): a.get("description") for a in body.get("attachments") or [] if isinstance(a, dict)
    }
    for f in files:
        f.description = described.get(str(f.id))
    return payload, files


def _error(status: int, code: int, message: str, errors: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    return _json(body, status)


_MENTION_USER = re.compile(r"<@!?(\d+)>")
_MENTION_ROLE = re.compile(r"<@&(\d+)>")


def pings_for(content: str, allowed: dict[str, Any] | None) -> list[str]:
    """Which mentions in ``content`` would really notify someone, given ``allowed_mentions``."""
    parse = {"everyone", "users", "roles"} if allowed is None else set(allowed.get("parse", []))
    users = {str(u) for u in (allowed or {}).get("users", [])}
    roles = {str(r) for r in (allowed or {}).get("roles", [])}
    found: list[str] = []
    if "everyone" in parse:
        found += [m.group(0) for m in re.finditer(r"@(everyone|here)", content)]
    for m in _MENTION_USER.finditer(content):
        if "users" in parse or m.group(1) in users:
            found.append(m.group(0))
    for m in _MENTION_ROLE.finditer(content):
        if "roles" in parse or m.group(1) in roles:
            found.append(m.group(0))
    return found


class FakeDiscord(LocalServer):
    """Start with ``await fake.start()``; point discord.py at :attr:`api_base` and :attr:`gateway_url`."""

    def __init__(
        self, *, token: str = "fake-bot-token", limits: Limits | None = None, check_spec: bool = True
    ) -> None:
        """``check_spec``: check every request against Discord's OpenAPI description and documented
        rules (the benchmark turns it off: its timings are taken in this process)."""
        super().__init__()
        self.token = token
        self.spec = SpecChecker.shared() if check_spec else None
        self.limits = limits or Limits()
        self._ids = itertools.count(1)
        now = time.time()
        self.app_id = _snowflake(now - 86400 * 400, self._ids)
        self.bot_user_id = self.app_id
        self.guild_id = _snowflake(now - 86400 * 300, self._ids)
        # a second server, on the other shard when the bot runs two (shard = (id >> 22) % count)
        self.second_guild_id = self.guild_id + (1 << 22)
        self.channel_id = _snowflake(now - 86400 * 299, self._ids)
        self.nsfw_channel_id = _snowflake(now - 86400 * 298, self._ids)
        self.other_channel_id = _snowflake(now - 86400 * 297, self._ids)
        # whether each channel is age-restricted ("nsfw"); changed with :meth:`set_age_restricted`
        self.age_restricted = {
            self.channel_id: False,
            self.nsfw_channel_id: True,
            self.other_channel_id: False,
        }
        # active public threads, each in a channel above: thread id → its parent channel's id. A thread
        # has no age restriction of its own: it is its parent's (discord.py's Thread.is_nsfw)
        self.thread_id = _snowflake(now - 86400 * 290, self._ids)
        self.nsfw_thread_id = _snowflake(now - 86400 * 289, self._ids)
        self.threads = {self.thread_id: self.channel_id, self.nsfw_thread_id: self.nsfw_channel_id}
        self.artist_role_id = _snowflake(now - 86400 * 296, self._ids)
        self.owner_id = _snowflake(now - 86400 * 500, self._ids)
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.sync_calls: list[int | None] = []
        self.interactions: dict[int, InteractionRecord] = {}
        self._by_token: dict[str, InteractionRecord] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.cdn: dict[str, tuple[bytes, str]] = {}
        self.violations: list[str] = []
        self.expected_violations: list[str] = []  # prefixes of violations a test provokes on purpose
        self.granted_intents = 0  # privileged intents the application was granted (none)
        self._denied: dict[int, int] = {}  # channel id -> permissions the bot lacks there
        self.refusals: list[str] = []  # 403s Discord gave the bot (not rule breaches: Discord's answer)
        self._limits_next: dict[str, tuple[int, float]] = {}  # route kind -> (times, retry_after)
        self._limited_until: dict[tuple[str, str], float] = {}  # (kind, method) -> until (monotonic)
        self._limit_said: dict[str, object] = {}  # (see rate_limit)
        self.last_request_at = time.monotonic()  # the bot's latest REST or CDN request
        self.busy_probe: Callable[[], Awaitable[bool]] | None = None  # (see wait_until_idle)
        self.unhandled: list[str] = []
        self.identifies: list[dict[str, Any]] = []
        self.channel_messages: list[int] = []
        # channel posts whose connection breaks: "request" (dropped unread) or "answer" (posted, then
        # the answer is lost), or "hang" (posted, then never answered until the bot hangs up), one per
        # post
        self.lose_next_posts: list[str] = []
        # Create Message's ``nonce`` with ``enforce_nonce``: "checked for uniqueness in the past few
        # minutes. If another message was created by the same author with the same nonce, that message
        # will be returned and no new message will be created."
        # (https://discord.com/developers/docs/resources/message#create-message). "A few minutes" is
        # not a promise of more: the fake keeps a nonce for 2.
        self.nonce_window_s = 120.0
        # answer this many channel posts with ``post_failure`` (503: "Service Unavailable", which
        # discord.py's HTTP client does not try again, unlike 500, 502, 504 and 524)
        self.fail_next_posts = 0
        self.post_failure: tuple[int, int, str] = (503, 0, "Service Unavailable")
        self._nonces: dict[str, tuple[float, int]] = {}  # nonce -> (monotonic time, message id)
        self.deleted_by_bot: list[int] = []
        self.fail_next_edits = 0  # answer this many message edits with ``edit_failure``
        # 403 Missing Permissions; or e.g. 503, which discord.py does not retry: a DiscordServerError
        self.edit_failure: tuple[int, int, str] = (403, 50013, "Missing Permissions")
        self.cdn_fetches: list[tuple[float, str]] = []  # (monotonic time, path) of every attachment download
        self.cdn_stalled: set[str] = set()  # attachment paths whose download starts, then never ends
        # attachment paths whose download never ends either, but at full speed: the picture, then
        # zeros until the bot hangs up (no Content-Length), plain or gzip-encoded (a hostile CDN)
        self.cdn_endless: dict[str, str] = {}  # path -> "identity" or "gzip"
        self.cdn_sent: dict[str, int] = {}  # path -> bytes sent on the wire in endless downloads
        self._dm_channels: dict[int, int] = {}
        # awaited before an interaction callback is answered (after it is recorded): lets a test
        # hold one member's acknowledgement in flight while others go through
        self.callback_gate: Callable[[InteractionRecord], Awaitable[None]] | None = None
        self.drop_callback_answers = 0  # acknowledgements taken whose answer is then lost
        self.drop_callback_requests = 0  # acknowledgements whose connection breaks before Discord reads them
        # edits with files (a result) whose connection breaks: "request" (dropped unread: nothing
        # changes) or "answer" (applied, then the answer is lost); or "garbled" / "html" (applied, and
        # answered 200 with JSON cut short / a proxy's HTML page), one per edit
        self.lose_next_edits: list[str] = []
        self.lose_next_deletes: list[str] = []  # the same, for deletions of an interaction's messages
        self.drop_message_reads = 0  # reads of a channel's message whose connection breaks unanswered
        self.history_reads: list[dict[str, str]] = []  # the query of every read of a channel's history
        self.hang_next_progress_edits = 0  # edits without files (progress lines) never answered
        self.identified = asyncio.Event()
        self.commands_synced = asyncio.Event()
        self.changed = asyncio.Condition()
        self.shard_count = 1
        # the member's Discord language and the server's ("preferred_locale", its Community primary
        # language): https://discord.com/developers/docs/reference#locales
        self.member_locale = "en-US"
        self.guild_locale = "en-US"
        self._conns: dict[int, web.WebSocketResponse] = {}  # shard id → its gateway connection
        self._seqs: dict[int, int] = {}
        # Gateway sessions, for RESUME (op 6): "Discord will replay any missed events in order for your
        # client's session. After all events are replayed, a Resumed event will be sent"; a session that
        # cannot be resumed gets INVALID_SESSION (op 9) with d: false
        # (https://discord.com/developers/docs/events/gateway#resuming). Events dispatched while a
        # shard's connection is down are kept for its session, as Discord keeps them.
        self._sessions: dict[str, int] = {}  # session id -> shard
        self._session_of: dict[int, str] = {}  # shard -> its session id
        self._frames: dict[int, list[tuple[int, str]]] = {}  # shard -> (seq, frame) sent in its session
        self._transports: dict[int, asyncio.BaseTransport] = {}  # shard -> its connection's transport
        self.resumable = True  # False: a RESUME is answered with INVALID_SESSION (d: false)
        self.resumes: list[dict[str, Any]] = []  # the RESUME payloads received
        self.kept_while_down = 0  # events dispatched while their shard's connection was down
        self._send_lock = asyncio.Lock()
        self.app = web.Application(client_max_size=512 * 1024 * 1024)
        self.app.router.add_route("*", "/gateway", self._gateway)
        self.app.router.add_get("/attachments/{channel}/{att}/{name}", self._cdn)
        self.app.router.add_route("*", "/{tail:.*}", self._rest)

    # --- lifecycle -------------------------------------------------------------------------------

    async def stop(self) -> None:
        for ws in list(self._conns.values()):
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        await super().stop()

    def shard_of(self, guild_id: int | None, shard_count: int | None = None) -> int:
        """Discord's rule: a server's events go to shard ``(guild_id >> 22) % shard_count``."""
        return 0 if guild_id is None else (guild_id >> 22) % (shard_count or self.shard_count)

    @property
    def connected_shards(self) -> set[int]:
        return {shard for shard, ws in self._conns.items() if not ws.closed}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` is true: re-checked on every change the fake sees, and every
        20 ms (so predicates about other fakes work too)."""
        async with asyncio.timeout(timeout):
            async with self.changed:
                while not predicate():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), 0.02)

    async def wait_until_idle(
        self,
        busy: Callable[[], Awaitable[bool]] | None = None,
        *,
        quiet_s: float = 0.3,
        timeout: float = 20.0,
        jobs_may_run: bool = False,
    ) -> None:
        """Wait until the bot is idle: ``busy()`` (the bot's own word, e.g. its jobs in flight; by
        default ``busy_probe``, which the test fixtures set for the bot they start) is false and no
        request has reached this fake for ``quiet_s``. For checks that something did *not* happen: by
        then, it would have. ``jobs_may_run``: only the quiet period (a test keeps a job running)."""
        busy = None if jobs_may_run else busy or self.busy_probe
        async with asyncio.timeout(timeout):
            while True:
                quiet_for = time.monotonic() - self.last_request_at
                if quiet_for >= quiet_s and (busy is None or not await busy()):
                    return
                await asyncio.sleep(max(0.02, quiet_s - quiet_for))

    # --- test API ----------------------------------------------------------------------------------

    def add_attachment(
        self, data: bytes, filename: str, content_type: str | None = "image/png"
    ) -> dict[str, Any]:
        """Host ``data`` on the fake CDN; returns the attachment payload for an interaction."""
        att_id = _snowflake(time.time(), self._ids)
        path = f"/attachments/{self.channel_id}/{att_id}/{filename}"
        self.cdn[path] = (data, content_type or "application/octet-stream")
        url = f"{self.base_url}{path}?ex=ffffffff&is=00000000&hm=fake"
        payload: dict[str, Any] = {
            "id": str(att_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type is not None:
            payload["content_type"] = content_type
        return payload

    def command_names(self) -> list[str]:
        return sorted({c["name"] for scope in self.commands.values() for c in scope})

    def command(self, name: str) -> dict[str, Any]:
        for scope in (self.guild_id, None):
            for cmd in self.commands.get(scope, []):
                if cmd["name"] == name:
                    return cmd
        raise KeyError(f"command {name!r} was never synced")

    async def invoke_slash(
        self,
        name: str,
        options: dict[str, Any],
        *,
        user_id: int | None = None,
        age_s: float = 0.0,
        check_options: bool = True,
        channel_nsfw: bool = False,
        permissions: int | None = None,
        subcommand: str | None = None,
        roles: list[int] | None = None,
        channel_id: int | None = None,
        guild_id: int | None = None,
        dm: bool = False,
        created_ago_s: float = 0.0,
    ) -> InteractionRecord:
        """Send an INTERACTION_CREATE for ``/name`` (or ``/name subcommand``); ``dm``: in a direct
        message with the bot (Discord's client offers a command there only if its contexts allow it). Attachment options take
        the payload from :meth:`add_attachment`; channel and role options take an id. Options are
        checked against the synced definition as the Discord client would (``check_options=False``
        sends them anyway, like a hostile client)."""
        cmd = self.command(name)
        defs_list = cmd.get("options", [])
        if subcommand is not None:
            sub = next((o for o in defs_list if o["name"] == subcommand and o["type"] == 1), None)
            if sub is None:
                raise ValueError(f"/{name} has no subcommand {subcommand!r}")
            defs_list = sub.get("options", [])
        defs = {o["name"]: o for o in defs_list}
        if check_options:
            self._check_options(defs, options)
            context = 1 if dm else 0
            if context not in (cmd.get("contexts") or [0, 1, 2]):
                raise ValueError(f"/{name} is not offered there (contexts {cmd.get('contexts')})")
        opts: list[dict[str, Any]] = []
        resolved: dict[str, Any] = {}
        for key, value in options.items():
            opt_type = defs[key]["type"] if key in defs else 3
            if opt_type == OPTION_TYPES["attachment"]:
                resolved.setdefault("attachments", {})[value["id"]] = value
                opts.append({"name": key, "type": opt_type, "value": value["id"]})
            elif opt_type == 7:
                resolved.setdefault("channels", {})[str(value)] = {
                    "id": str(value),
                    "name": "channel",
                    "type": 0,
                    "permissions": str(MEMBER_PERMISSIONS),
                }
                opts.append({"name": key, "type": opt_type, "value": str(value)})
            elif opt_type == 8:
                resolved.setdefault("roles", {})[str(value)] = self._role(int(value), "artists")
                opts.append({"name": key, "type": opt_type, "value": str(value)})
            else:
                opts.append({"name": key, "type": opt_type, "value": value})
        if subcommand is not None:
            opts = [{"name": subcommand, "type": 1, "options": opts}]
        data: dict[str, Any] = {"id": cmd["id"], "name": name, "type": 1, "options": opts}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        if resolved:
            data["resolved"] = resolved
        return await self._interact(
            2,
            data,
            user_id=user_id,
            age_s=age_s,
            channel_nsfw=channel_nsfw,
            permissions=permissions,
            roles=roles,
            channel_id=channel_id,
            guild_id=guild_id,
            dm=dm,
            created_ago_s=created_ago_s,
        )

    async def replay(self, record: InteractionRecord, *, answerable: bool = False) -> None:
        """Discord delivers the same INTERACTION_CREATE again (a gateway replay: same id, same token).
        Its 3 seconds ran from its first delivery; ``answerable`` starts them again, so that an answer
        reaches the "already acknowledged" check (40060) rather than the expired one (10062)."""
        if answerable:
            record.sent_at = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", record.payload)

    def deny(self, channel_id: int, permissions: int) -> None:
        """Take ``permissions`` away from the bot in a channel (as a server's channel overwrite does)."""
        self._denied[channel_id] = self._denied.get(channel_id, 0) | permissions

    def allow(self, channel_id: int, permissions: int) -> None:
        """Give the bot ``permissions`` back in a channel (the overwrite removed)."""
        self._denied[channel_id] = self._denied.get(channel_id, 0) & ~permissions

    def bot_permissions(self, channel_id: int) -> int:
        """The bot's permissions in a channel; in a thread, its parent's (a thread has no overwrites
        of its own), where SEND_MESSAGES_IN_THREADS stands for SEND_MESSAGES."""
        channel_id = self.threads.get(channel_id, channel_id)
        return BOT_PERMISSIONS & ~self._denied.get(channel_id, 0)

    def rate_limit(
        self, kind: str, *, times: int = 1, retry_after: float = 0.3, said: object = THE_WAIT
    ) -> None:
        """Answer the next ``times`` requests of ``kind`` ("webhook", "channel message", "callback")
        with 429, as Discord does (topics/rate-limits): a JSON body with ``retry_after`` and
        ``global``, and the X-RateLimit-* headers, Retry-After and Via. The limit holds for the route
        that met it (its kind and method: Discord's limits are per route): a request there before it
        resets is a violation, answered 429 again as Discord does (which counts it toward a ban).
        ``said``: what the body's ``retry_after`` holds instead (a crafted or broken value; ``None`` is
        JSON's null), or :data:`LEFT_OUT` for a body without it."""
        self._limits_next[kind] = (times, retry_after)
        self._limit_said[kind] = said

    def _limited(self, kind: str, method: str) -> web.Response | None:
        now = time.monotonic()
        until = self._limited_until.get((kind, method), 0.0)
        if now < until:
            self.violations.append(f"{kind} request during its rate limit")
            return self._too_many(until - now, self._limit_said.get(kind, THE_WAIT))
        times, retry_after = self._limits_next.get(kind, (0, 0.0))
        if times <= 0:
            return None
        self._limits_next[kind] = (times - 1, retry_after)
        self._limited_until[kind, method] = now + retry_after
        return self._too_many(retry_after, self._limit_said.get(kind, THE_WAIT))

    def _too_many(self, retry_after: float, said: object) -> web.Response:
        headers = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": "fake" + secrets.token_hex(8),
            "X-RateLimit-Scope": "user",
            "Retry-After": str(max(1, round(retry_after))),
            "Via": "1.1 google",
        }
        body: dict[str, Any] = {"message": "You are being rate limited.", "global": False}
        if said is not LEFT_OUT:
            body["retry_after"] = retry_after if said is THE_WAIT else said
        return _json(body, 429, headers)

    def expect_violation(self, prefix: str) -> None:
        """The test provokes this (e.g. an interaction Discord delivers too late to be answered)."""
        self.expected_violations.append(prefix)

    def age(self, record: InteractionRecord, by_s: float) -> None:
        """Time passes for an interaction: it was made ``by_s`` seconds earlier than it was (its token
        expires 15 minutes from then). The bot's ledger must be told the same (see the restart tests)."""
        record.created_at -= by_s

    def dm_channel_id(self, user_id: int) -> int:
        """The direct-message channel between the bot and a user (one per user)."""
        return self._dm_channels.setdefault(user_id, _snowflake(time.time(), self._ids))

    def _role(self, role_id: int, name: str) -> dict[str, Any]:
        return {
            "id": str(role_id),
            "name": name,
            "permissions": str((1 << 11) | (1 << 15) | (1 << 14)),
            "position": 0 if role_id == self.guild_id else 1,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    async def _interact(
        self,
        itype: int,
        data: dict[str, Any],
        *,
        user_id: int | None = None,
        age_s: float = 0.0,
        channel_nsfw: bool = False,
        permissions: int | None = None,
        message: FakeMessage | None = None,
        roles: list[int] | None = None,
        channel_id: int | None = None,
        guild_id: int | None = None,
        dm: bool = False,
        created_ago_s: float = 0.0,
    ) -> InteractionRecord:
        """``age_s``: how late Discord delivers it (its 3 seconds run from its creation). ``created_ago_s``:
        how long ago its id says it was made, though delivered now: an interaction as old as a job that
        outlives it will be by the time it ends (its token's 15 minutes run from its creation; the
        3-second answer window, from the delivery)."""
        guild = guild_id or self.guild_id
        uid = user_id or _snowflake(time.time() - 86400 * 200, self._ids)
        created = time.time() - age_s
        if channel_id is None:
            channel_id = self.nsfw_channel_id if channel_nsfw else self.channel_id
        inter_id = _snowflake(created - created_ago_s, self._ids)
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        user = {
            "id": str(uid),
            "username": f"member{uid % 1000}",
            "discriminator": "0",
            "avatar": None,
            "global_name": None,
        }
        perms = permissions if permissions is not None else MEMBER_PERMISSIONS
        payload: dict[str, Any] = {
            "id": str(inter_id),
            "application_id": str(self.app_id),
            "type": itype,
            "token": token,
            "version": 1,
            "attachment_size_limit": self.limits.attachment_size_limit,
            "guild_id": str(guild),
            "channel_id": str(channel_id),
            "channel": self._thread_object(channel_id)
            if channel_id in self.threads
            else {
                "id": str(channel_id),
                "type": 0,
                "name": {self.nsfw_channel_id: "art-18", self.other_channel_id: "random"}.get(
                    channel_id, "general"
                ),
                "position": 0,
                "guild_id": str(guild),
                "permission_overwrites": [],
                "nsfw": self.age_restricted.get(channel_id, channel_nsfw),  # (as the channel is now)
            },
            "member": {
                "user": user,
                "roles": [str(r) for r in roles or []],
                "flags": 0,
                "joined_at": _iso(created - 86400),
                "permissions": str(perms),
                "deaf": False,
                "mute": False,
            },
            "app_permissions": str(self.bot_permissions(channel_id)),
            "locale": self.member_locale,
            "guild_locale": self.guild_locale,
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild)},
            "context": 0,
            "data": data,
        }
        if message is not None:
            payload["message"] = self._message_payload(message)
        if dm:  # a direct message with the bot: no server, the user instead of a member, a DM channel
            for key in ("guild_id", "member", "guild_locale"):
                payload.pop(key)
            dm_channel = self.dm_channel_id(uid)
            payload.update(
                channel_id=str(dm_channel),
                channel={"id": str(dm_channel), "type": 1, "last_message_id": None, "flags": 0},
                user=user,
                authorizing_integration_owners={"0": str(guild)},
                context=1,
                app_permissions=str(MEMBER_PERMISSIONS),
            )
            data.pop("guild_id", None)
        record = InteractionRecord(
            id=inter_id,
            token=token,
            user_id=uid,
            payload=payload,
            sent_at=time.monotonic() - age_s,
            created_at=created - created_ago_s,
        )
        record.source_message_id = message.id if message is not None else None
        self.interactions[inter_id] = record
        self._by_token[token] = record
        await self.dispatch("INTERACTION_CREATE", payload)
        record.sent_at = time.monotonic() - age_s
        return record

    async def click(
        self,
        message: FakeMessage,
        custom_id: str,
        *,
        user_id: int | None = None,
        permissions: int | None = None,
        age_s: float = 0.0,
    ) -> InteractionRecord:
        """A member presses the button ``custom_id`` on ``message``. The button must be on it."""
        ids = [c.get("custom_id") for row in message.components for c in row.get("components", [])]
        if custom_id not in ids:
            raise ValueError(f"no button {custom_id!r} on that message (has {ids})")
        data = {"custom_id": custom_id, "component_type": 2}
        return await self._interact(
            3, data, user_id=user_id, permissions=permissions, message=message, age_s=age_s
        )

    async def submit_modal(
        self,
        modal: dict[str, Any],
        values: dict[str, str],
        *,
        user_id: int | None = None,
        permissions: int | None = None,
    ) -> InteractionRecord:
        """A member fills in the modal (as the bot sent it) and submits it."""
        rows = []
        known = set()
        for row in modal.get("components", []):
            inner = row.get("components", []) if row.get("type") == 1 else [row.get("component", row)]
            for comp in inner:
                cid = comp.get("custom_id")
                known.add(cid)
                value = values.get(cid, comp.get("value", ""))
                if comp.get("max_length") and len(value) > comp["max_length"]:
                    raise ValueError(f"{cid} longer than {comp['max_length']}")
                if comp.get("required", True) and not value:
                    raise ValueError(f"{cid} is required")
                rows.append({"type": 1, "components": [{"type": 4, "custom_id": cid, "value": value}]})
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"no such fields in the modal: {unknown}")
        data = {"custom_id": modal["custom_id"], "components": rows}
        return await self._interact(5, data, user_id=user_id, permissions=permissions)

    async def invoke_message_command(
        self, name: str, message: FakeMessage, *, user_id: int | None = None, permissions: int | None = None
    ) -> InteractionRecord:
        """Apps → ``name`` on ``message`` (a message context-menu command)."""
        cmd = self.command(name)
        if cmd.get("type") != 3:
            raise ValueError(f"{name} is not a message command")
        payload = self._message_payload(message)
        data: dict[str, Any] = {
            "id": cmd["id"],
            "name": name,
            "type": 3,
            "target_id": str(message.id),
            "resolved": {"messages": {str(message.id): payload}},
        }
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return await self._interact(2, data, user_id=user_id, permissions=permissions)

    def post_user_message(self, content: str, files: list[tuple[bytes, str, str]]) -> FakeMessage:
        """A message a member posted in the channel (with image attachments), for context menus."""
        now = time.monotonic()
        msg = FakeMessage(id=_snowflake(time.time(), self._ids), channel_id=self.channel_id, content=content)
        msg.created_at = msg.updated_at = now
        for data, filename, ctype in files:
            att = self.add_attachment(data, filename, ctype)
            msg.files.append(FakeFile(id=int(att["id"]), filename=filename, data=data, content_type=ctype))
        msg.author = {"id": str(self.owner_id), "username": "someone", "discriminator": "0", "avatar": None}
        self.messages[msg.id] = msg
        return msg

    def _check_options(self, defs: dict[str, dict[str, Any]], options: dict[str, Any]) -> None:
        for key in options:
            if key not in defs:
                raise ValueError(f"unknown option {key!r}")
        for key, d in defs.items():
            if d.get("required") and key not in options:
                raise ValueError(f"missing required option {key!r}")
            if key not in options:
                continue
            value = options[key]
            if d["type"] == 3:
                if not isinstance(value, str):
                    raise ValueError(f"{key} must be a string")
                if "max_length" in d and len(value) > d["max_length"]:
                    raise ValueError(f"{key} longer than {d['max_length']}")
                if "min_length" in d and len(value) < d["min_length"]:
                    raise ValueError(f"{key} shorter than {d['min_length']}")
            elif d["type"] == 5 and not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            elif d["type"] in (4, 10):
                if "min_value" in d and value < d["min_value"]:
                    raise ValueError(f"{key} below {d['min_value']}")
                if "max_value" in d and value > d["max_value"]:
                    raise ValueError(f"{key} above {d['max_value']}")

    def visible_messages(self, record: InteractionRecord) -> list[FakeMessage]:
        return [self.messages[m] for m in record.message_ids if not self.messages[m].deleted]

    def final_message(self, record: InteractionRecord) -> FakeMessage | None:
        """The last visible, non-loading message of an interaction."""
        msgs = [m for m in self.visible_messages(record) if not m.loading]
        return msgs[-1] if msgs else None

    # --- gateway -----------------------------------------------------------------------------------

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send an event on the connection of the shard that the event's server belongs to."""
        guild = data.get("guild_id")
        shard = self.shard_of(int(guild) if guild else None)
        async with self._send_lock:
            ws = self._conns.get(shard)
            down = ws is None or ws.closed
            if down and shard not in self._session_of:
                raise RuntimeError(f"the bot is not connected to the fake gateway (shard {shard})")
            self.kept_while_down += down
            await self._send_event(ws if not down else None, shard, event, data)

    async def _send_event(
        self, ws: web.WebSocketResponse | None, shard: int, event: str, data: dict[str, Any]
    ) -> None:
        """Number an event in the shard's session, keep it for a RESUME, and send it if connected."""
        self._seqs[shard] = self._seqs.get(shard, 0) + 1
        frame = json.dumps({"op": 0, "t": event, "s": self._seqs[shard], "d": data})
        self._frames.setdefault(shard, []).append((self._seqs[shard], frame))
        if ws is not None:
            await ws.send_str(frame)

    async def drop_gateway(self, shard: int = 0) -> None:
        """The shard's gateway connection breaks (no close frame: the bot sees 1006)."""
        transport = self._transports.get(shard)
        if transport is not None:
            transport.close()
        self._conns.pop(shard, None)
        await self._notify()

    async def ask_to_reconnect(self, shard: int = 0) -> None:
        """Gateway RECONNECT (op 7): "reconnect and resume immediately"."""
        ws = self._conns.get(shard)
        if ws is not None:
            await self._send(ws, {"op": 7, "d": None})

    async def _send(self, ws: web.WebSocketResponse, payload: dict[str, Any]) -> None:
        async with self._send_lock:
            await ws.send_str(json.dumps(payload))

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        if request.query.get("encoding", "json") != "json":
            await ws.close(code=4002, message=b"json only")
            return ws
        await self._send(ws, {"op": 10, "d": {"heartbeat_interval": 41250}})
        transport = request.transport
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            op = frame.get("op")
            if op == 1:
                await self._send(ws, {"op": 11})
            elif op == 2:
                d = frame["d"]
                if d.get("token") != self.token:
                    await ws.close(code=4004, message=b"Authentication failed.")
                    break
                self.identifies.append(d)
                # Privileged intents the application was not granted in the Developer Portal: Discord
                # closes with 4014 (topics/opcodes-and-status-codes#gateway-close-event-codes).
                if int(d.get("intents", 0)) & PRIVILEGED_INTENTS & ~self.granted_intents:
                    await ws.close(code=4014, message=b"Disallowed intent(s).")
                    break
                shard, count = d.get("shard") or [0, 1]
                if self.connected_shards and count != self.shard_count:
                    await ws.close(code=4011, message=b"Sharding required / shard count mismatch.")
                    break
                self.shard_count = count
                self._conns[shard] = ws
                if transport is not None:
                    self._transports[shard] = transport
                self._seqs[shard] = 0
                self._frames[shard] = []
                await self._ready(ws, shard)
                self.identified.set()
                await self._notify()
            elif op == 6:
                await self._resume(ws, frame.get("d") or {}, transport)
            elif op == 8:
                await self._send(
                    ws,
                    {
                        "op": 0,
                        "t": "GUILD_MEMBERS_CHUNK",
                        "s": None,
                        "d": {
                            "guild_id": str(self.guild_id),
                            "members": [],
                            "chunk_index": 0,
                            "chunk_count": 1,
                        },
                    },
                )
        for shard, conn in list(self._conns.items()):
            if conn is ws:
                del self._conns[shard]
        return ws

    async def _resume(
        self, ws: web.WebSocketResponse, d: dict[str, Any], transport: asyncio.BaseTransport | None
    ) -> None:
        if d.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        shard = self._sessions.get(str(d.get("session_id")))
        if shard is None or not self.resumable:
            await self._send(ws, {"op": 9, "d": False})
            return
        self.resumes.append(d)
        seen = d.get("seq") or 0
        async with self._send_lock:
            self._conns[shard] = ws
            if transport is not None:
                self._transports[shard] = transport
            for seq, frame in list(self._frames.get(shard, [])):
                if seq > seen:
                    await ws.send_str(frame)
            await self._send_event(ws, shard, "RESUMED", {})
        await self._notify()

    async def _ready(self, ws: web.WebSocketResponse, shard: int) -> None:
        user = self._bot_user()
        has_guild = self.shard_of(self.guild_id) == shard
        ready = {
            "v": 10,
            "user": {**user, "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(self.guild_id), "unavailable": True}] if has_guild else [],
            "shard": [shard, self.shard_count],
            "session_id": self._new_session(shard),
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0},
        }
        guild = {
            "id": str(self.guild_id),
            "name": "Fake Guild",
            "icon": None,
            "owner_id": str(self.owner_id),
            "unavailable": False,
            "member_count": 2,
            "large": False,
            "features": [],
            "premium_tier": 0,
            "preferred_locale": self.guild_locale,
            "roles": [self._role(self.guild_id, "@everyone"), self._role(self.artist_role_id, "artists")],
            "channels": [self._channel_object(c) for c in self.age_restricted],
            "members": [],
            "threads": [self._thread_object(t) for t in self.threads],
            "emojis": [],
            "stickers": [],
            "voice_states": [],
            "presences": [],
        }
        events: list[tuple[str, dict[str, Any]]] = [("READY", ready)]
        if has_guild:
            events.append(("GUILD_CREATE", guild))
        async with self._send_lock:
            for event, data in events:
                await self._send_event(ws, shard, event, data)

    def _channel_object(self, channel_id: int) -> dict[str, Any]:
        """A text channel of the main server, as a Channel object ("nsfw": whether it is
        age-restricted; GUILD_CREATE's channels carry no guild_id, CHANNEL_UPDATE's do)."""
        names = {self.channel_id: "general", self.nsfw_channel_id: "art-18", self.other_channel_id: "random"}
        return {
            "id": str(channel_id),
            "type": 0,
            "name": names[channel_id],
            "position": list(names).index(channel_id),
            "permission_overwrites": [],
            "nsfw": self.age_restricted[channel_id],
        }

    def _thread_object(self, thread_id: int) -> dict[str, Any]:
        """An active public thread of the main server, as a Channel object (type 11, with its
        ``parent_id`` and ``thread_metadata``: https://discord.com/developers/docs/resources/channel
        #channel-object and #thread-metadata-object); GUILD_CREATE's ``threads`` carry these."""
        return {
            "id": str(thread_id),
            "type": 11,
            "guild_id": str(self.guild_id),
            "parent_id": str(self.threads[thread_id]),
            "owner_id": str(self.owner_id),
            "name": f"thread-{list(self.threads).index(thread_id)}",
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "message_count": 0,
            "member_count": 1,
            "flags": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _iso(time.time() - 3600),
                "locked": False,
            },
        }

    async def set_age_restricted(self, channel_id: int, restricted: bool) -> None:
        """A moderator turns a channel's "Age-Restricted Channel" setting on or off: Discord sends
        CHANNEL_UPDATE (a Channel object) to bots with the GUILDS intent
        (https://discord.com/developers/docs/events/gateway-events#channel-update), and later
        GUILD_CREATEs carry the new value."""
        self.age_restricted[channel_id] = restricted
        await self.dispatch(
            "CHANNEL_UPDATE", {**self._channel_object(channel_id), "guild_id": str(self.guild_id)}
        )

    def _new_session(self, shard: int) -> str:
        old = self._session_of.get(shard)
        if old is not None:
            self._sessions.pop(old, None)
        session = secrets.token_hex(16)
        self._sessions[session], self._session_of[shard] = shard, session
        return session

    def _bot_user(self) -> dict[str, Any]:
        return {
            "id": str(self.bot_user_id),
            "username": "depth2img",
            "discriminator": "0",
            "avatar": None,
            "bot": True,
            "global_name": None,
        }

    # --- REST ----------------------------------------------------------------------------------------

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        path = f"/attachments/{request.match_info['channel']}/{request.match_info['att']}/{request.match_info['name']}"
        self.cdn_fetches.append((time.monotonic(), path))
        self.last_request_at = time.monotonic()
        found = self.cdn.get(path)
        if found is None:
            return web.Response(status=404, text="Not Found")
        data, ctype = found
        if path in self.cdn_stalled:
            resp = web.StreamResponse(headers={"Content-Type": ctype, "Content-Length": str(len(data))})
            await resp.prepare(request)
            await resp.write(data[:100])
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)  # until the bot gives up on it
            return resp
        if path in self.cdn_endless:
            return await self._cdn_endless(request, path, data, ctype)
        return web.Response(body=data, headers={"Content-Type": ctype})

    async def _cdn_endless(
        self, request: web.Request, path: str, data: bytes, ctype: str
    ) -> web.StreamResponse:
        encoding = self.cdn_endless[path]
        headers = {"Content-Type": ctype}
        compress = None
        if encoding == "gzip":
            headers["Content-Encoding"] = "gzip"
            compress = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
        resp = web.StreamResponse(headers=headers)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.cdn_sent[path] = 0
        piece, zeros = data, bytes(1024 * 1024)
        with contextlib.suppress(ConnectionError):
            while request.transport is not None and not request.transport.is_closing():
                wire = (
                    piece
                    if compress is None
                    else compress.compress(piece) + compress.flush(zlib.Z_SYNC_FLUSH)
                )
                await resp.write(wire)
                self.cdn_sent[path] += len(wire)
                piece = zeros
                await asyncio.sleep(0)
        return resp

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        self.last_request_at = time.monotonic()
        try:
            return await self._rest_answer(request)
        finally:
            self.last_request_at = time.monotonic()

    async def _rest_answer(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        method = request.method
        if not path.startswith("/api/v10/"):
            return self._unhandled(request)
        if self.spec is not None:
            refused = await self._against_spec(request, method, path[len("/api/v10") :])
            if refused is not None:
                return refused
        parts = path[len("/api/v10/") :].split("/")
        try:
            return await self._route(request, method, parts)
        finally:
            await self._notify()

    async def _against_spec(self, request: web.Request, method: str, path: str) -> web.Response | None:
        """Refuse, as Discord would (400, 50035), a request its OpenAPI description or its documented
        rules (discord_rules.py) do not allow; the refusal is recorded as a violation."""
        assert self.spec is not None
        body: Any = None
        raw = await request.read()  # (aiohttp keeps it: the route's handler reads it again)
        if raw:
            ctype = request.headers.get("Content-Type", "")
            try:
                body = _parse_multipart(raw, ctype)[0] if ctype.startswith("multipart/") else json.loads(raw)
            except (ValueError, web.HTTPBadRequest):
                self.violations.append(f"{method} {path}: a body that is not JSON")
                return _error(400, 50109, "The request body contains invalid JSON.")
        route, problems = await self.spec.acheck(method, path, sorted(request.query), body)
        problems += request_problems(method, route, body)
        if not problems:
            return None
        self.violations.append(f"refused by Discord's API description: {method} {route or path}: {problems}")
        if route is None:
            return _error(404, 0, "404: Not Found")
        return _error(400, 50035, "Invalid Form Body", {"_errors": [{"message": p} for p in problems]})

    def _unhandled(self, request: web.Request) -> web.Response:
        self.unhandled.append(f"{request.method} {request.path}")
        return _error(404, 0, "404: Not Found")

    async def _route(self, request: web.Request, method: str, parts: list[str]) -> web.StreamResponse:
        # Bot-authenticated routes
        if parts[0] in ("users", "oauth2", "applications", "gateway"):
            if not self._authorised(request):
                return _error(401, 0, "401: Unauthorized")
            if parts == ["users", "@me"] and method == "GET":
                return _json(self._bot_user())
            if parts == ["oauth2", "applications", "@me"] and method == "GET":
                return _json(self._application())
            if parts[0] == "applications" and parts[-1] == "commands" and method == "PUT":
                guild = int(parts[3]) if len(parts) == 5 and parts[2] == "guilds" else None
                return await self._put_commands(request, guild)
            if parts[0] == "applications" and parts[-1] == "commands" and method == "GET":
                guild = int(parts[3]) if len(parts) == 5 and parts[2] == "guilds" else None
                return _json(self.commands.get(guild, []))
            if parts[0] == "gateway":
                return _json(
                    {
                        "url": f"ws://127.0.0.1:{self.port}",
                        "shards": 1,
                        "session_start_limit": {
                            "total": 1000,
                            "remaining": 999,
                            "reset_after": 0,
                            "max_concurrency": 1,
                        },
                    }
                )
            return self._unhandled(request)
        if (
            parts[0] == "channels"
            and len(parts) == 4
            and parts[2] == "messages"
            and method in ("DELETE", "GET")
        ):
            if not self._authorised(request):
                return _error(401, 0, "401: Unauthorized")
            channel = int(parts[1])
            if not self.bot_permissions(channel) & VIEW_CHANNEL:
                self.refusals.append(f"{method} message: Missing Access")
                return _error(403, 50001, "Missing Access")
            msg = self.messages.get(int(parts[3]))
            if msg is None or msg.deleted or msg.channel_id != channel:
                return _error(404, 10008, "Unknown Message")
            if method == "GET":
                if not self.bot_permissions(channel) & READ_MESSAGE_HISTORY:
                    self.refusals.append("GET message: Missing Permissions")
                    return _error(403, 50013, "Missing Permissions")
                if self.drop_message_reads > 0 and request.transport is not None:
                    self.drop_message_reads -= 1
                    request.transport.close()
                    return web.Response(status=500)  # (never reaches the bot)
                return _json(self._message_payload(msg))
            if msg.author is not None:
                self.violations.append("the bot deleted a member's message")
                return _error(403, 50013, "Missing Permissions")
            msg.deleted = True
            self.deleted_by_bot.append(msg.id)
            return web.Response(status=204)
        if parts[0] == "channels" and len(parts) == 3 and parts[2] == "messages" and method == "GET":
            if not self._authorised(request):
                return _error(401, 0, "401: Unauthorized")
            return self._channel_history(request, int(parts[1]))
        if parts[0] == "channels" and len(parts) == 3 and parts[2] == "messages" and method == "POST":
            if not self._authorised(request):
                return _error(401, 0, "401: Unauthorized")
            limited = self._limited("channel message", method)
            if limited is not None:
                return limited
            return await self._channel_message(request, int(parts[1]))
        if parts[0] == "interactions" and len(parts) == 4 and parts[3] == "callback" and method == "POST":
            limited = self._limited("callback", method)
            if limited is not None:
                return limited
            return await self._callback(request, int(parts[1]), parts[2])
        if parts[0] == "webhooks" and len(parts) >= 3:
            return await self._webhook(request, method, parts)
        return self._unhandled(request)

    def _application(self) -> dict[str, Any]:
        return {
            "id": str(self.app_id),
            "name": "depth2img",
            "description": "",
            "icon": None,
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": {"id": str(self.owner_id), "username": "owner", "discriminator": "0", "avatar": None},
            "verify_key": "0" * 64,
            "interactions_endpoint_url": None,
            "flags": 0,
        }

    async def _put_commands(self, request: web.Request, guild: int | None) -> web.Response:
        body = await request.json()
        problems: dict[str, Any] = {}
        stored: list[dict[str, Any]] = []
        for index, cmd in enumerate(body):
            errs = self._check_command(cmd)
            if errs:
                problems[str(index)] = errs
            previous = next((c for c in self.commands.get(guild, []) if c["name"] == cmd["name"]), None)
            cmd_id = previous["id"] if previous else str(_snowflake(time.time(), self._ids))
            out = {
                "description": "",
                **cmd,
                "id": cmd_id,
                "application_id": str(self.app_id),
                "version": cmd_id,
            }
            if guild is not None:
                out["guild_id"] = str(guild)
            stored.append(out)
        if problems:
            self.violations.append(f"invalid command definitions: {problems}")
            return _error(400, 50035, "Invalid Form Body", problems)
        self.commands[guild] = stored
        self.sync_calls.append(guild)
        self.commands_synced.set()
        return _json(stored)

    @staticmethod
    def _check_command(cmd: dict[str, Any]) -> dict[str, Any]:
        errs: dict[str, Any] = {}
        name_re = re.compile(r"^[-_\w]{1,32}$")
        if cmd.get("type", 1) == 1:
            if not name_re.match(cmd.get("name", "")) or cmd["name"] != cmd["name"].lower():
                errs["name"] = "invalid"
            if not 1 <= len(cmd.get("description", "")) <= 100:
                errs["description"] = "must be 1-100 characters"
        elif not 1 <= len(cmd.get("name", "")) <= 32 or cmd.get("description") or cmd.get("options"):
            errs["name"] = "context menu commands take a 1-32 character name and no description or options"
        seen_optional = False
        for i, opt in enumerate(cmd.get("options", [])):
            if not name_re.match(opt.get("name", "")) or opt["name"] != opt["name"].lower():
                errs[f"options.{i}.name"] = "invalid"
            if not 1 <= len(opt.get("description", "")) <= 100:
                errs[f"options.{i}.description"] = "must be 1-100 characters"
            if opt.get("required"):
                if seen_optional:
                    errs[f"options.{i}.required"] = (
                        "required options must be placed before non-required options"
                    )
            else:
                seen_optional = True
        if len(cmd.get("options", [])) > 25:
            errs["options"] = "at most 25"
        return errs

    # --- interactions ------------------------------------------------------------------------------

    async def _read_message_body(self, request: web.Request) -> tuple[dict[str, Any], list[FakeFile]]:
        files: list[FakeFile] = []
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            return _parse_multipart(await request.read(), ctype)
        text = await request.text()
        return (json.loads(text) if text else {}), files

    def _check_message(
        self, data: dict[str, Any], files: list[FakeFile], *, creating: bool
    ) -> web.Response | None:
        content = data.get("content") or ""
        if len(content) > self.limits.content_max:
            self.violations.append(f"content too long: {len(content)}")
            return _error(
                400,
                50035,
                "Invalid Form Body",
                {
                    "content": {
                        "_errors": [
                            {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
                        ]
                    }
                },
            )
        if len(files) > self.limits.files_max:
            self.violations.append(f"too many files: {len(files)}")
            return _error(400, 50035, "Invalid Form Body", {"files": "at most 10"})
        for f in files:
            if len(f.data) > self.limits.attachment_size_limit:
                self.violations.append(f"file too large: {f.filename} {len(f.data)} bytes")
                return _error(413, 40005, "Request entity too large")
        embeds = data.get("embeds") or []
        if len(embeds) > self.limits.embeds_max:
            self.violations.append("too many embeds")
            return _error(400, 50035, "Invalid Form Body", {"embeds": "at most 10"})
        if creating and not content and not embeds and not files and not data.get("components"):
            self.violations.append("empty message")
            return _error(400, 50006, "Cannot send an empty message")
        return None

    def _new_message(self, record: InteractionRecord, flags: int) -> FakeMessage:
        now = time.monotonic()
        msg = FakeMessage(
            id=_snowflake(time.time(), self._ids),
            channel_id=int(record.payload.get("channel_id") or self.channel_id),
            flags=flags,
            interaction_id=record.id,
            created_at=now,
            updated_at=now,
        )
        self.messages[msg.id] = msg
        record.message_ids.append(msg.id)
        return msg

    def _apply(self, msg: FakeMessage, data: dict[str, Any], files: list[FakeFile], *, editing: bool) -> None:
        if "content" in data:
            msg.content = data.get("content") or ""
        if "embeds" in data:
            msg.embeds = data.get("embeds") or []
        if "components" in data:
            msg.components = data.get("components") or []
        if editing and "attachments" in data:
            keep = {str(a.get("id")) for a in data["attachments"] or []}
            msg.files = [f for f in msg.files if str(f.id) in keep] + [self._store_file(f) for f in files]
        elif files:
            msg.files = msg.files + [self._store_file(f) for f in files]
        msg.pings += pings_for(msg.content, data.get("allowed_mentions"))
        msg.history.append(msg.content)
        msg.updated_at = time.monotonic()

    def _store_file(self, f: FakeFile) -> FakeFile:
        return FakeFile(
            id=_snowflake(time.time(), self._ids),
            filename=f.filename,
            data=f.data,
            content_type=f.content_type,
            description=f.description,
        )

    def _file_url(self, msg: FakeMessage, f: FakeFile) -> str:
        path = f"/attachments/{msg.channel_id}/{f.id}/{f.filename}"
        self.cdn.setdefault(path, (f.data, f.content_type or "image/png"))
        return f"{self.base_url}{path}"

    def _message_payload(self, msg: FakeMessage) -> dict[str, Any]:
        payload = self._message_fields(msg)
        if msg.channel_id not in self._dm_channels.values():
            payload["guild_id"] = str(self.guild_id)
        return payload

    def _message_fields(self, msg: FakeMessage) -> dict[str, Any]:
        return {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            # an interaction's answer (CHAT_INPUT_COMMAND); a member's message, or the bot's channel post
            "type": 20 if msg.author is None and msg.interaction_id is not None else 0,
            "content": msg.content,
            "author": msg.author or self._bot_user(),
            "attachments": [
                {
                    "id": str(f.id),
                    "filename": f.filename,
                    "size": len(f.data),
                    "url": self._file_url(msg, f),
                    "proxy_url": self._file_url(msg, f),
                    "content_type": f.content_type or "image/png",
                    **({"description": f.description} if f.description is not None else {}),
                }
                for f in msg.files
            ],
            "embeds": msg.embeds,
            "mentions": [],
            "mention_roles": [],
            "pinned": False,
            "mention_everyone": False,
            "tts": False,
            "timestamp": _iso(time.time()),
            "edited_timestamp": _iso(time.time()) if msg.edits else None,
            "flags": msg.flags,
            "components": msg.components,
            "application_id": str(self.app_id),
            "webhook_id": str(self.app_id),
        }

    def _channel_history(self, request: web.Request, channel_id: int) -> web.Response:
        """Get Channel Messages (https://discord.com/developers/docs/resources/message#get-channel-messages):
        "an array of message objects from newest to oldest"; needs View Channel, and "if the current
        user is missing the READ_MESSAGE_HISTORY permission in the channel, then no messages will be
        returned"; ``limit`` 1-100, default 50; "the before, after, and around parameters are mutually
        exclusive". ``after``: the messages that follow it, oldest first taken."""
        query = dict(request.query)
        self.history_reads.append(query)
        if not self.bot_permissions(channel_id) & VIEW_CHANNEL:
            self.refusals.append("GET messages: Missing Access")
            return _error(403, 50001, "Missing Access")
        problems: dict[str, Any] = {}
        anchors = {k: query[k] for k in ("before", "after", "around") if k in query}
        if len(anchors) > 1:
            problems["_errors"] = [{"message": "before, after and around are mutually exclusive"}]
        try:
            limit = int(query.get("limit", "50"))
            ids = {k: int(v) for k, v in anchors.items()}
        except ValueError:
            return _error(400, 50035, "Invalid Form Body", {"_errors": [{"message": "not a snowflake"}]})
        if not 1 <= limit <= 100:
            problems["limit"] = {"_errors": [{"message": "Must be between 1 and 100."}]}
        if problems:
            self.violations.append(f"GET messages: {problems}")
            return _error(400, 50035, "Invalid Form Body", problems)
        if not self.bot_permissions(channel_id) & READ_MESSAGE_HISTORY:
            return _json([])
        shown = sorted(
            m.id
            for m in self.messages.values()
            if m.channel_id == channel_id and not m.deleted and not m.ephemeral
        )
        if "after" in ids:
            picked = [i for i in shown if i > ids["after"]][:limit]
        elif "before" in ids:
            picked = [i for i in shown if i < ids["before"]][-limit:]
        elif "around" in ids:
            at = sum(i < ids["around"] for i in shown)
            picked = shown[max(0, at - limit // 2) :][:limit]
        else:
            picked = shown[-limit:]
        return _json([self._message_payload(self.messages[i]) for i in reversed(picked)])

    async def _channel_message(self, request: web.Request, channel_id: int) -> web.Response:
        """A normal bot message in a channel (used when an interaction token has expired). Needs the
        bot's View Channel and Send Messages there, and Attach Files for files: else 403, 50013."""
        body, files = await self._read_message_body(request)
        sending = SEND_MESSAGES_IN_THREADS if channel_id in self.threads else SEND_MESSAGES
        needed = VIEW_CHANNEL | sending | (ATTACH_FILES if files else 0)
        if needed & ~self.bot_permissions(channel_id):
            self.refusals.append(f"channel message in {channel_id}: Missing Permissions")
            return _error(403, 50013, "Missing Permissions")
        problem = self._check_message(body, files, creating=True)
        if problem is not None:
            return problem
        if self.fail_next_posts > 0:
            self.fail_next_posts -= 1
            return _error(*self.post_failure)
        lost = self.lose_next_posts.pop(0) if self.lose_next_posts else None
        if lost == "request" and request.transport is not None:
            request.transport.close()
            return web.Response(status=500)  # (never reaches the bot)
        now = time.monotonic()
        nonce = body.get("nonce")
        key = str(nonce) if nonce is not None and body.get("enforce_nonce") else None
        earlier = self._nonces.get(key) if key is not None else None
        if earlier is not None and now - earlier[0] < self.nonce_window_s:
            msg = self.messages[earlier[1]]  # (the same message again; nothing new is posted)
        else:
            msg = FakeMessage(
                id=_snowflake(time.time(), self._ids), channel_id=channel_id, created_at=now, updated_at=now
            )
            self.messages[msg.id] = msg
            self.channel_messages.append(msg.id)
            self._apply(msg, body, files, editing=False)
            if key is not None:
                self._nonces[key] = (now, msg.id)
        if lost == "answer" and request.transport is not None:
            request.transport.close()
        if lost == "hang":
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)  # until the bot hangs up (or is killed)
            return web.Response(status=500)  # (never reaches the bot)
        payload = self._message_payload(msg)
        payload["type"] = 0
        if nonce is not None:
            payload["nonce"] = nonce
        return _json(payload)

    async def _callback(self, request: web.Request, inter_id: int, token: str) -> web.Response:
        arrived = time.monotonic()
        record = self.interactions.get(inter_id)
        if record is None or record.token != token:
            return _error(404, 10062, "Unknown interaction")
        if self.drop_callback_requests > 0 and request.transport is not None:
            self.drop_callback_requests -= 1
            request.transport.close()
            return web.Response(status=500)  # (never reaches the bot)
        answer = await self._take_callback(request, record, arrived)
        if answer.status == 200 and self.drop_callback_answers > 0:  # taken; the answer never arrives
            self.drop_callback_answers -= 1
            if request.transport is not None:
                request.transport.close()
        return answer

    async def _take_callback(
        self, request: web.Request, record: InteractionRecord, arrived: float
    ) -> web.Response:
        record.callback_attempts += 1
        if arrived - record.sent_at > self.limits.ack_deadline_s:
            self.violations.append(f"late acknowledgement: {arrived - record.sent_at:.2f}s")
            return _error(404, 10062, "Unknown interaction")
        if record.ack_type is not None:
            self.violations.append("interaction acknowledged twice")
            return _error(400, 40060, "Interaction has already been acknowledged.")
        if request.query.get("with_response") not in ("1", "true", "True"):
            self.violations.append("callback without with_response")
        body, files = await self._read_message_body(request)
        if self.callback_gate is not None:
            await self.callback_gate(record)
        rtype = body.get("type")
        data = body.get("data") or {}
        source = self.messages.get(record.source_message_id or 0)
        if rtype in (6, 7, 9) and record.payload["type"] not in (3, 5) and rtype != 9:
            self.violations.append(f"callback type {rtype} on an interaction without a message")
            return _error(400, 50035, "Invalid Form Body")
        if rtype == 9:
            if record.payload["type"] == 5:
                self.violations.append("a modal answered with a modal")
                return _error(400, 50035, "Invalid Form Body")
            record.modal = data
            record.acked_at, record.ack_type = arrived, rtype
            return _json(
                {
                    "interaction": {"id": str(record.id), "type": record.payload["type"]},
                    "resource": {"type": 9},
                }
            )
        if rtype in (6, 7):
            if source is None:
                self.violations.append("update of a message that does not exist")
                return _error(404, 10008, "Unknown Message")
            if rtype == 7:
                problem = self._check_message(data, files, creating=False)
                if problem is not None:
                    return problem
                source.edits += 1
                self._apply(source, data, files, editing=True)
            record.acked_at, record.ack_type, record.original_id = arrived, rtype, source.id
            return _json(
                {
                    "interaction": {"id": str(record.id), "type": record.payload["type"]},
                    "resource": {"type": rtype, "message": self._message_payload(source)},
                }
            )
        if rtype == 5:
            msg = self._new_message(record, FLAG_LOADING | (int(data.get("flags", 0)) & FLAG_EPHEMERAL))
        elif rtype == 4:
            problem = self._check_message(data, files, creating=True)
            if problem is not None:
                return problem
            msg = self._new_message(record, int(data.get("flags", 0)) & FLAG_EPHEMERAL)
            self._apply(msg, data, files, editing=False)
        else:
            self.violations.append(f"unsupported callback type {rtype}")
            return _error(400, 50035, "Invalid Form Body")
        record.acked_at = arrived
        record.ack_type = rtype
        record.original_id = msg.id
        return _json(
            {
                "interaction": {
                    "id": str(record.id),
                    "type": 2,
                    "response_message_id": str(msg.id),
                    "response_message_loading": rtype == 5,
                    "response_message_ephemeral": msg.ephemeral,
                },
                "resource": {"type": rtype, "message": self._message_payload(msg)},
            }
        )

    async def _webhook(self, request: web.Request, method: str, parts: list[str]) -> web.StreamResponse:
        # /webhooks/{app}/{token}[/messages/{id}]
        limited = self._limited("webhook", method)
        if limited is not None:
            return limited
        token = parts[2]
        record = self._by_token.get(token)
        if record is None or parts[1] != str(self.app_id):
            return _error(404, 10015, "Unknown Webhook")
        if time.time() - record.created_at > self.limits.token_ttl_s:
            self.violations.append("webhook call with an expired token")
            return _error(401, 50027, "Invalid Webhook Token")
        if record.ack_type is None:
            self.violations.append("webhook call before the initial response")
            return _error(404, 10015, "Unknown Webhook")
        if len(parts) == 3 and method == "POST":
            body, files = await self._read_message_body(request)
            problem = self._check_message(body, files, creating=True)
            if problem is not None:
                return problem
            original = self.messages.get(record.original_id or 0)
            if original is not None and original.loading and not original.deleted:
                # The first followup after a deferral edits the "thinking…" message; its flags stand.
                original.flags &= ~FLAG_LOADING
                original.edits += 1
                self._apply(original, body, files, editing=False)
                return _json(self._message_payload(original))
            msg = self._new_message(record, int(body.get("flags", 0)) & FLAG_EPHEMERAL)
            self._apply(msg, body, files, editing=False)
            return _json(self._message_payload(msg))
        if len(parts) == 5 and parts[3] == "messages":
            target = record.original_id if parts[4] == "@original" else int(parts[4])
            msg = self.messages.get(target or 0)
            if (
                msg is None
                or msg.deleted
                or (msg.interaction_id != record.id and msg.id != record.source_message_id)
            ):
                return _error(404, 10008, "Unknown Message")
            if method == "GET":
                return _json(self._message_payload(msg))
            if method == "DELETE":
                lost = self.lose_next_deletes.pop(0) if self.lose_next_deletes else None
                if lost == "request" and request.transport is not None:
                    request.transport.close()
                    return web.Response(status=500)  # (never reaches the bot)
                msg.deleted = True
                self.deleted_by_bot.append(msg.id)
                if lost == "answer" and request.transport is not None:
                    request.transport.close()
                return web.Response(status=204)
            if method == "PATCH":
                body, files = await self._read_message_body(request)
                if self.fail_next_edits > 0:
                    self.fail_next_edits -= 1
                    return _error(*self.edit_failure)
                if self.hang_next_progress_edits > 0 and not files:
                    self.hang_next_progress_edits -= 1
                    while request.transport is not None and not request.transport.is_closing():
                        await asyncio.sleep(0.05)  # until the bot gives up on it
                    return web.Response(status=500)  # (never reaches the bot)
                lost = self.lose_next_edits.pop(0) if self.lose_next_edits and files else None
                if lost == "request" and request.transport is not None:
                    request.transport.close()
                    return web.Response(status=500)  # (never reaches the bot)
                problem = self._check_message(body, files, creating=False)
                if problem is not None:
                    return problem
                msg.flags &= ~FLAG_LOADING
                msg.edits += 1
                self._apply(msg, body, files, editing=True)
                if lost == "answer" and request.transport is not None:
                    request.transport.close()
                if lost == "garbled":  # applied, and answered 200 with its JSON cut short
                    return web.Response(body=b'{"id": "1', headers={"Content-Type": "application/json"})
                if lost == "html":  # applied, and answered 200 with a proxy's page
                    return web.Response(text="<html>ok</html>", content_type="text/html")
                return _json(self._message_payload(msg))
        return self._unhandled(request)
