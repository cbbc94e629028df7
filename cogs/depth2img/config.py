"""The extension's settings, read from the mapping the bot was started with (``os.environ`` after
``load_dotenv``). The bot's own settings (token, Discord endpoints, shards, logging...) are read by
``bot.py``.

Nothing reads the environment at import time. :func:`load_settings` collects *every* problem and
raises one :class:`ConfigError` that lists them, so an owner fixes their ``.env`` in one go (``bot.py``
adds them to its own before it starts). Secret values are never echoed back in a problem.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from babel.numbers import format_decimal

DEFAULT_API_BASE_URL = "https://stablediffusionapi.com/api"


def _human(value: float) -> str:
    """A number in the owner's messages as people write it: 524,288,000 (never 5.24288e+08)."""
    return format_decimal(value, locale="en_US")


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
    job_timeout_s: float = 1800.0
    max_retries: int = 3
    rate_limit_max_wait_s: float = 15.0
    poll_initial_s: float = 2.0
    poll_max_s: float = 10.0
    max_input_bytes: int = 10 * 1024 * 1024
    max_input_pixels: int = 40_000_000
    max_output_bytes: int = 25 * 1024 * 1024
    output_memory_bytes: int = 256 * 1024 * 1024  # held for outputs at once, process-wide
    input_read_timeout_s: float = 30.0
    user_cooldown_s: float = 3.0
    guild_daily_quota: int = 0  # 0 = no quota
    member_daily_quota: int = 0  # per member per day, in each server and in DMs; 0 = no quota
    allow_dms: bool = False  # /depth2img in direct messages with the bot
    source_max_side: int = 1024  # the API's generation limit
    progress_interval_s: float = 3.0
    image_workers: int = 2
    image_work_timeout_s: float = 60.0  # one picture's work in an image worker, at most
    picture_threads: int = 1  # threads that check and store pictures (see load_settings for the default)
    keep_pictures_days: float | None = 30.0  # None: for ever (KEEP_PICTURES_DAYS=forever)
    keep_jobs_days: float | None = 90.0  # job rows and prompts; None: for ever
    database_url: str | None = field(default=None, repr=False)  # None: SQLite in BOT_DATA_DIR
    job_lease_s: float = 60.0
    loop_monitor_file: Path | None = None
    endpoint: str = "auto"  # the ModelsLab route: auto | depth2img | controlnet
    model_id: str = "realistic-vision-51"  # the ControlNet route's model (the docs' depth example)
    low_balance: float = 1.00  # the owner is warned once when the account's balance falls below this
    bot_daily_quota: int = 0  # pictures per UTC day across every server and DM; 0 = none
    image_backend: str = "modelslab"  # modelslab | comfyui | a1111
    comfyui_url: str | None = None
    comfyui_workflow: Path | None = None  # None: the depth workflow the bot ships
    comfyui_checkpoint: str = "v1-5-pruned-emaonly.safetensors"
    comfyui_controlnet: str = "control_v11f1p_sd15_depth.pth"
    a1111_url: str | None = None
    a1111_controlnet_module: str = "depth_midas"
    a1111_controlnet_model: str = "control_v11f1p_sd15_depth [cfd03158]"

    @property
    def service_url(self) -> str:
        """The origin the chosen image service lives at (the only private one the bot may reach)."""
        if self.image_backend == "comfyui" and self.comfyui_url:
            return self.comfyui_url
        if self.image_backend == "a1111" and self.a1111_url:
            return self.a1111_url
        return self.api_base_url


