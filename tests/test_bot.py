"""The composition root: settings, command sync, the import boundary, and the real ``python bot.py``."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bot import SETTINGS_HELP as BOT_SETTINGS
from bot import read_settings
from cogs.botcore.config import SETTINGS_HELP as BOTCORE_SETTINGS
from cogs.depth2img import secret_values, settings_problems
from cogs.depth2img.config import SETTINGS_HELP as EXTENSION_SETTINGS
from cogs.depth2img.config import ConfigError, load_settings
from tests.conftest import bot_env, is_settled, metrics_text, process_env, slash, spawn_bot, stop_bot
from tests.fakes.fake_api import make_png

ROOT = Path(__file__).resolve().parent.parent
BOT = str(ROOT / "bot.py")


def run_bot_sync(cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python bot.py`` with no bot setting in the environment, as a newcomer would run it first."""
    return subprocess.run(
        [sys.executable, BOT],
        cwd=cwd,
        env=process_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- settings -------------------------------------------------------------------------------------


def every_problem(env: dict[str, str]) -> list[str]:
    """What ``python bot.py`` lists before it starts: the bot's problems, then the extensions'."""
    from cogs import botcore

    return read_settings(env)[1] + botcore.settings_problems(env) + settings_problems(env)


def test_settings_defaults_and_secrets_hidden_from_repr():
    env = {"DISCORD_TOKEN": "tok-secret-123", "SD_API_KEY": "key-secret-456"}
    bot_settings, problems = read_settings(env)
    s = load_settings(env)
    assert problems == []
    assert s.api_base_url == "https://stablediffusionapi.com/api"
    assert bot_settings.data_dir == Path("data")
    assert bot_settings.dev_guild_id is None
    assert s.max_concurrent_jobs == 5
    assert "tok-secret-123" not in repr(bot_settings)
    assert "key-secret-456" not in repr(s)


def test_sharding_database_and_metrics_settings():
    base = {"DISCORD_TOKEN": "tok-secret-123", "SD_API_KEY": "key-secret-456"}
    env = {
        **base,
        "DATABASE_URL": "postgresql://bot:pg-password-789@db:5432/depth2img",
        "SHARD_COUNT": "4",
        "SHARD_IDS": "3, 1",
        "METRICS_PORT": "9100",
    }
    s, _ = read_settings(env)
    assert every_problem(env) == []
    assert (s.shard_count, s.shard_ids) == (4, (1, 3))
    assert s.instance_group == "shards-1.3-of-4"
    assert "pg-password-789" not in repr(s) + repr(load_settings(env))
    assert "pg-password-789" in secret_values(env)  # what the log filter redacts
    assert read_settings(base)[0].instance_group == "main"
    joined = "\n".join(
        every_problem(
            {**base, "DATABASE_URL": "mysql://u:pg-password-789@h/d", "SHARD_IDS": "0", "METRICS_PORT": "x"}
        )
    )
    assert "DATABASE_URL is not a PostgreSQL URL" in joined
    assert "SHARD_IDS needs SHARD_COUNT" in joined
    assert "METRICS_PORT" in joined
    assert "pg-password-789" not in joined
    (problem,) = every_problem({**base, "SHARD_COUNT": "2", "SHARD_IDS": "2"})
    assert "from 0 to SHARD_COUNT-1 (1)" in problem


def test_every_problem_is_listed_at_once_without_secrets():
    problems = every_problem(
        {
            "SD_API_KEY": "has space-secretvalue",
            "SD_MAX_CONCURRENT": "many",
            "SD_JOB_TIMEOUT_S": "99999",
            "DEV_GUILD_ID": "my-server",
            "SD_API_BASE_URL": "ftp://x",
            "DISCORD_GATEWAY_URL": "http://not-ws",
        }
    )
    joined = "\n".join(problems)
    for name in (
        "DISCORD_TOKEN",
        "SD_API_KEY",
        "SD_MAX_CONCURRENT",
        "SD_JOB_TIMEOUT_S",
        "DEV_GUILD_ID",
        "SD_API_BASE_URL",
        "DISCORD_GATEWAY_URL",
    ):
        assert name in joined
    assert "secretvalue" not in joined
    assert len(problems) == 7


def test_env_example_the_readme_table_and_the_code_list_the_same_settings():
    """.env.example holds every setting once: the required ones and the few owners change, set; every
    other one commented out at its default (so a later change of default reaches the owner). The
    README's table has one row for each, and neither names a setting the code does not know."""
    import re

    code = {*BOT_SETTINGS, *BOTCORE_SETTINGS, *EXTENSION_SETTINGS}
    example = (ROOT / ".env.example").read_text()
    assignments = re.findall(r"^(#\s)?([A-Z][A-Z0-9_]*)=", example, re.MULTILINE)
    names = [name for _, name in assignments]
    assert sorted(names) == sorted(code)  # each exactly once, and nothing else
    active = {name for hashed, name in assignments if not hashed}
    assert {"DISCORD_TOKEN", "SD_API_KEY"} <= active and len(active) <= 10
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("\n## Settings\n") :].split("\n## ", 2)[1]
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", table, re.MULTILINE)
    assert sorted(rows) == sorted(code)


