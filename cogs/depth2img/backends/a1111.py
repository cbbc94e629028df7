"""AUTOMATIC1111 / Forge with the ControlNet extension, on the owner's own GPU (``shared/docs/backends.md``
§3.1): ``POST /sdapi/v1/img2img`` with the source as ``init_images``, ``denoising_strength`` = strength
and one depth ControlNet unit in ``alwayson_scripts``; the results are base64 pictures in ``images``;
``GET /sdapi/v1/progress`` says how far the current generation is; ``POST /sdapi/v1/interrupt`` stops it.

The API answers img2img only once the pictures are made, in one long request. So :meth:`submit` starts
that request as a task of its own and returns at once with a local id; :meth:`poll` reports the
server's progress until the task has the pictures, which :meth:`download` then hands over from memory.
Nothing of a job outlives the bot process: after a restart its id is unknown (:class:`JobLost`) and the
job logic runs it again, which costs a self-hosting owner nothing (``repeatable``).

Forge drops ControlNet errors silently and returns a picture made without depth (Forge #259, #1414): the
unit must show in the answer's ``info`` (``extra_generation_params`` names "ControlNet 0"), else the
picture is not delivered and the owner is told why. At start-up the owner's log says whether the server
answers and lists the configured ControlNet model and module.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import time
from typing import Any

import aiohttp

from cogs.depth2img.errors import (
    BadRequestError,
    Depth2ImgError,
    JobFailed,
    JobLost,
    MalformedResponseError,
    OutputUnavailable,
    ServerError,
    ServiceMisconfigured,
)
from cogs.depth2img.models import GenerationParams

from .base import DEPTH_MAP, Answer, CheckLine, LoadSource, storable_seed
from .http import fetch_capped
from .modelslab_routes import fit_size

log = logging.getLogger(__name__)

SCHEME = "a1111-output:"  # outputs held in memory: a1111-output:<job id>/<index>
FORGET_AFTER_S = 3600.0  # a finished generation no job asked for again (its job ended meanwhile)
_MAX_SMALL = 4 * 1024 * 1024
DEFAULTS = {"steps": 25, "cfg_scale": 7.0, "denoising_strength": 0.6}


def img2img_body(params: GenerationParams, source: bytes, *, module: str, model: str) -> dict[str, Any]:
    """The request, with the member's options mapped as the hosted routes map them."""
    payload: dict[str, Any] = {
        "init_images": [base64.b64encode(source).decode("ascii")],
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt or "",
        "denoising_strength": params.strength
        if params.strength is not None
        else DEFAULTS["denoising_strength"],
        "steps": params.steps or DEFAULTS["steps"],
        "cfg_scale": params.guidance if params.guidance is not None else DEFAULTS["cfg_scale"],
        "seed": params.seed if params.seed is not None else -1,
        "batch_size": params.samples,
        "n_iter": 1,
        "alwayson_scripts": {
            "ControlNet": {
                "args": [
                    {
                        "enabled": True,
                        "module": module,
                        "model": model,
                        "weight": 1.0,
                        "pixel_perfect": True,
                        "resize_mode": "Crop and Resize",
                        "control_mode": "Balanced",
                        "guidance_start": 0.0,
                        "guidance_end": 1.0,
                        # the detected map comes after the results in ``images``: the 🗺️ button
                        "save_detected_map": True,
                    }
                ]
            }
        },
    }
    if params.width and params.height:
        payload["width"], payload["height"] = fit_size(params.width, params.height)
    return payload


def _request_bytes(params: GenerationParams, source: bytes, module: str, model: str) -> bytes:
    return json.dumps(img2img_body(params, source, module=module, model=model)).encode()


def _parse_answer(raw: list[bytes]) -> Any:
    """The answer's JSON, or None; ``raw`` is emptied as it is joined (CPU work for a thread)."""
    text = b"".join(raw)
    raw.clear()
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _info(answer: dict[str, Any]) -> dict[str, Any]:
    info = answer.get("info")
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except (ValueError, RecursionError):  # (nested deeper than Python's parser goes)
            return {}
    return info if isinstance(info, dict) else {}


def controlnet_applied(info: dict[str, Any]) -> bool:
    extra = info.get("extra_generation_params")
    return isinstance(extra, dict) and any(str(k).startswith("ControlNet") for k in extra)


