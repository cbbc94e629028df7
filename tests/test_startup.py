"""Every start-up failure is one clear line naming the setting and the fix, with exit status 2 when the
owner must fix a setting and 1 when it may pass by itself; never a traceback. The real ``bot.py``."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import pytest

from tests.conftest import BOT_SCRIPT, bot_env, free_port, process_env


async def start_and_fail(env: dict[str, str], cwd, timeout: float = 60) -> tuple[int, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BOT_SCRIPT,
        cwd=cwd,
        env=process_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    text = (out + err).decode()
    assert "Traceback" not in text, text
    assert proc.returncode is not None
    return proc.returncode, [
        line for line in text.splitlines() if " ERROR " in line or "cannot start" in line
    ]


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never answers (a firewall that swallows, a hung server)."""
    held = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in held:
            writer.close()


def one_line(lines: list[str], *needles: str) -> str:
    assert len(lines) == 1, lines
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("make_url", "code", "needles"),
    [
        (
            lambda server: f"postgresql://postgres@127.0.0.1:{free_port()}/x",
            1,
            ("refused the connection", "may pass by itself"),
        ),
        (
            lambda server: "postgresql://postgres@db.invalid:5432/x",
            2,
            ("'db.invalid' is unknown", "fix DATABASE_URL"),
        ),
        (
            lambda server: server.rsplit("/", 1)[0] + "/no_such_db",
            2,
            ("no database 'no_such_db'", "fix DATABASE_URL"),
        ),
        (
            lambda server: server.replace("postgres@", "nobody@").rsplit("/", 1)[0] + "/postgres",
            2,
            ("refused user 'nobody'", "wrong user or password"),
        ),
    ],
    ids=["refused", "unknown-host", "unknown-database", "wrong-user"],
)
async def test_postgresql_that_cannot_be_used(
    fake_discord, fake_api, tmp_path, postgres_server, make_url, code, needles
):
    env = bot_env(fake_discord, fake_api, tmp_path / "data", DATABASE_URL=make_url(postgres_server))
    returncode, lines = await start_and_fail(env, tmp_path)
    assert returncode == code
    one_line(lines, "DATABASE_URL" if code == 2 else "PostgreSQL", *needles)


async def test_postgresql_that_never_answers(fake_discord, fake_api, tmp_path):
    async with silent_server() as port:
        env = bot_env(
            fake_discord,
            fake_api,
            tmp_path / "data",
            DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/x",
        )
        returncode, lines = await start_and_fail(env, tmp_path)
    assert returncode == 1
    one_line(lines, "did not answer within 10 s", "may pass by itself")


@pytest.mark.parametrize("kind", ["a-file", "unwritable"])
async def test_a_data_folder_that_cannot_be_used(fake_discord, fake_api, tmp_path, kind):
    target = tmp_path / "data.txt" if kind == "a-file" else "/proc/self/depth2img-data"
    if kind == "a-file":
        target.write_text("not a folder")
    returncode, lines = await start_and_fail(bot_env(fake_discord, fake_api, target), tmp_path)
    assert returncode == 2
    one_line(
        lines,
        "BOT_DATA_DIR=",
        "is a file, not a folder" if kind == "a-file" else "cannot be created or written",
    )


@pytest.mark.parametrize("kind", ["not-a-database", "cut-short"])
async def test_a_damaged_ledger_file_is_one_line_saying_what_to_do(fake_discord, fake_api, tmp_path, kind):
    """``data/jobs.sqlite3`` that is not a database (a bad restore) or is cut short (a half-made copy):
    one line, exit 2, saying it is damaged and what to do. Before, the start ended in a traceback
    ("ExtensionFailed ... DatabaseError"), with no line for the owner."""
    import sqlite3

    data = tmp_path / "data"
    data.mkdir()
    ledger = data / "jobs.sqlite3"
    if kind == "not-a-database":
        ledger.write_bytes(b"these are not the pages of a database\n" * 200)
    else:
        with sqlite3.connect(ledger) as db:
            db.execute("CREATE TABLE t (x BLOB)")
            db.executemany("INSERT INTO t VALUES (?)", [(b"\0" * 4000,) for _ in range(50)])
        db.close()
        ledger.write_bytes(ledger.read_bytes()[:20_000])
    returncode, lines = await start_and_fail(bot_env(fake_discord, fake_api, data), tmp_path)
    assert returncode == 2
    said = one_line(lines, f"the job ledger {ledger} is damaged or not a SQLite database", "restore it")
    assert "fix DATABASE_URL" not in said


