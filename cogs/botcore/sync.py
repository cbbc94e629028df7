"""Command sync: to the dev server at once, or globally only when the definitions changed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

log = logging.getLogger(__name__)


async def sync_commands(
    bot: commands.AutoShardedBot | commands.Bot, *, data_dir: Path, dev_guild_id: int | None
) -> None:
    """Sync to ``DEV_GUILD_ID`` at once when it is set. Otherwise global commands are synced only when
    their definitions changed since the last sync (a hash of them is kept in the data folder), never
    blindly on every start."""
    if dev_guild_id is not None:
        guild = discord.Object(id=dev_guild_id)
        bot.tree.copy_global_to(guild=guild)
        synced = await bot.tree.sync(guild=guild)
        log.info("commands synced to the dev guild", extra={"guild_id": guild.id, "count": len(synced)})
        return
    digest = await command_digest(bot.tree)
    state_file = data_dir / "command-sync.json"
    state = await asyncio.to_thread(_read_state, state_file)
    key = str(bot.application_id)
    if state.get(key) == digest:
        log.info("commands unchanged since the last sync; not syncing", extra={"digest": digest[:12]})
        return
    synced = await bot.tree.sync()
    state[key] = digest
    await asyncio.to_thread(_write_state, state_file, state)
    log.info("global commands synced", extra={"count": len(synced), "digest": digest[:12]})


async def command_digest(tree: app_commands.CommandTree[Any]) -> str:
    """A hash of exactly what a sync would send (translations included)."""
    translator = tree.translator
    payload = []
    for command in tree.get_commands():
        if translator is not None:
            payload.append(await command.get_translated_payload(tree, translator))
        else:
            payload.append(command.to_dict(tree))
    payload.sort(key=lambda d: str(d["name"]))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _read_state(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        state = json.loads(path.read_text("utf-8"))
        if isinstance(state, dict):
            return state
    return {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2), "utf-8")
    tmp.replace(path)
