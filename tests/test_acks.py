"""The lean acknowledgement client (cogs/depth2img/acks.py) against a scripted HTTP server on 127.0.0.1:
what it sends, every shape of answer it must read, what it must refuse, connection reuse, and TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
import trustme

from cogs.depth2img.acks import AckNotConfirmed, InteractionAcks

TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2-_x.y"
OK_BODY = json.dumps(
    {
        "interaction": {"id": "1", "type": 2, "response_message_id": "777"},
        "resource": {"type": 5, "message": {"id": "777"}},
    }
).encode()


def answer(status: int, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int = 7) -> bytes:
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\nX-Trailer: y\r\n\r\n"


# What the server does with one request: bytes to send (in pieces of `split` bytes), or "close" (hang
# up without answering), or "hang" (never answer).
Step = bytes | str


@dataclass
class ScriptedServer:
    steps: list[Step]
    split: int = 0
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    close_after_each: bool = False
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                self.requests.append(head + await reader.readexactly(length))
                step = self.steps.pop(0) if self.steps else answer(200, OK_BODY)
                if step == "close":
                    break
                if step == "hang":
                    await asyncio.sleep(3600)
                assert isinstance(step, bytes)
                pieces = (
                    [step]
                    if not self.split
                    else [step[i : i + self.split] for i in range(0, len(step), self.split)]
                )
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    if self.split:
                        await asyncio.sleep(0.001)
                if self.close_after_each:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., asyncio.Future[ScriptedServer]]]:
    started: list[ScriptedServer] = []

    async def start(*steps: Step, **kw: object) -> ScriptedServer:
        tls = kw.pop("tls", None)
        server = ScriptedServer(list(steps), **kw)  # type: ignore[arg-type]
        await server.start(tls)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        await server.stop()


def acks_for(server: ScriptedServer, **kw: object) -> InteractionAcks:
    return InteractionAcks(f"http://127.0.0.1:{server.port}/api/v10", user_agent="DiscordBot (test, 1)", **kw)  # type: ignore[arg-type]


async def test_sends_a_deferral_and_reads_the_message_id(serve):
    server = await serve()
    acks = acks_for(server)
    assert await acks.defer(123456789, TOKEN) == 777
    (request,) = server.requests
    head, body = request.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == f"POST /api/v10/interactions/123456789/{TOKEN}/callback?with_response=true HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["User-Agent"] == "DiscordBot (test, 1)"
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"type": 5}
    await acks.close()


async def test_one_kept_alive_connection_serves_many_acknowledgements(serve):
    server = await serve()
    acks = acks_for(server)
    for i in range(5):
        assert await acks.defer(i + 1, TOKEN) == 777
    assert server.connections == 1
    # a burst needs more at once, and keeps them
    await asyncio.gather(*(acks.defer(i + 10, TOKEN) for i in range(8)))
    assert server.connections == 8
    await asyncio.gather(*(acks.defer(i + 20, TOKEN) for i in range(8)))
    assert server.connections == 8
    assert acks.sent == 21
    await acks.close()


@pytest.mark.parametrize(
    "reply",
    [
        answer(200, chunked(OK_BODY), "Transfer-Encoding: chunked"),
        answer(200, OK_BODY, "connection: Keep-Alive", "X-RateLimit-Remaining: 4"),
        answer(204, b""),
    ],
    ids=["chunked", "headers", "no-content"],
)
async def test_reads_every_shape_of_a_successful_answer(serve, reply):
    server = await serve(reply, reply, split=5)  # and a few bytes at a time
    acks = acks_for(server)
    expected = None if reply.startswith(b"HTTP/1.1 204") else 777
    assert await acks.defer(1, TOKEN) == expected
    assert await acks.defer(2, TOKEN) == expected
    assert server.connections == 1
    await acks.close()


async def test_connection_close_is_honoured(serve):
    server = await serve(answer(200, OK_BODY, "Connection: close"), close_after_each=True)
    acks = acks_for(server)
    assert await acks.defer(1, TOKEN) == 777
    assert await acks.defer(2, TOKEN) == 777
    assert server.connections == 2


async def test_a_connection_the_server_dropped_while_idle_is_not_used(serve):
    server = await serve(close_after_each=True)  # keep-alive promised, then hung up
    acks = acks_for(server)
    assert await acks.defer(1, TOKEN) == 777
    await asyncio.sleep(0.05)
    assert await acks.defer(2, TOKEN) == 777
    assert server.connections == 2
    await acks.close()


async def test_discord_errors_are_reported_with_their_code(serve):
    unknown = json.dumps({"code": 10062, "message": "Unknown interaction"}).encode()
    server = await serve(answer(404, unknown), answer(429, b'{"retry_after": 1}'), answer(503, b"<html>"))
    acks = acks_for(server)
    with pytest.raises(AckNotConfirmed) as caught:
        await acks.defer(1, TOKEN)
    assert (caught.value.status, caught.value.code, caught.value.sent) == (404, 10062, True)
    for status in (429, 503):
        with pytest.raises(AckNotConfirmed) as caught:
            await acks.defer(2, TOKEN)
        assert (caught.value.status, caught.value.code) == (status, None)
    assert server.connections == 1  # an error answer is still a whole answer: the connection stays
    assert acks.sent == 0
    await acks.close()


@pytest.mark.parametrize(
    "step",
    [
        "close",
        b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"cut',
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 12x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["hung-up", "cut-short", "not-http", "bad-length", "no-length", "bad-chunk"],
)
async def test_an_answer_it_cannot_vouch_for_is_not_confirmed(serve, step):
    server = await serve(step, close_after_each=step != "close")
    acks = acks_for(server, timeout_s=1.0)
    with pytest.raises(AckNotConfirmed) as caught:
        await acks.defer(1, TOKEN)
    assert caught.value.sent  # the request went out: Discord may have taken it
    assert acks.sent == 0
    assert await acks.defer(2, TOKEN) == 777  # a fresh connection afterwards
    await acks.close()


async def test_no_answer_within_the_timeout(serve):
    server = await serve("hang")
    acks = acks_for(server, timeout_s=0.2)
    with pytest.raises(AckNotConfirmed) as caught:
        await acks.defer(1, TOKEN)
    assert caught.value.sent
    await acks.close()


async def test_nobody_listening_means_nothing_was_sent():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    acks = InteractionAcks(f"http://127.0.0.1:{port}/api/v10", user_agent="t")
    with pytest.raises(AckNotConfirmed) as caught:
        await acks.defer(1, TOKEN)
    assert not caught.value.sent


async def test_a_token_that_could_break_the_request_line_is_refused(serve):
    server = await serve()
    acks = acks_for(server)
    for token in ("a b", "a\r\nX: y", "ä", "a/b"):
        with pytest.raises(AckNotConfirmed):
            await acks.defer(1, token)
    assert server.requests == []
    await acks.close()


async def test_tls_with_certificate_checks(serve):
    authority = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_ctx)
    server = await serve(tls=server_ctx)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    acks = InteractionAcks(f"https://localhost:{server.port}/api/v10", user_agent="t", ssl_context=trusting)
    assert await acks.defer(1, TOKEN) == 777
    assert await acks.defer(2, TOKEN) == 777
    assert server.connections == 1
    await acks.close()
    # a certificate the client does not trust: nothing is sent
    strict = InteractionAcks(f"https://localhost:{server.port}/api/v10", user_agent="t")
    with pytest.raises(AckNotConfirmed) as caught:
        await strict.defer(3, TOKEN)
    assert not caught.value.sent
    assert len(server.requests) == 2


def test_only_http_urls():
    with pytest.raises(ValueError, match="http"):
        InteractionAcks("ws://127.0.0.1/gateway", user_agent="t")
