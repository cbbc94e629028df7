"""`make bench` (``python -m bench``): our bot and the baseline, each in its own process and each with its
own local fake Discord and fake API (fixed simulated generation time L), side by side in one run.

The fake Discords run here, where the timings are taken; the fake APIs and the CDN that serves the
member's picture run in a process of their own (``bench/services.py``), as they are other services in
real life: downloading a picture must not slow "Discord" down. Every process runs on uvloop.

Both bots are started at once and stay connected; for every burst size the runs alternate between them
(A B, B A, A B, ...), so that whatever else the machine does at a given moment weighs on both alike.
Small bursts get more runs, so that every figure rests on at least ``--samples`` requests.

Per bot and burst size: acknowledgement latency (interaction written → acknowledgement received)
p50/p99/max, final latency (→ image delivered) and overhead (final − L) p50/p99, the worst event-loop
stall inside the bot (and the median of the runs' worst), peak RSS and RSS per request in flight, CPU
time per request (the bot and its image workers), when requests reached the API, and requests missed
(no acknowledgement within 3 s) and lost (no final state). Then ours ÷ baseline, and the RSS after each
run of the largest burst (memory must not grow from run to run). Everything stays on 127.0.0.1.

Options: ``--bursts 1,8,32,200 --runs 3 --samples 480 --max-runs 40 --latency 1.0 --bots baseline,ours``
(``--bots baseline,baseline`` measures the bench's own noise: the two should come out at ×1.0).
``--cold``: as a restarted bot meets a burst: before every run each bot is a fresh process that serves
one warm-up request, then the burst (default ``--bursts 200 --runs 5``); written to ``bench-cold.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import aiohttp
import uvloop
from PIL import Image

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


def proc_kb(pid: int, key: str) -> int:
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


def read_stall(path: Path, start: float, end: float) -> tuple[float, float, float]:
    """The loop monitor's worst late wake-up while the burst was in flight (its 50 ms windows that end
    from the first request to just after the last result: a pause after that, such as our paced
    garbage collection once the bot is idle, keeps no member waiting), with the part of it during
    which the loop's thread was running and the part it waited for a CPU (cogs/depth2img/diagnostics.py)."""
    worst = (0.0, 0.0, 0.0)
    try:
        for line in path.read_text().splitlines():
            at, *values = line.split()
            if start <= float(at) <= end + 0.06 and float(values[0]) > worst[0]:
                worst = (float(values[0]), float(values[1]), float(values[2]))
    except (OSError, ValueError, IndexError):
        pass
    return worst


def delivered(fake: FakeDiscord, record: InteractionRecord) -> float | None:
    """When the member saw the image (monotonic), or None."""
    for mid in record.message_ids:
        msg = fake.messages[mid]
        if msg.files and not msg.deleted:
            return msg.updated_at
    return None


def failed(fake: FakeDiscord, record: InteractionRecord) -> bool:
    msgs = [fake.messages[m] for m in record.message_ids if not fake.messages[m].deleted]
    return bool(msgs) and not msgs[-1].loading and not msgs[-1].files and "code `" in msgs[-1].content


@dataclass
class RunResult:
    """One burst sent to one bot."""

    acks_ms: list[float] = field(default_factory=list)
    finals_s: list[float] = field(default_factory=list)
    submits_s: list[float] = field(default_factory=list)
    missed: int = 0
    lost: int = 0
    stall_ms: float = 0.0
    stall_running_ms: float = 0.0
    stall_no_cpu_ms: float = 0.0
    rss_before_kb: int = 0
    rss_peak_kb: int = 0
    rss_after_kb: int = 0
    cpu_s: float = 0.0


@dataclass
class BurstResult:
    bot: str
    burst: int
    runs: int
    ack_ms: dict[str, float] = field(default_factory=dict)
    final_s: dict[str, float] = field(default_factory=dict)
    overhead_ms: dict[str, float] = field(default_factory=dict)
    loop_stall_ms: float = 0.0  # the worst of every run
    loop_stall_median_ms: float = 0.0  # the median of the runs' worst
    loop_stall_ms_each_run: list[float] = field(default_factory=list)
    # each run's worst stall, split: the loop's thread running (callbacks too long), waiting for a
    # CPU (2 cores shared with the fakes and the other bot), and the rest (waiting for the GIL)
    loop_stall_running_ms_each_run: list[float] = field(default_factory=list)
    loop_stall_no_cpu_ms_each_run: list[float] = field(default_factory=list)
    loop_stall_running_ms: float = 0.0  # the largest running part of any run's worst stall
    ack_max_ms_each_run: list[float] = field(default_factory=list)
    rss_mb_after_warm_up: float = 0.0
    rss_mb_after_each_run: list[float] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    rss_per_request_kb: float = 0.0
    cpu_ms_per_request: float = 0.0
    submitted_s: dict[str, float] = field(default_factory=dict)  # interaction written → at the API
    submitted_max_s_each_run: list[float] = field(default_factory=list)
    final_max_s_each_run: list[float] = field(default_factory=list)
    missed: int = 0
    lost: int = 0


