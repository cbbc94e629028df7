"""Starting the bot as an owner would want it: each start-up failure one clear line with its exit
status (2: a setting to fix; 1: it may pass by itself), the data folder checked before anything is
written, Discord's login and gateway within bounds, and the owner's check (``python bot.py --check``)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import discord
from discord.ext import commands

log = logging.getLogger("depth2img.bot")

EXIT_CONFIG = 2


def private_folder(path: Path) -> None:
    """``BOT_DATA_DIR``: created readable by the bot's user only (it holds the job ledger, members'
    pictures and prompts); an existing one is made so if the bot owns it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError:
            log.warning(
                "BOT_DATA_DIR is readable by other users, and the bot cannot change that",
                extra={"path": str(path)},
            )


# Discord's gateway close code for a token it does not accept (topics/opcodes-and-status-codes)
GATEWAY_AUTHENTICATION_FAILED = 4004


def ended(exc: Exception) -> int:
    """A start or a run that raised ``exc``: one line for the owner (never the exception's text, which
    may hold anything; where it happened with LOG_LEVEL=DEBUG), and the exit status."""
    if isinstance(exc, StartFailed):
        log.error(str(exc))
        return exc.exit_code
    if isinstance(exc, discord.LoginFailure):
        log.error(
            str(
                StartFailed(
                    "Discord rejected DISCORD_TOKEN: reset it (developer portal, Bot → Reset Token) and put "
                    "the new one in .env",
                    EXIT_CONFIG,
                )
            )
        )
        return EXIT_CONFIG
    if isinstance(exc, discord.PrivilegedIntentsRequired):
        log.error("Discord refused the bot's intents; this bot needs no privileged intents.")
        return 1
    if isinstance(exc, commands.ExtensionFailed):
        # An extension that cannot start says why in words meant for the owner, when it can.
        message = getattr(exc.original, "owner_message", None)
        if not isinstance(message, str):
            return _unforeseen(exc.original, "cannot start", extension=exc.name)
        log.error(message, extra={"extension": exc.name})
        return int(getattr(exc.original, "exit_code", EXIT_CONFIG))
    if isinstance(exc, discord.ConnectionClosed):  # (Discord ended the gateway connection for good)
        if exc.code == GATEWAY_AUTHENTICATION_FAILED:
            log.error(
                "depth2img-bot stopped: Discord no longer accepts DISCORD_TOKEN (was it reset?): put the new "
                "one (developer portal, Bot → Reset Token) in .env and start the bot again"
            )
            return EXIT_CONFIG
        log.error(
            "depth2img-bot stopped: Discord closed its connection for good (see Discord's gateway close codes)",
            extra={"close_code": exc.code},
        )
        return 1
    return _unforeseen(exc, "stopped")


def _unforeseen(exc: BaseException, how: str, **where: str) -> int:
    log.error(
        f"depth2img-bot {how}: an error of its own stopped it (LOG_LEVEL=DEBUG shows where; report it "
        "if it keeps happening)",
        extra={"error": type(exc).__name__, **where},
        exc_info=exc,
    )
    return 1


class StartFailed(Exception):
    """The bot cannot start; ``str(self)`` is the one line the owner reads. ``exit_code``: 2 when a
    setting must be fixed, 1 when it may pass by itself (and the line says which)."""

    def __init__(self, message: str, exit_code: int) -> None:
        hint = (
            "fix the setting named above"
            if exit_code == EXIT_CONFIG
            else "this may pass by itself: start the bot again later"
        )
        super().__init__(f"depth2img-bot cannot start: {message} ({hint}).")
        self.exit_code = exit_code


def data_dir_problem(path: Path) -> str | None:
    """Why ``BOT_DATA_DIR`` cannot hold the bot's files, in one sentence, or None."""
    if path.exists() and not path.is_dir():
        return f"BOT_DATA_DIR={path} is a file, not a folder: point BOT_DATA_DIR at a folder"
    try:
        private_folder(path)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = "read-only" if exc.errno == errno.EROFS else type(exc).__name__
        return (
            f"BOT_DATA_DIR={path} cannot be created or written ({why}): give it a folder the bot's user "
            "can write to"
        )
    return None


async def start(bot: commands.AutoShardedBot, token: str, timeout_s: float = 60.0) -> None:
    """Log in and connect, each within a bound: Discord out of reach or silent is one clear line,
    in seconds, not a bare error after minutes."""
    log.info("connecting to Discord...")
    try:
        async with asyncio.timeout(timeout_s):
            await bot.login(token)  # (and the extensions' set-up)
    except TimeoutError:
        raise StartFailed(f"Discord did not answer the login within {timeout_s:g} s", 1) from None
    except aiohttp.ClientConnectorError as exc:
        raise StartFailed(
            f"Discord could not be reached ({type(exc.os_error).__name__}: DNS or a refused connection); "
            "check the machine's network",
            1,
        ) from None
    connecting = asyncio.create_task(bot.connect(), name="gateway")
    ready = asyncio.create_task(bot.wait_until_ready(), name="ready")
    done, _ = await asyncio.wait({connecting, ready}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    if not done:
        connecting.cancel()
        ready.cancel()
        await asyncio.gather(connecting, ready, return_exceptions=True)
        raise StartFailed(f"Discord's gateway did not answer within {timeout_s:g} s", 1)
    ready.cancel()
    log.info("connected to Discord")
    await connecting


async def check(token: str, extensions: list[Any], env: Mapping[str, str]) -> int:
    """``python bot.py --check``: the settings (already read), a login to Discord (token and
    application) and each extension's own checks, one line each; 0 only when every check passed."""
    lines: list[tuple[str, bool, str]] = [("settings", True, "every setting is valid")]
    lines.append(await check_discord(token))
    for extension in extensions:
        checker = getattr(extension, "check", None)
        if checker is not None:
            lines += await checker(env)
    for name, ok, detail in lines:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")  # noqa: T201
    failed = sum(not ok for _, ok, _ in lines)
    print(f"{len(lines) - failed} passed, {failed} failed")  # noqa: T201
    return 0 if not failed else 1


async def check_discord(token: str) -> tuple[str, bool, str]:
    """Log in once over HTTP (no gateway): the token, and the application it belongs to."""
    client = discord.Client(intents=discord.Intents.none())
    try:
        async with asyncio.timeout(30):
            await client.login(token)
            app = await client.application_info()
    except discord.LoginFailure:
        return (
            "Discord",
            False,
            "Discord rejected DISCORD_TOKEN: reset it (developer portal, Bot → Reset Token) and put the new one in .env",
        )
    except (TimeoutError, OSError, aiohttp.ClientError) as exc:
        return (
            "Discord",
            False,
            f"Discord could not be reached ({type(exc).__name__}): check the machine's network and DNS",
        )
    except discord.HTTPException as exc:
        return ("Discord", False, f"Discord answered HTTP {exc.status} to the login: try again later")
    finally:
        await client.close()
    return ("Discord", True, f"logged in as {client.user} (application {app.name}, id {app.id})")
