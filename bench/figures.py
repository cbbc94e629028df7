"""The benchmark's figures: what is measured of a bot process (RSS, CPU, the loop monitor's stalls), what
one run and one burst size come to, and the table's rows. Used by ``python -m bench``."""

from __future__ import annotations

import contextlib
import io
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from tests.fakes.fake_discord import FakeDiscord, InteractionRecord


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


def stolen_s() -> float:
    """CPU time taken from this virtual machine by its host so far, all CPUs together (the ``steal``
    column of /proc/stat; 0 where Linux does not say). Counted in the kernel's clock ticks (10 ms), so
    a short window reads 0 or one tick or more; what matters is whether it moved."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


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
    stolen_ms: float = 0.0  # CPU time the host took from the machine during the run (all CPUs)
    stolen_acking_ms: float = 0.0  # ... from the burst's start until its last acknowledgement (+<=20 ms)


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
    stolen_ms_each_run: list[float] = field(default_factory=list)
    stolen_acking_ms_each_run: list[float] = field(default_factory=list)
    # acknowledgements of the runs during whose acknowledgements the host took no CPU time from the
    # machine (ack p99 at small bursts is otherwise mostly whether such a pause fell in a run's 10-30 ms)
    runs_unstolen: int = 0
    ack_ms_unstolen: dict[str, float] = field(default_factory=dict)


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM (peak RSS) afresh, so that each burst size gets its own peak (Linux 4.0+)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def summarise(
    name: str, pid: int, burst: int, runs: list[RunResult], latency: float, warm_up: RunResult
) -> BurstResult:
    acks = [a for r in runs for a in r.acks_ms]
    finals = [f for r in runs for f in r.finals_s]
    submits = [s for r in runs for s in r.submits_s]
    unstolen = [r for r in runs if r.stolen_acking_ms == 0]
    acks_unstolen = [a for r in unstolen for a in r.acks_ms]
    return BurstResult(
        bot=name,
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
        peak_rss_mb=round(proc_kb(pid, "VmHWM") / 1024, 1),
        rss_per_request_kb=round(max((r.rss_peak_kb - r.rss_before_kb) / burst for r in runs), 1),
        cpu_ms_per_request=round(sum(r.cpu_s for r in runs) * 1000 / (burst * len(runs)), 1),
        submitted_s={"p50": pct(submits, 50), "p99": pct(submits, 99)},
        submitted_max_s_each_run=[round(max(r.submits_s, default=float("nan")), 3) for r in runs],
        final_max_s_each_run=[round(max(r.finals_s, default=float("nan")), 3) for r in runs],
        missed=sum(r.missed for r in runs),
        lost=sum(r.lost for r in runs),
        stolen_ms_each_run=[round(r.stolen_ms) for r in runs],
        stolen_acking_ms_each_run=[round(r.stolen_acking_ms) for r in runs],
        runs_unstolen=len(unstolen),
        ack_ms_unstolen={"p50": pct(acks_unstolen, 50), "p99": pct(acks_unstolen, 99)},
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


def stolen_row(r: BurstResult) -> str:
    """The host's share: on a shared virtual machine it pauses both CPUs now and then (10-30 ms)."""
    each = r.stolen_ms_each_run
    return (
        f"{'':14} CPU stolen by the host per run: median {statistics.median(each) if each else 0:.0f} ms, "
        f"max {max(each, default=0):.0f}; runs with none while acknowledging {r.runs_unstolen}/{r.runs}"
        + (
            f": ack p50 {r.ack_ms_unstolen['p50']:.1f} p99 {r.ack_ms_unstolen['p99']:.1f} ms"
            if r.runs_unstolen
            else ""
        )
    )
