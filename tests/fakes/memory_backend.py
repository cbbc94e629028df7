"""An in-memory image service that implements the bot's Backend protocol
(``cogs/depth2img/backends/base.py``): a fake at the edge for the service's tests, with no HTTP. It
plays the shapes the real services answer with (``shared/docs/api-contract.md`` §2 and §9: immediate
success, queued then success or failure, queued forever, queued without an id) and records every call.

Scenarios: ``success``, ``queued``, ``queued_then_failed``, ``queued_forever``, ``processing_without_id``,
``slow`` (submit takes ``slow_s``), ``output_not_image``, ``output_missing``, ``raise`` (every call
raises ``raises``, any exception at all); ``poll_raises`` makes the next polls raise what it holds.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from cogs.depth2img.backends.base import Answer, LoadSource
from cogs.depth2img.errors import InvalidInput, JobFailed, OutputUnavailable
from cogs.depth2img.models import GenerationParams
from tests.fakes.fake_api import make_png


@dataclass
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass
class MemoryBackend:
    repeatable: bool = False  # (a self-hosted service: jobs may be run again for free)
    scenario: str = "success"
    polls_before_done: int = 2
    eta_s: float | None = 0.05
    slow_s: float = 30.0
    latency_s: float = 0.0
    seed: int | None = None
    generation_time_s: float | None = 1.0
    output: bytes = field(default_factory=make_png)
    raises: BaseException | None = None
    poll_raises: list[BaseException] = field(default_factory=list)  # raised by the next polls, in turn
    calls: list[Call] = field(default_factory=list)
    uploads: list[bytes] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._ids = itertools.count(1000)
        self._polls: dict[str, int] = {}
        self._in_flight = 0

    def called(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def _check(self, name: str, *args: Any) -> None:
        self.calls.append(Call(name, args))
        if self.scenario == "raise" and self.raises is not None:
            raise self.raises

    def _outputs(self, remote: str, samples: int) -> tuple[str, ...]:
        return tuple(f"mem://{remote}-{i}.png" for i in range(samples))

    async def stage_source(self, url: str | None, load: LoadSource) -> str:
        self._check("stage_source", url)
        if url is not None:
            return url
        data, _ = await load()
        self.uploads.append(data)
        return f"mem://upload-{len(self.uploads)}.png"

    async def submit(self, params: GenerationParams, source: str) -> Answer:
        self._check("submit", params, source)
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if self.scenario == "slow":
                await asyncio.sleep(self.slow_s)
        finally:
            self._in_flight -= 1
        remote = str(next(self._ids))
        if self.scenario in ("queued", "queued_then_failed", "queued_forever"):
            self._polls[remote] = 0
            return Answer(done=False, remote_id=remote, poll_url=f"mem://fetch/{remote}", eta_s=self.eta_s)
        if self.scenario == "processing_without_id":
            return Answer(done=False)
        return Answer(
            done=True,
            remote_id=remote,
            output_urls=self._outputs(remote, params.samples),
            generation_time_s=self.generation_time_s,
            seed=self.seed,
        )

    async def poll(self, remote_id: str, poll_url: str | None) -> Answer:
        self._check("poll", remote_id, poll_url)
        if self.poll_raises:
            raise self.poll_raises.pop(0)
        polls = self._polls[remote_id] = self._polls.get(remote_id, 0) + 1
        if self.scenario == "queued_then_failed":
            raise JobFailed("Processing failed: Invalid input dimensions", job_id=remote_id)
        if self.scenario == "queued_forever" or polls <= self.polls_before_done:
            return Answer(done=False, remote_id=remote_id)
        return Answer(done=True, remote_id=remote_id, output_urls=self._outputs(remote_id, 1))

    async def download(self, url: str) -> list[bytes]:
        self._check("download", url)
        if self.scenario == "output_missing":
            raise OutputUnavailable("HTTP 404 for the output image")
        if self.scenario == "output_not_image":
            return [b"<html>this is not an image</html>"]
        return [self.output[:1000], self.output[1000:]]

    async def cancel(self, remote_id: str) -> None:
        self._check("cancel", remote_id)

    async def check(self) -> list[tuple[str, bool, str]]:
        return [("memory", True, "always ready")]

    async def upkeep(self) -> None:
        """Nothing to look after."""

    async def close(self) -> None:
        self.calls.append(Call("close", ()))


@dataclass
class MemoryAttachments:
    """Members' pictures on "Discord", in memory: what ``core.intake.Attachments`` asks for (the
    HTTP one, ``backends/attachments.py``, is tested end to end against the fake Discord's CDN)."""

    files: dict[str, bytes] = field(default_factory=dict)
    closed: bool = False

    async def read(self, url: str, *, cap: int) -> bytes:
        data = self.files.get(url)
        if data is None:
            raise InvalidInput("input.download_gone")
        if len(data) > cap:
            raise InvalidInput("input.file_too_big")
        return data

    async def close(self) -> None:
        self.closed = True
