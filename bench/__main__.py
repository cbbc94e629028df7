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
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import aiohttp
import uvloop

from bench.bots import OUT, ROOT, Bot, Services, pin
from bench.figures import (
    HEADER,
    BurstResult,
    RunResult,
    noise_png,
    proc_kb,
    reset_peak_rss,
    row,
    stolen_row,
    summarise,
)

# On ext4 without a journal (this project's VMs), every file created in the 30 s after files were
# removed scans the recently removed inodes: a run right after the previous one removed its thousands
# of pictures measured our bot's writes at 3.9 ms per request against 2.5-2.9 (the baseline writes no
# file), and `make bench`'s cold runs, right after the warm ones, ours' CPU at 13.3 ms per request
# against 11.2 ms 40 s later. So a run starts once the previous run's removal is 35 s old.
REMOVED_AT = OUT / ".data-removed-at"
SETTLE_S = 35.0


async def _after_removals_settle() -> None:
    try:
        removed = float(REMOVED_AT.read_text())
    except (OSError, ValueError):
        return
    wait = removed + SETTLE_S - time.time()
    if 0 < wait <= SETTLE_S:
        print(f"waiting {wait:.0f} s: the previous run's files were removed just now", flush=True)
        await asyncio.sleep(wait)


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
    await _after_removals_settle()
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
                assert bot.proc is not None
                result = summarise(
                    bot.name, bot.proc.pid, burst, per_bot[bot.name], args.latency, warm_ups[bot.name]
                )
                results.append(result)
                print(row(result), flush=True)
                print(stolen_row(result), flush=True)
    finally:
        for bot in bots:
            await bot.stop()
        await session.close()
        with contextlib.suppress(ProcessLookupError):
            services_proc.send_signal(signal.SIGTERM)
        await services_proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)  # ~2.5 MB of pictures per request
        OUT.mkdir(exist_ok=True)
        REMOVED_AT.write_text(str(time.time()))

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
                "ack_p99_unstolen": ours.ack_ms_unstolen["p99"] / base.ack_ms_unstolen["p99"],
                "final_p50": ours.final_s["p50"] / base.final_s["p50"],
                "cpu_per_request": ours.cpu_ms_per_request / max(base.cpu_ms_per_request, 0.001),
            }
            q = ratios[burst]
            print(
                f"  burst {burst:4d}: ack p50 ×{q['ack_p50']:.2f}  ack p99 ×{q['ack_p99']:.2f}   "
                f"final p50 ×{q['final_p50']:.3f}   CPU/request ×{q['cpu_per_request']:.2f}   "
                "ack p99 in runs with no CPU stolen while acknowledging "
                + ("–" if math.isnan(q["ack_p99_unstolen"]) else f"×{q['ack_p99_unstolen']:.2f}")
                + " "
                + f"({ours.runs_unstolen}/{ours.runs} and {base.runs_unstolen}/{base.runs} runs)"
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
