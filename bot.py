"""depth2img-bot: entry point and composition root.

The one place that reads the bot's settings (``.env`` via python-dotenv; the real environment wins),
configures logging and the C allocator (``cogs.botcore.memory``), chooses the event loop, points
discord.py at its endpoints, builds the metrics registry, the bot and its command tree, and loads the
extensions by name: ``cogs.botcore`` (the bot's own machinery: the tree, command sync, logging, the
metrics port, paced garbage collection) and ``cogs.depth2img`` (the feature). Of an extension it uses
only the public face (``setup``, ``settings_problems``, ``secret_values``); an extension registers what
it wants from the bot (its error wording, its drain). Run it with ``make run`` (or ``python bot.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import discord
import yarl
from discord.ext import commands
from dotenv import load_dotenv
from prometheus_client import CollectorRegistry

from cogs.botcore import gateway_json
from cogs.botcore.logs import configure_logging
from cogs.botcore.memory import keep_freed_memory
from cogs.botcore.ratelimits import RATE_LIMIT_WAIT_MAX_S, rate_limit_guard
from cogs.botcore.startup import EXIT_CONFIG, StartFailed, check, data_dir_problem, ended, start
from cogs.botcore.sync import sync_commands
from cogs.botcore.tree import AppCommandTree, ErrorFormatter

log = logging.getLogger("depth2img.bot")

EXTENSIONS = ("cogs.botcore", "cogs.depth2img")

Drain = Callable[[float], Awaitable[bool]]

# --- settings ---------------------------------------------------------------------------------------

# (variable, meaning) for every setting of the bot itself; each extension lists its own.
SETTINGS_HELP: dict[str, str] = {
    "DISCORD_TOKEN": "the bot token from the Discord developer portal (Bot → Reset Token)",
    "DISCORD_API_BASE_URL": "optional: a Discord REST base such as http://127.0.0.1:8080/api/v10 (proxy or fake)",
    "DISCORD_GATEWAY_URL": "optional: a Discord gateway URL such as ws://127.0.0.1:8080/gateway",
    "DEV_GUILD_ID": "optional: a server id to sync commands to at start-up (instant updates)",
    "BOT_DATA_DIR": "where the bot keeps its files (default ./data)",
    "LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR (default INFO)",
    "SHUTDOWN_GRACE_S": "on SIGTERM/SIGINT, seconds to let jobs in flight finish before stopping (default 25)",
    "SHARD_COUNT": "optional: total number of shards (discord.py's sharded client); unset = one connection",
    "SHARD_IDS": "optional: the shards this process runs, e.g. 0,1 (default: all of SHARD_COUNT); needs SHARD_COUNT",
    "EVENT_LOOP": "uvloop (default, where it is installed) or asyncio (Python's own event loop)",
    "DISCORD_TIMEOUT_S": "seconds Discord has to answer the login, and then to connect the gateway, before the bot stops with a clear line (default 60)",
}


@dataclass(frozen=True, slots=True)
class Settings:
    discord_token: str = field(repr=False)
    env: Mapping[str, str] = field(repr=False, default_factory=dict)  # for the extensions' own settings
    discord_api_base_url: str | None = None
    discord_gateway_url: str | None = None
    dev_guild_id: int | None = None
    data_dir: Path = Path("data")
    log_level: str = "INFO"
    shutdown_grace_s: float = 25.0
    shard_count: int | None = None  # None: one unsharded connection
    shard_ids: tuple[int, ...] | None = None  # None: all of shard_count in this process
    event_loop: str = "uvloop"
    discord_timeout_s: float = 60.0

    @property
    def instance_group(self) -> str:
        """What this process shares with the process it replaces: its shards."""
        if self.shard_count is None:
            return "main"
        ids = self.shard_ids if self.shard_ids is not None else tuple(range(self.shard_count))
        return f"shards-{'.'.join(map(str, ids))}-of-{self.shard_count}"


class _Env:
    """Reads settings from a mapping, noting every problem (and never echoing a secret back)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env, self.problems = env, list[str]()

    def get(self, name: str) -> str | None:
        return (self.env.get(name) or "").strip() or None

    def number(self, name: str, default: float, lo: float, hi: float) -> float:
        value = self.get(name)
        try:
            number = float(value) if value is not None else default
        except ValueError:
            number = math.nan
        if not lo <= number <= hi:
            self.problems.append(f"{name}={value!r} is not a number from {lo:g} to {hi:g}.")
            return default
        return number

    def whole(self, name: str, lo: int, hi: int) -> int | None:
        if self.get(name) is None:
            return None
        number = self.number(name, lo, lo, hi)
        if number != int(number):
            self.problems.append(f"{name} must be a whole number.")
        return int(number)

    def choice(self, name: str, default: str, options: tuple[str, ...]) -> str:
        value = (self.get(name) or default).lower()
        if value not in options:
            self.problems.append(f"{name}={value!r} is not one of {', '.join(options)}.")
            return default
        return value

    def url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        value = self.get(name)
        if value is not None and (urlsplit(value).scheme not in schemes or not urlsplit(value).hostname):
            self.problems.append(f"{name}={value!r} is not a valid {'/'.join(schemes)} URL.")
            return None
        return value.rstrip("/") if value else None


