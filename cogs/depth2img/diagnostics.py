"""Event-loop stall monitor (Discord-free). A blocked loop shows up as late wake-ups of a task that
sleeps a short, fixed interval. The worst lateness per window is logged when it passes a threshold
and, when ``LOOP_MONITOR_FILE`` is set, appended to that file as ``<unix time> <worst ms>`` lines
(the benchmark reads them)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


async def loop_monitor(
    path: Path | None, *, interval_s: float = 0.01, window_s: float = 0.25, warn_ms: float = 250.0
) -> None:
    """Run forever (cancel to stop)."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    window_start = loop.time()
    lines: list[str] = []
    while True:
        before = loop.time()
        await asyncio.sleep(interval_s)
        late_ms = max(0.0, (loop.time() - before - interval_s) * 1000)
        worst = max(worst, late_ms)
        now = loop.time()
        if now - window_start >= window_s:
            if worst >= warn_ms:
                log.warning("event loop stalled", extra={"stall_ms": round(worst, 1)})
            if path is not None:
                lines.append(f"{time.time():.3f} {worst:.2f}\n")
                if len(lines) >= 4:
                    await asyncio.to_thread(_append, path, "".join(lines))
                    lines.clear()
            worst, window_start = 0.0, now


def _append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)
