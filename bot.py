"""depth2img-bot: entry point and composition root.

This is the one place that reads settings (``.env`` via python-dotenv, the real environment wins),
configures logging, points discord.py at its endpoints, builds the shared aiohttp session and the
bot, and loads the extensions. Run it with ``make run`` (or ``python bot.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import discord
import yarl
from aiohttp import web
from discord import app_commands
from discord.ext import commands
from dotenv import load_dotenv

from cogs.depth2img.acks import ACKNOWLEDGED
from cogs.depth2img.config import ConfigError, Settings, load_settings
from cogs.depth2img.diagnostics import loop_monitor
from cogs.depth2img.errors import Depth2ImgError
from cogs.depth2img.ledger import Ledger
from cogs.depth2img.messages import describe
from cogs.depth2img.metrics import CONTENT_TYPE, Metrics
from cogs.depth2img.translator import CatalogueTranslator

log = logging.getLogger("depth2img.bot")

EXTENSIONS = ("cogs.depth2img",)
EXIT_CONFIG = 2

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


# --- logging ----------------------------------------------------------------------------------------


class KeyValueFormatter(logging.Formatter):
    """One line per event: time, level, logger, message, then ``key=value`` for every extra field.

    Tracebacks are printed only at DEBUG level; otherwise an error shows its type and where it
    happened, never its text (which may quote user input or a server's answer).
    """

    def __init__(self, *, show_tracebacks: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.show_tracebacks = show_tracebacks

    def format(self, record: logging.LogRecord) -> str:
        exc_info, record.exc_info, record.exc_text = record.exc_info, None, None
        line = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if extras:
            line += " " + " ".join(f"{k}={_kv(v)}" for k, v in sorted(extras.items()))
        if exc_info and exc_info[1] is not None:
            exc = exc_info[1]
            frames = traceback.extract_tb(exc_info[2])
            where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
            line += f" error={type(exc).__name__} at={where}"
            if self.show_tracebacks:
                line += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        record.exc_info = exc_info
        return line


def _kv(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


class RedactSecrets(logging.Filter):
    """Last line of defence: a secret that slipped into a log line is replaced."""

    def __init__(self, secrets_: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets_ if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for s in self._secrets:
            redacted = redacted.replace(s, "[redacted]")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(level: str, secrets_: list[str]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(show_tracebacks=level == "DEBUG"))
    handler.addFilter(RedactSecrets(secrets_))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("discord.http", "discord.gateway", "discord.client", "discord.webhook"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


# --- the bot --------------------------------------------------------------------------------------


class AppCommandTree(app_commands.CommandTree["Depth2ImgBot"]):
    """The one global error handler: anything unexpected becomes a short message with a reference."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, discord.NotFound) and original.code == 10062:
            # Discord gave up on this interaction (acknowledged too late, or already answered):
            # nothing can be sent on it any more, so don't try twice.
            log.warning(
                "interaction expired before the bot could answer", extra={"interaction_id": interaction.id}
            )
            return
        if isinstance(error, app_commands.CommandOnCooldown):
            text = f"⏳ Slow down: try again <t:{int(discord.utils.utcnow().timestamp() + error.retry_after) + 1}:R>."
        elif isinstance(error, app_commands.CheckFailure):
            text = "🚫 You can't use this command here."
        elif isinstance(original, Depth2ImgError):
            text = describe(original)
        else:
            ref = secrets.token_hex(4)
            log.error(
                "unhandled command error",
                exc_info=(type(original), original, original.__traceback__),
                extra={"ref": ref, "command": interaction.command.name if interaction.command else None},
            )
            text = f"⚠️ Something went wrong (ref `{ref}`). Try again; if it keeps happening, give the bot's owner this ref."
        await send_final(interaction, text)


async def send_final(interaction: discord.Interaction, text: str) -> None:
    """Tell the member, whatever state the interaction is in; never raise."""
    none = discord.AllowedMentions.none()
    try:
        if not interaction.response.is_done() and not interaction.extras.get(ACKNOWLEDGED):
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=none)
            return
        try:
            await interaction.edit_original_response(content=text, attachments=[], allowed_mentions=none)
        except discord.NotFound:
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=none)
    except discord.HTTPException as exc:
        log.warning("could not deliver an error message", extra={"status": exc.status})


