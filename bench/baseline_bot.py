"""The baseline: a minimal discord.py bot that only defers, posts to the API with one shared aiohttp
session, downloads the output and sends it as a followup. No validation, limits or storage.
Configured with the same environment variables as ours (DISCORD_TOKEN, SD_API_KEY, SD_API_BASE_URL,
DISCORD_API_BASE_URL, DISCORD_GATEWAY_URL, LOOP_MONITOR_FILE).

It runs as a plain ``pip install discord.py`` would have it: on asyncio's own event loop and without
discord.py's speed extras, which are installed in this venv for our bot (discord.py picks orjson up
whenever it can import it, so the import is blocked here)."""

from __future__ import annotations

import sys

sys.modules["orjson"] = None  # type: ignore[assignment]  # before discord is imported

import asyncio  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import aiohttp  # noqa: E402
import discord  # noqa: E402
import yarl  # noqa: E402
from discord import app_commands  # noqa: E402

from cogs.depth2img.diagnostics import loop_monitor  # noqa: E402

API = os.environ["SD_API_BASE_URL"].rstrip("/")
KEY = os.environ["SD_API_KEY"]


class Baseline(discord.Client):
    def __init__(self) -> None:
        super().__init__(intents=discord.Intents.default())
        self.tree = app_commands.CommandTree(self)
        self.session: aiohttp.ClientSession | None = None

    async def setup_hook(self) -> None:
        self.session = aiohttp.ClientSession()
        self.tree.add_command(depth2img)
        await self.tree.sync()


@app_commands.command(name="depth2img", description="Baseline depth2img.")
async def depth2img(
    interaction: discord.Interaction[Baseline], image: discord.Attachment, prompt: str
) -> None:
    await interaction.response.defer(thinking=True)
    session = interaction.client.session
    assert session is not None
    async with session.post(
        f"{API}/v5/depth2img", json={"key": KEY, "init_image": image.url, "prompt": prompt}
    ) as r:
        data = await r.json(content_type=None)
    output = data["output"]
    url = output if isinstance(output, str) else output[0]
    async with session.get(url) as r:
        picture = await r.read()
    await interaction.followup.send(file=discord.File(io.BytesIO(picture), filename="out.png"))


async def main() -> None:
    assert not discord.utils.HAS_ORJSON
    discord.http.Route.BASE = os.environ["DISCORD_API_BASE_URL"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["DISCORD_GATEWAY_URL"])
    monitor_file = os.environ.get("LOOP_MONITOR_FILE")
    monitor = asyncio.create_task(loop_monitor(Path(monitor_file) if monitor_file else None))
    client = Baseline()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with client:
        runner = asyncio.create_task(client.start(os.environ["DISCORD_TOKEN"]))
        await stop.wait()
        await client.close()
        if client.session is not None:
            await client.session.close()
        await asyncio.wait({runner})
    monitor.cancel()


if __name__ == "__main__":
    asyncio.run(main())