# --- the layout's rules ------------------------------------------------------------------------------

PACKAGE = ROOT / "cogs" / "depth2img"


@pytest.mark.parametrize(
    ("packages", "forbidden"),
    [
        (["cogs.depth2img.core", "cogs.depth2img.store", "cogs.i18n"], ["discord", "aiohttp"]),
        (["cogs.depth2img.backends"], ["discord"]),
    ],
)
def test_the_discord_free_packages_load_neither_discord_nor_aiohttp(packages, forbidden):
    """Every module of these packages, imported in a fresh interpreter: what it pulls in."""
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in packages
        for path in sorted((ROOT / package.replace(".", "/")).glob("*.py"))
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r}))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(modules) >= 3


def _modules() -> list[Path]:
    return [ROOT / "bot.py", *sorted((ROOT / "cogs").rglob("*.py"))]


def test_no_module_is_over_about_400_lines():
    tools = [*sorted((ROOT / "bench").glob("*.py")), *sorted((ROOT / "demo").glob("*.py"))]
    long = {
        str(p.relative_to(ROOT)): n
        for p in [*_modules(), *tools]
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


def test_no_import_circle():
    """The import graph of bot.py and the extension has no cycle: every import counts, lazy ones inside
    functions too (only TYPE_CHECKING ones are left out); ``from package import module`` is an edge
    to the module."""
    import ast

    def name_of(path: Path) -> str:
        parts = path.relative_to(ROOT).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    graph: dict[str, set[str]] = {}
    known = {name_of(p) for p in _modules()}
    for path in _modules():
        module = name_of(path)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        edges = graph.setdefault(module, set())
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
                targets = submodules or [base]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            edges |= {t for t in targets if t in known and t != module}

    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in graph.get(node, ()):
            if seen.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt]
                raise AssertionError(f"import circle: {' -> '.join(cycle)}")
            if nxt not in seen:
                visit(nxt, [*stack, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])