# (variable, meaning) for every setting of the extension: used by the README, .env.example and errors.
SETTINGS_HELP: dict[str, str] = {
    "SD_API_KEY": "your stablediffusionapi.com / ModelsLab API key (needed with IMAGE_BACKEND=modelslab only)",
    "IMAGE_BACKEND": "the image service: modelslab (default, the hosted API), comfyui or a1111 (your own GPU)",
    "COMFYUI_URL": "with IMAGE_BACKEND=comfyui: your ComfyUI server, e.g. http://127.0.0.1:8188",
    "COMFYUI_WORKFLOW": "with IMAGE_BACKEND=comfyui: your own API-format workflow file with the bot's placeholders (default: the depth workflow the bot ships)",
    "COMFYUI_CHECKPOINT": "with IMAGE_BACKEND=comfyui: the checkpoint the workflow loads (default v1-5-pruned-emaonly.safetensors)",
    "COMFYUI_CONTROLNET": "with IMAGE_BACKEND=comfyui: the depth ControlNet model (default control_v11f1p_sd15_depth.pth)",
    "A1111_URL": "with IMAGE_BACKEND=a1111: your AUTOMATIC1111 or Forge server started with --api, e.g. http://127.0.0.1:7860",
    "A1111_CONTROLNET_MODULE": "with IMAGE_BACKEND=a1111: the ControlNet preprocessor (default depth_midas)",
    "A1111_CONTROLNET_MODEL": "with IMAGE_BACKEND=a1111: the ControlNet model as /controlnet/model_list names it (default control_v11f1p_sd15_depth [cfd03158])",
    "SD_API_BASE_URL": f"the image API's base URL (default {DEFAULT_API_BASE_URL})",
    "SD_MAX_CONCURRENT": "generations at the API at once (default 5; plans allow 5 to 15 queued)",
    "SD_MAX_QUEUED": "requests that may wait for a free slot before members are told to retry (default 50)",
    "SD_MAX_JOBS_PER_USER": "jobs one member may have in flight at once (default 1)",
    "SD_REQUEST_TIMEOUT_S": "seconds to wait for one API answer (default 60)",
    "SD_JOB_TIMEOUT_S": "seconds from a request to its job being given up, queueing and a restart included (default 1800; a job may outlive Discord's 15-minute reply window: its picture is then posted as a new message)",
    "SD_MAX_RETRIES": "quick retries of one API request (default 3); once the API has a job, polls and downloads go on until SD_JOB_TIMEOUT_S",
    "SD_RATE_LIMIT_MAX_WAIT_S": "longest retry_after a submission waits out on a 429 before the member is told the API is busy (default 15)",
    "SD_POLL_INITIAL_S": "first wait between polls of a queued job (default 2)",
    "SD_POLL_MAX_S": "longest wait between polls (default 10)",
    "MAX_INPUT_BYTES": "largest attachment accepted, in bytes (default 10485760 = 10 MB)",
    "MAX_INPUT_PIXELS": "largest attachment accepted, in pixels (default 40000000)",
    "MAX_OUTPUT_BYTES": "largest output image downloaded from the API, in bytes (default 26214400)",
    "OUTPUT_MEMORY_BYTES": "memory for output images at once, all jobs together, from download to delivery (default 268435456 = 256 MB; at least 5 x MAX_OUTPUT_BYTES)",
    "INPUT_READ_TIMEOUT_S": "seconds to download a member's picture from Discord before giving up (default 30)",
    "SD_USER_COOLDOWN_S": "seconds a member waits between two requests (default 3; 0 = none)",
    "SD_GUILD_DAILY_QUOTA": "requests one server may make per UTC day (default 0 = no quota)",
    "SD_MEMBER_DAILY_QUOTA": "pictures one member may make per UTC day, in each server and in DMs (default 0 = no quota; servers may set a lower one)",
    "ALLOW_DMS": "on: /depth2img also works in direct messages with the bot, where no server's rules apply (default off; needs SD_MEMBER_DAILY_QUOTA)",
    "KEEP_PICTURES_DAYS": "days to keep the pictures of finished jobs, for their buttons and /depth2img-show (default 30; forever: never removed)",
    "KEEP_JOBS_DAYS": "days to keep finished jobs in the ledger: their prompts, options and history (default 90; forever: never removed)",
    "PICTURE_THREADS": "threads that store pictures and checksum large ones (default: one fewer than the machine's cores, at least 1)",
    "IMAGE_WORKERS": "processes that check and re-encode pictures off the event loop (default 2; 0 = threads)",
    "IMAGE_WORK_TIMEOUT_S": "longest an image worker may take over one picture before it is stopped and the picture refused (default 60)",
    "PROGRESS_INTERVAL_S": "least seconds between two progress updates of a message (default 3)",
    "LOOP_MONITOR_FILE": "optional: append the event loop's worst stall per 50 ms to this file (diagnostics, benchmarks)",
    "DATABASE_URL": "optional: postgresql://user:password@host/db for the job ledger (default: SQLite in BOT_DATA_DIR); needed to run several bot processes",
    "JOB_LEASE_S": "seconds a stopped process's unfinished jobs wait before another process takes them over (default 60)",
    "SD_ENDPOINT": "the ModelsLab route: auto (default: v5/depth2img first, and v5/controlnet with depth from the first time depth2img answers as a dead endpoint, remembered), depth2img or controlnet",
    "SD_MODEL_ID": "the model of the ControlNet route (default realistic-vision-51, the docs' depth example; fluxdev for Flux)",
    "SD_LOW_BALANCE": "the owner is warned once in the log when the ModelsLab balance falls below this many dollars (default 1.00)",
    "SD_BOT_DAILY_QUOTA": "pictures the bot makes per UTC day across every server and DM together (default 0 = no cap)",
}