def read_settings(env: Mapping[str, str]) -> tuple[Settings, list[str]]:
    """The bot's settings and every problem found in them (the extensions check their own)."""
    r = _Env(env)
    token = r.get("DISCORD_TOKEN") or ""
    if not token:
        r.problems.append(f"DISCORD_TOKEN is missing: set it to {SETTINGS_HELP['DISCORD_TOKEN']}.")
    elif any(ch.isspace() for ch in token) or not token.isprintable():
        r.problems.append("DISCORD_TOKEN contains spaces or control characters: paste the value again.")
    guild = r.get("DEV_GUILD_ID")
    if guild is not None and not (guild.isdigit() and 15 <= len(guild) <= 21):
        r.problems.append(
            f"DEV_GUILD_ID={guild!r} is not a server id: right-click the server with Developer Mode "
            "on and choose Copy Server ID, or leave it empty."
        )
        guild = None
    shard_count = r.whole("SHARD_COUNT", 1, 10_000)
    shard_ids: tuple[int, ...] | None = None
    if (raw_ids := r.get("SHARD_IDS")) is not None:
        with contextlib.suppress(ValueError):
            shard_ids = tuple(sorted({int(x) for x in raw_ids.replace(" ", "").split(",") if x}))
        if shard_ids is None:
            r.problems.append(f"SHARD_IDS={raw_ids!r} is not a list of shard numbers such as 0,1.")
        elif shard_count is None:
            r.problems.append("SHARD_IDS needs SHARD_COUNT (the total number of shards).")
        elif not shard_ids or not set(shard_ids) <= set(range(shard_count)):
            r.problems.append(
                f"SHARD_IDS={raw_ids!r}: each id must be from 0 to SHARD_COUNT-1 ({shard_count - 1})."
            )
    settings = Settings(
        discord_token=token,
        env=dict(env),
        discord_api_base_url=r.url("DISCORD_API_BASE_URL", ("http", "https")),
        discord_gateway_url=r.url("DISCORD_GATEWAY_URL", ("ws", "wss")),
        dev_guild_id=int(guild) if guild else None,
        data_dir=Path(r.get("BOT_DATA_DIR") or "data"),
        log_level=r.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper(),
        shutdown_grace_s=r.number("SHUTDOWN_GRACE_S", 25.0, 0, 600),
        shard_count=shard_count,
        shard_ids=shard_ids,
        event_loop=r.choice("EVENT_LOOP", "uvloop", ("uvloop", "asyncio")),
        discord_timeout_s=r.number("DISCORD_TIMEOUT_S", 60.0, 1, 3600),
    )
    return settings, r.problems


# --- the command tree and the bot -------------------------------------------------------------------


