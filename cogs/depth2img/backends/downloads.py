"""Output pictures, downloaded from wherever the service put them: through the guard (every hop and
connection checked), with a size cap, and decoded when the service sent base64 text instead of a
picture (ModelsLab's ``base64`` outputs: an ``output`` URL ending in ``.base64`` whose body is the
picture in base64, sometimes without its padding; ``shared/docs/backends.md`` §1.4).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from urllib.parse import urlsplit

import aiohttp

from cogs.depth2img.errors import APIConnectionError, APITimeoutError, OutputUnavailable, ServerError

from .guard import BlockedAddress, BlockedName, Guard
from .http import get_following, read_capped

_DATA_PREFIX = re.compile(rb"^data:[\w.+/-]*;base64,", re.IGNORECASE)
_SPACE = re.compile(rb"\s+")


def is_base64_output(url: str) -> bool:
    return urlsplit(url).path.lower().endswith(".base64")


def decode_base64_picture(pieces: list[bytes], limit: int) -> bytes:
    """The picture in base64 text (whitespace, a ``data:`` prefix and missing padding allowed). CPU work
    for a thread. Raises :class:`OutputUnavailable` (unusable) for anything else, or past ``limit``."""
    text = _SPACE.sub(b"", b"".join(pieces))
    pieces.clear()
    text = _DATA_PREFIX.sub(b"", text, count=1)
    text += b"=" * (-len(text) % 4)
    if len(text) // 4 * 3 > limit + 2:
        raise OutputUnavailable("base64 output larger than the download cap", unusable=True)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise OutputUnavailable("base64 output that is not base64", unusable=True) from None
    if not data or len(data) > limit:
        raise OutputUnavailable("base64 output empty or larger than the download cap", unusable=True)
    return data


async def download(
    session: aiohttp.ClientSession,
    guard: Guard,
    url: str,
    *,
    timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's own per-request timeout
    max_bytes: int,
) -> list[bytes]:
    """One output picture, in the pieces it arrived in (a base64 one decoded, in a thread). Raises
    :class:`ServerError` / :class:`APIConnectionError` / :class:`APITimeoutError` for what may pass,
    :class:`OutputUnavailable` for what will not."""
    encoded = is_base64_output(url)
    cap = max_bytes * 4 // 3 + 64 * 1024 if encoded else max_bytes  # base64 text is a third larger
    try:
        async with get_following(session, guard, url, timeout=timeout) as resp:
            if resp.status >= 500 or resp.status == 429:
                raise ServerError(f"HTTP {resp.status}", status=resp.status)
            if resp.status != 200:
                raise OutputUnavailable(f"HTTP {resp.status} for the output image")
            data = await read_capped(resp, cap)
    except BlockedAddress as exc:
        raise OutputUnavailable(f"output URL refused: {exc}") from None
    except TimeoutError as exc:
        raise APITimeoutError("download timed out") from exc
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, BlockedName):
            raise OutputUnavailable("output URL refused: a host name with no public address") from None
        raise APIConnectionError(f"download problem: {type(exc).__name__}") from exc
    except aiohttp.ClientError as exc:
        raise APIConnectionError(f"download problem: {type(exc).__name__}") from exc
    if data is None:
        raise OutputUnavailable("output image larger than the download cap", unusable=True)
    if encoded:
        return [await asyncio.to_thread(decode_base64_picture, data, max_bytes)]
    return data
