"""The image API and the CDN for `make bench`, in a process of their own (``python -m bench.services``).

In real life the image API, its output CDN and Discord's attachment CDN are other services on other
machines: a download from one of them does not slow Discord down. Here they share two cores with
everything else, but at least not an event loop with the fake Discord, whose timings the benchmark
reads. One fake API per bot (``--apis``), each serving its own outputs, and one CDN for the member's
picture. Prints one JSON line with their addresses, then serves until SIGTERM.

``GET /_bench/submissions?api=N&since=K`` on the CDN answers when submissions K, K+1, ... reached API N
(``time.monotonic()``, the same clock in every process of the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from tests.fakes.fake_api import FakeModelsLab
from tests.fakes.server import LocalServer


class CDN(LocalServer):
    def __init__(self, picture: bytes, apis: list[FakeModelsLab]) -> None:
        super().__init__()
        self.picture = picture
        self.apis = apis
        self.app = web.Application()
        self.app.router.add_get("/attachments/{name}", self._attachment)
        self.app.router.add_get("/_bench/submissions", self._submissions)

    async def _attachment(self, request: web.Request) -> web.Response:
        return web.Response(body=self.picture, headers={"Content-Type": "image/png"})

    async def _submissions(self, request: web.Request) -> web.Response:
        api = self.apis[int(request.query["api"])]
        since = int(request.query.get("since", "0"))
        return web.json_response([s.at for s in api.submissions[since:]])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apis", type=int, default=2)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--picture", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    output = args.output.read_bytes()
    apis = [FakeModelsLab(latency_s=args.latency, output_png=output) for _ in range(args.apis)]
    cdn = CDN(args.picture.read_bytes(), apis)
    for api in apis:
        await api.start()
    await cdn.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(
        json.dumps(
            {
                "apis": [{"base_url": api.base_url, "key": api.api_key} for api in apis],
                "attachment_url": f"http://127.0.0.1:{cdn.port}/attachments/input.png",
                "control": f"http://127.0.0.1:{cdn.port}/_bench",
            }
        ),
        flush=True,
    )
    await stop.wait()
    await cdn.stop()
    for api in apis:
        await api.stop()


if __name__ == "__main__":
    uvloop.run(main())
    sys.exit(0)