ENDPOINTS = ("auto", "depth2img", "controlnet")
BACKENDS = ("modelslab", "comfyui", "a1111")


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
            self.problems.append(
                f"{name}={value!r} is not {kind}: use {kind} from {_human(lo)} to {_human(hi)}."
            )
            return default
        as_float = float(parsed)  # type: ignore[arg-type]
        if not math.isfinite(as_float) or not lo <= as_float <= hi:
            self.problems.append(
                f"{name}={value!r} is out of range: use a value from {_human(lo)} to {_human(hi)}."
            )
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

    def days(self, name: str, default: float) -> float | None:
        """A number of days to keep something, or ``forever`` (None). ``0`` is refused: it never means
        "for ever" silently, and "keep nothing" is not what anyone wants from a ledger."""
        value = self.raw(name)
        if value is not None and value.lower() in ("forever", "for ever", "never"):
            return None
        if value is not None and value.replace(".", "", 1).isdigit() and float(value) == 0:
            self.problems.append(
                f"{name}=0 is ambiguous: write {name}=forever to keep them for ever, or a number of days."
            )
            return default
        return self.number(name, default, float, 0.01, 36500)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if value.lower() not in choices:
            self.problems.append(f"{name}={value!r} is not one of: {', '.join(choices)}.")
            return default
        return value.lower()

    def text(self, name: str, default: str, max_len: int = 200) -> str:
        value = self.raw(name)
        if value is None:
            return default
        if len(value) > max_len or not value.isprintable():
            self.problems.append(f"{name} is longer than {max_len} characters or holds control characters.")
            return default
        return value

    def url(self, name: str, schemes: tuple[str, ...], default: str | None) -> str | None:
        value = self.raw(name)
        if value is None:
            return default
        parts = urlsplit(value)
        if parts.scheme not in schemes or not parts.hostname:
            self.problems.append(f"{name}={value!r} is not a valid {'/'.join(schemes)} URL.")
            return default
        return value.rstrip("/")


