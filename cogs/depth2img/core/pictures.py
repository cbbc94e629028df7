"""Where pictures are checked, kept and read back: the members' sources, the first image of each
result, and the before | after view. The work runs off the event loop, in two pools:

* image worker processes (``IMAGE_WORKERS``, :mod:`.workers`) for Pillow: decoding, normalising and
  re-encoding (0: threads);
* picture threads (``PICTURE_THREADS``) for checksums and file writes, which leave the GIL free.

Except the checks of pictures of up to ``CHECK_HERE_MAX_BYTES``, which run where they are asked for.
Such a check (the chunks' CRCs, by zlib-ng) costs the loop about 0.15 ms per 1.5 MB; handing it to a
thread cost more than doing it: every GIL release inside it (one per chunk) had the thread and the
loop trade the GIL through the kernel. Measured (`make bench` set-up, ours, 32-burst, 8 runs): 271
futex calls per request with the checks in a thread, 164 with them here (strace -c), and CPU per
request 20.4 -> 16.4 and 18.1 -> 16.6 ms in two A/B pairs; at a 200-burst the same within noise, and
the loop's worst stall unchanged (62-142 ms against 79-113).

Pictures reach the workers as files (kept anyway), not through the pool's pipe: copying a 1.5 MB
picture to a worker and back cost the bot ~7 ms of CPU; writing a file and passing its path ~0.5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from cogs.depth2img import images, pngs
from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.errors import DISK_FULL_ADVICE, InvalidInput, OutputUnavailable, is_disk_full
from cogs.depth2img.models import GeneratedImage, SourceImage
from cogs.depth2img.store import Job

from .workers import ImageWorkers, WorkRefused, WorkTooSlow

T = TypeVar("T")
log = logging.getLogger(__name__)
NO_LONGER_STORED = "input.no_longer_stored"
# Pictures checked on the spot (see above): at most ~0.5 ms of the loop's time, the join included.
# A picture of more chunks than a PNG encoder writes for that size (libpng: 8 KB each) goes to a thread.
CHECK_HERE_MAX_BYTES = 4 * 1024 * 1024
CHECK_HERE_MAX_CHUNKS = 1024
# The files the bot keeps, each named after its job: a source (``<id>.png``, ``.jpg``; ``.upload``
# before it is checked), a result (``<id>.<ext>``), a depth map (``<id>-depth.png``), a download being
# checked (``<id>-<n>.download``), and any of them half-written (``.tmp``). Nothing else is touched.
LEDGER_MARK = ".ledger-mark"
OUTPUT_IN_MEMORY = (
    f"the data folder's disk is full: an output is checked without a worker's file; {DISK_FULL_ADVICE}"
)
KEPT_NAME = re.compile(r"([0-9a-f]{12})(?:-depth|-[0-9]{1,3})?\.[a-z0-9]{1,8}(?:\.tmp)?")


class Pictures:
    def __init__(
        self, data_dir: Path, *, image_workers: int, picture_threads: int, work_timeout_s: float = 60.0
    ) -> None:
        self.data_dir = data_dir
        self.sources_dir = data_dir / "sources"
        self.results_dir = data_dir / "results"
        self._workers = ImageWorkers(image_workers, timeout_s=work_timeout_s)
        self._full = False  # a picture did not fit: the room left is looked at until one would again
        # One fewer thread than the cores by default: the event loop keeps a core. With asyncio's
        # default pool (6 threads on 2 cores), a 200-burst's picture work ran beside the loop's thread
        # and left it waiting for a CPU: stalls >= 50 ms in 7 of 15 runs against 0 of 15 with 2 threads
        # and 0 of 10 (8-22 ms) with 1 (`make bench`).
        self._threads = ThreadPoolExecutor(picture_threads, thread_name_prefix="d2i-picture")
        # Writes go to the disk around the page cache (pngs.write_atomically): they wait for the device
        # more than they use the CPU, so they have threads of their own, and the checks of the next
        # pictures go on meanwhile (a 200-burst's sources were written one after the other, 2 ms each,
        # on the picture thread, ahead of the next checks).
        self._writers = ThreadPoolExecutor(2, thread_name_prefix="d2i-write")

    @classmethod
    def of(cls, data_dir: Path, settings: Depth2ImgSettings) -> Pictures:
        return cls(
            data_dir,
            image_workers=settings.image_workers,
            picture_threads=settings.picture_threads,
            work_timeout_s=settings.image_work_timeout_s,
        )

    async def start(self) -> None:
        """Start the image workers now, so that the first member does not wait for them."""
        for folder in (self.sources_dir, self.results_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self._workers.start(images.warm_up)

    def close(self) -> None:
        self._workers.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._writers.shutdown(wait=False, cancel_futures=True)

    async def cpu(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Pillow work, in an image worker process (:class:`ImageWorkers`: for at most
        ``IMAGE_WORK_TIMEOUT_S``; raises :class:`WorkRefused`), or with ``IMAGE_WORKERS=0`` in a picture
        thread, which nothing can stop: no bound."""
        if not self._workers:
            return await self.thread(fn, *args, **kwargs)
        return await self._workers.run(functools.partial(fn, *args, **kwargs))

    async def thread(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """File and checksum work (which mostly leaves the GIL free), in a picture thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, functools.partial(fn, *args, **kwargs)
        )

    async def _check(self, fn: Callable[..., T], data: Any, size: int, /, **kwargs: Any) -> T:
        """``fn(data, **kwargs)``, a check by the picture's chunks: here when it is small (see above),
        else (or past ``CHECK_HERE_MAX_CHUNKS`` chunks) in a picture thread."""
        if size <= CHECK_HERE_MAX_BYTES:
            try:
                return fn(data, max_chunks=CHECK_HERE_MAX_CHUNKS, **kwargs)
            except pngs.TooManyChunks:
                pass
        return await self.thread(fn, data, **kwargs)

    def found_full(self) -> None:
        """A picture could not be kept for want of room: until :meth:`has_room` finds some again,
        members are refused before their request is answered (not after a public "thinking…")."""
        self._full = True

    def has_room(self, size: int) -> bool:
        """Whether a picture of ``size`` bytes may be taken in: always, unless the disk was found full
        (:meth:`found_full`); then only with room for it twice over (as it came, and normalised) and
        64 KB more. Looked at (statvfs, a few µs) only then."""
        if not self._full:
            return True
        try:
            disk = os.statvfs(self.sources_dir)
        except OSError:  # (the folder gone: it is made again at the next write)
            return True
        if disk.f_bavail * disk.f_frsize < 2 * size + 64 * 1024:
            return False
        self._full = False
        return True

    async def write(self, path: Path, data: bytes) -> None:
        """Keep ``data`` at ``path`` (atomically, readable by the bot only), in a writer thread."""
        await asyncio.get_running_loop().run_in_executor(self._writers, pngs.write_atomically, path, data)

    # --- sources ---

    async def keep_source(
        self, job_id: str, data: bytes, *, max_pixels: int, max_side: int
    ) -> tuple[str, SourceImage]:
        """Check the member's picture by its bytes and keep it, normalised for the image service.
        Returns where it is kept. Raises :class:`InvalidInput` with a member-facing reason."""
        limits = {"max_pixels": max_pixels, "max_side": max_side}
        # A plain PNG is checked (chunk CRCs, no decoding) and kept as it is; anything else goes to an
        # image worker, as a file.
        plain = await self._check(pngs.plain_source, data, len(data), **limits)
        if plain is not None:
            path = self.sources_dir / f"{job_id}.png"
            await self.write(path, data)
            return str(path), plain
        raw = self.sources_dir / f"{job_id}.upload"
        await self.write(raw, data)
        try:
            return await self.cpu(images.prepare_source_file, str(raw), **limits)
        except WorkRefused as refused:
            await self.remove(str(raw))  # (its worker was killed before it could)
            slow = isinstance(refused, WorkTooSlow)
            raise InvalidInput("input.too_slow" if slow else "input.too_heavy") from None

    async def read(self, path: str | None) -> bytes:
        """A kept picture's bytes. Raises :class:`InvalidInput` when it is no longer stored (or was
        kept empty, as earlier versions did with some results: never sent on as an empty file)."""
        if not path:
            raise InvalidInput(NO_LONGER_STORED)
        try:
            data = await self.thread(Path(path).read_bytes)
        except OSError:
            raise InvalidInput(NO_LONGER_STORED) from None
        if not data:
            raise InvalidInput(NO_LONGER_STORED)
        return data

    async def read_kept(self, path: str | None, *, max_pixels: int) -> tuple[bytes, bool]:
        """A kept result's bytes, and whether it is blank (what a safety checker sends instead of an
        unsafe picture: not kept in the ledger, so told by its pixels). Raises :class:`InvalidInput`
        when it is no longer stored."""
        data = await self.read(path)
        return data, await self.thread(images.looks_blank, data, max_pixels=max_pixels)

    # --- results ---

    def result_path(self, job_id: str, first: GeneratedImage) -> str:
        """Where the first image of a result is kept (for "Use as source" and /depth2img-show)."""
        return str(self.results_dir / f"{job_id}.{first.filename.rsplit('.', 1)[-1]}")

    def depth_map_path(self, job_id: str) -> str:
        """Where a result's depth map is kept (for its 🗺️ button), when the service sent one."""
        return str(self.results_dir / f"{job_id}-depth.png")

    async def finish_outputs(
        self, job_id: str, downloads: list[list[bytes]], *, limit_bytes: int, max_pixels: int
    ) -> tuple[GeneratedImage, ...]:
        """Check each downloaded output (at most ``max_pixels``, by its header) and make it fit
        ``limit_bytes``. Each download's pieces are let go as they are joined, and a picture that goes
        to a worker as soon as it is written: an output is in memory once at a time. Nothing is kept on
        disk: the first is kept (:meth:`keep_result`) once the member has it, off the way to them."""
        prepared = []
        for index, pieces in enumerate(downloads):
            fit: dict[str, Any] = {
                "limit_bytes": limit_bytes,
                "max_pixels": max_pixels,
                "stem": f"depth2img-{job_id}-{index}",
            }
            # joined, and if a whole PNG that fits, checked (here or in a thread); else to a worker
            blob, image = await self._check(pngs.fitting_png, pieces, sum(map(len, pieces)), **fit)
            if image is not None:
                prepared.append(image if image.data else replace(image, data=blob))
                continue
            download = self.results_dir / f"{job_id}-{index}.download"
            try:
                await self.write(download, blob)
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                # (a paid picture is not lost to a full disk: checked from memory, in a picture thread)
                log.warning(OUTPUT_IN_MEMORY, extra={"job": job_id})
                self.found_full()
                prepared.append(await self.thread(images.finish_output, blob, **fit))
                continue
            del blob
            try:
                image = await self.cpu(images.finish_output_file, str(download), **fit)
            except WorkRefused as refused:
                await self.remove(str(download))
                why = (
                    "took too long to read" if isinstance(refused, WorkTooSlow) else "killed its worker twice"
                )
                raise OutputUnavailable(f"output {why}", unusable=True) from None
            if not image.data:  # (passed on as it came: its bytes are in the file still)
                image = replace(image, data=await self.thread(_read_and_remove, download))
            prepared.append(image)
        if not prepared:
            raise OutputUnavailable("no output images")
        return tuple(prepared)

    async def keep_result(self, path: str, first: GeneratedImage) -> None:
        """Keep a delivered result's first image at ``path`` (see :meth:`result_path`)."""
        await self.write(Path(path), first.data)

    async def comparison(
        self, job_id: str, source: str | None, result: str | None, *, limit_bytes: int, max_pixels: int
    ) -> GeneratedImage:
        """The source and the result side by side (made when a member asks for it). Raises
        :class:`InvalidInput` or :class:`OutputUnavailable`, whatever went wrong."""
        if not source or not result:
            raise InvalidInput(NO_LONGER_STORED)
        before = await self.read(source)
        after = await self.read(result)
        try:
            return await self.cpu(
                images.before_after,
                before,
                after,
                limit_bytes=limit_bytes,
                max_pixels=max_pixels,
                stem=f"before-after-{job_id}",
            )
        except OutputUnavailable:
            raise
        except Exception:  # (a worker that died: BrokenProcessPool, ...)
            raise OutputUnavailable("the comparison could not be made") from None

    async def files_before(self, cutoff: float, batch: int = 500) -> AsyncIterator[list[tuple[str, Path]]]:
        """The bot's own files (:data:`KEPT_NAME`) last written before ``cutoff`` (a time), each with
        the id of the job it is named after, ``batch`` at a time (read in a picture thread: a folder
        may hold millions)."""
        found = _files_before((self.sources_dir, self.results_dir), cutoff)
        while chunk := await self.thread(_take, found, batch):
            yield chunk

    async def mark(self, value: str) -> str:
        """The mark of the ledger these pictures belong to (``BOT_DATA_DIR/.ledger-mark``); ``value``
        if there was none (written then)."""
        return await self.thread(_mark, self.data_dir / LEDGER_MARK, value)

    async def remove_of(self, job: Job) -> None:
        """Every file kept for ``job``: its source, its first result and its depth map."""
        await self.remove(job.source_path, job.result_path, self.depth_map_path(job.id))

    async def remove(self, *paths: str | None) -> None:
        for path in paths:
            if path:
                await self.thread(_remove_file, path)


def _read_and_remove(path: Path) -> bytes:
    try:
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def _remove_file(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


def _mark(path: Path, value: str) -> str:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii", errors="replace").strip()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(value + "\n")
    return value


def _take(items: Iterator[T], count: int) -> list[T]:
    return list(itertools.islice(items, count))


def _files_before(folders: tuple[Path, ...], cutoff: float) -> Iterator[tuple[str, Path]]:
    for folder in folders:
        try:
            entries = os.scandir(folder)
        except OSError:  # (not made yet, or removed)
            continue
        with entries:
            yield from _named_before(entries, cutoff)


def _named_before(entries: Iterator[os.DirEntry[str]], cutoff: float) -> Iterator[tuple[str, Path]]:
    for entry in entries:
        named = KEPT_NAME.fullmatch(entry.name)
        if named is None:
            continue
        try:  # (not a regular file, or removed meanwhile: skipped)
            if (
                not entry.is_file(follow_symlinks=False)
                or entry.stat(follow_symlinks=False).st_mtime >= cutoff
            ):
                continue
        except OSError:
            continue
        yield named[1], Path(entry.path)
