"""The ModelsLab / stablediffusionapi.com backend (v5 depth2img): aiohttp only, no Discord.

It borrows one ``aiohttp.ClientSession`` from the composition root. One pure function,
:func:`.modelslab_answers.error_from_response`, maps an HTTP answer to our error tree; the client
retries only what is safe to retry:

* submitting a job (which costs credits) is retried only when the API clearly did not take it:
  a refused connection, a 429 whose ``retry_after`` is short, or an explicit 500/503 answer;
  never after a timeout or a broken connection, when the job may already exist;
* polling and downloading are idempotent and are retried on any transient failure.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp

from cogs.botcore.redact import Redactor
from cogs.depth2img.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    JobFailed,
    MalformedResponseError,
    OutputUnavailable,
    RateLimitError,
    ServerError,
)
from cogs.depth2img.models import GenerationParams

from .base import Answer, LoadSource
from .guard import BlockedAddress, BlockedName, Guard, origin_of
from .http import get_following, read_capped
from .modelslab_answers import APIResponse, Status, error_from_response

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

_MAX_BODY = 1 * 1024 * 1024  # JSON answers are small; refuse to buffer more than this


def _payload(params: GenerationParams) -> dict[str, Any]:
    """The member's options in the API's names (only those that are set)."""
    payload: dict[str, Any] = {
        "prompt": params.prompt,
        "samples": params.samples,
        "safety_checker": "yes" if params.safety_checker else "no",
    }
    if params.negative_prompt:
        payload["negative_prompt"] = params.negative_prompt
    if params.strength is not None:
        payload["strength"] = params.strength
    if params.steps is not None:
        payload["num_inference_steps"] = params.steps
    if params.guidance is not None:
        payload["guidance_scale"] = params.guidance
    if params.seed is not None:
        payload["seed"] = params.seed
    return payload


def _answer(response: APIResponse) -> Answer:
    return Answer(
        done=response.status is Status.SUCCESS,
        remote_id=response.job_id,
        poll_url=response.fetch_url,
        eta_s=response.eta_s,
        output_urls=response.output_urls,
        generation_time_s=response.generation_time_s,
        seed=response.seed,
    )


class ModelsLabBackend:
    """Talks to the ModelsLab API. Satisfies :class:`.base.Backend`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        guard: Guard,
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
        self._guard = guard  # the session's connections are guarded by the same
        self._origin = origin_of(self._base)
        self.redact = Redactor([api_key])

    # --- the Backend protocol --------------------------------------------------------------------

    async def stage_source(self, url: str | None, load: LoadSource) -> str:
        """The picture's public URL when there is a fresh one; otherwise its bytes are uploaded with
        ``base64_to_url`` (free; the link lasts 24 h)."""
        if url is not None:
            return url
        data, mime = await load()
        return await self.upload_image(data, mime)

    async def submit(self, params: GenerationParams, source: str) -> Answer:
        """POST the job. Costs credits: retried only when the API clearly did not take it."""
        body: dict[str, Any] = {"key": self._key, "init_image": source, **_payload(params)}
        return _answer(await self._call(f"{self._base}/v5/depth2img", body, idempotent=False))

    async def poll(self, remote_id: str, poll_url: str | None) -> Answer:
        """Poll a queued job. Uses the API's ``fetch_result`` URL when it is on the API's own host.
        An error while polling means the job will not produce images (:class:`JobFailed`)."""
        response = await self.fetch(remote_id, poll_url)
        if response.status not in (Status.SUCCESS, Status.PROCESSING):
            raise JobFailed(response.message or "the job failed", job_id=remote_id)
        return _answer(response)

    async def download(self, url: str) -> list[bytes]:
        return await self.download_pieces(url)

    async def cancel(self, remote_id: str) -> None:
        """ModelsLab has no way to stop a queued job: nothing to do (the credits are spent)."""

    async def close(self) -> None:
        await self._session.close()

    # --- the API's own calls -----------------------------------------------------------------------

    async def fetch(self, job_id: str, fetch_url: str | None = None) -> APIResponse:
        # ``fetch_result`` carries the key: used only on the API's own origin (scheme, host and port).
        urls = [fetch_url] if fetch_url and origin_of(fetch_url) == self._origin else []
        remote = quote(job_id, safe="")
        urls += [f"{self._base}/v6/image_editing/fetch/{remote}", f"{self._base}/v3/fetch/{remote}"]
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
        """One POST that carries the key: to the API's own origin only, and never redirected."""
        if origin_of(url) != self._origin:
            raise MalformedResponseError("a request with the key to another origin")
        try:
            async with self._session.post(
                url, json=body, timeout=self._timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                raw = await read_capped(resp, _MAX_BODY)
        except TimeoutError as exc:
            raise APITimeoutError("the API did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"connection problem: {type(exc).__name__}") from exc
        if raw is None:
            raise MalformedResponseError("response body too large", status=status)
        if 300 <= status < 400:
            raise MalformedResponseError(
                f"the API answered a redirect (HTTP {status}); not followed", status=status
            )
        try:
            decoded: object = json.loads(b"".join(raw).decode("utf-8"))  # small: an API answer
            is_json = True
        except (UnicodeDecodeError, ValueError, RecursionError):
            decoded, is_json = None, False
        try:
            return error_from_response(status, decoded, text_is_json=is_json, retry_after=retry_after)
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
            async with get_following(self._session, self._guard, url, timeout=self._timeout) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise ServerError(f"HTTP {resp.status}", status=resp.status)
                if resp.status != 200:
                    raise OutputUnavailable(f"HTTP {resp.status} for the output image")
                if resp.content_length is not None and resp.content_length > self._max_download:
                    raise OutputUnavailable("output image larger than the download cap", unusable=True)
                data = await read_capped(resp, self._max_download)
                if data is None:
                    raise OutputUnavailable("output image larger than the download cap", unusable=True)
                return data
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