def test_bot_py_imports_nothing_of_the_feature_extension():
    import ast

    tree = ast.parse((ROOT / "bot.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [m for m in imported if m and m.startswith("cogs.depth2img")]
    assert "cogs.depth2img" in __import__("bot").EXTENSIONS  # loaded by name, like any extension


# --- command sync ----------------------------------------------------------------------------------


async def test_global_sync_only_when_the_definitions_changed(start_bot, fake_discord):
    first = await start_bot()
    assert fake_discord.sync_calls == [None]
    await first.close()
    fake_discord.identified.clear()
    await start_bot()
    assert fake_discord.sync_calls == [None]  # unchanged: not synced again


async def test_dev_guild_sync(start_bot, fake_discord):
    guild = str(fake_discord.guild_id)
    await start_bot(DEV_GUILD_ID=guild)
    assert fake_discord.sync_calls == [fake_discord.guild_id]
    assert fake_discord.command("depth2img")["guild_id"] == guild


# --- the real process --------------------------------------------------------------------------------


def test_missing_env_file_and_settings_exit_2_with_one_clear_message(tmp_path):
    result = run_bot_sync(tmp_path)
    assert result.returncode == 2
    assert "No .env file was found" in result.stderr
    assert "cp .env.example .env" in result.stderr
    assert "DISCORD_TOKEN is missing" in result.stderr
    assert "SD_API_KEY is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_settings_exit_2_and_never_print_the_secret(tmp_path):
    (tmp_path / ".env").write_text("DISCORD_TOKEN=abc def-topsecret\nSD_API_KEY=fine-key\nSD_MAX_QUEUED=-3\n")
    result = run_bot_sync(tmp_path)
    assert result.returncode == 2
    assert "DISCORD_TOKEN contains spaces" in result.stderr
    assert "SD_MAX_QUEUED" in result.stderr
    assert "topsecret" not in result.stderr
    assert "No .env file" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
async def test_real_bot_process_serves_a_request_and_stops_cleanly(fake_discord, fake_api, tmp_path):
    """``python bot.py`` in its own process, configured only through .env and the environment."""
    env = bot_env(fake_discord, fake_api, tmp_path / "data")
    # .env carries the settings; the real environment wins where both are set
    (tmp_path / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in env.items() if k != "DISCORD_TOKEN")
        + "DISCORD_TOKEN=wrong-token-in-file\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BOT,
        cwd=tmp_path,
        env=process_env(DISCORD_TOKEN=fake_discord.token, LOG_LEVEL="INFO"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30):
            while not (fake_discord.identified.is_set() and fake_discord.commands):
                assert proc.returncode is None, "bot exited early"
                await asyncio.sleep(0.05)
        fake_api.scenario = "success"
        record = await fake_discord.invoke_slash(
            "depth2img",
            {"image": fake_discord.add_attachment(make_png(), "photo.png"), "prompt": "a lighthouse"},
        )
        await fake_discord.wait_for(lambda: is_settled(fake_discord, record), timeout=20)
        final = fake_discord.final_message(record)
        assert final is not None
        assert final.files[0].data == fake_api.output_png
        assert record.acked_at - record.sent_at < 3.0
        assert fake_discord.violations == []
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    log = stderr.decode()
    assert proc.returncode == 0, log
    assert "job delivered" in log
    assert "shutting down" in log
    assert fake_api.api_key not in log
    assert fake_discord.token not in log
    assert "Traceback" not in log
    assert (tmp_path / "data" / "command-sync.json").is_file()


# --- metrics -------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in an exposition text."""
    wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    samples = "\n".join(line for line in text.splitlines() if line.startswith("depth2img_"))
    raise AssertionError(f"no sample {wanted} in:\n{samples}")


async def test_metrics_count_outcomes_rejections_latencies_and_errors(bot, fake_discord, fake_api):
    await slash(fake_discord, {"prompt": "fine"})
    fake_api.scenario = "no_credits_402"
    await slash(fake_discord, {"prompt": "no credits"})
    fake_api.scenario = "success"
    await slash(fake_discord, {"prompt": "x"}, image=b"not an image at all", filename="x.png")

    def finished() -> float:  # the final state is recorded just after the member is told
        text = metrics_text(bot)
        return sum(_sample(text, "depth2img_jobs_total", outcome=o) for o in ("delivered", "failed"))

    await fake_discord.wait_for(lambda: finished() == 2, timeout=5)
    text = metrics_text(bot)
    assert _sample(text, "depth2img_jobs_total", outcome="delivered") == 1
    assert _sample(text, "depth2img_jobs_total", outcome="failed") == 1
    assert _sample(text, "depth2img_api_errors_total", kind="credits") == 1
    assert _sample(text, "depth2img_requests_rejected_total", reason="InvalidInput") == 1
    assert _sample(text, "depth2img_ack_seconds_count") == 3
    assert _sample(text, "depth2img_acks_total", outcome="acknowledged") == 3
    assert _sample(text, "depth2img_acks_total", outcome="expired") == 0
    assert _sample(text, "depth2img_job_seconds_count") == 2  # the image, and the no-credits message
    assert _sample(text, "depth2img_api_seconds_count") == 1
    assert _sample(text, "depth2img_jobs_in_flight") == 0
    assert _sample(text, "depth2img_queue_depth") == 0


@pytest.mark.subprocess
async def test_real_bot_process_serves_metrics_on_its_port(fake_discord, fake_api, tmp_path):
    port = _free_port()
    env = bot_env(fake_discord, fake_api, tmp_path / "data", METRICS_PORT=str(port))
    proc = await spawn_bot(fake_discord, env, tmp_path)
    try:
        await slash(fake_discord, {"prompt": "count me"})
        # a scraper that keeps its connection open must not hold up the shutdown
        async with aiohttp.ClientSession() as scraper:
            async with scraper.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            log = await stop_bot(proc, signal.SIGTERM, timeout_s=20)
    finally:
        await stop_bot(proc, signal.SIGKILL)
    assert proc.returncode == 0, log
    assert _sample(text, "depth2img_jobs_total", outcome="delivered") == 1
    assert "# TYPE depth2img_job_seconds histogram" in text
    assert f"http://127.0.0.1:{port}/metrics" in log
    assert fake_api.api_key not in text + log


# --- garbage collection between bursts ------------------------------------------------------------


async def test_middle_and_full_garbage_collections_wait_until_no_job_is_in_flight(monkeypatch):
    import gc

    from cogs.botcore import cog as bot_module

    monkeypatch.setattr(bot_module, "GC_IDLE_S", 0.01)
    full_passes: list[int] = []
    middle_passes: list[int] = []

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            full_passes.append(1)
        elif phase == "stop" and info["generation"] == 1:
            middle_passes.append(1)

    busy = True
    saved = gc.get_threshold()
    gc.callbacks.append(watch)
    task = asyncio.create_task(bot_module.collect_garbage_between_bursts(lambda: busy))
    try:
        await asyncio.sleep(0.05)
        assert gc.get_threshold()[0] == bot_module.GC_YOUNG_THRESHOLD
        kept = []
        for _ in range(3):
            # activity: objects enough for 15 automatic young passes (CPython would make a middle pass
            # of every tenth), and survivors
            kept.extend([[] for _ in range(15 * bot_module.GC_YOUNG_THRESHOLD)])
            await asyncio.sleep(0.05)
        assert full_passes == [] and middle_passes == []  # busy: none, however many young passes
        del kept
        busy = False
        async with asyncio.timeout(10):
            while not full_passes:
                await asyncio.sleep(0.01)
        count = len(full_passes)
        await asyncio.sleep(0.1)
        assert len(full_passes) == count  # idle and nothing new: no further passes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.callbacks.remove(watch)
    assert gc.get_threshold() == (700, saved[1], 10)
    gc.set_threshold(*saved)


def test_picture_threads_leave_the_event_loop_a_core():
    import os

    base = {"DISCORD_TOKEN": "t" * 10, "SD_API_KEY": "k" * 10}
    assert load_settings(base).picture_threads == max(1, (os.cpu_count() or 2) - 1)
    assert load_settings(base | {"PICTURE_THREADS": "3"}).picture_threads == 3
    with pytest.raises(ConfigError, match="PICTURE_THREADS"):
        load_settings(base | {"PICTURE_THREADS": "0"})


def test_event_loop_setting():
    base = {"DISCORD_TOKEN": "t" * 10, "SD_API_KEY": "k" * 10}
    assert read_settings(base)[0].event_loop == "uvloop"
    assert read_settings(base | {"EVENT_LOOP": "AsyncIO"})[0].event_loop == "asyncio"
    (problem,) = read_settings(base | {"EVENT_LOOP": "trio"})[1]
    assert "EVENT_LOOP" in problem


def test_the_private_slots_the_bot_sets_on_discord_py_objects_are_there():
    """ui/flow.py marks an interaction answered when Discord took the acknowledgement but its answer
    was lost, and drops an interaction's cached response once a request is over: through discord.py's
    private slots, which a release could rename (both would then do nothing, quietly)."""
    import discord

    assert "_response_type" in discord.InteractionResponse.__slots__
    assert "_cs_response" in discord.Interaction.__slots__


def test_discord_json_reader_takes_lone_surrogates_and_nothing_worse(bot):
    """With the bot built, discord.py reads JSON through cogs/botcore/gateway_json.py: orjson, and
    Python's json for a lone surrogate (valid JSON that orjson refuses). What neither reads still
    raises orjson's error, not another kind (deep nesting: not a RecursionError)."""
    import discord.utils
    import orjson

    from cogs.botcore import gateway_json

    assert gateway_json._ours(discord.utils._from_json)
    assert gateway_json.install()  # (again: nothing changes)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads('{"t": "a\\ud800b"}')
    assert discord.utils._from_json('{"t": "a\\ud800b"}') == {"t": "a\ud800b"}
    assert discord.utils._from_json(b'{"t": "\\ud83d\\ude00"}') == {"t": "\U0001f600"}
    for bad in ('{"t": "a\\ud800', "[" * 100_000 + "]" * 100_000, "\ud800"):
        with pytest.raises(orjson.JSONDecodeError):
            discord.utils._from_json(bad)


# --- the event-loop stall monitor ------------------------------------------------------------------


async def test_loop_monitor_reports_stalls_and_what_they_were(tmp_path):
    """A callback that computes for 100 ms shows as a stall spent running (or waiting for a CPU);
    one that sleeps for 100 ms (a blocking call) shows as a stall spent neither."""
    import time

    from cogs.depth2img.diagnostics import loop_monitor

    path = tmp_path / "loop.txt"
    monitor = asyncio.create_task(loop_monitor(path, interval_s=0.005, window_s=0.05))

    def compute() -> None:
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            pass

    def block() -> None:
        time.sleep(0.1)

    try:
        await asyncio.sleep(0.1)
        for stall in (compute, block):
            asyncio.get_running_loop().call_soon(stall)
            await asyncio.sleep(0.4)
        async with asyncio.timeout(10):  # the monitor writes every fourth window
            while not path.exists() or path.read_text().count("\n") < 16:
                await asyncio.sleep(0.05)
    finally:
        monitor.cancel()
        await asyncio.gather(monitor, return_exceptions=True)
    rows = [tuple(map(float, line.split()))[1:] for line in path.read_text().splitlines()]
    stalls = sorted((r for r in rows if r[0] >= 90), key=lambda r: r[0])
    assert len(stalls) >= 2, rows  # the two planted (another test's leftovers may add one)
    computed = max(stalls, key=lambda r: r[1] + r[2])
    slept = min(stalls, key=lambda r: r[1] + r[2])
    assert computed[1] + computed[2] >= 0.8 * computed[0]  # running, or ready to run
    assert slept[1] + slept[2] <= 0.2 * slept[0]  # asleep: neither


@pytest.mark.subprocess
async def test_a_ledger_upgraded_by_a_newer_bot_stops_the_start_with_one_clear_line(
    fake_discord, fake_api, tmp_path
):
    import sqlite3

    from cogs.depth2img.store.schema import LATEST

    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "jobs.sqlite3")
    conn.execute(
        "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL NOT NULL, what TEXT NOT NULL)"
    )
    conn.execute("INSERT INTO schema_version VALUES (?, 0, 'from the future')", (LATEST + 1,))
    conn.commit()
    conn.close()
    env = bot_env(fake_discord, fake_api, data)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, BOT, cwd=tmp_path, env=process_env(**env), stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        _, err = await proc.communicate()
    log = err.decode()
    assert proc.returncode == 2, log
    assert f"schema version {LATEST + 1}" in log and f"versions up to {LATEST}" in log
    assert "Traceback" not in log


async def test_a_reloaded_extension_words_its_own_errors(bot):
    """The tree matches errors through the formatter each load of the extension registers, so the
    classes of a reloaded extension (discord.py imports it afresh) are still recognised."""
    await bot.reload_extension("cogs.depth2img")
    assert list(bot.tree.error_formatters) == ["cogs.depth2img"]
    (formatter,) = bot.tree.error_formatters.values()
    fresh = sys.modules["cogs.depth2img.errors"]
    refusal = fresh.InvalidInput("input.prompt_empty")
    assert formatter(refusal, "en-US") == "❌ The prompt is empty. Describe what the picture should become."
    assert formatter(refusal, "de").startswith("❌ Die Beschreibung ist leer.")
    assert formatter(ValueError("not ours"), "en-US") is None
    await bot.unload_extension("cogs.depth2img")
    assert bot.tree.error_formatters == {}


def test_every_commented_default_in_env_example_is_a_valid_setting():
    """An owner who uncomments any line of .env.example (at its default) gets a bot that starts."""
    import io
    import re

    from dotenv import dotenv_values

    from cogs.botcore.config import read as read_ops

    text = re.sub(r"^# ([A-Z][A-Z0-9_]*=)", r"\1", (ROOT / ".env.example").read_text(), flags=re.MULTILINE)
    env = {k: v or "" for k, v in dotenv_values(stream=io.StringIO(text)).items()}
    env |= {"DISCORD_TOKEN": "x" * 60, "SD_API_KEY": "k" * 20}
    assert read_settings(env)[1] == []
    assert settings_problems(env) == []
    assert read_ops(env)[1] == []
