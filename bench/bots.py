"""The two bots of ``python -m bench`` (ours and the baseline) as processes the benchmark drives: each
with its own fake Discord here and the fake API in ``bench/services.py``; one run of a burst, measured."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import aiohttp

from bench.figures import (
    RunResult,
    delivered,
    failed,
    proc_kb,
    read_stall,
    stolen_s,
    tree_cpu_s,
)
from tests.fakes.fake_discord import FakeDiscord

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-results"
SETTLE_TIMEOUT_S = 120.0


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
        await self._spawn()

    async def _spawn(self) -> None:
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
        await self._spawn()
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
        stolen_before = stolen_s()
        stolen_acking: float | None = None
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
            if stolen_acking is None and all(r.acked_at is not None for r in sent):
                stolen_acking = stolen_s() - stolen_before
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
        res.stolen_ms = (stolen_s() - stolen_before) * 1000
        res.stolen_acking_ms = res.stolen_ms if stolen_acking is None else stolen_acking * 1000
        for r in sent:  # the driver keeps what it needs; drop the delivered pictures' bytes
            for mid in r.message_ids:
                for f in fake.messages[mid].files:
                    f.data = b""
        return res
