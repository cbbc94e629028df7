"""The output-memory benchmark (``python -m bench.memory``, part of ``make bench``; issue 12, item 13).

A fake API that answers every job with ten output URLs of 25 MB each (PNG noise, 2940 x 2940: over the
fake Discord's 10 MB upload limit, so each is re-encoded to fit), ``SD_MAX_CONCURRENT=2``, and six
members asking at once for four pictures each: 600 MB of outputs to download if nothing held them back.
The bot runs as ``python bot.py`` against the fake Discord (both fakes live in this process). Its RSS,
and that of its whole process tree (the image workers), is sampled every 20 ms.

Runs: ``OUTPUT_MEMORY_BYTES`` at 128 MB and at its default (256 MB), and lifted (64 GB) to show what
it bounds. Prints one line per run and writes ``bench-results/memory.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from bench.figures import proc_kb
from cogs.depth2img.ui.text import PROGRESS_PREFIXES
from tests.fakes.fake_api import FakeModelsLab, make_png
from tests.fakes.fake_discord import FakeDiscord, InteractionRecord

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-results"
MB = 1024 * 1024


def big_png(side: int = 2940) -> bytes:
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return found


@dataclass
class Run:
    budget_mb: float
    jobs: int
    samples: int
    urls_per_job: int
    output_mb: float
    delivered: int
    pictures: int
    seconds: float
    idle_rss_mb: float
    peak_rss_mb: float  # the bot's process (VmHWM)
    peak_tree_mb: float  # the bot and its image workers, sampled every 20 ms
    downloads: int


async def one_run(output: bytes, *, budget: int, jobs: int, samples: int, data: Path) -> Run:
    fake = FakeDiscord(check_spec=False)  # (timings and memory are measured here)
    api = FakeModelsLab(output_png=output, output_count=10, latency_s=0.3, scenario="success_list")
    await fake.start()
    await api.start()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DISCORD_", "SD_", "MAX_", "BOT_", "DOTENV", "DATABASE_", "METRICS_", "OUTPUT_"))
    } | {
        "DOTENV_PATH": str(data / "none.env"),
        "DISCORD_TOKEN": fake.token,
        "SD_API_KEY": api.api_key,
        "SD_API_BASE_URL": api.base_url,
        "DISCORD_API_BASE_URL": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
        "BOT_DATA_DIR": str(data / f"data-{budget}-{samples}"),
        "LOG_LEVEL": "WARNING",
        "SD_MAX_CONCURRENT": "2",
        "SD_USER_COOLDOWN_S": "0",
        "SD_POLL_INITIAL_S": "0.05",
        "OUTPUT_MEMORY_BYTES": str(budget),
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "bot.py", cwd=ROOT, env=env)
    try:
        async with asyncio.timeout(60):
            while not (fake.identified.is_set() and fake.commands):  # noqa: ASYNC110 (two conditions)
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        idle = proc_kb(proc.pid, "VmRSS")
        picture = make_png()
        started = time.monotonic()
        records = [
            await fake.invoke_slash(
                "depth2img",
                {
                    "image": fake.add_attachment(picture, f"in{n}.png"),
                    "prompt": f"job {n}",
                    **({"samples": samples} if samples > 1 else {}),
                },
                user_id=10**17 + n,
            )
            for n in range(jobs)
        ]
        peak_tree = 0

        def settled(record: InteractionRecord) -> bool:
            visible = fake.visible_messages(record)
            return (
                bool(visible)
                and not visible[-1].loading
                and not visible[-1].content.startswith(PROGRESS_PREFIXES)
            )

        def finished() -> bool:
            return all(settled(r) for r in records)

        async with asyncio.timeout(600):
            while not finished():
                peak_tree = max(peak_tree, sum(proc_kb(pid, "VmRSS") for pid in tree(proc.pid)))
                await asyncio.sleep(0.02)
        seconds = time.monotonic() - started
        finals = [fake.final_message(r) for r in records]
        pictures = sum(len(m.results) for m in finals if m is not None)
        return Run(
            budget_mb=budget / MB,
            jobs=jobs,
            samples=samples,
            urls_per_job=10,
            output_mb=round(len(output) / MB, 1),
            delivered=sum(1 for m in finals if m is not None and m.results),
            pictures=pictures,
            seconds=round(seconds, 1),
            idle_rss_mb=round(idle / 1024, 1),
            peak_rss_mb=round(proc_kb(proc.pid, "VmHWM") / 1024, 1),
            peak_tree_mb=round(peak_tree / 1024, 1),
            downloads=len(api.downloads),
        )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await api.stop()
        await fake.stop()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--samples", type=int, default=4)
    args = parser.parse_args()
    output = big_png()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="d2i-membench-") as tmp:
        for budget in (128 * MB, 256 * MB, 64 * 1024 * MB):
            run = await one_run(output, budget=budget, jobs=args.jobs, samples=args.samples, data=Path(tmp))
            runs.append(run)
            print(
                f"OUTPUT_MEMORY_BYTES={run.budget_mb:.0f} MB: {run.jobs} jobs x {run.samples} pictures "
                f"({run.urls_per_job} URLs of {run.output_mb} MB offered per job): delivered "
                f"{run.delivered}/{run.jobs} jobs, {run.pictures} pictures, {run.downloads} downloads, "
                f"{run.seconds} s; bot RSS idle {run.idle_rss_mb} MB, peak {run.peak_rss_mb} MB "
                f"(+{run.peak_rss_mb - run.idle_rss_mb:.0f} MB); bot + image workers peak {run.peak_tree_mb} MB",
                flush=True,
            )
    OUT.mkdir(exist_ok=True)
    (OUT / "memory.json").write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
