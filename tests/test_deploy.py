"""The deployment kit (Dockerfile, compose.yaml, .dockerignore, deploy/depth2img-bot.service) checked for
what can be checked without a container engine, and /healthz on a real bot."""

from __future__ import annotations

import asyncio
import re
import shlex
from pathlib import Path

import aiohttp
import yaml

from bot import SETTINGS_HELP as BOT_SETTINGS
from cogs.botcore.config import SETTINGS_HELP as BOTCORE_SETTINGS
from cogs.depth2img.config import SETTINGS_HELP as EXTENSION_SETTINGS
from tests.conftest import free_port, service_of

ROOT = Path(__file__).resolve().parent.parent
KNOWN = {*BOT_SETTINGS, *BOTCORE_SETTINGS, *EXTENSION_SETTINGS}
DEFAULT_GRACE_S = 25.0


def seconds(text: str) -> float:
    """A compose duration ("40s", "1m30s")."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile() -> list[tuple[str, str]]:
    lines = []
    for raw in (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            instruction, _, rest = raw.partition(" ")
            lines.append((instruction.upper(), rest.strip()))
    return lines


def test_the_compose_file_uses_settings_the_bot_knows_and_outlasts_the_drain():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    bot = compose["services"]["bot"]
    env = bot["environment"]
    assert set(env) <= KNOWN, set(env) - KNOWN
    assert bot["restart"] == "unless-stopped"
    grace = float(env.get("SHUTDOWN_GRACE_S", DEFAULT_GRACE_S))
    assert seconds(bot["stop_grace_period"]) > grace
    data = env["BOT_DATA_DIR"]
    assert any(
        v.split(":")[1] == data for v in bot["volumes"]
    )  # the ledger and pictures outlive the container
    assert bot["env_file"] == ".env"  # secrets from .env, never in this file
    test = " ".join(bot["healthcheck"]["test"])
    assert f"127.0.0.1:{env['HEALTH_PORT']}/healthz" in test
    postgres = compose["services"]["postgres"]
    assert postgres["profiles"] == ["postgres"] and "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert bot["depends_on"]["postgres"] == {"condition": "service_healthy", "required": False}


def test_the_dockerfile_is_small_non_root_from_the_lock_and_runs_bot_py_as_pid_1():
    lines = dockerfile()
    assert lines[0][0] == "FROM" and lines[0][1].startswith("python:3.11-slim")
    runs = " ".join(rest for kind, rest in lines if kind == "RUN")
    assert "pip install -r requirements.lock" in runs
    for kind, rest in lines:
        if kind == "COPY":
            *sources, _ = shlex.split(rest)
            assert all((ROOT / s).exists() for s in sources), rest
        if kind == "ENV":
            names = {pair.split("=")[0] for pair in shlex.split(rest)}
            assert names <= KNOWN | {
                "PYTHONDONTWRITEBYTECODE",
                "PYTHONUNBUFFERED",
                "PIP_NO_CACHE_DIR",
                "PIP_DISABLE_PIP_VERSION_CHECK",
            }
    users = [rest for kind, rest in lines if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = [rest for kind, rest in lines if kind == "CMD"][-1]
    assert cmd == '["python", "bot.py"]'  # exec form: bot.py is PID 1 and gets SIGTERM itself
    assert (ROOT / "bot.py").is_file()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv/", "data/", ".git/"} <= set(ignored)


def test_the_systemd_unit_stops_restarting_on_a_settings_error():
    unit = (ROOT / "deploy" / "depth2img-bot.service").read_text()
    values = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert values["RestartPreventExitStatus"] == "2"
    assert float(values["TimeoutStopSec"]) > DEFAULT_GRACE_S
    assert values["ExecStart"].endswith(" bot.py") and values["KillSignal"] == "SIGTERM"


async def test_healthz_is_ready_only_with_the_gateway_and_the_ledger(start_bot):
    port = free_port()
    bot = await start_bot(HEALTH_PORT=str(port))
    async with aiohttp.ClientSession() as http:
        seen = []
        for _ in range(100):  # (ready once discord.py has had READY and the servers: a start period)
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                seen.append((resp.status, await resp.json()))
            if resp.status == 200:
                break
            await asyncio.sleep(0.05)
        assert seen[-1] == (200, {"status": "ready", "gateway": True, "ledger": True}), seen[-1]
        await service_of(bot).ledger.close()  # the database gone
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            assert resp.status == 503
            assert await resp.json() == {"status": "not ready", "gateway": True, "ledger": False}
