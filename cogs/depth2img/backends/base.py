"""What the job logic needs from an image service, and what it gets back: plain data, no HTTP.

A backend turns the member's options into the service's request, and the service's answers into
:class:`Answer`; every failure is raised as one of :mod:`..errors` (the service's own text stays in
the exception, for the log). The job logic decides when to call what, records each step in the ledger
and never retries a paid submission that may have reached the service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cogs.depth2img.models import GenerationParams

# One line of the owner's check (``python bot.py --check``): what was checked, whether it passed, and
# what was found or what to fix.
CheckLine = tuple[str, bool, str]

# An output URL that ends with this is the depth map the service used, not a result (a fragment: never
# sent in a request).
DEPTH_MAP = "#depth-map"


def is_depth_map(url: str) -> bool:
    return url.endswith(DEPTH_MAP)


# The most results, and apart from them the most depth maps, kept from one answer. A job asks for 4
# pictures at most; a hostile or odd server may list tens of thousands in a few megabytes of answer,
# each then kept in the job's row and read back with it.
MAX_OUTPUT_URLS = 16


def storable_seed(value: object) -> int | None:
    """A seed as a service reported it, if the job's row can keep it (a 64-bit signed column): an int
    from 0 to 2**63 - 1. ComfyUI's own seeds go up to 2**64 - 1; a larger one is shown as unknown."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


# Reads the kept source picture: its bytes and MIME type.
LoadSource = Callable[[], Awaitable[tuple[bytes, str]]]


@dataclass(frozen=True, slots=True)
class Answer:
    """Where a job stands at the service: finished with ``output_urls``, or still queued (``done`` is
    False) under ``remote_id``, to be polled (at ``poll_url`` when the service named one)."""

    done: bool
    remote_id: str | None = None
    poll_url: str | None = None
    eta_s: float | None = None
    output_urls: tuple[str, ...] = ()
    generation_time_s: float | None = None
    seed: int | None = None
    progress: float | None = None  # how far the generation is, 0 to 1, when the service says


class Backend(Protocol):
    # Whether running a job again costs the owner nothing (a self-hosted service): then a job that a
    # restart interrupted while it was being submitted, or that the service no longer knows
    # (:class:`..errors.JobLost`), is run again once instead of failing.
    repeatable: bool

    async def stage_source(self, url: str | None, load: LoadSource) -> str:
        """Make the source picture available to the service (free, and safe to repeat): returns what
        :meth:`submit` takes as its source. ``url``: a fresh public link to the picture, if any."""
        ...

    async def submit(self, params: GenerationParams, source: str) -> Answer:
        """Start a generation (this is what costs). Retried only when the service clearly did not
        take it; an ambiguous failure is raised, never sent twice."""
        ...

    async def poll(self, remote_id: str, poll_url: str | None) -> Answer:
        """Ask how a queued job is doing (idempotent)."""
        ...

    async def download(self, url: str) -> list[bytes]:
        """One output picture, in the pieces it arrived in (joining megabytes is left to a thread)."""
        ...

    async def cancel(self, remote_id: str) -> None:
        """Ask the service to stop a queued job, where it can (best effort; never raises)."""
        ...

    async def check(self) -> list[CheckLine]:
        """Whether the service is ready, without generating anything (the owner's check)."""
        ...

    async def upkeep(self) -> None:
        """The backend's own background work for as long as the bot runs (the account's balance, for
        one); may return at once when it has none. Never raises for the service's troubles."""
        ...

    async def close(self) -> None:
        """Release what the backend holds (its HTTP session)."""
        ...
