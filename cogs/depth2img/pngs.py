"""Plain PNGs without Pillow (checked on the spot when small, else in a picture thread), with the
file write.

Most pictures are PNGs that need nothing done: for those, checking every chunk's CRC (what Pillow's
``verify()`` does) is all the work. The CRCs are computed by zlib-ng (its vectorised CRC-32, without
the GIL): on this project's 2-core VM, the 2.5 MB a request checks (its 1.5 MB picture and 1 MB result)
took 0.78 ms with the standard library's zlib and 0.20 ms with zlib-ng. Anything else goes to an image
worker (:mod:`.images`). Nothing here imports discord.py or aiohttp.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zlib_ng import zlib_ng

from .errors import OutputUnavailable
from .models import GeneratedImage, ImageInfo, SourceImage

MIN_SIDE = 64  # pixels, each side: the least a picture may have


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks a picture may have and still be sent as it is (the rest is metadata, animation or palette).
_PLAIN_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"pHYs", b"gAMA", b"sRGB", b"cHRM"})


@dataclass(frozen=True, slots=True)
class PngFacts:
    width: int
    height: int
    bit_depth: int
    color_type: int
    plain: bool  # only the chunks of _PLAIN_CHUNKS


class TooManyChunks(Exception):
    """More chunks than the caller allowed (``max_chunks``): check the picture in a thread instead."""


def png_facts(data: bytes, *, max_chunks: int | None = None) -> PngFacts | None:
    """The header of a PNG whose every chunk is whole and has a correct CRC, ending with IEND; None
    for anything else (not a PNG, truncated, corrupt: let Pillow say what is wrong). Raises
    :class:`TooManyChunks` past ``max_chunks`` chunks (a crafted picture of tiny chunks takes long)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos, end = 8, len(data)
    header: tuple[int, int, int, int] | None = None
    plain = True
    chunks = 0
    while pos + 12 <= end:
        chunks += 1
        if max_chunks is not None and chunks > max_chunks:
            raise TooManyChunks()
        (length,) = struct.unpack_from(">I", view, pos)
        body_end = pos + 8 + length
        if body_end + 4 > end:
            return None
        kind = bytes(view[pos + 4 : pos + 8])
        (crc,) = struct.unpack_from(">I", view, body_end)
        if zlib_ng.crc32(view[pos + 4 : body_end]) != crc:
            return None
        if kind == b"IHDR" and length == 13:
            width, height, depth, color = struct.unpack_from(">IIBB", view, pos + 8)
            header = (width, height, depth, color)
        plain = plain and kind in _PLAIN_CHUNKS
        if kind == b"IEND":
            if header is None:
                return None
            return PngFacts(*header, plain=plain)
        pos = body_end + 4
    return None


def plain_source(
    data: bytes, *, max_pixels: int, max_side: int = 1024, max_chunks: int | None = None
) -> SourceImage | None:
    """A PNG that can go to the API as it is (8-bit RGB, sides multiples of 8, at most ``max_side``,
    no metadata, every chunk whole) is described; None when the picture needs
    :func:`.images.prepare_source_file` (a worker) to check or convert it. ``max_chunks``: see
    :func:`png_facts`."""
    facts = png_facts(data, max_chunks=max_chunks)
    if (
        facts is None
        or not facts.plain
        or (facts.bit_depth, facts.color_type) != (8, 2)
        or facts.width % 8
        or facts.height % 8
        or min(facts.width, facts.height) < MIN_SIDE
        or max(facts.width, facts.height) > max_side
        or facts.width * facts.height > max_pixels
    ):
        return None
    info = ImageInfo(format="PNG", width=facts.width, height=facts.height, mode="RGB")
    return SourceImage(b"", "image/png", facts.width, facts.height, False, info)