def _decode(images: list[str], count: int) -> list[bytes]:
    """The first ``count`` pictures (a detected map may follow them), decoded. CPU work for a thread."""
    out: list[bytes] = []
    for text in images[:count]:
        text = text.split(",", 1)[1] if text.startswith("data:") else text
        try:
            out.append(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
        except (binascii.Error, ValueError):
            raise OutputUnavailable("an output that is not base64", unusable=True) from None
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class A1111Backend:
    """Satisfies :class:`.base.Backend`."""

    repeatable = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        module: str,
        model: str,
        generation_timeout_s: float,
        request_timeout_s: float = 60.0,
        max_output_bytes: int = 25 * 1024 * 1024,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._module = module
        self._model = model
        self._long = aiohttp.ClientTimeout(total=generation_timeout_s, sock_connect=15)
        self._short = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=min(10.0, request_timeout_s)
        )
        self._max_output = max_output_bytes
        self._sources: dict[str, bytes] = {}
        self._started: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[tuple[list[bytes], int | None, int]]] = {}
        self._outputs: dict[str, list[bytes]] = {}
        self._warned_no_controlnet = False

    # --- the Backend protocol --------------------------------------------------------------------

    async def stage_source(self, url: str | None, load: LoadSource) -> str:
        """The picture's bytes, held until :meth:`submit` sends them (the server reads no URL)."""
        data, _mime = await load()
        token = secrets.token_hex(8)
        self._sources[token] = data
        while len(self._sources) > 32:  # (a picture staged for a job that then ended is not kept)
            del self._sources[next(iter(self._sources))]
        return f"a1111-source:{token}"

    async def submit(self, params: GenerationParams, source: str) -> Answer:
        data = self._sources.pop(source.removeprefix("a1111-source:"), None)
        if data is None:
            raise JobLost("the source picture is no longer held")
        # the picture in base64, as JSON: megabytes of CPU work, in a thread
        body = await asyncio.to_thread(_request_bytes, params, data, self._module, self._model)
        del data
        self._forget_abandoned()
        job_id = secrets.token_hex(6)
        self._started[job_id] = time.monotonic()
        self._tasks[job_id] = asyncio.create_task(
            self._generate(body, params.samples), name=f"a1111-{job_id}"
        )
        return Answer(done=False, remote_id=job_id)

    async def poll(self, remote_id: str, poll_url: str | None) -> Answer:
        task = self._tasks.get(remote_id)
        if task is None:
            raise JobLost("unknown here: the bot restarted since it was sent")
        if not task.done():
            progress, eta = await self._progress() if self._alone() else (None, None)
            return Answer(done=False, remote_id=remote_id, progress=progress, eta_s=eta)
        del self._tasks[remote_id]
        self._started.pop(remote_id, None)
        images, seed, samples = task.result()  # (raises what the generation raised)
        self._outputs[remote_id] = images
        while len(self._outputs) > 16:  # (pictures never asked for are not held for ever)
            del self._outputs[next(iter(self._outputs))]
        urls = tuple(
            f"{SCHEME}{remote_id}/{n}" + (DEPTH_MAP if n == samples else "") for n in range(len(images))
        )
        return Answer(done=True, remote_id=remote_id, output_urls=urls, seed=seed)

    async def download(self, url: str) -> list[bytes]:
        job_id, _, index = url.removeprefix(SCHEME).removesuffix(DEPTH_MAP).partition("/")
        images = self._outputs.get(job_id)
        if images is None or not index.isdigit() or int(index) >= len(images):
            raise JobLost("the pictures are no longer held: the bot restarted since they were made")
        picture = images[int(index)]
        if int(index) == len(images) - 1:
            del self._outputs[job_id]  # (each is downloaded once, in order)
        return [picture]

    async def cancel(self, remote_id: str) -> None:
        task = self._tasks.get(remote_id)
        if task is None:
            return
        alone = self._alone(task)
        del self._tasks[remote_id]
        self._started.pop(remote_id, None)
        if alone:  # the server's current work is ours: stop it there too
            try:
                async with self._session.post(
                    f"{self._base}/sdapi/v1/interrupt", timeout=self._short, allow_redirects=False
                ):
                    pass
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("interrupt not sent", extra={"error": type(exc).__name__})
        task.cancel()

    async def check(self) -> list[CheckLine]:
        """That the server answers its ControlNet API and lists the configured model and module."""
        try:
            models = await self._get_json("/controlnet/model_list")
            modules = await self._get_json("/controlnet/module_list")
        except Depth2ImgError as exc:
            return [
                (
                    "AUTOMATIC1111 / Forge",
                    False,
                    f"no ControlNet API at A1111_URL ({type(exc).__name__}): check the URL, that the server runs "
                    "with --api, and that the ControlNet extension is installed",
                )
            ]
        lines: list[CheckLine] = [("AUTOMATIC1111 / Forge", True, "answers, with the ControlNet extension")]
        names = models.get("model_list") if isinstance(models, dict) else None
        if isinstance(names, list) and self._model in names:
            lines.append(("ControlNet model", True, self._model))
        else:
            shown = ", ".join(map(str, names[:10])) if isinstance(names, list) else "none"
            lines.append(
                (
                    "ControlNet model",
                    False,
                    f"A1111_CONTROLNET_MODEL is not among the server's ControlNet models: set it to one of "
                    f"/controlnet/model_list ({shown})",
                )
            )
        found = modules.get("module_list") if isinstance(modules, dict) else None
        if isinstance(found, list) and self._module in found:
            lines.append(("ControlNet preprocessor", True, self._module))
        else:
            lines.append(
                (
                    "ControlNet preprocessor",
                    False,
                    "A1111_CONTROLNET_MODULE is not among the server's ControlNet preprocessors (/controlnet/module_list)",
                )
            )
        return lines

    async def upkeep(self) -> None:
        """Say in the owner's log whether the server is ready (once, at start-up)."""
        for name, ok, detail in await self.check():
            if ok:
                log.info(f"{name}: {detail}")
            else:
                log.error(detail)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await self._session.close()

    # --- internals ---------------------------------------------------------------------------------

    def _forget_abandoned(self) -> None:
        """Drop generations that finished long ago and were never asked for (their job ended first)."""
        now = time.monotonic()
        for job_id, task in list(self._tasks.items()):
            if task.done() and now - self._started.get(job_id, now) > FORGET_AFTER_S:
                del self._tasks[job_id]
                self._started.pop(job_id, None)
                if not task.cancelled():
                    task.exception()  # (retrieved: never "exception was never retrieved")

    def _alone(self, mine: asyncio.Task[Any] | None = None) -> bool:
        """Whether exactly one of the bot's generations is at the server (its progress is then ours)."""
        running = [t for t in self._tasks.values() if not t.done()]
        return len(running) == 1 and (mine is None or running[0] is mine)

    async def _progress(self) -> tuple[float | None, float | None]:
        try:
            answer = await self._get_json("/sdapi/v1/progress?skip_current_image=true")
        except Depth2ImgError:
            return None, None
        progress: Any = answer.get("progress") if isinstance(answer, dict) else None
        eta: Any = answer.get("eta_relative") if isinstance(answer, dict) else None
        done = float(progress) if _number(progress) and 0 <= progress <= 1 else None
        left = float(eta) if _number(eta) and 0 <= eta < 86400 else None
        return done, left

    async def _get_json(self, path: str) -> Any:
        status, raw = await fetch_capped(
            self._session, "GET", self._base + path, cap=_MAX_SMALL, what="AUTOMATIC1111", timeout=self._short
        )
        if status != 200 or raw is None:
            raise MalformedResponseError(f"HTTP {status}", status=status)
        try:
            return json.loads(b"".join(raw))
        except (ValueError, RecursionError):
            raise MalformedResponseError("not JSON", status=status) from None

    async def _generate(self, body: bytes, count: int) -> tuple[list[bytes], int | None, int]:
        """The results (and, after them, the first unit's detected map when sent), the seed, and how
        many of the pictures are results."""
        status, raw = await fetch_capped(
            self._session,
            "POST",
            f"{self._base}/sdapi/v1/img2img",
            # the pictures in base64: at most the output cap each, and the detected map
            cap=(count + 1) * self._max_output * 4 // 3 + (1 << 20),
            what="img2img",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=self._long,
        )
        if raw is None:
            raise OutputUnavailable("img2img answer larger than the bot accepts", unusable=True)
        answer = await asyncio.to_thread(_parse_answer, raw)  # (tens of megabytes of JSON: off the loop)
        if status >= 500:
            raise ServerError(f"HTTP {status}", status=status)
        if status == 404:
            raise ServiceMisconfigured("no /sdapi/v1/img2img: start the server with --api", status=status)
        if status != 200 or not isinstance(answer, dict):
            detail = answer.get("detail") if isinstance(answer, dict) else None
            raise BadRequestError(f"img2img refused: {str(detail)[:200]}", status=status)
        images = answer.get("images")
        if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
            raise JobFailed("img2img answered without pictures")
        info = _info(answer)
        if not controlnet_applied(info):
            if not self._warned_no_controlnet:
                self._warned_no_controlnet = True
                log.error(
                    "the AUTOMATIC1111 / Forge server made a picture WITHOUT the depth ControlNet (its "
                    "ControlNet failed silently): check A1111_CONTROLNET_MODEL and _MODULE and the "
                    "server's console; such pictures are not delivered",
                    extra={"model": self._model, "controlnet_module": self._module},
                )
            raise ServiceMisconfigured("ControlNet was not applied")
        pictures = await asyncio.to_thread(_decode, images, count + 1)  # (the map, if it came)
        seed = info.get("seed")
        return pictures, storable_seed(seed), count
