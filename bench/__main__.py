"""`make bench` (``python -m bench``): our bot and the baseline, each in its own process, against the
local fake Discord and the fake API (fixed simulated generation time L), with bursts of concurrent
/depth2img requests. Prints a table and writes ``bench-results/bench.json``.

Per burst size: acknowledgement latency (interaction written → acknowledgement received) p50/p99/max,
final latency (→ image delivered) and overhead (final − L) p50/p99, the worst event-loop stall inside
the bot, peak RSS and RSS per request in flight, requests missed (no acknowledgement within 3 s) and
lost (no final state). Everything stays on 127.0.0.1 and every loop is bounded.

Options: ``--bursts 1,8,32,200 --runs 3 --latency 1.0 --only ours|baseline``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from tests.fakes.fake_api import FakeModelsLab
from tests.fakes.fake_discord import FakeDiscord, InteractionRecord

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-results"
SETTLE_TIMEOUT_S = 120.0


def noise_png(side: int) -> bytes:
    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def rss_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_cpu_s(root: int) -> float:
    """CPU time (user + system) used so far by ``root`` and every process under it (image workers)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


@dataclass
class BurstResult:
    bot: str
    burst: int
    runs: int
    ack_ms: dict[str, float] = field(default_factory=dict)
    final_s: dict[str, float] = field(default_factory=dict)
    overhead_ms: dict[str, float] = field(default_factory=dict)
    loop_stall_ms: float = 0.0
    rss_mb_after_each_run: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    rss_per_request_kb: float = 0.0
    cpu_ms_per_request: float = 0.0
    submitted_s: dict[str, float] = field(default_factory=dict)  # interaction written → at the API
    missed: int = 0
    lost: int = 0


class Variant:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.proc: asyncio.subprocess.Process | None = None


def delivered(fake: FakeDiscord, record: InteractionRecord) -> float | None:
    """When the member saw the image (monotonic), or None."""
    for mid in record.message_ids:
        msg = fake.messages[mid]
        if msg.files and not msg.deleted:
            return msg.updated_at
    return None


def failed(fake: FakeDiscord, record: InteractionRecord) -> bool:
    msgs = [fake.messages[m] for m in record.message_ids if not fake.messages[m].deleted]
    return bool(msgs) and not msgs[-1].loading and not msgs[-1].files and "ref `" in msgs[-1].content


