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

from cogs.depth2img.ui.text import PROGRESS_PREFIXES
from tests.fakes.fake_api import FakeModelsLab
from tests.fakes.fake_discord import FakeDiscord, FakeMessage, InteractionRecord

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-output"
PROGRESS = PROGRESS_PREFIXES  # (every language's progress lines)
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


def show(msg: FakeMessage, indent: str = "   │ ") -> None:
    """A message as the member sees it: text, attachments, buttons."""
    for line in msg.content.splitlines():
        say(indent + re.sub(r"<@!?[0-9]+>", "@member", line))
    for f in msg.files:
        say(f"{indent}[attached: {f.filename}, {len(f.data) // 1024} KB]")
    for row in msg.components:
        labels = [
            f"[{c.get('emoji', {}).get('name', '')} {c.get('label', '')}]" for c in row.get("components", [])
        ]
        if labels:
            say(indent + " ".join(labels))
    if msg.ephemeral:
        say(f"{indent}(only you can see this)")


def button(msg: FakeMessage, action: str) -> str:
    return next(
        c["custom_id"]
        for row in msg.components
        for c in row["components"]
        if c["custom_id"].startswith(f"d2i:{action}:")
    )


async def wait_final(fake: FakeDiscord, record: InteractionRecord) -> FakeMessage:
    def settled() -> bool:
        msgs = fake.visible_messages(record)
        return bool(msgs) and not msgs[-1].loading and not msgs[-1].content.startswith(PROGRESS)

    await fake.wait_for(settled, timeout=30)
    return fake.visible_messages(record)[-1]


async def iterate(fake: FakeDiscord, first: FakeMessage) -> None:
    """The iterate-and-share flow, step by step, as the fake Discord records it."""
    member = first.interaction_id and fake.interactions[first.interaction_id].user_id
    say()
    say("5b. They press [ℹ️ Details] under the result; the answer only they see:")
    show(await wait_final(fake, await fake.click(first, button(first, "details"), user_id=member)))
    say()
    say("6. The member presses [🎨 More creative] under the result. A new message:")
    more = await wait_final(fake, await fake.click(first, button(first, "more"), user_id=member))
    show(more)
    say()
    say("7. They press [🪞 Before | after] on it:")
    compared = await wait_final(fake, await fake.click(more, button(more, "compare"), user_id=member))
    show(compared)
    for f in compared.files:
        (OUT / f.filename).write_bytes(f.data)
        say(f"   (saved {OUT / f.filename})")
    say()
    say("8. The member presses [✏️ Edit prompt]; Discord shows a form, prefilled:")
    record = await fake.click(more, button(more, "edit"), user_id=member)
    await fake.wait_for(lambda: record.modal is not None)
    assert record.modal is not None
    for row in record.modal["components"]:
        for c in row["components"]:
            say(f"   │ {c['label']}: {c.get('value', '')!r}")
    new_prompt = "the same cabin in deep snow, winter night, lanterns"
    say(f"   They change the prompt to {new_prompt!r} and submit. A new message:")
    edited = await wait_final(
        fake, await fake.submit_modal(record.modal, {"prompt": new_prompt}, user_id=member)
    )
    show(edited)
    say()
    say("9. They press [🔁 Use as source] on it: the winter picture becomes the new input.")
    reused = await wait_final(fake, await fake.click(edited, button(edited, "reuse"), user_id=member))
    show(reused)
    say()
    say("10. Another member tries [🗑️ Delete] on the first result:")
    other = await wait_final(fake, await fake.click(first, button(first, "delete"), user_id=4242))
    show(other)
    say("    The member who asked deletes it:")
    await fake.click(first, button(first, "delete"), user_id=member)
    await fake.wait_for(lambda: first.deleted)
    say("   │ (the first result is gone from the channel)")
    say()
    say("11. /depth2img-history (private):")
    history = await wait_final(fake, await fake.invoke_slash("depth2img-history", {}, user_id=member))
    show(history)
    say()
    say("12. In a server whose language is French, a member whose Discord is in German runs the same")
    say("    command: the channel reads French, the member's private answers are in German.")
    fake.guild_locale, fake.member_locale = "fr", "de"
    picture = fake.add_attachment(sample_picture(), "cabin.jpg", "image/jpeg")
    card = await wait_final(fake, await fake.invoke_slash("depth2img", {"image": picture, "prompt": PROMPT}))
    show(card)
    say("    [ℹ️ Détails], pressed by that member:")
    show(await wait_final(fake, await fake.click(card, button(card, "details"))))


async def main() -> int:
    fake_discord = FakeDiscord(check_spec=False)  # (the demo needs no Node.js; the tests check)
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
        "SD_USER_COOLDOWN_S": "0",  # the demo member clicks faster than a person would
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
        show(final)
        for f in final.files:
            (OUT / f.filename).write_bytes(f.data)
        say()
        say(f"5. Saved: {OUT / 'input.jpg'} (what the member sent)")
        for f in final.files:
            say(f"          {OUT / f.filename} (what the member got)")
        await iterate(fake_discord, final)
        problems = fake_discord.violations + fake_discord.unhandled
        say()
        say(f"Discord rules broken: {len(problems)}; API calls: {len(fake_api.submissions)}.")
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
