"""The ModelsLab / stablediffusionapi.com backend (v5 depth2img, or v5 controlnet with depth: see
:mod:`.modelslab_routes`): aiohttp only, no Discord.

``SD_ENDPOINT=auto`` starts on ``v5/depth2img``; the first time it answers with the dead endpoint's
signature, the *same* request goes at once to ``v5/controlnet`` (the first never started: nothing is
charged twice), the owner's log says so once, and the route is remembered (``remember``, in the ledger,
across restarts) and used from then on, with no re-probing.

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
    Depth2ImgError,
    InsufficientCreditsError,
    JobFailed,
    MalformedResponseError,
    OutputUnavailable,
    RateLimitError,
    ServerError,
)
from cogs.depth2img.models import GenerationParams

from .base import Answer, CheckLine, LoadSource
from .downloads import download
from .guard import Guard, origin_of
from .http import read_capped
from .modelslab_account import CHECK_EVERY_S, Account, parse_balance
from .modelslab_answers import APIResponse, Status, error_from_response
from .modelslab_routes import Route, body, is_dead_endpoint

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Remember = Callable[[str], Awaitable[None]]

_MAX_BODY = 1 * 1024 * 1024
KEY_REJECTED = "the API rejected SD_API_KEY: copy the key again from your ModelsLab dashboard into .env"  # JSON answers are small; refuse to buffer more than this


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

    repeatable = False  # every generation is paid for

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
        endpoint: str = "auto",
        known_route: str | None = None,
        remember: Remember | None = None,
        model_id: str = "realistic-vision-51",
        low_balance: float = 1.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``endpoint``: auto, depth2img or controlnet (``SD_ENDPOINT``); ``known_route``: the route
        ``auto`` learnt before (from the ledger); ``remember`` stores a newly learnt one."""
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
        self._auto = endpoint == "auto"
        self.route = Route(endpoint if not self._auto else (known_route or Route.DEPTH2IMG))
        self._remember = remember
        self._model_id = model_id
        self.account = Account(self._wallet_balance, low=low_balance)

    # --- the Backend protocol --------------------------------------------------------------------

    async def stage_source(self, url: str | None, load: LoadSource) -> str:
        """The picture's public URL when there is a fresh one; otherwise its bytes are uploaded with
        ``base64_to_url`` (free; the link lasts 24 h)."""
        if url is not None:
            return url
        data, mime = await load()
        return await self.upload_image(data, mime)

    async def submit(self, params: GenerationParams, source: str) -> Answer:
        """POST the job on the route in use. Costs credits: retried only when the API clearly did not
        take it. With ``auto``, a dead ``depth2img`` answer sends the same request to ``controlnet``."""
        route = self.route
        try:
            return await self._submit(route, params, source)
        except Depth2ImgError as exc:
            if not (self._auto and route is Route.DEPTH2IMG and is_dead_endpoint(exc)):
                raise
        await self._switch_to(Route.CONTROLNET)
        return await self._submit(Route.CONTROLNET, params, source)

    async def _submit(self, route: Route, params: GenerationParams, source: str) -> Answer:
        payload = body(route, params, source, key=self._key, model_id=self._model_id)
        try:
            return _answer(await self._call(self._base + route.path, payload, idempotent=False))
        except InsufficientCreditsError:
            await self.account.out_of_credit()
            raise

    async def _switch_to(self, route: Route) -> None:
        if self.route is route:
            return
        self.route = route
        log.warning(
            "v5/depth2img answered as a retired endpoint (failed at once, no job id): every request goes "
            "to v5/controlnet with a depth ControlNet from now on (remembered; set SD_ENDPOINT to choose)",
            extra={"route": str(route)},
        )
        if self._remember is not None:
            try:
                await self._remember(str(route))
            except Exception as exc:  # (the ledger out of reach: learnt again after a restart)
                log.warning("the route could not be remembered", extra={"error": type(exc).__name__})

    async def check(self) -> list[CheckLine]:
        """The key and the balance (``wallet_balance``: free, generates nothing)."""
        try:
            body = await self._wallet_balance()
        except MalformedResponseError as exc:
            if exc.status in (401, 403):
                return [("ModelsLab API key", False, KEY_REJECTED)]
            return [
                (
                    "ModelsLab API",
                    False,
                    f"HTTP {exc.status} from {self._base}/wallet_balance: check SD_API_BASE_URL",
                )
            ]
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            return [("ModelsLab API", False, f"SD_API_BASE_URL could not be reached ({type(exc).__name__})")]
        balance = parse_balance(body)
        if balance is None:
            return [("ModelsLab API key", False, KEY_REJECTED)]
        amount = f"{balance.amount:.2f} {balance.currency}"
        lines: list[CheckLine] = [("ModelsLab API key", True, f"accepted; requests go to v5/{self.route}")]
        if balance.amount <= 0:
            lines.append(("ModelsLab balance", False, f"{amount}: top up the account at modelslab.com"))
        elif balance.amount < self.account.low:
            lines.append(("ModelsLab balance", True, f"{amount} (below SD_LOW_BALANCE: top up soon)"))
        else:
            lines.append(("ModelsLab balance", True, amount))
        return lines

    async def upkeep(self) -> None:
        """The account's balance: at start-up, then hourly (runs for as long as the bot)."""
        await self.account.check(why="start")
        while True:
            await self._sleep(CHECK_EVERY_S)
            await self.account.check(why="hourly")

    async def poll(self, remote_id: str, poll_url: str | None) -> Answer:
        """Poll a queued job. Uses the API's ``fetch_result`` URL when it is on the API's own host.
        An error while polling means the job will not produce images (:class:`JobFailed`)."""
        response = await self.fetch(remote_id, poll_url)
        if response.status not in (Status.SUCCESS, Status.PROCESSING):
            raise JobFailed(response.message or "the job failed", job_id=remote_id)
        return _answer(response)

    async def download(self, url: str) -> list[bytes]:
        return await self.download_pieces(url)

    async def _wallet_balance(self) -> Any:
        url = f"{self._base}/wallet_balance"
        if origin_of(url) != self._origin:
            raise MalformedResponseError("a request with the key to another origin")
        async with self._session.post(
            url, json={"key": self._key}, timeout=self._timeout, allow_redirects=False
        ) as resp:
            raw = await read_capped(resp, _MAX_BODY)
            if resp.status != 200 or raw is None:
                raise MalformedResponseError(f"HTTP {resp.status}", status=resp.status)
        return json.loads(b"".join(raw).decode("utf-8"))

    async def cancel(self, remote_id: str) -> None:
        """ModelsLab has no way to stop a queued job: nothing to do (the credits are spent)."""

    async def close(self) -> None:
        await self._session.close()

    # --- the API's own calls -----------------------------------------------------------------------

    async def fetch(self, job_id: str, fetch_url: str | None = None) -> APIResponse:
        # ``fetch_result`` carries the key: used only on the API's own origin (scheme, host and port).
        urls = [fetch_url] if fetch_url and origin_of(fetch_url) == self._origin else []
        remote = quote(job_id, safe="")
        # else the documented fetch route, then the older ones (a 404 moves on to the next)
        urls += [f"{self._base}/v6/images/fetch/{remote}", f"{self._base}/v6/image_editing/fetch/{remote}"]
        urls += [f"{self._base}/v3/fetch/{remote}"]
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
        return await download(
            self._session, self._guard, url, timeout=self._timeout, max_bytes=self._max_download
        )
