"""The ledger after years: its recurring queries on a large jobs table (``python -m bench.ledger``).

A bot kept running records every job; ``KEEP_JOBS_DAYS`` (default 90, or forever) bounds the table.
Each query below runs on the SQLite ledger's one thread, where every job's writes wait behind it, so a
query that scans the table stalls every member's request while it runs. This fills a SQLite ledger
(made by the bot's own migrations) with ``--jobs`` finished jobs spread over 90 days (95 % delivered,
5 % failed, a third of those kept but never delivered; those of the last 45 days made by the process
that measures, as by a bot up that long), plus ten running ones, and prints each query's
median time over ``--repeat`` calls, with how often the bot makes it.

Not part of ``make bench`` (filling a million rows takes a minute); run it after changing a query or
the schema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from cogs.depth2img.store import Ledger

DAY = 86400.0
RUNNING = 10


def fill(path: Path, jobs: int, owner: str) -> None:
    """``jobs`` finished jobs over the last 90 days, and :data:`RUNNING` running ones owned by ``owner``."""
    rnd = random.Random(7)
    now = time.time()
    params = json.dumps({"prompt": "a castle at dusk", "samples": 1})
    rows = []
    for n in range(jobs + RUNNING):
        running = n >= jobs
        created = now - (1.0 if running else rnd.random() * 90 * DAY)
        failed = not running and rnd.random() < 0.05
        kind = rnd.choice(["ApiError", "JobTimeout", "DeliveryFailed"]) if failed else None
        state = "running" if running else "failed" if failed else "delivered"
        rows.append(
            (
                f"j{n:09d}",
                state,
                rnd.randrange(5000),  # members
                1000 + rnd.randrange(200),  # channels
                rnd.randrange(50),  # servers
                1,
                "token",
                created,
                25 * 1024 * 1024,
                params,
                kind,
                created,
                created + 20,
                None if running else created + 20,
                None if failed and kind != "DeliveryFailed" else f"/data/results/{n}.png",
                owner if running or created > now - 45 * DAY else "old/0000",  # (up 45 days)
                now + 60 if running else 0.0,
            )
        )
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO jobs (id, state, user_id, channel_id, guild_id, application_id, "
            "interaction_token, interaction_created_at, upload_limit_bytes, params, error_kind, "
            "created_at, updated_at, finished_at, result_path, owner, lease_until) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    conn.close()


async def timed(call: Callable[[], Awaitable[object]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(jobs: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.db"
        ledger = await Ledger.open(path, owner="bench/0001")
        await ledger.close()
        started = time.perf_counter()
        fill(path, jobs, "bench/0001")
        filled_s = time.perf_counter() - started
        ledger = await Ledger.open(path, owner="bench/0001")
        running = [f"j{n:09d}" for n in range(jobs, jobs + RUNNING)]
        now = time.time()
        today = now - DAY
        queries: list[tuple[str, str, Callable[[], Awaitable[object]]]] = [
            ("heartbeat", "every lease", lambda: ledger.heartbeat(running)),
            ("claim_orphans", "every lease", lambda: ledger.claim_orphans(running=running)),
            (
                "claim_late_posts",
                "every lease",
                lambda: ledger.claim_late_posts(since=now - DAY, tried_before=time.time() + 1),
            ),
            ("get", "every button", lambda: ledger.get(f"j{jobs // 2:09d}")),
            ("for_user", "/depth2img-history", lambda: ledger.for_user(42)),
            ("release_pictures", "hourly pruning", lambda: ledger.release_pictures(now - 91 * DAY)),
            ("forget_finished", "hourly pruning", lambda: ledger.forget_finished(now - 91 * DAY)),
            ("guild_counts_since", "start-up", lambda: ledger.guild_counts_since(today)),
            ("member_counts_since", "start-up", lambda: ledger.member_counts_since(today)),
            ("pictures_since", "start-up", lambda: ledger.pictures_since(today)),
        ]
        print(f"{jobs:,} finished jobs (+{RUNNING} running), filled in {filled_s:.1f} s")
        for name, when, call in queries:
            median = await timed(call, repeat)
            print(f"  {name:<20} {median:8.2f} ms   ({when})")
        await ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", default="100000,1000000", help="table sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    for jobs in (int(j) for j in args.jobs.split(",")):
        asyncio.run(measure(jobs, args.repeat))


if __name__ == "__main__":
    main()
