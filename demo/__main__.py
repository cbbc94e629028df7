"""Run the real bot (``python bot.py``, its own process) against the local fake Discord and a
SIMULATED image API, send one /depth2img with a sample picture, print what the member sees, and save
the delivered image. Nothing leaves 127.0.0.1; no Discord token or API key is needed.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from tests.fakes.fake_api import FakeModelsLab
from tests.fakes.fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-output"
PROMPT = "a cozy wooden cabin at sunset, warm light, oil painting"


def sample_picture() -> bytes:
    """A small scene with clear depth: sky, hills, a house, a tree."""
    img = Image.new("RGB", (768, 512))
    draw = ImageDraw.Draw(img)
    for y in range(512):
        draw.line([(0, y), (768, y)], fill=(90 + y // 6, 150 + y // 8, 235 - y // 6))
    draw.ellipse((560, 60, 660, 160), fill=(255, 220, 120))
    draw.polygon([(0, 330), (200, 250), (420, 320), (768, 240), (768, 512), (0, 512)], fill=(70, 130, 70))
    draw.rectangle((250, 280, 450, 420), fill=(150, 90, 60))
    draw.polygon([(230, 285), (350, 200), (470, 285)], fill=(110, 40, 40))
    draw.rectangle((330, 350, 370, 420), fill=(60, 40, 30))
    draw.rectangle((95, 300, 115, 420), fill=(90, 60, 30))
    draw.ellipse((55, 210, 155, 320), fill=(40, 100, 40))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def say(text: str = "") -> None:
    print(text, flush=True)


async def main() -> int:
    fake_discord = FakeDiscord()
    fake_api = FakeModelsLab(scenario="transform", latency_s=0.8)
    await fake_discord.start()
    await fake_api.start()
    data_dir = Path(tempfile.mkdtemp(prefix="depth2img-demo-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "SD_", "MAX_", "DEV_GUILD"))},
        "DOTENV_PATH": str(data_dir / "no.env"),  # never read the owner's real .env
        "DISCORD_TOKEN": fake_discord.token,
        "SD_API_KEY": fake_api.api_key,
        "SD_API_BASE_URL": fake_api.base_url,
        "DISCORD_API_BASE_URL": fake_discord.api_base,
        "DISCORD_GATEWAY_URL": fake_discord.gateway_url,
        "BOT_DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
    }
    say("depth2img demo — everything runs locally; the image API is SIMULATED (it posterises and tints")
    say("the picture and stamps 'SIMULATED' on it instead of running a real depth-to-image model).")
    say()
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, str(ROOT / "bot.py"), cwd=ROOT, env=env)
    try:
        async with asyncio.timeout(30):
            while not (fake_discord.identified.is_set() and fake_discord.commands):
                if proc.returncode is not None:
                    say(f"The bot exited early with status {proc.returncode}.")
                    return 1
                await asyncio.sleep(0.05)
        say(
            f"1. The real bot (python bot.py) connected to the fake Discord in {time.monotonic() - started:.1f} s."
        )
        OUT.mkdir(exist_ok=True)
        picture = sample_picture()
        (OUT / "input.jpg").write_bytes(picture)
        attachment = fake_discord.add_attachment(picture, "cabin.jpg", "image/jpeg")
        say(f'2. A member runs:  /depth2img image:cabin.jpg prompt:"{PROMPT}"')
        record = await fake_discord.invoke_slash("depth2img", {"image": attachment, "prompt": PROMPT})

        def settled() -> bool:
            msg = fake_discord.final_message(record)
            return msg is not None and not msg.content.startswith("⏳ Queued")

        await fake_discord.wait_for(settled, timeout=30)
        done = time.monotonic()
        assert record.acked_at is not None
        say(
            f"3. Discord got the acknowledgement {1000 * (record.acked_at - record.sent_at):.0f} ms after the command"
        )
        say("   (the member sees 'depth2img is thinking…').")
        final = fake_discord.final_message(record)
        assert final is not None
        say(f"4. {done - record.sent_at:.1f} s after the command the message became:")
        say()
        for line in final.content.splitlines():
            say(f"   │ {re.sub(r'<@!?[0-9]+>', '@member', line)}")
        for f in final.files:
            path = OUT / f.filename
            path.write_bytes(f.data)
            with Image.open(io.BytesIO(f.data)) as img:
                size = f"{img.width}×{img.height}"
            say(f"   │ [attached: {f.filename}, {len(f.data) // 1024} KB, {size}]")
        say()
        say(f"5. Saved: {OUT / 'input.jpg'} (what the member sent)")
        for f in final.files:
            say(f"          {OUT / f.filename} (what the member got)")
        problems = fake_discord.violations + fake_discord.unhandled
        say(f"6. Discord rules broken: {len(problems)}; API calls: {len(fake_api.submissions)}.")
        return 0 if final.files and not problems else 1
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
        await fake_api.stop()
        await fake_discord.stop()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
