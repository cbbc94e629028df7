"""Which exceptions mean that a request to Discord got no answer the bot could read (the connection was
reset or dropped, it timed out, or the answer was not the JSON it said it was), as opposed to an
answer that refused it (:class:`discord.HTTPException`). Discord may have done what was asked.

discord.py lets these through as they are: its webhook client tries again only after macOS's and
Windows' connection resets (errno 54 and 10054), not Linux's, nor after a dropped connection
(aiohttp's ``ServerDisconnectedError``); and it reads an answer's JSON before it looks at the status,
so a body cut short raises ``ValueError`` (orjson's or json's ``JSONDecodeError``). Named here, where
aiohttp may be imported, for the code that must not lose a result over one bad answer.
"""

from __future__ import annotations

import aiohttp

NO_ANSWER: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError, TimeoutError, ValueError)
# The narrower case that only a request can raise (never our own code): the connection broke, or its
# answer was cut short. What a handler that failed on it tells the member.
CONNECTION_LOST: tuple[type[Exception], ...] = (aiohttp.ClientError,)
