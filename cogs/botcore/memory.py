"""The C allocator's settings, for a process that handles pictures of a few megabytes each.

Every download (the member's picture, each output) arrives in pieces of up to 256 KB and is joined
into one buffer of 1-2 MB. glibc serves such blocks with fresh ``mmap`` pages, or from the top of its
heap, which it gives back to the kernel as soon as more than a few megabytes lie free there (its
thresholds follow the largest block freed so far). Either way the next burst's buffers are new pages:
every 4 KB of them costs a page fault and the kernel zeroing it, most of them on the event loop's
thread: 40-480 page faults per request in `make bench`'s set-up (the most at small bursts); with the
settings below, 0-85. Measured with that set-up, our bot before and after in alternating runs (a
throwaway driver around `bench/bots.py`; CPU from /proc, whose 10 ms ticks make a run's figure coarse):

| burst (runs each) | CPU per request | ack p99 | RSS at rest |
| --- | --- | --- | --- |
| 8 (30) | 13.8 -> 13.7 ms (medians) | 11.1 -> 10.6 ms | 78-81 -> 84-88 MB |
| 32 (24) | 12.55 -> 12.03 ms (means; sys 4.73 -> 4.31) | 26.4 -> 22.8 ms | 75-92 -> 94-100 MB |
| 200 (8) | 10.99 -> 10.62 ms (means; sys 4.11 -> 3.77) | 98.7 -> 98.5 ms | 92-117 -> 96-146 MB |

So blocks of up to ``HEAP_UP_TO`` come from the heap, and up to ``KEEP_FREE_UP_TO`` of freed heap stays
with the process for the next burst: 3-4 % of the CPU (the system's part), for at most that much more
memory between bursts. After ``QUIET_S`` with nothing in flight, it is given back
(:func:`return_memory_when_quiet`, ``malloc_trim``): a bot that rests does not hold its busiest burst's
memory for good. glibc only (Linux); an owner who tunes the allocator with glibc's own variables
(``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES=glibc.malloc...``) keeps
their choice.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sys
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

HEAP_UP_TO = 4 * 1024 * 1024
KEEP_FREE_UP_TO = 64 * 1024 * 1024
QUIET_S = 60.0
# mallopt(3)'s parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_OWNERS_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory(env: Mapping[str, str] = os.environ) -> bool:
    """Set glibc's allocator as described above; True when it was set (False elsewhere, or when the
    owner's environment tunes it already)."""
    libc = _libc(env)
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    heap: int = mallopt(_M_MMAP_THRESHOLD, HEAP_UP_TO)
    kept: int = mallopt(_M_TRIM_THRESHOLD, KEEP_FREE_UP_TO)
    done = heap == 1 and kept == 1
    if not done:
        log.warning("the C allocator's thresholds could not be set; running with its defaults")
    return done


async def return_memory_when_quiet(
    busy: Callable[[], bool],
    *,
    quiet_s: float = QUIET_S,
    every_s: float = 1.0,
    env: Mapping[str, str] = os.environ,
) -> None:
    """Run for the process's life: once nothing has been in flight (``busy()`` false) for ``quiet_s``,
    give the memory kept for the next burst back to the system, once per quiet spell. Returns at once
    where :func:`keep_freed_memory` does nothing."""
    libc = _libc(env)
    if libc is None:
        return
    trim = libc.malloc_trim
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    loop = asyncio.get_running_loop()
    last_busy, trimmed = loop.time(), False
    while True:
        await asyncio.sleep(every_s)
        if busy():
            last_busy, trimmed = loop.time(), False
        elif not trimmed and loop.time() - last_busy >= quiet_s:
            # (3-10 ms for 36-60 MB freed; in a thread, which the call lets the GIL go for, so that
            # a request that arrives meanwhile is not held up)
            await asyncio.to_thread(trim, 0)
            trimmed = True


def _libc(env: Mapping[str, str]) -> ctypes.CDLL | None:
    """glibc, unless this is another C library or the owner tunes the allocator themselves."""
    if sys.platform != "linux" or not _glibc():
        return None
    if any(name in env for name in _OWNERS_VARIABLES) or "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both there, or neither is used)
    except (OSError, AttributeError):
        return None
    return libc


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # (not a glibc system)
        return False
