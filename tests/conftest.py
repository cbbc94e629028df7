"""Shared fixtures: the two fakes on 127.0.0.1 and the real bot connected to them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
from PIL import Image

from bot import Depth2ImgBot, configure_discord_endpoints, read_settings
from cogs.botcore.logs import KeyValueFormatter
from cogs.botcore.redact import Redactor
from cogs.depth2img.ui.text import PROGRESS_PREFIXES
from tests.fakes.fake_api import FakeModelsLab, make_png
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, InteractionRecord
from tests.postgres import PostgresUnavailable, TempPostgres
from tests.service_kit import backend, ledger, make_service  # noqa: F401 (fixtures for every module)

FAST_ENV = {
    "SD_POLL_INITIAL_S": "0.01",
    "SD_POLL_MAX_S": "0.05",
    "SD_RATE_LIMIT_MAX_WAIT_S": "0",
    "SD_REQUEST_TIMEOUT_S": "10",
    "SD_JOB_TIMEOUT_S": "20",
    "SD_USER_COOLDOWN_S": "0",
}


@pytest.fixture(autouse=True)
def _no_secret_in_any_log(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test, every path: the API key and the bot token never appear in a log line, in any
    disguise, as the bot formats it (``extra=`` fields and tracebacks included, as at DEBUG level),
    whether logged while the test ran or while its fixtures stopped the bot (shutdown, drain). The
    lines are checked before the bot's own redaction, which is only the last line of defence."""
    caplog.set_level(logging.DEBUG)
    yield
    values = getattr(request.node, "funcargs", {})
    secrets_: list[str] = []
    if "fake_api" in values:
        secrets_.append(values["fake_api"].api_key)
    if "fake_discord" in values:
        secrets_.append(values["fake_discord"].token)
    if not secrets_:
        return
    formatter = KeyValueFormatter(show_tracebacks=True)
    disguised = Redactor(secrets_)
    for record in caplog.get_records("setup") + caplog.get_records("call") + caplog.get_records("teardown"):
        line = formatter.format(record)
        assert disguised(line) == line, f"a secret reached the log: {record.name} {record.msg!r}"


# --- PostgreSQL ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this test run (see tests/postgres.py). Without one the
    PostgreSQL tests are skipped, unless D2I_REQUIRE_POSTGRES=1 (CI), where that is a failure."""
    existing = os.environ.get("TEST_DATABASE_URL")
    if existing:
        yield existing
        return
    try:
        server = TempPostgres()
        server.start()
    except PostgresUnavailable as exc:
        if os.environ.get("D2I_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here and could not start: {exc}")
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


async def create_database(server_url: str) -> str:
    """A fresh, empty database on the test server; returns its URL."""
    import asyncpg

    name = f"d2i_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


async def drop_database(server_url: str, url: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture
async def pg_url(postgres_server: str) -> AsyncIterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    url = await create_database(postgres_server)
    yield url
    await drop_database(postgres_server, url)


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeModelsLab]:
    api = FakeModelsLab()
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    """A fake Discord for the test. Every test that drives it fails if the bot broke one of Discord's
    rules (a violation the fake recorded, unless the test said it expects it: ``expect_violation``),
    called a route the fake does not know, the bot's shutdown included, or sent a file that is not a
    whole picture."""
    fake = FakeDiscord()
    await fake.start()
    yield fake
    await fake.stop()
    unexpected = [v for v in fake.violations if not v.startswith(tuple(fake.expected_violations))]
    assert unexpected == [], f"the bot broke Discord's rules: {unexpected}"
    assert fake.unhandled == [], f"the bot called routes the fake does not know: {fake.unhandled}"
    broken = [
        (f.filename, len(f.data))
        for m in fake.messages.values()
        for f in m.files
        if not whole_picture(f.data)
    ]
    assert broken == [], f"the bot sent files that are not whole pictures: {broken}"


def whole_picture(data: bytes) -> bool:
    """Whether ``data`` is a picture Pillow reads to its last pixel (an empty file once got through)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception:
        return False
    return True


def bot_env(
    fake_discord: FakeDiscord, fake_api: FakeModelsLab, data_dir: Path, **extra: str
) -> dict[str, str]:
    env = {
        "DISCORD_TOKEN": fake_discord.token,
        "SD_API_KEY": fake_api.api_key,
        "SD_API_BASE_URL": fake_api.base_url,
        "DISCORD_API_BASE_URL": fake_discord.api_base,
        "DISCORD_GATEWAY_URL": fake_discord.gateway_url,
        "BOT_DATA_DIR": str(data_dir),
        **FAST_ENV,
    }
    env.update(extra)
    return env


StartBot = Callable[..., Awaitable[Depth2ImgBot]]


@pytest.fixture
async def start_bot(
    fake_discord: FakeDiscord, fake_api: FakeModelsLab, tmp_path: Path
) -> AsyncIterator[StartBot]:
    """Start the real bot in this event loop, connected to the fakes; settings only through env."""
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    started: list[tuple[Depth2ImgBot, asyncio.Task[None]]] = []

    async def start(**extra: str) -> Depth2ImgBot:
        settings, problems = read_settings(bot_env(fake_discord, fake_api, tmp_path / "data", **extra))
        assert problems == []
        configure_discord_endpoints(settings)
        bot = Depth2ImgBot(settings=settings)
        task = asyncio.create_task(bot.start(settings.discord_token))
        started.append((bot, task))
        async with asyncio.timeout(15):
            while not (fake_discord.identified.is_set() and fake_discord.commands):
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        fake_discord.busy_probe = busy(bot)
        return bot

    yield start
    for bot, task in started:
        await bot.close()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest.fixture
