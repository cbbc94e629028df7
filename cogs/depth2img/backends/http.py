"""The backends' HTTP: one aiohttp session whose every connection is guarded (:mod:`.guard`), GETs
that follow redirects one checked hop at a time, and bodies read with a cap.

The session belongs to the extension, not to the bot: its connector carries the extension's own
resolver, which knows the services the owner configured. Nothing here follows a redirect by itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiohttp.abc import AbstractResolver

from cogs.depth2img.errors import APIConnectionError, APITimeoutError

from .guard import BlockedAddress, Guard

MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})


def open_session(
    guard: Guard | None, *, connections: int, user_agent: str, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """``resolver``: the name resolution under the guard (tests give a fake DNS; default: aiohttp's).
    Without a guard (Discord's own CDN: ``attachments.py``), connections go wherever names resolve."""
    connector = aiohttp.TCPConnector(
        limit=connections, resolver=guard.resolver(resolver) if guard is not None else resolver
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=15),
        headers={"User-Agent": user_agent},
    )


@asynccontextmanager
async def get_following(
    session: aiohttp.ClientSession,
    guard: Guard,
    url: str,
    *,
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's own per-request timeout
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET ``url``, following at most :data:`MAX_REDIRECTS` redirects, every hop checked by ``guard``
    before it is requested (and its addresses when it connects). Raises :class:`BlockedAddress`."""
    for _ in range(MAX_REDIRECTS + 1):
        guard.check(url)
        resp = await session.get(url, timeout=timeout, allow_redirects=False)
        location = resp.headers.get("Location") if resp.status in REDIRECTS else None
        if location is None:
            try:
                yield resp
            finally:
                resp.release()
            return
        resp.release()
        url = urljoin(url, location)
    raise BlockedAddress("too many redirects")


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> list[bytes] | None:
    """The whole body in the pieces it came in (joining them is left to a thread), or None past
    ``cap`` bytes, counted as decoded (an answer may come compressed: aiohttp decodes it, and checks
    the bytes on the wire against ``Content-Length`` itself, raising ``ClientPayloadError`` for a body
    cut short)."""
    encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    if not encoded and resp.content_length is not None and resp.content_length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():  # as received: no re-slicing into small pieces
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return chunks


async def fetch_capped(
    session: aiohttp.ClientSession, method: str, url: str, *, cap: int, what: str, **request: Any
) -> tuple[int, list[bytes] | None]:
    """One request to a configured service, never redirected: its status and its body (None past
    ``cap``). Raises :class:`APITimeoutError` / :class:`APIConnectionError` (``what`` names the service)."""
    try:
        async with session.request(method, url, allow_redirects=False, **request) as resp:
            return resp.status, await read_capped(resp, cap)
    except TimeoutError as exc:
        raise APITimeoutError(f"{what} did not answer in time") from exc
    except aiohttp.ClientError as exc:
        raise APIConnectionError(f"connection problem: {type(exc).__name__}") from exc