@dataclass
class Services:
    """What ``bench/services.py`` serves (see there)."""

    apis: list[dict[str, str]]
    attachment_url: str
    control: str
    session: aiohttp.ClientSession

    async def submissions(self, api: int, since: int) -> list[float]:
        async with self.session.get(f"{self.control}/submissions", params={"api": api, "since": since}) as r:
            return list(await r.json())


def pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Bot:
    """One bot process with its own fake Discord and fake API."""

    def __init__(
        self,
        name: str,
        kind: str,
        *,
        extra_env: dict[str, str],
        index: int,
        services: Services,
        picture_size: int,
        data_dir: Path,
    ) -> None:
        self.name, self.kind, self.extra_env = name, kind, extra_env
        self.fake = FakeDiscord(check_spec=False)  # (the timings are taken in this process)
        self.index = index
        self.services = services
        self.api_url = services.apis[index]["base_url"]
        self.api_key = services.apis[index]["key"]
        self.picture_size = picture_size
        self.submissions_seen = 0
        self.cpus: set[int] | None = None
        self.data_dir = data_dir / name
        self.monitor = self.data_dir / "loop.txt"
        self.proc: asyncio.subprocess.Process | None = None
        self.log: BinaryIO | None = None
        self.attachment: dict[str, object] = {}
        self.user = 10**17

    def env(self) -> dict[str, str]:
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DISCORD_", "SD_", "MAX_", "BOT_", "DOTENV", "DATABASE_", "METRICS_"))
        }
        env = {
            **inherited,
            "DOTENV_PATH": str(self.data_dir / "none.env"),
            "DISCORD_TOKEN": self.fake.token,
            "SD_API_KEY": self.api_key,
            "SD_API_BASE_URL": self.api_url,
            "DISCORD_API_BASE_URL": self.fake.api_base,
            "DISCORD_GATEWAY_URL": self.fake.gateway_url,
            "LOG_LEVEL": "WARNING",
            "LOOP_MONITOR_FILE": str(self.monitor),
        }
        if self.kind == "ours":
            env |= {
                "BOT_DATA_DIR": str(self.data_dir / "data"),
                "SD_MAX_CONCURRENT": "250",
                "SD_MAX_QUEUED": "250",
                "SD_USER_COOLDOWN_S": "0",
                "SD_REQUEST_TIMEOUT_S": "120",
            }
        return env | self.extra_env

    def argv(self) -> list[str]:
        if self.kind == "ours":
            return [sys.executable, "bot.py"]
        return [sys.executable, "-m", "bench.baseline_bot"]

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        OUT.mkdir(exist_ok=True)
        # the bot's warnings and errors (LOG_LEVEL=WARNING): a retry or a fault shows here
        self.log = (OUT / f"{self.name}.log").open("wb")
        await self.fake.start()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            cwd=ROOT,
            env=self.env(),
            stdout=self.log,
            stderr=self.log,
            preexec_fn=pin(self.cpus),
        )

    async def wait_ready(self) -> None:
        assert self.proc is not None
        async with asyncio.timeout(60):
            while not (self.fake.identified.is_set() and self.fake.commands):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.name} exited early")
                await asyncio.sleep(0.05)
        # the picture is on the CDN (services process), not on the fake Discord
        self.attachment = self.fake.add_attachment(b"", "input.png", "image/png")
        url = self.services.attachment_url + f"?for={self.name}"
        self.attachment |= {"size": self.picture_size, "url": url, "proxy_url": url}

    async def restart(self) -> None:
        """A fresh bot process (same fake Discord, same data folder), as after a deploy or a crash."""
        await self._stop_process()
        self.fake.identified.clear()
        assert self.log is not None
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            cwd=ROOT,
            env=self.env(),
            stdout=self.log,
            stderr=self.log,
            preexec_fn=pin(self.cpus),
        )
        await self.wait_ready()

    async def _stop_process(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def stop(self) -> None:
        await self._stop_process()
        await self.fake.stop()
        if self.log is not None:
            self.log.close()

    async def burst(self, size: int) -> RunResult:
        assert self.proc is not None
        pid = self.proc.pid
        fake = self.fake
        res = RunResult(rss_before_kb=proc_kb(pid, "VmRSS"))
        cpu_before = tree_cpu_s(pid)
        started = time.time()
        records = []
        for _ in range(size):
            self.user += 1
            records.append(
                fake.invoke_slash(
                    "depth2img", {"image": self.attachment, "prompt": "a lighthouse"}, user_id=self.user
                )
            )
        sent = await asyncio.gather(*records)
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        res.rss_peak_kb = res.rss_before_kb
        while time.monotonic() < deadline:
            res.rss_peak_kb = max(res.rss_peak_kb, proc_kb(pid, "VmRSS"))
            if all(delivered(fake, r) is not None or failed(fake, r) for r in sent):
                break
            await asyncio.sleep(0.02)
        ended = time.time()
        first_sent = min(r.sent_at for r in sent)
        arrivals = await self.services.submissions(self.index, self.submissions_seen)
        self.submissions_seen += len(arrivals)
        res.submits_s = [at - first_sent for at in arrivals]
        for r in sent:
            if r.acked_at is None or r.acked_at - r.sent_at > 3.0:
                res.missed += 1
            if r.acked_at is not None:
                res.acks_ms.append((r.acked_at - r.sent_at) * 1000)
            at = delivered(fake, r)
            if at is not None:
                res.finals_s.append(at - r.sent_at)
            elif not failed(fake, r):
                res.lost += 1
        res.stall_ms, res.stall_running_ms, res.stall_no_cpu_ms = read_stall(self.monitor, started, ended)
        res.rss_after_kb = proc_kb(pid, "VmRSS")
        res.cpu_s = tree_cpu_s(pid) - cpu_before
        for r in sent:  # the driver keeps what it needs; drop the delivered pictures' bytes
            for mid in r.message_ids:
                for f in fake.messages[mid].files:
                    f.data = b""
        return res


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM (peak RSS) afresh, so that each burst size gets its own peak (Linux 4.0+)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def summarise(bot: Bot, burst: int, runs: list[RunResult], latency: float, warm_up: RunResult) -> BurstResult:
    acks = [a for r in runs for a in r.acks_ms]
    finals = [f for r in runs for f in r.finals_s]
    submits = [s for r in runs for s in r.submits_s]
    assert bot.proc is not None
    return BurstResult(
        bot=bot.name,
        burst=burst,
        runs=len(runs),
        ack_ms={"p50": pct(acks, 50), "p99": pct(acks, 99), "max": max(acks, default=float("nan"))},
        final_s={"p50": pct(finals, 50), "p99": pct(finals, 99)},
        overhead_ms={"p50": (pct(finals, 50) - latency) * 1000, "p99": (pct(finals, 99) - latency) * 1000},
        loop_stall_ms=max(r.stall_ms for r in runs),
        loop_stall_median_ms=statistics.median(r.stall_ms for r in runs),
        loop_stall_ms_each_run=[round(r.stall_ms, 1) for r in runs],
        loop_stall_running_ms=max(r.stall_running_ms for r in runs),
        loop_stall_running_ms_each_run=[round(r.stall_running_ms, 1) for r in runs],
        loop_stall_no_cpu_ms_each_run=[round(r.stall_no_cpu_ms, 1) for r in runs],
        ack_max_ms_each_run=[round(max(r.acks_ms, default=float("nan")), 1) for r in runs],
        rss_mb_after_warm_up=round(warm_up.rss_after_kb / 1024, 1),
        rss_mb_after_each_run=[round(r.rss_after_kb / 1024, 1) for r in runs],
        peak_rss_mb=round(proc_kb(bot.proc.pid, "VmHWM") / 1024, 1),
        rss_per_request_kb=round(max((r.rss_peak_kb - r.rss_before_kb) / burst for r in runs), 1),
        cpu_ms_per_request=round(sum(r.cpu_s for r in runs) * 1000 / (burst * len(runs)), 1),
        submitted_s={"p50": pct(submits, 50), "p99": pct(submits, 99)},
        submitted_max_s_each_run=[round(max(r.submits_s, default=float("nan")), 3) for r in runs],
        final_max_s_each_run=[round(max(r.finals_s, default=float("nan")), 3) for r in runs],
        missed=sum(r.missed for r in runs),
        lost=sum(r.lost for r in runs),
    )


HEADER = (
    f"{'bot':14} {'burst':>5} {'runs':>4} | {'ack p50':>7} {'p99':>7} {'max':>7} ms | {'final p50':>9} {'p99':>6} s | "
    f"{'ovh p50':>7} {'p99':>6} ms | {'stall':>5} {'(med)':>5} {'(run)':>5} ms | {'peakRSS':>7} MB | {'/req':>5} KB | "
    f"{'cpu/req':>7} ms | {'at API p50':>10} {'p99':>6} | miss lost"
)


def row(r: BurstResult) -> str:
    return (
        f"{r.bot:14} {r.burst:5d} {r.runs:4d} | {r.ack_ms['p50']:7.1f} {r.ack_ms['p99']:7.1f} {r.ack_ms['max']:7.1f}    | "
        f"{r.final_s['p50']:9.3f} {r.final_s['p99']:6.3f}   | {r.overhead_ms['p50']:7.0f} {r.overhead_ms['p99']:6.0f}    | "
        f"{r.loop_stall_ms:5.0f} {r.loop_stall_median_ms:5.0f} {r.loop_stall_running_ms:5.0f}    | {r.peak_rss_mb:7.1f}    | {r.rss_per_request_kb:5.0f}    | "
        f"{r.cpu_ms_per_request:7.1f}    | {r.submitted_s['p50']:6.3f} {r.submitted_s['p99']:6.3f} s | {r.missed:4d} {r.lost:4d}"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bursts", default=None, help="default 1,8,32,200 (with --cold: 200)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="cold starts: before every run a fresh bot process and one warm-up request, then the burst "
        "(default --bursts 200 --runs 5 --samples 0)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per burst size, at least")
    parser.add_argument(
        "--samples", type=int, default=480, help="requests per burst size, at least (up to --max-runs runs)"
    )
    parser.add_argument("--max-runs", type=int, default=40)
    parser.add_argument(
        "--pin", default="", help="FAKES:BOTS cpu lists, e.g. 0:1 (the fakes on cpu 0, the bots on cpu 1)"
    )
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between two runs")
    parser.add_argument(
        "--bots",
        default="baseline,ours",
        help="which bots, in order; a bot may repeat, and may be followed by +NAME=VALUE settings "
        "(ours,ours+IMAGE_WORKERS=4)",
    )
    args = parser.parse_args()
    if args.cold:
        args.bursts = args.bursts or "200"
        if "--runs" not in sys.argv:
            args.runs = 5
        if "--samples" not in sys.argv:
            args.samples = 0
    bursts = [int(b) for b in (args.bursts or "1,8,32,200").split(",")]

    picture = noise_png(704)  # ~1.5 MB, sides a multiple of 8: passed to the API by URL, as the baseline does
    output = noise_png(600)  # ~1 MB output
    data_dir = Path(tempfile.mkdtemp(prefix="bench-data-"))
    specs = args.bots.split(",")
    kinds = [spec.split("+")[0] for spec in specs]
    extras = [dict(part.split("=", 1) for part in spec.split("+")[1:]) for spec in specs]
    names: list[str] = []
    for spec, kind in zip(specs, kinds, strict=True):
        if kind not in ("ours", "baseline"):
            parser.error(f"unknown bot {kind!r}")
        names.append(spec if spec not in names else f"{spec}-{names.count(spec) + 1}")
    fakes_cpus: set[int] | None = None
    bots_cpus: set[int] | None = None
    if args.pin:
        fakes_cpus, bots_cpus = (
            {int(c) for c in args.pin.split(":")[0].split(",")},
            {int(c) for c in args.pin.split(":")[1].split(",")},
        )
        os.sched_setaffinity(0, fakes_cpus)
    (data_dir / "input.png").write_bytes(picture)
    (data_dir / "output.png").write_bytes(output)
    services_proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bench.services", f"--apis={len(names)}", f"--latency={args.latency}"],
        *[f"--picture={data_dir / 'input.png'}", f"--output={data_dir / 'output.png'}"],
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        preexec_fn=pin(fakes_cpus),
    )
    assert services_proc.stdout is not None
    line = await asyncio.wait_for(services_proc.stdout.readline(), 30)
    session = aiohttp.ClientSession()
    services = Services(**json.loads(line), session=session)
    bots = [
        Bot(
            name,
            kind,
            extra_env=extra,
            index=i,
            services=services,
            picture_size=len(picture),
            data_dir=data_dir / str(i),
        )
        for i, (name, kind, extra) in enumerate(zip(names, kinds, extras, strict=True))
    ]
    for bot in bots:
        bot.cpus = bots_cpus
    print(
        f"L = {args.latency} s simulated generation; input {len(picture) // 1024} KB; output {len(output) // 1024} KB; "
        f"bots {', '.join(names)}, runs alternating",
        flush=True,
    )
    results: list[BurstResult] = []
    try:
        for bot in bots:
            await bot.start()
        for bot in bots:
            await bot.wait_ready()
        await asyncio.sleep(2.5)  # let discord.py reach on_ready (guild_ready_timeout) before measuring
        print(HEADER, flush=True)
        for burst in bursts:
            runs = max(args.runs, min(args.max_runs, math.ceil(args.samples / burst)))
            per_bot: dict[str, list[RunResult]] = {b.name: [] for b in bots}
            warm_ups: dict[str, RunResult] = {}
            for bot in bots:
                assert bot.proc is not None
                reset_peak_rss(bot.proc.pid)
            # Run 0 of each size warms up (not counted): the first burst larger than any before opens
            # new connections, a cost that a bot pays once, not at every burst.
            # Cold: every run starts with a fresh process and one warm-up request (not counted).
            for i in range(runs if args.cold else runs + 1):
                for bot in bots if i % 2 == 0 else bots[::-1]:
                    # The fakes' own garbage collection must not pause "Discord" during a run: it
                    # collects between runs instead.
                    if args.cold:
                        await bot.restart()
                        warm_ups[bot.name] = await bot.burst(1)
                        await asyncio.sleep(args.pause)
                    gc.disable()
                    try:
                        run = await bot.burst(burst)
                    finally:
                        gc.enable()
                    if i > 0 or args.cold:
                        per_bot[bot.name].append(run)
                    else:
                        warm_ups[bot.name] = run
                    gc.collect()
                    await asyncio.sleep(args.pause)
                    # at rest: what the bot keeps once a burst is over (a leak would show here)
                    assert bot.proc is not None
                    run.rss_after_kb = proc_kb(bot.proc.pid, "VmRSS")
            for bot in bots:
                result = summarise(bot, burst, per_bot[bot.name], args.latency, warm_ups[bot.name])
                results.append(result)
                print(row(result), flush=True)
    finally:
        for bot in bots:
            await bot.stop()
        await session.close()
        with contextlib.suppress(ProcessLookupError):
            services_proc.send_signal(signal.SIGTERM)
        await services_proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)  # ~2.5 MB of pictures per request

    by = {(r.bot, r.burst): r for r in results}
    ratios: dict[int, dict[str, float]] = {}
    first, last = names[0], names[-1]
    if len(names) >= 2:
        print(f"\n{last} / {first}:")
        for burst in bursts:
            ours, base = by[(last, burst)], by[(first, burst)]
            ratios[burst] = {
                "ack_p50": ours.ack_ms["p50"] / base.ack_ms["p50"],
                "ack_p99": ours.ack_ms["p99"] / base.ack_ms["p99"],
                "final_p50": ours.final_s["p50"] / base.final_s["p50"],
                "cpu_per_request": ours.cpu_ms_per_request / max(base.cpu_ms_per_request, 0.001),
            }
            q = ratios[burst]
            print(
                f"  burst {burst:4d}: ack p50 ×{q['ack_p50']:.2f}  ack p99 ×{q['ack_p99']:.2f}   "
                f"final p50 ×{q['final_p50']:.3f}   CPU/request ×{q['cpu_per_request']:.2f}"
            )
    largest = max(bursts)
    print(f"\nRSS at rest ({args.pause:g} s) after each run of {largest} (MB), the warm-up first:")
    for name in names:
        r = by[(name, largest)]
        print(
            f"  {name:14} {r.rss_mb_after_warm_up:.0f} | {' '.join(f'{m:.0f}' for m in r.rss_mb_after_each_run)}"
        )
    violations = [v for bot in bots for v in bot.fake.violations]
    OUT.mkdir(exist_ok=True)
    report = {
        "latency_s": args.latency,
        "input_bytes": len(picture),
        "output_bytes": len(output),
        "bots": names,
        "results": [asdict(r) for r in results],
        "ratios": ratios,
        "violations": violations,
    }
    name = "bench-cold.json" if args.cold else "bench.json"
    report["cold"] = args.cold
    (OUT / name).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {OUT / name}; Discord rule breaches seen by the fakes: {len(violations)}")
    return 0


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
