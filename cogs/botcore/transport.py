"""Which exceptions mean that a request to Discord got no answer (the connection was reset or dropped,
or timed out), as opposed to an answer that refused it (:class:`discord.HTTPException`).

discord.py lets aiohttp's own errors through for those: its webhook client tries again only after
macOS's and Windows' connection resets (errno 54 and 10054), not Linux's, nor after a dropped
connection (``ServerDisconnectedError``). Named here, where aiohttp may be imported, for the code that
must not lose a result over one bad connection.
"""

from __future__ import annotations

import aiohttp

NO_ANSWER: tuple[type[Exception], ...] = (aiohttp.ClientError, OSError, TimeoutError)