async def test_a_ledger_file_another_process_holds_is_one_line(fake_discord, fake_api, tmp_path):
    """Another process holds the SQLite ledger locked through the bot's start (a second bot started on
    the same file): one line, exit 1 (it may pass), naming the likely cause."""
    import sqlite3

    data = tmp_path / "data"
    data.mkdir()
    ledger = data / "jobs.sqlite3"
    holder = sqlite3.connect(ledger, isolation_level=None)
    holder.execute("CREATE TABLE held (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        returncode, lines = await start_and_fail(bot_env(fake_discord, fake_api, data), tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert returncode == 1
    one_line(lines, f"the job ledger {ledger} is held by another process", "stop the other process")


async def test_a_start_stopped_by_something_unforeseen_is_one_line_without_a_traceback(
    fake_discord, fake_api, tmp_path
):
    """What no start-up check foresees (here ``data/sources`` is a file, not a folder): one line naming
    the error's kind, exit 1, no traceback and no exception text (with LOG_LEVEL=DEBUG, where it
    happened). Before, Python's traceback."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "sources").write_text("a file where the bot keeps its folder")
    returncode, lines = await start_and_fail(bot_env(fake_discord, fake_api, data), tmp_path)
    assert returncode == 1
    said = one_line(
        lines, "depth2img-bot cannot start: an error of its own stopped it", "error=FileExistsError"
    )
    assert "extension=cogs.depth2img" in said and "File exists" not in said


async def test_a_token_reset_while_the_bot_runs_stops_it_with_one_line(fake_discord, fake_api, tmp_path):
    """The owner resets the bot's token in the developer portal while it runs: its gateway connection
    drops, and Discord refuses the resume with close code 4004 ("Authentication failed"). The bot stops
    with one line saying what to do, exit 2. Before, Python's traceback of discord.py's
    ConnectionClosed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BOT_SCRIPT,
        cwd=tmp_path,
        env=process_env(**bot_env(fake_discord, fake_api, tmp_path / "data")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await fake_discord.wait_for(
            lambda: fake_discord.identified.is_set() and bool(fake_discord.commands), timeout=30
        )
        fake_discord.token = "a-token-reset-in-the-developer-portal"
        await fake_discord.drop_gateway()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = (out + err).decode()
    assert "Traceback" not in text and "ConnectionClosed" not in text, text
    assert proc.returncode == 2
    errors = [line for line in text.splitlines() if " ERROR " in line]
    one_line(errors, "depth2img-bot stopped: Discord no longer accepts DISCORD_TOKEN (was it reset?)")


async def test_discord_out_of_reach(fake_discord, fake_api, tmp_path):
    env = bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",
        DISCORD_API_BASE_URL=f"http://127.0.0.1:{free_port()}/api/v10",
    )
    returncode, lines = await start_and_fail(env, tmp_path)
    assert returncode == 1
    one_line(lines, "Discord could not be reached", "may pass by itself")


async def test_discord_silent(fake_discord, fake_api, tmp_path):
    async with silent_server() as port:
        env = bot_env(
            fake_discord,
            fake_api,
            tmp_path / "data",
            DISCORD_API_BASE_URL=f"http://127.0.0.1:{port}/api/v10",
            DISCORD_TIMEOUT_S="2",
        )
        returncode, lines = await start_and_fail(env, tmp_path, timeout=30)
    assert returncode == 1
    one_line(lines, "Discord did not answer the login within 2 s")


async def test_a_rejected_token(fake_discord, fake_api, tmp_path):
    env = bot_env(fake_discord, fake_api, tmp_path / "data", DISCORD_TOKEN="Mz.not.the-token")
    returncode, lines = await start_and_fail(env, tmp_path)
    assert returncode == 2
    one_line(lines, "DISCORD_TOKEN", "fix the setting")


async def test_impossible_settings_are_refused(fake_discord, fake_api, tmp_path):
    env = bot_env(
        fake_discord,
        fake_api,
        tmp_path / "data",
        SD_POLL_INITIAL_S="60",
        SD_POLL_MAX_S="60",
        SD_JOB_TIMEOUT_S="30",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, BOT_SCRIPT, cwd=tmp_path, env=process_env(**env), stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    assert "SD_POLL_INITIAL_S=60 is not shorter than SD_JOB_TIMEOUT_S=30" in err.decode()
    assert "Traceback" not in err.decode()
