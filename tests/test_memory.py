"""The C allocator's settings (cogs/botcore/memory.py): a burst's freed picture buffers are kept for
the next burst, and given back once the bot rests. Each case runs in a fresh interpreter, whose
allocator the test may change; page faults and RSS come from the kernel (getrusage, /proc)."""

from __future__ import annotations

import asyncio
import platform
import sys

import pytest

from cogs.botcore.memory import keep_freed_memory
from tests.conftest import ROOT, process_env

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

# A burst's worth of pictures: 24 of 1.5 MB, each joined from 256 KB pieces as a download is.
_BURST = """
import asyncio, resource, sys
from cogs.botcore.memory import keep_freed_memory, return_memory_when_quiet

def burst():
    pieces = [bytes([i]) * (256 * 1024) for i in range(6)]
    return len([b"".join(pieces) for _ in range(24)])

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""

# The page faults of five bursts after a first one.
_FAULTS = (
    _BURST
    + """
tuned = keep_freed_memory() if sys.argv[1] == "tuned" else False
burst()
before = faults()
for _ in range(5):
    burst()
print(tuned, faults() - before)
"""
)

# RSS after a burst, and after the bot has been quiet (or busy) for a while.
_QUIET = (
    _BURST
    + """
keep_freed_memory()
burst()
kept = rss_mb()
busy = sys.argv[1] == "busy"

async def main():
    try:
        await asyncio.wait_for(return_memory_when_quiet(lambda: busy, quiet_s=0.05, every_s=0.01), 0.5)
    except TimeoutError:
        pass

asyncio.run(main())
print(kept, rss_mb())
"""
)


async def _run(script: str, mode: str, **env: str) -> list[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, mode, cwd=ROOT, env=process_env(**env), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out.decode().split()


async def test_the_next_burst_reuses_the_memory_the_last_one_freed():
    plain_tuned, plain = await _run(_FAULTS, "plain")
    tuned, faults = await _run(_FAULTS, "tuned")
    assert (plain_tuned, tuned) == ("False", "True")
    assert int(plain) > 10_000  # (glibc's defaults: every burst's pictures are new pages)
    assert int(faults) < int(plain) // 100


async def test_the_memory_kept_for_bursts_is_given_back_once_the_bot_is_quiet():
    busy_kept, busy_after = map(int, await _run(_QUIET, "busy"))
    quiet_kept, quiet_after = map(int, await _run(_QUIET, "quiet"))
    assert busy_kept > 30 and busy_after > busy_kept - 5  # the 36 MB freed by the burst: kept while busy
    assert quiet_after < quiet_kept - 25  # given back


async def test_the_owners_own_allocator_settings_are_kept():
    tuned, faults = await _run(_FAULTS, "tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert tuned == "False"
    assert int(faults) > 10_000
    assert keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}) is False


async def test_the_running_bot_gives_memory_back_when_quiet_and_stops_on_unload(bot):
    def upkeep() -> set[str]:
        return {t.get_name() for t in asyncio.all_tasks() if not t.done()}

    assert "memory-return" in upkeep()
    await bot.unload_extension("cogs.botcore")
    await asyncio.sleep(0)
    assert "memory-return" not in upkeep()