async def bot(start_bot: StartBot) -> Depth2ImgBot:
    return await start_bot()


# --- helpers for end-to-end tests -------------------------------------------------------------------


def service_of(bot: Depth2ImgBot):
    """The extension's service as the bot loaded it (for the tests' look at its state)."""
    return bot.get_cog("Depth2ImgCog").service


def busy(bot: Depth2ImgBot) -> Callable[[], Awaitable[bool]]:
    """For ``FakeDiscord.wait_until_idle``: whether the bot (in this process) has jobs in flight."""

    async def probe() -> bool:
        return bool(service_of(bot).busy)

    return probe


def metrics_text(bot: Depth2ImgBot) -> str:
    from prometheus_client import generate_latest

    return generate_latest(bot.metrics_registry).decode()


def is_settled(fake: FakeDiscord, record: InteractionRecord) -> bool:
    """True once the member sees a final state: a non-loading message that is not progress."""
    visible = fake.visible_messages(record)
    if not visible:
        return False
    last = visible[-1]
    return not last.loading and not last.content.startswith(PROGRESS_PREFIXES)


async def slash(
    fake: FakeDiscord,
    options: dict[str, Any],
    *,
    image: bytes | None = None,
    filename: str = "photo.png",
    content_type: str | None = "image/png",
    timeout: float = 20.0,
    **kwargs: Any,
) -> tuple[InteractionRecord, FakeMessage]:
    """Run one /depth2img to its final state and return the record and the final message."""
    opts = dict(options)
    if "image" not in opts:
        opts["image"] = fake.add_attachment(
            image if image is not None else make_png(), filename, content_type
        )
    record = await fake.invoke_slash("depth2img", opts, **kwargs)
    await fake.wait_for(lambda: is_settled(fake, record), timeout=timeout)
    await fake.wait_until_idle(quiet_s=0.1)  # anything after the final state would be a bug
    final = fake.visible_messages(record)[-1]
    return record, final


async def details_of(fake: FakeDiscord, card: FakeMessage, **kwargs: Any) -> FakeMessage:
    """Press a compact card's ℹ️ Details button; returns the private answer."""
    button = next(
        c["custom_id"]
        for row in card.components
        for c in row["components"]
        if c["custom_id"].startswith("d2i:details:")
    )
    record = await fake.click(card, button, **kwargs)
    await fake.wait_for(lambda: bool(fake.visible_messages(record)), timeout=10)
    return fake.visible_messages(record)[-1]


# --- the real bot.py in its own process ------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
BOT_SCRIPT = str(ROOT / "bot.py")
_SETTING_PREFIXES = (
    "DISCORD_",
    "SD_",
    "MAX_",
    "DEV_GUILD",
    "BOT_DATA",
    "DOTENV",
    "SHUTDOWN_",
    "DATABASE_URL",
    "SHARD_",
    "JOB_LEASE",
    "METRICS_",
)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bot_busy(env: dict[str, str]) -> Callable[[], Awaitable[bool]]:
    """For ``FakeDiscord.wait_until_idle``: whether the bot started with ``env`` (which must set
    ``METRICS_PORT``) has jobs in flight, in its own metrics."""
    import aiohttp

    url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"

    async def busy() -> bool:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            text = await resp.text()
        line = next(x for x in text.splitlines() if x.startswith("depth2img_jobs_in_flight "))
        return float(line.split()[1]) > 0

    return busy


def process_env(**extra: str) -> dict[str, str]:
    """The machine's environment without any bot setting, plus ``extra``."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(extra)
    return env


async def spawn_bot(
    fake_discord: FakeDiscord, env: dict[str, str], cwd: Path, *, shard: int | None = None
) -> asyncio.subprocess.Process:
    """Start ``python bot.py`` and wait until it has identified on the fake gateway (as ``shard``)."""
    import sys

    fake_discord.identified.clear()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BOT_SCRIPT,
        cwd=cwd,
        env=process_env(**env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    async with asyncio.timeout(30):
        while not (
            fake_discord.identified.is_set()
            and fake_discord.commands
            and (shard is None or shard in fake_discord.connected_shards)
        ):
            if proc.returncode is not None:
                _, err = await proc.communicate()
                raise AssertionError(f"bot exited early: {err.decode()[-2000:]}")
            await asyncio.sleep(0.05)
    return proc


async def stop_bot(proc: asyncio.subprocess.Process, sig: int, timeout_s: float = 30) -> str:
    """Send ``sig`` and return what the bot wrote to stderr. SIGKILL goes to the whole process group
    (the bot and its image workers), as a crash or an OOM kill of the service would."""
    import os
    import signal as signals

    if proc.returncode is None:
        if sig == signals.SIGKILL:
            os.killpg(proc.pid, signals.SIGKILL)
        else:
            proc.send_signal(sig)
    try:
        async with asyncio.timeout(timeout_s):
            await proc.wait()
            assert proc.stderr is not None
            err = await proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signals.SIGKILL)  # no worker outlives a test
    return err.decode()