class Depth2ImgBot(commands.AutoShardedBot):
    tree: AppCommandTree

    """discord.py's sharded bot: ``SHARD_COUNT``/``SHARD_IDS`` choose the shards this process runs
    (unset: one shard, the same as an unsharded connection). What extensions use of it: ``env``,
    ``data_dir``, ``metrics_registry``, ``instance_group``, and the registries of
    error formatters and drains."""

    def __init__(self, *, settings: Settings) -> None:
        # This bot never joins voice: don't warn at every start that voice libraries are missing.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        # A member's text holding a lone surrogate must not stop the bot (cogs/botcore/gateway_json.py).
        gateway_json.install()
        # Slash commands, buttons and modals come as interactions, which need no intent. Only the
        # servers themselves (their roles and channels) are needed: with discord.py's default intents
        # every message, reaction and typing event in every channel would be sent here, parsed and
        # cached, for nothing, in the same event loop that must acknowledge members within 3 s.
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            max_messages=None,
            tree_cls=AppCommandTree,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            # A rate limit longer than this is not waited out: the request raises discord.RateLimited
            # (cogs/botcore/ratelimits.py; the interaction token's requests through the trace).
            max_ratelimit_timeout=RATE_LIMIT_WAIT_MAX_S,
            http_trace=rate_limit_guard(),
            shard_count=settings.shard_count or 1,
            # discord.py reads None as "all shards" though its annotation says list[int]
            shard_ids=list(settings.shard_ids) if settings.shard_ids is not None else None,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.env = settings.env
        self.data_dir = settings.data_dir
        self.instance_group = settings.instance_group
        self.metrics_registry = CollectorRegistry(auto_describe=True)
        self._drains: dict[str, tuple[Drain, Callable[[], bool]]] = {}
        self._readiness: dict[str, Callable[[], Awaitable[bool]]] = {}

    def add_error_formatter(self, name: str, formatter: ErrorFormatter) -> None:
        self.tree.error_formatters[name] = formatter

    def remove_error_formatter(self, name: str) -> None:
        self.tree.error_formatters.pop(name, None)

    def add_drain(self, name: str, drain: Drain, busy: Callable[[], bool]) -> None:
        self._drains[name] = (drain, busy)

    def remove_drain(self, name: str) -> None:
        self._drains.pop(name, None)

    def add_readiness(self, name: str, check: Callable[[], Awaitable[bool]]) -> None:
        self._readiness[name] = check

    def remove_readiness(self, name: str) -> None:
        self._readiness.pop(name, None)

    async def readiness(self) -> dict[str, bool]:
        """What ``/healthz`` reports: the gateway (every shard connected) and each extension's own."""
        gateway = (
            self.is_ready() and not self.is_closed() and all(not s.is_closed() for s in self.shards.values())
        )
        found = {"gateway": gateway}
        for name, ready in list(self._readiness.items()):
            found[name] = await ready()
        return found

    async def drain(self, grace_s: float) -> bool:
        """Let every extension finish its work in flight, for at most ``grace_s`` seconds in all."""
        results = await asyncio.gather(*(drain(grace_s) for drain, _ in self._drains.values()))
        return all(results)

    def busy(self) -> bool:
        return any(busy() for _, busy in self._drains.values())

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await sync_commands(self, data_dir=self.data_dir, dev_guild_id=self.settings.dev_guild_id)
        # What is loaded by now lives as long as the process: keep it out of the collector's full
        # passes, which otherwise paused the event loop for up to ~100 ms in a 200-request burst.
        gc.collect()
        gc.freeze()

    async def on_ready(self) -> None:
        shards = ",".join(map(str, self.shard_ids)) if self.shard_ids else "0"
        log.info("ready", extra={"user": str(self.user), "guilds": len(self.guilds), "shards": shards})


def configure_discord_endpoints(settings: Settings) -> None:
    """discord.py has no base-URL option; these two class attributes are its endpoints."""
    if settings.discord_api_base_url:
        discord.http.Route.BASE = settings.discord_api_base_url
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def run(settings: Settings) -> int:
    configure_discord_endpoints(settings)
    if (problem := data_dir_problem(settings.data_dir)) is not None:
        log.error(str(StartFailed(problem, EXIT_CONFIG)))
        return EXIT_CONFIG
    async with Depth2ImgBot(settings=settings) as bot:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stopping.set)
        runner = asyncio.create_task(
            start(bot, settings.discord_token, settings.discord_timeout_s), name="bot"
        )
        stopper = asyncio.create_task(stopping.wait(), name="signals")
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("shutting down")
            await bot.drain(settings.shutdown_grace_s)
            await bot.close()
        stopper.cancel()
        try:
            await runner
        except Exception as exc:
            return ended(exc)
    return 0


def main() -> int:
    env_file = Path(os.environ.get("DOTENV_PATH", ".env"))
    had_env_file = env_file.is_file()
    if had_env_file:
        load_dotenv(env_file, override=False)
    env = dict(os.environ)
    settings, problems = read_settings(env)
    extensions = [importlib.import_module(name) for name in EXTENSIONS]
    for extension in extensions:
        problems += extension.settings_problems(env)
    if problems:
        lines = ["depth2img-bot cannot start: the settings need attention.", ""]
        if not had_env_file:
            lines += [
                f"No {env_file} file was found. Create one from the example and fill it in:",
                f"    cp .env.example {env_file}",
                "",
            ]
        lines += [f"  - {p}" for p in problems]
        lines += ["", "Every setting is described in README.md and .env.example."]
        print("\n".join(lines), file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    secrets_ = [settings.discord_token] + [s for ext in extensions for s in ext.secret_values(env)]
    configure_logging(settings.log_level, secrets_)
    if "--check" in sys.argv[1:]:
        configure_discord_endpoints(settings)
        return asyncio.run(check(settings.discord_token, extensions, env))
    keep_freed_memory()
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            return runner.run(run(settings))
    except KeyboardInterrupt:
        return 130


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS) unless EVENT_LOOP=asyncio: a faster event loop
    for the same code."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