def load_settings(env: Mapping[str, str]) -> Depth2ImgSettings:
    """Build :class:`Depth2ImgSettings` from ``env``, or raise :class:`ConfigError` listing every problem."""
    r = _Reader(env)
    image_backend = r.choice("IMAGE_BACKEND", BACKENDS, "modelslab")
    api_key = r.required_secret("SD_API_KEY") if image_backend == "modelslab" else (r.raw("SD_API_KEY") or "")
    comfyui_url = r.url("COMFYUI_URL", ("http", "https"), None)
    a1111_url = r.url("A1111_URL", ("http", "https"), None)
    for name, needed, value in (
        ("COMFYUI_URL", "comfyui", comfyui_url),
        ("A1111_URL", "a1111", a1111_url),
    ):
        if image_backend == needed and value is None:
            r.problems.append(
                f"{name} is missing: IMAGE_BACKEND={needed} needs {SETTINGS_HELP[name].split(': ', 1)[1]}."
            )
    workflow = r.raw("COMFYUI_WORKFLOW")
    api_base = r.url("SD_API_BASE_URL", ("http", "https"), DEFAULT_API_BASE_URL) or DEFAULT_API_BASE_URL
    database_url = r.raw("DATABASE_URL")
    if database_url is not None:
        parts = urlsplit(database_url)
        if parts.scheme not in ("postgres", "postgresql") or not (parts.hostname or parts.query):
            r.problems.append(
                "DATABASE_URL is not a PostgreSQL URL: use postgresql://user:password@host:5432/dbname, "
                "or leave it empty for SQLite."
            )
            database_url = None
    settings = Depth2ImgSettings(
        api_key=api_key,
        api_base_url=api_base,
        max_concurrent_jobs=r.number("SD_MAX_CONCURRENT", 5, int, 1, 1000),
        max_queued_jobs=r.number("SD_MAX_QUEUED", 50, int, 0, 100_000),
        max_jobs_per_user=r.number("SD_MAX_JOBS_PER_USER", 1, int, 1, 100),
        request_timeout_s=r.number("SD_REQUEST_TIMEOUT_S", 60.0, float, 1, 600),
        job_timeout_s=r.number("SD_JOB_TIMEOUT_S", 1800.0, float, 1, 86400),
        max_retries=r.number("SD_MAX_RETRIES", 3, int, 0, 10),
        rate_limit_max_wait_s=r.number("SD_RATE_LIMIT_MAX_WAIT_S", 15.0, float, 0, 300),
        poll_initial_s=r.number("SD_POLL_INITIAL_S", 2.0, float, 0.01, 60),
        poll_max_s=r.number("SD_POLL_MAX_S", 10.0, float, 0.01, 120),
        max_input_bytes=r.number("MAX_INPUT_BYTES", 10 * 1024 * 1024, int, 1024, 500 * 1024 * 1024),
        max_input_pixels=r.number("MAX_INPUT_PIXELS", 40_000_000, int, 4096, 400_000_000),
        max_output_bytes=r.number("MAX_OUTPUT_BYTES", 25 * 1024 * 1024, int, 1024, 500 * 1024 * 1024),
        output_memory_bytes=r.number("OUTPUT_MEMORY_BYTES", 256 * 1024 * 1024, int, 4096, 1 << 40),
        input_read_timeout_s=r.number("INPUT_READ_TIMEOUT_S", 30.0, float, 0.1, 600),
        user_cooldown_s=r.number("SD_USER_COOLDOWN_S", 3.0, float, 0, 3600),
        guild_daily_quota=r.number("SD_GUILD_DAILY_QUOTA", 0, int, 0, 1_000_000),
        member_daily_quota=r.number("SD_MEMBER_DAILY_QUOTA", 0, int, 0, 1_000_000),
        allow_dms=r.switch("ALLOW_DMS", False),
        progress_interval_s=r.number("PROGRESS_INTERVAL_S", 3.0, float, 0.1, 60),
        image_workers=r.number("IMAGE_WORKERS", 2, int, 0, 64),
        image_work_timeout_s=r.number("IMAGE_WORK_TIMEOUT_S", 60.0, float, 0.1, 3600),
        picture_threads=r.number("PICTURE_THREADS", max(1, (os.cpu_count() or 2) - 1), int, 1, 64),
        keep_pictures_days=r.days("KEEP_PICTURES_DAYS", 30.0),
        keep_jobs_days=r.days("KEEP_JOBS_DAYS", 90.0),
        database_url=database_url,
        job_lease_s=r.number("JOB_LEASE_S", 60.0, float, 1, 3600),
        loop_monitor_file=Path(monitor) if (monitor := r.raw("LOOP_MONITOR_FILE")) else None,
        endpoint=r.choice("SD_ENDPOINT", ENDPOINTS, "auto"),
        model_id=r.text("SD_MODEL_ID", "realistic-vision-51"),
        low_balance=r.number("SD_LOW_BALANCE", 1.00, float, 0, 1_000_000),
        bot_daily_quota=r.number("SD_BOT_DAILY_QUOTA", 0, int, 0, 10_000_000),
        image_backend=image_backend,
        comfyui_url=comfyui_url,
        comfyui_workflow=Path(workflow) if workflow else None,
        comfyui_checkpoint=r.text("COMFYUI_CHECKPOINT", "v1-5-pruned-emaonly.safetensors"),
        comfyui_controlnet=r.text("COMFYUI_CONTROLNET", "control_v11f1p_sd15_depth.pth"),
        a1111_url=a1111_url,
        a1111_controlnet_module=r.text("A1111_CONTROLNET_MODULE", "depth_midas"),
        a1111_controlnet_model=r.text("A1111_CONTROLNET_MODEL", "control_v11f1p_sd15_depth [cfd03158]"),
    )
    if settings.output_memory_bytes < 5 * settings.max_output_bytes:
        r.problems.append(
            f"OUTPUT_MEMORY_BYTES={settings.output_memory_bytes} is less than 5 x MAX_OUTPUT_BYTES "
            f"({5 * settings.max_output_bytes}): a job of 4 pictures (and the one being joined) must fit in it."
        )
    if settings.poll_initial_s > settings.poll_max_s:
        r.problems.append(
            f"SD_POLL_INITIAL_S={settings.poll_initial_s:g} is longer than SD_POLL_MAX_S={settings.poll_max_s:g}: "
            "the first wait between polls cannot be longer than the longest."
        )
    if settings.poll_initial_s >= settings.job_timeout_s:
        r.problems.append(
            f"SD_POLL_INITIAL_S={settings.poll_initial_s:g} is not shorter than SD_JOB_TIMEOUT_S="
            f"{settings.job_timeout_s:g}: every queued job would reach its deadline before its first poll. "
            "Raise SD_JOB_TIMEOUT_S or lower SD_POLL_INITIAL_S."
        )
    if settings.allow_dms and not settings.member_daily_quota:
        r.problems.append(
            "ALLOW_DMS=on needs SD_MEMBER_DAILY_QUOTA (pictures one member may make per day): in direct "
            "messages no server's rules apply, and nothing else would limit what a member can spend."
        )
    if r.problems:
        raise ConfigError(r.problems)
    return settings


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The secrets among the extension's settings, for the log filter to redact wherever they appear."""
    found = [env.get("SD_API_KEY", "").strip()]
    database_url = env.get("DATABASE_URL", "").strip()
    if database_url:
        found.append(database_url)
        with contextlib.suppress(ValueError):
            if password := urlsplit(database_url).password:
                found.append(password)
    return [s for s in found if s]
