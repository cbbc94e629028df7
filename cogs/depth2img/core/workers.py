"""The image worker processes (``IMAGE_WORKERS``), where Pillow decodes, normalises and re-encodes
pictures off the event loop, competing with it for neither the GIL nor, beyond their number, the CPU.

Each worker is a process pool of one process, taken by one picture at a time:

* a picture's time bound (``IMAGE_WORK_TIMEOUT_S``) counts from when a worker takes it, not from when
  it joined a queue behind others. A picture can be made to be slow: a progressive JPEG of tens of
  thousands of scans took minutes (refused by their count now: ``images.MAX_JPEG_SCANS``); any decoder
  may have such a path. Past the bound the worker is killed (a call that runs cannot be taken back
  from a process pool otherwise) and started again;
* a worker that dies (the OOM killer picks the largest process: often a worker decoding a large
  picture) takes only its own picture's work down with it. Python's pool then refuses all work for
  good: the worker is started again and the work given to it once more; a picture that kills its
  worker twice is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class WorkRefused(Exception):
    """A picture an image worker could not get through."""


class WorkTooSlow(WorkRefused):
    """Its work took more than ``IMAGE_WORK_TIMEOUT_S`` (its worker was killed)."""


class WorkKilledWorker(WorkRefused):
    """Its work killed its worker twice (out of memory, most likely)."""


class ImageWorkers:
    def __init__(self, count: int, *, timeout_s: float) -> None:
        self._workers = [_Worker.new() for _ in range(count)]
        self._idle: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(count):
            self._idle.put_nowait(slot)
        self._timeout_s = timeout_s

    def __bool__(self) -> bool:
        return bool(self._workers)

    async def start(self, warm_up: Callable[[], None]) -> None:
        """Start every worker now (``warm_up`` in each), so that the first member does not wait."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(w.take(), warm_up) for w in self._workers))

    def close(self) -> None:
        for worker in self._workers:
            worker.pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` in the next free worker, for at most the bound. Raises :class:`WorkTooSlow` or
        :class:`WorkKilledWorker`; anything ``work`` raises, as it is."""
        slot = await self._idle.get()
        try:
            try:
                return await self._timed(slot, work)
            except BrokenProcessPool:
                log.warning("an image worker stopped (killed: out of memory?); it is started again")
                self._renew(slot)
            try:
                return await self._timed(slot, work)
            except BrokenProcessPool:
                log.warning("an image worker stopped again over the same picture; the picture is refused")
                self._renew(slot)
                raise WorkKilledWorker from None
        finally:
            self._idle.put_nowait(slot)

    async def _timed(self, slot: int, work: Callable[[], T]) -> T:
        running = asyncio.get_running_loop().run_in_executor(self._workers[slot].take(), work)
        try:
            return await asyncio.wait_for(running, self._timeout_s)
        except TimeoutError:
            log.warning(
                f"an image worker took more than IMAGE_WORK_TIMEOUT_S={self._timeout_s:g} s over one "
                "picture (a damaged or crafted one?): it is stopped and started again"
            )
            self._renew(slot, kill=True)
            raise WorkTooSlow from None
        except asyncio.CancelledError:  # (its picture no longer wanted: the worker is not left to it)
            self._renew(slot, kill=True)
            raise

    def _renew(self, slot: int, *, kill: bool = False) -> None:
        worker = self._workers[slot]
        self._workers[slot] = _Worker.new()
        if kill:
            worker.kill()
        worker.pool.shutdown(wait=False, cancel_futures=True)


@dataclass(slots=True)
class _Worker:
    """One pool of one process, and that process's id: asked of it before its first work, so that it
    can be killed in the middle of a picture by public means (Python 3.14's ``kill_workers()`` does it;
    before it, only the pool's private map of processes knew them)."""

    pool: ProcessPoolExecutor
    pid: Future[int] | None = None

    @classmethod
    def new(cls) -> _Worker:
        return cls(ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("forkserver")))

    def take(self) -> ProcessPoolExecutor:
        """The pool, its process asked for its id first if it has not been yet."""
        if self.pid is None:
            self.pid = self.pool.submit(os.getpid)
        return self.pool

    def kill(self) -> None:
        kill_workers = getattr(self.pool, "kill_workers", None)  # Python 3.14
        if kill_workers is not None:
            with contextlib.suppress(OSError, ValueError):
                kill_workers()
            return
        # Work runs after the id was answered (one process, in order), so it is known here; if not,
        # the process never started or has died already.
        asked = self.pid
        if asked is None or not asked.done() or asked.cancelled() or asked.exception() is not None:
            return
        for process in multiprocessing.active_children():  # (only processes this one started)
            if process.pid == asked.result():
                with contextlib.suppress(OSError, ValueError):
                    process.kill()
