"""Settings, read from a mapping (``os.environ`` after ``load_dotenv``) by the composition root.

Nothing reads the environment at import time. :func:`load_settings` collects *every* problem and
raises one :class:`ConfigError` that lists them, so an owner fixes their ``.env`` in one go.
Secret values are never echoed back in a problem.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

DEFAULT_API_BASE_URL = "https://stablediffusionapi.com/api"

T = TypeVar("T")


class ConfigError(Exception):
    """One or more settings are missing or invalid."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Depth2ImgSettings:
    api_key: str = field(repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    max_concurrent_jobs: int = 5
    max_queued_jobs: int = 50
    max_jobs_per_user: int = 1
    request_timeout_s: float = 60.0
    job_timeout_s: float = 600.0
    max_retries: int = 3
    rate_limit_max_wait_s: float = 15.0
    poll_initial_s: float = 2.0
    poll_max_s: float = 10.0
    max_input_bytes: int = 10 * 1024 * 1024
    max_input_pixels: int = 40_000_000
    max_output_bytes: int = 25 * 1024 * 1024
    user_cooldown_s: float = 3.0
    guild_daily_quota: int = 0  # 0 = no quota
    source_max_side: int = 1024  # the API's generation limit
    progress_interval_s: float = 3.0
    image_workers: int = 2
    picture_threads: int = 1  # threads that check and store pictures (see load_settings for the default)
    keep_pictures_days: float = 30.0  # 0 = keep forever


@dataclass(frozen=True, slots=True)
class Settings:
    discord_token: str = field(repr=False)
    depth2img: Depth2ImgSettings
    discord_api_base_url: str | None = None
    discord_gateway_url: str | None = None
    dev_guild_id: int | None = None
    data_dir: Path = Path("data")
    log_level: str = "INFO"
    shutdown_grace_s: float = 25.0
    loop_monitor_file: Path | None = None
    database_url: str | None = field(default=None, repr=False)  # None: SQLite in data_dir
    shard_count: int | None = None  # None: one unsharded connection
    shard_ids: tuple[int, ...] | None = None  # None: all of shard_count in this process
    job_lease_s: float = 60.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    event_loop: str = "uvloop"  # "uvloop" (when installed) or "asyncio"
    fast_acks: bool = True  # acknowledge through acks.InteractionAcks (else through discord.py)

    @property
    def instance_group(self) -> str:
        """What this process shares with the process it replaces: its shards."""
        if self.shard_count is None:
            return "main"
        ids = self.shard_ids if self.shard_ids is not None else tuple(range(self.shard_count))
        return f"shards-{'.'.join(map(str, ids))}-of-{self.shard_count}"


# (variable, meaning) for every setting: used by the README, .env.example and error messages.
SETTINGS_HELP: dict[str, str] = {
    "DISCORD_TOKEN": "the bot token from the Discord developer portal (Bot → Reset Token)",
    "SD_API_KEY": "your stablediffusionapi.com / ModelsLab API key",
    "SD_API_BASE_URL": f"the image API's base URL (default {DEFAULT_API_BASE_URL})",
    "DISCORD_API_BASE_URL": "optional: a Discord REST base such as http://127.0.0.1:8080/api/v10 (proxy or fake)",
    "DISCORD_GATEWAY_URL": "optional: a Discord gateway URL such as ws://127.0.0.1:8080/gateway",
    "DEV_GUILD_ID": "optional: a server id to sync commands to at start-up (instant updates)",
    "BOT_DATA_DIR": "where the bot keeps its files (default ./data)",
    "LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR (default INFO)",
    "SD_MAX_CONCURRENT": "generations at the API at once (default 5; plans allow 5 to 15 queued)",
    "SD_MAX_QUEUED": "requests that may wait for a free slot before members are told to retry (default 50)",
    "SD_MAX_JOBS_PER_USER": "jobs one member may have in flight at once (default 1)",
    "SD_REQUEST_TIMEOUT_S": "seconds to wait for one API answer (default 60)",
    "SD_JOB_TIMEOUT_S": "seconds before a job is given up, queueing included (default 600, at most 840)",
    "SD_MAX_RETRIES": "retries of a failed poll or download (default 3)",
    "SD_RATE_LIMIT_MAX_WAIT_S": "longest retry_after the bot waits out itself on a 429 (default 15)",
    "SD_POLL_INITIAL_S": "first wait between polls of a queued job (default 2)",
    "SD_POLL_MAX_S": "longest wait between polls (default 10)",
    "MAX_INPUT_BYTES": "largest attachment accepted, in bytes (default 10485760 = 10 MB)",
    "MAX_INPUT_PIXELS": "largest attachment accepted, in pixels (default 40000000)",
    "MAX_OUTPUT_BYTES": "largest output image downloaded from the API, in bytes (default 26214400)",
    "SD_USER_COOLDOWN_S": "seconds a member waits between two requests (default 3; 0 = none)",
    "SD_GUILD_DAILY_QUOTA": "requests one server may make per UTC day (default 0 = no quota)",
    "KEEP_PICTURES_DAYS": "days to keep the pictures of finished jobs, for their buttons and /depth2img-show (default 30; 0 = forever)",
    "PICTURE_THREADS": "threads that checksum and store pictures (default: one fewer than the machine's cores, at least 1)",
    "IMAGE_WORKERS": "processes that check and re-encode pictures off the event loop (default 2; 0 = threads)",
    "PROGRESS_INTERVAL_S": "least seconds between two progress updates of a message (default 3)",
    "LOOP_MONITOR_FILE": "optional: append the event loop's worst stall per 0.25 s to this file (diagnostics, benchmarks)",
    "DATABASE_URL": "optional: postgresql://user:password@host/db for the job ledger (default: SQLite in BOT_DATA_DIR); needed to run several bot processes",
    "SHARD_COUNT": "optional: total number of shards (discord.py's sharded client); unset = one connection",
    "SHARD_IDS": "optional: the shards this process runs, e.g. 0,1 (default: all of SHARD_COUNT); needs SHARD_COUNT",
    "JOB_LEASE_S": "seconds a stopped process's unfinished jobs wait before another process takes them over (default 60)",
    "METRICS_PORT": "optional: serve Prometheus metrics at http://METRICS_HOST:METRICS_PORT/metrics",
    "METRICS_HOST": "the address the metrics port listens on (default 127.0.0.1)",
    "SHUTDOWN_GRACE_S": "on SIGTERM/SIGINT, seconds to let jobs in flight finish before stopping (default 25)",
    "EVENT_LOOP": "uvloop (default, where it is installed) or asyncio (Python's own event loop)",
    "FAST_ACKS": "on (default): acknowledge commands over the bot's own lean connections to Discord; off: through discord.py",
}


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def required_secret(self, name: str) -> str:
        value = self.raw(name)
        if value is None:
            self.problems.append(f"{name} is missing: set it to {SETTINGS_HELP[name]}.")
            return ""
        if any(ch.isspace() for ch in value) or not value.isprintable():
            self.problems.append(f"{name} contains spaces or control characters: paste the value again.")
        return value

    def number(self, name: str, default: T, convert: Callable[[str], T], lo: float, hi: float) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = convert(value)
        except ValueError:
            kind = "a whole number" if convert is int else "a number"
            self.problems.append(f"{name}={value!r} is not {kind}: use {kind} from {lo:g} to {hi:g}.")
            return default
        as_float = float(parsed)  # type: ignore[arg-type]
        if not math.isfinite(as_float) or not lo <= as_float <= hi:
            self.problems.append(f"{name}={value!r} is out of range: use a value from {lo:g} to {hi:g}.")
            return default
        return parsed

    def switch(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() in ("1", "on", "yes", "true"):
            return True
        if value.lower() in ("0", "off", "no", "false"):
            return False
        self.problems.append(f"{name}={value!r} is not on or off.")
        return default

    def url(self, name: str, schemes: tuple[str, ...], default: str | None) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            self.problems.append(f"{name}={value!r} is not a valid {'/'.join(schemes)} URL.")
            return default
        return value.rstrip("/")


def load_settings(env: Mapping[str, str]) -> Settings:
    """Build :class:`Settings` from ``env``, or raise :class:`ConfigError` listing every problem."""
    r = _Reader(env)
    token = r.required_secret("DISCORD_TOKEN")
    api_key = r.required_secret("SD_API_KEY")
    api_base = r.url("SD_API_BASE_URL", ("http", "https"), DEFAULT_API_BASE_URL) or DEFAULT_API_BASE_URL
    discord_api = r.url("DISCORD_API_BASE_URL", ("http", "https"), None)
    gateway = r.url("DISCORD_GATEWAY_URL", ("ws", "wss"), None)

    dev_guild: int | None = None
    raw_guild = r.raw("DEV_GUILD_ID")
    if raw_guild is not None:
        if raw_guild.isdigit() and 15 <= len(raw_guild) <= 21:
            dev_guild = int(raw_guild)
        else:
            r.problems.append(
                f"DEV_GUILD_ID={raw_guild!r} is not a server id: right-click the server with Developer Mode "
                "on and choose Copy Server ID, or leave it empty."
            )

    log_level = (r.raw("LOG_LEVEL") or "INFO").upper()
    if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        r.problems.append(f"LOG_LEVEL={log_level!r} is not one of DEBUG, INFO, WARNING, ERROR.")
        log_level = "INFO"

    depth = Depth2ImgSettings(
        api_key=api_key,
        api_base_url=api_base,
        max_concurrent_jobs=r.number("SD_MAX_CONCURRENT", 5, int, 1, 1000),
        max_queued_jobs=r.number("SD_MAX_QUEUED", 50, int, 0, 100_000),
        max_jobs_per_user=r.number("SD_MAX_JOBS_PER_USER", 1, int, 1, 100),
        request_timeout_s=r.number("SD_REQUEST_TIMEOUT_S", 60.0, float, 1, 600),
        job_timeout_s=r.number("SD_JOB_TIMEOUT_S", 600.0, float, 1, 840),
        max_retries=r.number("SD_MAX_RETRIES", 3, int, 0, 10),
        rate_limit_max_wait_s=r.number("SD_RATE_LIMIT_MAX_WAIT_S", 15.0, float, 0, 300),
        poll_initial_s=r.number("SD_POLL_INITIAL_S", 2.0, float, 0.01, 60),
        poll_max_s=r.number("SD_POLL_MAX_S", 10.0, float, 0.01, 120),
        max_input_bytes=r.number("MAX_INPUT_BYTES", 10 * 1024 * 1024, int, 1024, 500 * 1024 * 1024),
        max_input_pixels=r.number("MAX_INPUT_PIXELS", 40_000_000, int, 4096, 400_000_000),
        max_output_bytes=r.number("MAX_OUTPUT_BYTES", 25 * 1024 * 1024, int, 1024, 500 * 1024 * 1024),
        user_cooldown_s=r.number("SD_USER_COOLDOWN_S", 3.0, float, 0, 3600),
        guild_daily_quota=r.number("SD_GUILD_DAILY_QUOTA", 0, int, 0, 1_000_000),
        progress_interval_s=r.number("PROGRESS_INTERVAL_S", 3.0, float, 0.1, 60),
        image_workers=r.number("IMAGE_WORKERS", 2, int, 0, 64),
        picture_threads=r.number("PICTURE_THREADS", max(1, (os.cpu_count() or 2) - 1), int, 1, 64),
        keep_pictures_days=r.number("KEEP_PICTURES_DAYS", 30.0, float, 0, 36500),
    )
    shutdown_grace = r.number("SHUTDOWN_GRACE_S", 25.0, float, 0, 600)
    data_dir = Path(r.raw("BOT_DATA_DIR") or "data")

    database_url = r.raw("DATABASE_URL")
    if database_url is not None:
        parts = urlsplit(database_url)
        if parts.scheme not in ("postgres", "postgresql") or not (parts.hostname or parts.query):
            r.problems.append(
                "DATABASE_URL is not a PostgreSQL URL: use postgresql://user:password@host:5432/dbname, "
                "or leave it empty for SQLite."
            )
            database_url = None
    shard_count: int | None = None
    if r.raw("SHARD_COUNT") is not None:
        shard_count = r.number("SHARD_COUNT", 1, int, 1, 10_000)
    shard_ids: tuple[int, ...] | None = None
    raw_ids = r.raw("SHARD_IDS")
    if raw_ids is not None:
        try:
            shard_ids = tuple(sorted({int(x) for x in raw_ids.replace(" ", "").split(",") if x}))
        except ValueError:
            r.problems.append(f"SHARD_IDS={raw_ids!r} is not a list of shard numbers such as 0,1.")
        if shard_ids is not None:
            if shard_count is None:
                r.problems.append("SHARD_IDS needs SHARD_COUNT (the total number of shards).")
            elif not shard_ids or any(not 0 <= i < shard_count for i in shard_ids):
                r.problems.append(
                    f"SHARD_IDS={raw_ids!r}: each id must be from 0 to SHARD_COUNT-1 ({shard_count - 1})."
                )
    metrics_port: int | None = None
    if r.raw("METRICS_PORT") is not None:
        metrics_port = r.number("METRICS_PORT", 0, int, 0, 65535)
    metrics_host = r.raw("METRICS_HOST") or "127.0.0.1"
    job_lease_s = r.number("JOB_LEASE_S", 60.0, float, 1, 3600)
    fast_acks = r.switch("FAST_ACKS", True)
    event_loop = (r.raw("EVENT_LOOP") or "uvloop").lower()
    if event_loop not in ("uvloop", "asyncio"):
        r.problems.append(f"EVENT_LOOP={event_loop!r} is not uvloop or asyncio.")

    if r.problems:
        raise ConfigError(r.problems)
    return Settings(
        discord_token=token,
        depth2img=depth,
        discord_api_base_url=discord_api,
        discord_gateway_url=gateway,
        dev_guild_id=dev_guild,
        data_dir=data_dir,
        log_level=log_level,
        shutdown_grace_s=shutdown_grace,
        loop_monitor_file=Path(monitor) if (monitor := r.raw("LOOP_MONITOR_FILE")) else None,
        database_url=database_url,
        shard_count=shard_count,
        shard_ids=shard_ids,
        job_lease_s=job_lease_s,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        event_loop=event_loop,
        fast_acks=fast_acks,
    )
