"""Members' pictures, read from Discord's CDN with a cap.

discord.py's own ``Attachment.read()`` reads the whole body, whatever its length, and aiohttp decodes
a compressed one on the way: a CDN answer longer than the attachment's declared size (or a small
gzip body that decodes to gigabytes) was read into memory until the time ran out. Here the body is
read as it arrives and the reading stops past the cap, counted as decoded bytes
(:func:`.http.read_capped`).

The URL is Discord's, from the interaction (a member cannot choose it), so the session is not
guarded like the image services' (the CDN of a fake or proxied Discord may be on a private address);
redirects are followed as discord.py follows them.
"""

from __future__ import annotations

import aiohttp

from cogs.depth2img.errors import InvalidInput

from .http import open_session, read_capped

GONE = frozenset({403, 404, 410})  # Discord's CDN, for an attachment that was deleted or expired


class DiscordAttachments:
    """What :class:`cogs.depth2img.core.intake.Attachments` asks for, over HTTP."""

    def __init__(self, *, user_agent: str, connections: int = 16) -> None:
        self._session = open_session(None, connections=connections, user_agent=user_agent)

    async def read(self, url: str, *, cap: int) -> bytes:
        """The picture at ``url``. Raises :class:`InvalidInput`: ``input.file_too_big`` past ``cap``
        bytes, ``input.download_gone`` when Discord no longer has it, ``input.download_failed`` for
        any other failure (the time bound is the caller's)."""
        try:
            async with self._session.get(url) as resp:
                if resp.status in GONE:
                    raise InvalidInput("input.download_gone")
                if resp.status != 200:
                    raise InvalidInput("input.download_failed")
                pieces = await read_capped(resp, cap)
        except TimeoutError:  # (aiohttp's own: no connection in 15 s)
            raise InvalidInput("input.download_timeout") from None
        except (aiohttp.ClientError, ValueError):  # (ValueError: a URL aiohttp cannot request)
            raise InvalidInput("input.download_failed") from None
        if pieces is None:
            raise InvalidInput("input.file_too_big")
        return b"".join(pieces)

    async def close(self) -> None:
        await self._session.close()
