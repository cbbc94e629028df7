"""Serving a fake's aiohttp application on 127.0.0.1 (an ephemeral port unless one is given)."""

from __future__ import annotations

from aiohttp import web


class LocalServer:
    app: web.Application

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # real services have deep accept queues; aiohttp's default of 128 overflows when 200 members'
        # requests open connections at once, and each dropped SYN then costs its client a 1 s retry
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