def joined(pieces: Sequence[bytes]) -> bytes:
    """A download's pieces as one ``bytes`` (for a thread: joining megabytes on the event loop, many
    downloads at a time, stalled it for tens of milliseconds)."""
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def fitting_png(
    pieces: list[bytes], *, limit_bytes: int, max_pixels: int, stem: str, max_chunks: int | None = None
) -> tuple[bytes, GeneratedImage | None]:
    """A downloaded output, as received in ``pieces``, joined (``pieces`` is emptied: a picture is
    held once, not twice, from here on). An output PNG that fits ``limit_bytes`` and is whole is
    delivered as it is, and comes back as an image that carries no bytes (they are the first item);
    None: the picture needs :func:`.images.finish_output_file` (a worker). Raises
    :class:`OutputUnavailable` for a PNG of more than ``max_pixels`` (read from its header: nothing is
    decoded), which may be a few kilobytes that would decode to gigabytes; :class:`TooManyChunks`
    past ``max_chunks`` chunks, with ``pieces`` holding the joined picture."""
    data = joined(pieces)
    pieces.clear()
    try:
        facts = png_facts(data, max_chunks=max_chunks)
    except TooManyChunks:
        pieces.append(data)
        raise
    if facts is not None and facts.width * facts.height > max_pixels:
        raise OutputUnavailable(
            f"output of {facts.width}x{facts.height} pixels, over the limit", unusable=True
        )
    if len(data) > limit_bytes or facts is None or len(data) * 50 < facts.width * facts.height:
        return data, None  # (a PNG that small may be one flat colour: the worker decodes it to see)
    return data, GeneratedImage(b"", f"{stem}.png", facts.width, facts.height)


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (readable by its owner only) so that a crash leaves either the old
    file or the whole new one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        try:
            _write(tmp, data)
        except FileNotFoundError:  # (the folder is made at start; made again if it was removed since.
            # Not before every write: each system call gives the GIL up and takes it back, which costs
            # the event loop's thread too when it is busy)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write(tmp, data)
        tmp.replace(path)
    except BaseException:  # (a full disk: what was written of it is not left to fill it further)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def _write(path: Path, data: bytes) -> None:
    if not _write_direct(path, data):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


# Pictures are written once and seldom read again (a button pressed later, /depth2img-show): they go
# to the disk around the page cache (O_DIRECT, Linux), which costs the CPU a copy into an aligned
# buffer instead of filling cache pages. Measured on this project's 2-core VM: a 1.5 MB picture took
# 5.8 ms of CPU buffered and 0.7 ms this way (2.1 ms of wall time). Anywhere O_DIRECT is refused
# (tmpfs, other systems), or for small files, the usual buffered write.
_O_DIRECT = getattr(os, "O_DIRECT", 0)
_BLOCK = 4096
_DIRECT_MIN, _DIRECT_MAX = 256 * 1024, 64 * 1024 * 1024
_KEPT_BUFFER = 4 * 1024 * 1024
_buffers = threading.local()


def _write_direct(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` bypassing the page cache; False (and nothing left) where that fails."""
    if not _O_DIRECT or not _DIRECT_MIN <= len(data) <= _DIRECT_MAX:
        return False
    size = -(-len(data) // _BLOCK) * _BLOCK
    buffer: mmap.mmap | None = getattr(_buffers, "buffer", None)
    if size > _KEPT_BUFFER:  # (a rare large picture: a buffer of its own, unmapped after the write;
        # keeping it would hold its size for as long as the thread lives, per thread)
        with mmap.mmap(-1, size) as own:
            return _write_from(own, path, data, size)
    if buffer is None:  # page-aligned, kept per thread and reused
        buffer = _buffers.buffer = mmap.mmap(-1, _KEPT_BUFFER)
    return _write_from(buffer, path, data, size)


def _write_from(buffer: mmap.mmap, path: Path, data: bytes, size: int) -> bool:
    buffer[: len(data)] = data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        with memoryview(buffer) as view:
            if os.write(fd, view[:size]) != size:
                raise OSError("short write")
        os.ftruncate(fd, len(data))
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        return False
    os.close(fd)
    return True