class Depth2ImgBot(commands.AutoShardedBot):
    """discord.py's sharded bot: ``SHARD_COUNT``/``SHARD_IDS`` choose the shards this process runs
    (unset: one shard, the same as an unsharded connection)."""

    def __init__(self, *, settings: Settings, http_session: aiohttp.ClientSession, ledger: Ledger) -> None:
        # This bot never joins voice: don't warn at every start that voice libraries are missing.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
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
            shard_count=settings.shard_count or 1,
            # discord.py reads None as "all shards" though its annotation says list[int]
            shard_ids=list(settings.shard_ids) if settings.shard_ids is not None else None,  # type: ignore[arg-type]
        )
        self.settings = settings
        self.http_session = http_session
        self.ledger = ledger
        self.metrics = Metrics()

    async def drain(self, grace_s: float) -> bool:
        """Stop taking new work and let jobs in flight finish for at most ``grace_s`` seconds.
        Returns whether everything finished; what did not stays in the ledger and resumes later."""
        cog = self.get_cog("Depth2ImgCog")
        service = getattr(cog, "service", None)
        if service is None:
            return True
        service.admission.draining = True
        log.info("draining", extra={"in_flight": service.admission.in_flight, "grace_s": grace_s})
        try:
            async with asyncio.timeout(grace_s):
                await service.admission.idle.wait()
        except TimeoutError:
            log.info(
                "grace period over; unfinished jobs will resume at the next start",
                extra={"in_flight": service.admission.in_flight},
            )
            return False
        return True

    async def setup_hook(self) -> None:
        await self.tree.set_translator(CatalogueTranslator())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self.sync_commands()
        # What is loaded by now lives as long as the process: keep it out of the collector's full
        # passes, which otherwise paused the event loop for up to ~100 ms during a 200-request burst.
        gc.collect()
        gc.freeze()

    def busy(self) -> bool:
        """Whether any job is in flight (for :func:`collect_garbage_between_bursts`)."""
        service = getattr(self.get_cog("Depth2ImgCog"), "service", None)
        return service is not None and service.admission.in_flight > 0

    async def sync_commands(self) -> None:
        settings = self.settings
        if settings.dev_guild_id is not None:
            guild = discord.Object(id=settings.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("commands synced to the dev guild", extra={"guild_id": guild.id, "count": len(synced)})
            return
        digest = await self.command_digest()
        state_file = settings.data_dir / "command-sync.json"
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(state_file.read_text("utf-8"))
        key = str(self.application_id)
        if state.get(key) == digest:
            log.info("commands unchanged since the last sync; not syncing", extra={"digest": digest[:12]})
            return
        synced = await self.tree.sync()
        state[key] = digest
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), "utf-8")
        tmp.replace(state_file)
        log.info("global commands synced", extra={"count": len(synced), "digest": digest[:12]})

    async def command_digest(self) -> str:
        """A hash of exactly what a sync would send (translations included)."""
        translator = self.tree.translator
        payload = []
        for command in self.tree.get_commands():
            if translator is not None:
                payload.append(await command.get_translated_payload(self.tree, translator))
            else:
                payload.append(command.to_dict(self.tree))
        payload.sort(key=lambda d: str(d["name"]))
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    async def on_ready(self) -> None:
        log.info(
            "ready",
            extra={"user": str(self.user), "guilds": len(self.guilds), "shards": _shard_list(self.shard_ids)},
        )


def _shard_list(ids: list[int] | None) -> str:
    return ",".join(map(str, ids)) if ids else "0"


def configure_discord_endpoints(settings: Settings) -> None:
    """discord.py has no base-URL option; these two class attributes are its endpoints."""
    if settings.discord_api_base_url:
        discord.http.Route.BASE = settings.discord_api_base_url
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def run(settings: Settings) -> int:
    configure_discord_endpoints(settings)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=15)
    ledger = await open_ledger(settings)
    try:
        return await _run_bot(settings, ledger, timeout)
    finally:
        await ledger.close()


async def open_ledger(settings: Settings) -> Ledger:
    """PostgreSQL when ``DATABASE_URL`` is set (several processes), else SQLite in the data folder."""
    target: str | Path = settings.database_url or settings.data_dir / "jobs.sqlite3"
    ledger = await Ledger.open(target, group=settings.instance_group, lease_s=settings.job_lease_s)
    log.info("job ledger open", extra={"backend": ledger.backend, "owner": ledger.owner})
    return ledger


