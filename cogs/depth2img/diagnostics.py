"""Event-loop stall monitor (Discord-free). A blocked loop shows up as late wake-ups of a task that
sleeps a short, fixed interval. The worst lateness per window is logged when it passes a threshold
and, when ``LOOP_MONITOR_FILE`` is set, appended to that file as ``<unix time> <worst ms>`` lines
(the benchmark reads them)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


async def loop_monitor(
    path: Path | None, *, interval_s: float = 0.01, window_s: float = 0.05, warn_ms: float = 250.0
) -> None:
    """Run forever (cancel to stop).

    With ``path``, each window's worst late wake-up is also split by cause: the part during which the
    loop's thread was running (callbacks that ran too long), the part it was ready to run but had no
    CPU (Linux's run-queue delay, /proc/thread-self/schedstat), and the rest (waiting for the GIL,
    held by another thread). File lines: ``<unix time> <worst ms> <running ms> <no-CPU ms>``."""
    loop = asyncio.get_running_loop()
    queue = _RunQueueClock() if path is not None else None
    worst: tuple[float, float, float] = (0.0, 0.0, 0.0)
    window_start = loop.time()
    lines: list[str] = []
    try:
        while True:
            before, cpu_before = loop.time(), time.thread_time()
            queued_before = queue.waited_s() if queue is not None else 0.0
            await asyncio.sleep(interval_s)
            late = max(0.0, loop.time() - before - interval_s)
            if late > worst[0]:
                # the thread's CPU time beyond what the interval itself could hold
                running = min(late, max(0.0, time.thread_time() - cpu_before - interval_s))
                queued = queue.waited_s() - queued_before if queue is not None else 0.0
                worst = (late, running, min(late - running, queued))
            now = loop.time()
            if now - window_start >= window_s:
                if worst[0] * 1000 >= warn_ms:
                    log.warning("event loop stalled", extra={"stall_ms": round(worst[0] * 1000, 1)})
                if path is not None:
                    lines.append(f"{time.time():.3f} " + " ".join(f"{x * 1000:.2f}" for x in worst) + "\n")
                    if len(lines) >= 20:
                        await asyncio.to_thread(_append, path, "".join(lines))
                        lines.clear()
                worst = (0.0, 0.0, 0.0)
                window_start = now
    finally:
        if queue is not None:
            queue.close()


class _RunQueueClock:
    """How long this thread has waited for a CPU while ready to run (0 where Linux does not say)."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def waited_s(self) -> float:
        if self._fd is None:
            return 0.0
        try:
            return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