async def run_variant(
    variant: Variant,
    fake: FakeDiscord,
    api: FakeModelsLab,
    picture: bytes,
    bursts: list[int],
    runs: int,
    latency: float,
) -> list[BurstResult]:
    monitor = Path(tempfile.mkdtemp(prefix="bench-loop-")) / "loop.txt"
    env = {**variant.env, "LOOP_MONITOR_FILE": str(monitor)}
    fake.identified.clear()
    fake.commands.clear()
    proc = await asyncio.create_subprocess_exec(
        *variant.argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    results: list[BurstResult] = []
    try:
        async with asyncio.timeout(60):
            while not (fake.identified.is_set() and fake.commands):
                if proc.returncode is not None:
                    raise RuntimeError(f"{variant.name} exited early")
                await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # let discord.py reach on_ready (guild_ready_timeout) before measuring
        attachment = fake.add_attachment(picture, "input.png", "image/png")
        user = 10**17
        for burst in bursts:
            acks: list[float] = []
            finals: list[float] = []
            submits: list[float] = []
            res = BurstResult(bot=variant.name, burst=burst, runs=runs)
            peak_in_flight_rss = 0.0
            cpu_before = tree_cpu_s(proc.pid)
            for _ in range(runs):
                base_rss = rss_kb(proc.pid, "VmRSS")
                started = time.time()
                records = []
                for _ in range(burst):
                    user += 1
                    records.append(
                        fake.invoke_slash(
                            "depth2img", {"image": attachment, "prompt": "a lighthouse"}, user_id=user
                        )
                    )
                seen_submissions = len(api.submissions)
                sent = await asyncio.gather(*records)
                deadline = time.monotonic() + SETTLE_TIMEOUT_S
                rss_peak_run = base_rss
                while time.monotonic() < deadline:
                    rss_peak_run = max(rss_peak_run, rss_kb(proc.pid, "VmRSS"))
                    if all(delivered(fake, r) is not None or failed(fake, r) for r in sent):
                        break
                    await asyncio.sleep(0.05)
                ended = time.time()
                first_sent = min(r.sent_at for r in sent)
                submits += [s.at - first_sent for s in api.submissions[seen_submissions:]]
                for r in sent:
                    if r.acked_at is None or r.acked_at - r.sent_at > 3.0:
                        res.missed += 1
                    if r.acked_at is not None:
                        acks.append((r.acked_at - r.sent_at) * 1000)
                    at = delivered(fake, r)
                    if at is not None:
                        finals.append(at - r.sent_at)
                    elif not failed(fake, r):
                        res.lost += 1
                res.loop_stall_ms = max(res.loop_stall_ms, read_stall(monitor, started, ended))
                res.rss_mb_after_each_run.append(round(rss_kb(proc.pid, "VmRSS") / 1024, 1))
                peak_in_flight_rss = max(peak_in_flight_rss, (rss_peak_run - base_rss) / burst)
                await asyncio.sleep(0.5)
            res.ack_ms = {"p50": pct(acks, 50), "p99": pct(acks, 99), "max": max(acks, default=float("nan"))}
            res.final_s = {"p50": pct(finals, 50), "p99": pct(finals, 99)}
            res.submitted_s = {"p50": pct(submits, 50), "p99": pct(submits, 99)}
            res.overhead_ms = {
                "p50": (pct(finals, 50) - latency) * 1000,
                "p99": (pct(finals, 99) - latency) * 1000,
            }
            res.cpu_ms_per_request = round((tree_cpu_s(proc.pid) - cpu_before) * 1000 / (burst * runs), 1)
            res.peak_rss_mb = round(rss_kb(proc.pid, "VmHWM") / 1024, 1)
            res.rss_per_request_kb = round(peak_in_flight_rss, 1)
            results.append(res)
            print(row(res), flush=True)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(monitor.parent, ignore_errors=True)
    return results


def read_stall(path: Path, start: float, end: float) -> float:
    worst = 0.0
    try:
        for line in path.read_text().splitlines():
            at, ms = line.split()
            if start - 0.3 <= float(at) <= end + 0.3:
                worst = max(worst, float(ms))
    except (OSError, ValueError):
        pass
    return worst


HEADER = (
    f"{'bot':9} {'burst':>5} | {'ack p50':>8} {'p99':>8} {'max':>8} ms | {'final p50':>9} {'p99':>7} s | "
    f"{'ovh p50':>8} {'p99':>8} ms | {'stall':>6} ms | {'peakRSS':>7} MB | {'/req':>6} KB | {'cpu/req':>7} ms | {'at API p50':>10} {'p99':>6} | miss lost"
)


def row(r: BurstResult) -> str:
    return (
        f"{r.bot:9} {r.burst:5d} | {r.ack_ms['p50']:8.1f} {r.ack_ms['p99']:8.1f} {r.ack_ms['max']:8.1f}    | "
        f"{r.final_s['p50']:9.3f} {r.final_s['p99']:7.3f}   | {r.overhead_ms['p50']:8.0f} {r.overhead_ms['p99']:8.0f}    | "
        f"{r.loop_stall_ms:6.0f}    | {r.peak_rss_mb:7.1f}    | {r.rss_per_request_kb:6.0f}    | "
        f"{r.cpu_ms_per_request:7.1f}    | {r.submitted_s['p50']:6.3f} {r.submitted_s['p99']:6.3f} s | {r.missed:4d} {r.lost:4d}"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bursts", default="1,8,32,200")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--only", choices=["ours", "baseline"])
    args = parser.parse_args()
    bursts = [int(b) for b in args.bursts.split(",")]

    picture = noise_png(704)  # ~1.5 MB, sides a multiple of 8: passed to the API by URL, as the baseline does
    fake = FakeDiscord()
    api = FakeModelsLab(latency_s=args.latency, output_png=noise_png(600))  # ~1 MB output
    await fake.start()
    await api.start()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-data-"))
    common = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DISCORD_", "SD_", "MAX_", "BOT_", "DOTENV"))
        },
        "DOTENV_PATH": str(data_dir / "none.env"),
        "DISCORD_TOKEN": fake.token,
        "SD_API_KEY": api.api_key,
        "SD_API_BASE_URL": api.base_url,
        "DISCORD_API_BASE_URL": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
        "LOG_LEVEL": "WARNING",
    }
    ours_env = {
        **common,
        "BOT_DATA_DIR": str(data_dir / "ours"),
        "SD_MAX_CONCURRENT": "250",
        "SD_MAX_QUEUED": "250",
        "SD_USER_COOLDOWN_S": "0",
        "SD_REQUEST_TIMEOUT_S": "120",
    }
    variants = [
        Variant("baseline", [sys.executable, "-m", "bench.baseline_bot"], common),
        Variant("ours", [sys.executable, "bot.py"], ours_env),
    ]
    if args.only:
        variants = [v for v in variants if v.name == args.only]
    print(
        f"L = {args.latency} s simulated generation; input {len(picture) // 1024} KB; output {len(api.output_png) // 1024} KB"
    )
    print(HEADER, flush=True)
    all_results: list[BurstResult] = []
    try:
        for variant in variants:
            all_results += await run_variant(variant, fake, api, picture, bursts, args.runs, args.latency)
    finally:
        await api.stop()
        await fake.stop()
        shutil.rmtree(data_dir, ignore_errors=True)  # ~2.5 MB of pictures per request
    by = {(r.bot, r.burst): r for r in all_results}
    ratios = {}
    if not args.only:
        print("\nours / baseline:")
        for burst in bursts:
            ours, base = by.get(("ours", burst)), by.get(("baseline", burst))
            if ours and base:
                ratios[burst] = {
                    "ack_p99": ours.ack_ms["p99"] / base.ack_ms["p99"]
                    if base.ack_ms["p99"]
                    else float("nan"),
                    "final_p50": ours.final_s["p50"] / base.final_s["p50"]
                    if base.final_s["p50"]
                    else float("nan"),
                }
                print(
                    f"  burst {burst:4d}: ack p99 ×{ratios[burst]['ack_p99']:.2f}   final p50 ×{ratios[burst]['final_p50']:.3f}"
                )
    OUT.mkdir(exist_ok=True)
    report = {
        "latency_s": args.latency,
        "input_bytes": len(picture),
        "output_bytes": len(api.output_png),
        "results": [asdict(r) for r in all_results],
        "ratios": ratios,
        "violations": fake.violations,
    }
    (OUT / "bench.json").write_text(json.dumps(report, indent=2))
    print(f"\nwrote {OUT / 'bench.json'}; Discord rule breaches seen by the fake: {len(fake.violations)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