@contextlib.asynccontextmanager
async def metrics_server(settings: Settings, metrics: Metrics) -> AsyncIterator[int | None]:
    """Serve ``GET /metrics`` on ``METRICS_HOST:METRICS_PORT`` while the bot runs (if set); yields
    the port it listens on."""
    if settings.metrics_port is None:
        yield None
        return

    async def scrape(_: web.Request) -> web.Response:
        body = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    # A scraper's keep-alive connection must not hold up shutdown.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        log.error(
            "the metrics port could not be opened; running without metrics",
            extra={"host": settings.metrics_host, "port": settings.metrics_port, "error": type(exc).__name__},
        )
        yield None
        return
    port = int(runner.addresses[0][1]) if runner.addresses else settings.metrics_port
    log.info("metrics served", extra={"url": f"http://{settings.metrics_host}:{port}/metrics"})
    try:
        yield port
    finally:
        await runner.cleanup()


async def _run_bot(settings: Settings, ledger: Ledger, http_timeout: aiohttp.ClientTimeout) -> int:
    # Enough connections for every job the bot lets run at once (aiohttp's default is 100 in all):
    # otherwise jobs queue for a connection inside aiohttp, after our own fair queue.
    connections = max(100, 2 * settings.depth2img.max_concurrent_jobs + 16)
    async with (
        aiohttp.ClientSession(
            timeout=http_timeout,
            headers={"User-Agent": "depth2img-bot/0.1"},
            connector=aiohttp.TCPConnector(limit=connections),
        ) as session,
        Depth2ImgBot(settings=settings, http_session=session, ledger=ledger) as bot,
        metrics_server(settings, bot.metrics),
    ):
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stopping.set)
        monitor = asyncio.create_task(loop_monitor(settings.loop_monitor_file))
        collector = asyncio.create_task(collect_garbage_between_bursts(bot.busy))
        runner = asyncio.create_task(bot.start(settings.discord_token))
        stopper = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            log.info("shutting down")
            await bot.drain(settings.shutdown_grace_s)
            await bot.close()
        stopper.cancel()
        monitor.cancel()
        collector.cancel()
        try:
            await runner
        except discord.LoginFailure:
            log.error("Discord rejected DISCORD_TOKEN: check the token in .env (Bot → Reset Token).")
            return 1
        except discord.PrivilegedIntentsRequired:
            log.error("Discord refused the bot's intents; this bot needs no privileged intents.")
            return 1
    return 0


# Garbage collection: young objects as usual (but less often), the full passes between bursts.
GC_YOUNG_THRESHOLD = 7000  # CPython's default is 700
GC_IDLE_S = 0.2
GC_FULL_AT_LEAST_EVERY_S = 15.0


async def collect_garbage_between_bursts(busy: Callable[[], bool]) -> None:
    """Run CPython's full garbage collection when no job is in flight, not in the middle of a burst.

    A full pass walks every object the process has made since start-up; during a 200-request burst
    that paused the event loop for 20-90 ms at a time (measured with gc.callbacks), holding up
    acknowledgements. Automatic full passes are switched off and this task runs one once the bot
    has had nothing in flight for GC_IDLE_S (after any activity), and, under unbroken load, at least
    every GC_FULL_AT_LEAST_EVERY_S, so that memory in reference cycles is still returned. Young
    collections stay automatic, 10x less often than CPython's default (each is short either way).
    """
    loop = asyncio.get_running_loop()
    _, middle, _ = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, 1 << 30)
    last = loop.time()
    try:
        while True:
            await asyncio.sleep(GC_IDLE_S)
            active_since = gc.get_count()[2] > 0  # a middle-generation pass ran since the last full one
            overdue = loop.time() - last >= GC_FULL_AT_LEAST_EVERY_S
            if (active_since and not busy()) or overdue:
                gc.collect()
                last = loop.time()
    finally:
        gc.set_threshold(700, middle, 10)


def main() -> int:
    env_file = Path(os.environ.get("DOTENV_PATH", ".env"))
    had_env_file = env_file.is_file()
    if had_env_file:
        load_dotenv(env_file, override=False)
    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        lines = ["depth2img-bot cannot start: the settings need attention.", ""]
        if not had_env_file:
            lines += [
                f"No {env_file} file was found. Create one from the example and fill it in:",
                f"    cp .env.example {env_file}",
                "",
            ]
        lines += [f"  - {p}" for p in exc.problems]
        lines += ["", "Every setting is described in README.md and .env.example."]
        print("\n".join(lines), file=sys.stderr)  # noqa: T201
        return EXIT_CONFIG
    configure_logging(settings.log_level, _secrets_of(settings))
    try:
        with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
            return runner.run(run(settings))
    except KeyboardInterrupt:
        return 130


def _secrets_of(settings: Settings) -> list[str]:
    found = [settings.discord_token, settings.depth2img.api_key]
    if settings.database_url:
        found.append(settings.database_url)
        password = urlsplit(settings.database_url).password
        if password:
            found.append(password)
    return found


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
