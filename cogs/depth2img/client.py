"""The ModelsLab / stablediffusionapi.com v5 depth2img client: aiohttp only, no Discord.

It borrows one ``aiohttp.ClientSession`` from the composition root. One pure function,
:func:`error_from_response`, maps an HTTP answer to our error tree; the client retries only what is
safe to retry:

* submitting a job (which costs credits) is retried only when the API clearly did not take it:
  a refused connection, a 429 whose ``retry_after`` is short, or an explicit 500/503 answer;
  never after a timeout or a broken connection, when the job may already exist;
* polling and downloading are idempotent and are retried on any transient failure.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import random
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InsufficientCreditsError,
    JobFailed,
    MalformedResponseError,
    OutputUnavailable,
    RateLimitError,
    ServerError,
    SourceImageUnreachable,
)
from .models import APIResponse, GenerationParams, Status, parse_response

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

_MAX_BODY = 1 * 1024 * 1024  # JSON answers are small; refuse to buffer more than this
_AUTH_RE = re.compile(
    r"(invalid|wrong|missing|required|expired|revoked).{0,20}\bkey\b|\bapi key\b|unauthori[sz]ed"
)
_CREDITS_RE = re.compile(
    r"credit|balance|insufficient|subscription (has )?expired|plan (has )?expired|payment"
)
_RATE_RE = re.compile(r"rate limit|too many requests|queued requests|queue limit")
_FETCH_IMAGE_RE = re.compile(r"(unable|failed|could not|cannot).{0,20}(fetch|download|load|read).{0,30}image")
_RETRY_RE = re.compile(r"try again|temporar|unavailable|overload|maintenance")


def error_from_response(http_status: int, body: object, *, text_is_json: bool) -> APIResponse:
    """Classify one HTTP answer. Returns the parsed success/processing answer, or raises.

    ``body`` is the decoded JSON when ``text_is_json``; otherwise it is ignored.
    """
    if not text_is_json:
        if http_status == 429:
            raise RateLimitError("rate limited", status=http_status)
        if http_status in (401, 403):
            raise AuthenticationError("unauthorised", status=http_status)
        if http_status == 402:
            raise InsufficientCreditsError("payment required", status=http_status)
        if http_status >= 500:
            raise ServerError(f"HTTP {http_status} without a JSON body", status=http_status)
        raise MalformedResponseError("response is not JSON", status=http_status)

    try:
        parsed = parse_response(body, http_status=http_status)
    except MalformedResponseError:
        if http_status >= 500:
            raise ServerError(f"HTTP {http_status}", status=http_status) from None
        if http_status == 429:
            raise RateLimitError("rate limited", status=http_status) from None
        raise

    message = parsed.message or ""
    lowered = message.lower()
    if http_status == 429 or (parsed.status in (Status.ERROR, Status.FAILED) and _RATE_RE.search(lowered)):
        retry_after = parsed.retry_after_s if parsed.retry_after_s is not None else 30.0
        raise RateLimitError(message or "rate limited", status=http_status, retry_after_s=retry_after)
    if parsed.status in (Status.SUCCESS, Status.PROCESSING):
        if http_status >= 400:
            raise MalformedResponseError(f"{parsed.status} with HTTP {http_status}", status=http_status)
        return parsed

    # error / failed
    if http_status in (401, 403) and (http_status == 401 or _AUTH_RE.search(lowered)):
        raise AuthenticationError(message or "API key rejected", status=http_status)
    if _AUTH_RE.search(lowered):
        raise AuthenticationError(message, status=http_status)
    if http_status == 402 or _CREDITS_RE.search(lowered):
        raise InsufficientCreditsError(message or "out of credits", status=http_status)
    if http_status >= 500:
        raise ServerError(message or f"HTTP {http_status}", status=http_status)
    if _FETCH_IMAGE_RE.search(lowered):
        raise SourceImageUnreachable(message, status=http_status)
    if parsed.status is Status.ERROR and _RETRY_RE.search(lowered) and "processing failed" not in lowered:
        raise ServerError(message, status=http_status)
    if parsed.status is Status.FAILED:
        raise JobFailed(message or "the API reported the job as failed", job_id=parsed.job_id)
    raise BadRequestError(message or "the API refused the request", status=http_status)


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> list[bytes] | None:
    """The whole body in the pieces it came in (joining them is left to a thread), or None past
    ``cap`` bytes. A body cut short raises ``ClientPayloadError``."""
    if resp.content_length is not None and resp.content_length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():  # as received: no re-slicing into small pieces
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    if resp.content_length is not None and size < resp.content_length:
        raise aiohttp.ClientPayloadError("response body cut short")
    return chunks


def _is_private_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or not ip.is_global
    )


def _is_private_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return _is_private_ip(ipaddress.ip_address(host))
    except ValueError:
        return False


class Depth2ImgClient:
    """Talks to the depth2img API. Satisfies :class:`cogs.depth2img.service.Depth2ImgAPI`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str,
        request_timeout_s: float = 60.0,
        max_retries: int = 3,
        rate_limit_max_wait_s: float = 15.0,
        max_download_bytes: int = 25 * 1024 * 1024,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=min(10.0, request_timeout_s)
        )
        self._max_retries = max_retries
        self._rate_limit_max_wait = rate_limit_max_wait_s
        self._max_download = max_download_bytes
        self._sleep = sleep
        self._base_host = (urlsplit(self._base).hostname or "").lower()
        # Downloads never go to private, loopback or link-local addresses, unless the API itself
        # lives at such an address (a self-hosted or test API).
        self._allow_private = _is_private_host(self._base_host)

    # --- public API ------------------------------------------------------------------------

    async def submit(self, params: GenerationParams, init_image_url: str) -> APIResponse:
        """POST the job. Costs credits: retried only when the API clearly did not take it."""
        body: dict[str, Any] = {"key": self._key, "init_image": init_image_url, **params.to_payload()}
        return await self._call(f"{self._base}/v5/depth2img", body, idempotent=False)

    async def fetch(self, job_id: str, fetch_url: str | None = None) -> APIResponse:
        """Poll a queued job. Uses the API's ``fetch_result`` URL when it is on the API's own host."""
        urls = [fetch_url] if fetch_url and self._same_site(fetch_url) else []
        urls += [f"{self._base}/v6/image_editing/fetch/{job_id}", f"{self._base}/v3/fetch/{job_id}"]
        last: APIError | None = None
        for url in dict.fromkeys(urls):
            try:
                return await self._call(url, {"key": self._key}, idempotent=True, job_id=job_id)
            except MalformedResponseError as exc:
                if exc.status == 404:  # this API generation has no such fetch route: try the next one
                    last = exc
                    continue
                raise
            except BadRequestError as exc:
                if exc.status == 404:  # unknown here; the job may live behind another fetch route
                    last = exc
                    continue
                # an error while polling means this job will not produce images
                raise JobFailed(exc.message, job_id=job_id) from None
        assert last is not None
        raise last

    async def upload_image(self, data: bytes, mime: str = "image/png") -> str:
        """Host image bytes at the API (``base64_to_url``, 24 h links, 5 MB max) and return the URL.

        Falls back to the legacy ``base64_crop`` endpoint when the v6 route is missing. Uploading is
        idempotent enough to retry: a duplicate upload costs nothing and expires by itself.
        """
        data_uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        try:
            response = await self._call(
                f"{self._base}/v6/base64_to_url",
                {"key": self._key, "base64_string": data_uri},
                idempotent=True,
            )
        except MalformedResponseError as exc:
            if exc.status != 404:
                raise
            response = await self._call(
                f"{self._base}/v3/base64_crop",
                {"key": self._key, "image": data_uri, "crop": "false"},
                idempotent=True,
            )
        if response.status is not Status.SUCCESS:
            raise MalformedResponseError("upload did not finish at once")
        return response.output_urls[0]

    async def download_pieces(self, url: str) -> list[bytes]:
        """Download one output image, with a size cap; retried on transient failures. Returned in
        the pieces it came in: joining megabytes is left to the caller, off the event loop."""
        await self._check_download_target(url)
        attempt = 0
        while True:
            try:
                return await self._download_once(url)
            except (APIConnectionError, ServerError) as exc:
                if attempt >= self._max_retries:
                    raise OutputUnavailable(f"download failed: {type(exc).__name__}") from exc
                await self._sleep(self._backoff(attempt))
                attempt += 1

    # --- internals ---------------------------------------------------------------------------

    async def _check_download_target(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutputUnavailable("output URL is not http(s)")
        if self._allow_private:
            return
        host = parts.hostname
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            if host.lower() == "localhost" or host.lower().endswith(".localhost"):
                raise OutputUnavailable("output URL points at a private address")
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
                )
            except OSError as exc:
                raise APIConnectionError("could not resolve the output host") from exc
            addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses or any(_is_private_ip(a) for a in addresses):
            raise OutputUnavailable("output URL points at a private address")

    def _same_site(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        if not host:
            return False
        known = {"stablediffusionapi.com", "modelslab.com"}
        return host == self._base_host or any(host == k or host.endswith("." + k) for k in known)

    def redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    def _backoff(self, attempt: int) -> float:
        return float(min(8.0, 0.5 * 2**attempt) * (0.75 + random.random() / 2))  # noqa: S311

    async def _call(
        self, url: str, body: dict[str, Any], *, idempotent: bool, job_id: str | None = None
    ) -> APIResponse:
        attempt = 0
        while True:
            try:
                return await self._post_once(url, body)
            except RateLimitError as exc:
                if attempt >= self._max_retries or exc.retry_after_s > self._rate_limit_max_wait:
                    raise
                delay = max(exc.retry_after_s, 0.5)
            except ServerError as exc:
                safe = idempotent or exc.status in (500, 503)
                if not safe or attempt >= self._max_retries:
                    raise
                delay = self._backoff(attempt)
            except APIConnectionError as exc:
                safe = idempotent or isinstance(exc.__cause__, aiohttp.ClientConnectorError)
                if not safe or attempt >= self._max_retries:
                    raise
                delay = self._backoff(attempt)
            attempt += 1
            log.info("api retry", extra={"attempt": attempt, "delay_s": round(delay, 2), "job_id": job_id})
            await self._sleep(delay)

    async def _post_once(self, url: str, body: dict[str, Any]) -> APIResponse:
        try:
            async with self._session.post(url, json=body, timeout=self._timeout) as resp:
                status = resp.status
                raw = await _read_capped(resp, _MAX_BODY)
        except TimeoutError as exc:
            raise APITimeoutError("the API did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"connection problem: {type(exc).__name__}") from exc
        if raw is None:
            raise MalformedResponseError("response body too large", status=status)
        try:
            decoded: object = json.loads(b"".join(raw).decode("utf-8"))  # small: an API answer
            is_json = True
        except (UnicodeDecodeError, ValueError):
            decoded, is_json = None, False
        try:
            return error_from_response(status, decoded, text_is_json=is_json)
        except APIStatusError as exc:
            exc.message = self.redact(exc.message)
            exc.args = (exc.message,)
            raise
        except (MalformedResponseError, JobFailed) as exc:
            exc.detail = self.redact(exc.detail)
            exc.args = (exc.detail,)
            raise

    async def _download_once(self, url: str) -> list[bytes]:
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise ServerError(f"HTTP {resp.status}", status=resp.status)
                if resp.status != 200:
                    raise OutputUnavailable(f"HTTP {resp.status} for the output image")
                if resp.content_length is not None and resp.content_length > self._max_download:
                    raise OutputUnavailable("output image larger than the download cap")
                data = await _read_capped(resp, self._max_download)
                if data is None:
                    raise OutputUnavailable("output image larger than the download cap")
                return data
        except TimeoutError as exc:
            raise APITimeoutError("download timed out") from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"download problem: {type(exc).__name__}") from exc
