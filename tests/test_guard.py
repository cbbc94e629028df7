"""No request to a private address except the configured service's exact origin, for every connection
and every redirect hop; the API key never leaves the API's origin; answers compressed or without a
length are read right. The ModelsLab backend against the fake API and a fake DNS (a fake at the edge:
aiohttp's resolver interface), with other local servers standing for the internal addresses an
attacker would aim at."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from cogs.depth2img.backends.guard import BlockedAddress, Guard
from cogs.depth2img.backends.http import open_session
from cogs.depth2img.backends.modelslab import ModelsLabBackend
from cogs.depth2img.errors import Depth2ImgError, OutputUnavailable, RateLimitError
from cogs.depth2img.models import GenerationParams
from tests.fakes.fake_api import FakeModelsLab, make_png
from tests.fakes.server import LocalServer

PARAMS = GenerationParams(prompt="a cozy cabin")


class FakeDNS(AbstractResolver):
    """Names to addresses, as a DNS server would answer; ``answers`` may give a sequence per name, one
    entry per lookup (a rebinding server's changing answer)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        if host not in self.answers:
            raise OSError(f"no such host {host}")
        choices = self.answers[host]
        address = choices[min(len(self.lookups) - 1, len(choices) - 1)] if len(choices) > 1 else choices[0]
        return [{"hostname": host, "host": address, "port": port, "family": family, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


class Internal(LocalServer):
    """An internal service on another port of the same machine: what must never be reached."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._any)

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append(f"{request.method} {request.raw_path} {await request.text()}")
        return web.Response(body=make_png(64, 64), content_type="image/png")


@pytest.fixture
async def internal() -> AsyncIterator[Internal]:
    server = Internal()
    await server.start()
    yield server
    await server.stop()


@asynccontextmanager
async def modelslab(
    fake_api: FakeModelsLab, dns: FakeDNS | None = None, **kw
) -> AsyncIterator[ModelsLabBackend]:
    guard = Guard([kw.pop("base_url", fake_api.base_url)])
    base = next(iter(guard.allowed))
    backend = ModelsLabBackend(
        open_session(guard, connections=10, user_agent="test", resolver=dns),
        guard=guard,
        base_url=f"{base[0]}://{base[1]}:{base[2]}/api",
        api_key=fake_api.api_key,
        max_retries=1,
        sleep=_no_wait,
        **kw,
    )
    try:
        yield backend
    finally:
        await backend.close()


async def _no_wait(_: float) -> None:
    pass


# --- each URL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://10.0.0.1/a.png",
        "http://192.168.1.2/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/a.png",
        "http://0.0.0.0/a.png",
        "http://[::1]/a.png",
        "http://[::]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[fe80::1]/a.png",
        "http://localhost/a.png",
        "http://printer.local/a.png",
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/",
    ],
)
def test_urls_to_private_places_are_refused(url):
    with pytest.raises(BlockedAddress):
        Guard(["https://stablediffusionapi.com/api"]).check(url)


def test_only_the_exact_origin_of_a_configured_service_is_allowed():
    guard = Guard(["http://127.0.0.1:7860/api"])
    assert guard.check("http://127.0.0.1:7860/files/a.png")
    for other in (
        "http://127.0.0.1:7861/a.png",
        "https://127.0.0.1:7860/a.png",
        "http://localhost:7860/a.png",
    ):
        with pytest.raises(BlockedAddress):
            guard.check(other)
    assert Guard([]).check("https://cdn.example.com/a.png")  # a name: checked when it connects


async def test_with_a_public_api_no_private_output_is_downloaded(fake_api):
    guard = Guard(["https://stablediffusionapi.com/api"])
    backend = ModelsLabBackend(
        open_session(guard, connections=4, user_agent="test"),
        guard=guard,
        base_url="https://stablediffusionapi.com/api",
        api_key="k" * 12,
        max_retries=0,
    )
    try:
        for url in (fake_api.file_url("a-0.png"), "http://[::ffff:127.0.0.1]:1/a.png", "file:///etc/passwd"):
            with pytest.raises(OutputUnavailable):
                await backend.download_pieces(url)
    finally:
        await backend.close()
    assert fake_api.downloads == []


# --- every connection -------------------------------------------------------------------------------


async def test_a_host_name_that_resolves_to_a_private_address_is_not_fetched(fake_api, internal):
    dns = FakeDNS({"cdn.example": ["127.0.0.1"]})
    async with modelslab(fake_api, dns) as backend:
        with pytest.raises(OutputUnavailable):
            await backend.download_pieces(f"http://cdn.example:{internal.port}/leak.png")
    assert dns.lookups and internal.requests == []


async def test_a_dns_answer_that_changes_after_a_check_cannot_reach_a_private_address(fake_api, internal):
    """Rebinding: a public answer first, then the internal one. The addresses are checked where the
    connection is made, so whichever answer a connection gets, a private one is never used."""
    dns = FakeDNS({"rebind.example": ["93.184.216.34", "127.0.0.1", "127.0.0.1"]})
    async with modelslab(fake_api, dns, request_timeout_s=2) as backend:
        with pytest.raises(Depth2ImgError):
            await backend.download_pieces(f"http://rebind.example:{internal.port}/leak.png")
    assert internal.requests == []


async def test_a_redirect_to_an_internal_address_is_not_followed(fake_api, internal):
    fake_api.add_file("fine-0.png", make_png())
    fake_api.redirects["out-0.png"] = f"http://127.0.0.1:{internal.port}/leak.png"
    fake_api.redirects["by-name-0.png"] = f"http://localhost:{fake_api.port}/files/fine-0.png"
    fake_api.redirects["same-0.png"] = fake_api.file_url("fine-0.png")
    async with modelslab(fake_api) as backend:
        for name in ("out-0.png", "by-name-0.png"):
            with pytest.raises(OutputUnavailable):
                await backend.download_pieces(fake_api.file_url(name))
        assert b"".join(await backend.download_pieces(fake_api.file_url("same-0.png"))) == make_png()
    assert internal.requests == []


async def test_a_redirect_to_a_host_name_is_checked_when_it_connects(fake_api, internal):
    dns = FakeDNS({"cdn.example": ["10.1.2.3"], "metadata.example": ["169.254.169.254"]})
    fake_api.redirects["out-0.png"] = f"http://metadata.example:{internal.port}/latest/meta-data"
    async with modelslab(fake_api, dns) as backend:
        with pytest.raises(OutputUnavailable):
            await backend.download_pieces(fake_api.file_url("out-0.png"))
    assert "metadata.example" in dns.lookups and internal.requests == []


# --- the key ----------------------------------------------------------------------------------------


async def test_a_poll_redirected_elsewhere_does_not_take_the_key_along(fake_api, internal):
    fake_api.scenario = "queued"
    fake_api.fetch_redirect = f"http://127.0.0.1:{internal.port}/steal"
    async with modelslab(fake_api) as backend:
        first = await backend.submit(PARAMS, "https://cdn.example/in.png")
        with pytest.raises(Depth2ImgError):
            await backend.poll(first.remote_id, first.poll_url)
    assert internal.requests == []


@pytest.mark.parametrize(
    "fetch_result",
    [
        "https://127.0.0.1:{api}/api/v3/fetch/1",  # the API's host, another scheme: the key in clear?
        "http://127.0.0.1:{internal}/api/v3/fetch/1",  # another port of the same host
        "http://evil.invalid/api/v3/fetch/1",
    ],
)
async def test_fetch_result_is_used_only_on_the_apis_own_origin(fake_api, internal, fetch_result):
    fake_api.scenario = "queued"
    async with modelslab(fake_api) as backend:
        first = await backend.submit(PARAMS, "https://cdn.example/in.png")
        url = fetch_result.format(api=fake_api.port, internal=internal.port)
        await backend.poll(first.remote_id, url)
    assert [f.path for f in fake_api.fetches] == [f"/api/v6/images/fetch/{first.remote_id}"]
    assert internal.requests == []


async def test_a_job_id_goes_into_the_path_escaped(fake_api):
    async with modelslab(fake_api) as backend:
        with pytest.raises(Depth2ImgError):
            await backend.poll("../../x?y=", None)
    assert fake_api.fetches
    for fetch in fake_api.fetches:
        assert "?" not in fetch.raw_path and "/../" not in fetch.raw_path
        assert fetch.raw_path.rsplit("/", 1)[1] == "..%2F..%2Fx%3Fy="  # the id, one path segment
        assert fetch.path.endswith("/fetch/../../x?y=")  # the id, whole, as the API's router sees it


# --- bodies -----------------------------------------------------------------------------------------


async def test_a_body_without_a_length_is_capped_while_it_streams(fake_api):
    async with modelslab(fake_api, max_download_bytes=1_000_000) as backend:
        with pytest.raises(OutputUnavailable, match="larger than the download cap"):
            await backend.download_pieces(fake_api.file_url("endless-0.png"))


async def test_compressed_answers_and_outputs_are_read(fake_api):
    """aiohttp asks for gzip; a server that sends it (with a correct Content-Length, which counts the
    bytes on the wire) is read in full, and the caps count the decoded bytes."""
    fake_api.compress = True
    fake_api.scenario = "success_list"
    async with modelslab(fake_api) as backend:
        answer = await backend.submit(PARAMS, "https://cdn.example/in.png")
        assert answer.done and answer.seed == 1793745243
        assert b"".join(await backend.download_pieces(answer.output_urls[0])) == fake_api.output_png


async def test_a_rate_limit_honours_the_retry_after_header(fake_api):
    fake_api.scenario = "rate_limited"
    fake_api.retry_after_header = "120"
    async with modelslab(fake_api) as backend:
        with pytest.raises(RateLimitError) as info:
            await backend.submit(PARAMS, "https://cdn.example/in.png")
    assert info.value.retry_after_s == 120
