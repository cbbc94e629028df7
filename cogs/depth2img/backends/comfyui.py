"""ComfyUI, on the owner's own GPU (``shared/docs/backends.md`` §3.2, and what a real server answered:
``shared/docs/comfyui-real/``).

* the source: ``POST /upload/image`` (multipart ``image``) -> ``{"name", "subfolder", "type": "input"}``;
* the job: ``POST /prompt {"prompt": <API-format graph>, "client_id"}`` -> ``{"prompt_id", "number",
  "node_errors": {}}``; a refusal is HTTP 400 ``{"error": {type, message, ...}, "node_errors": {...}}``
  (one clear line for the owner, a clear message for the member);
* following it: ``GET /history/{id}`` (``{}`` until it ends, then ``outputs`` and ``status.status_str``)
  and ``GET /queue``; live progress from the WebSocket (``/ws?clientId=``: ``progress {value, max,
  prompt_id}``), kept by :meth:`upkeep`;
* the pictures: ``GET /view?filename=&subfolder=&type=output``;
* cancel: ``POST /queue {"delete": [id]}`` while it waits, ``POST /interrupt`` while it runs (both
  answer 200 with an empty body).

A job is found again after a bot restart by its prompt id (ComfyUI's history). One that ComfyUI itself
forgot (it restarted) is :class:`JobLost`, and run again once, which costs the owner nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from cogs.depth2img.cleaning import is_clean
from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.errors import (
    Depth2ImgError,
    JobFailed,
    JobLost,
    MalformedResponseError,
    ServerError,
    ServiceMisconfigured,
)
from cogs.depth2img.models import GenerationParams

from .base import DEPTH_MAP, MAX_OUTPUT_URLS, Answer, CheckLine, LoadSource, storable_seed
from .comfyui_answers import depth_map_nodes, execution_error, progress_fraction, refusal_line
from .comfyui_workflow import Workflow, WorkflowError, fill, load
from .downloads import download
from .guard import Guard
from .http import fetch_capped

log = logging.getLogger(__name__)

_MAX_ANSWER = 8 * 1024 * 1024
DEFAULTS: dict[str, Any] = {"steps": 25, "guidance": 7.0, "strength": 0.6}


class ComfyUIBackend:
    """Satisfies :class:`.base.Backend`."""

    repeatable = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        guard: Guard,
        *,
        base_url: str,
        workflow: Workflow,
        checkpoint: str,
        controlnet: str,
        request_timeout_s: float = 60.0,
        max_download_bytes: int = 25 * 1024 * 1024,
        reconnect_s: float = 2.0,
    ) -> None:
        self._session = session
        self._guard = guard
        self._base = base_url.rstrip("/")
        self.workflow = workflow
        self._models = {"checkpoint": checkpoint, "controlnet": controlnet}
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=min(10.0, request_timeout_s)
        )
        self._max_download = max_download_bytes
        self._reconnect_s = reconnect_s
        self.client_id = f"depth2img-{secrets.token_hex(8)}"
        self.progress: dict[str, float] = {}  # prompt id -> 0..1, from the WebSocket

    @classmethod
    def from_settings(
        cls, session: aiohttp.ClientSession, guard: Guard, settings: Depth2ImgSettings
    ) -> ComfyUIBackend:
        """Raises :class:`WorkflowError` for a workflow file that cannot be used (at start-up)."""
        assert settings.comfyui_url is not None
        return cls(
            session,
            guard,
            base_url=settings.comfyui_url,
            workflow=load(settings.comfyui_workflow),
            checkpoint=settings.comfyui_checkpoint,
            controlnet=settings.comfyui_controlnet,
            request_timeout_s=settings.request_timeout_s,
            max_download_bytes=settings.max_output_bytes,
        )

    # --- the Backend protocol --------------------------------------------------------------------

    async def stage_source(self, url: str | None, load_source: LoadSource) -> str:
        """Upload the kept picture to ComfyUI's input folder; returns the name LoadImage takes."""
        data, mime = await load_source()
        form = aiohttp.FormData()
        extension = "png" if mime == "image/png" else "jpg"
        form.add_field(
            "image", data, filename=f"depth2img-{secrets.token_hex(8)}.{extension}", content_type=mime
        )
        form.add_field("type", "input")
        status, body = await self._request("POST", "/upload/image", data=form)
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise self._trouble(status, "the picture upload was refused")
        sub = body.get("subfolder")
        return f"{sub}/{body['name']}" if isinstance(sub, str) and sub else str(body["name"])

    async def submit(self, params: GenerationParams, source: str) -> Answer:
        seed = params.seed if params.seed is not None else random.randrange(2**32)  # noqa: S311
        values = {
            "image": source,
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt or "",
            "seed": seed,
            "steps": params.steps or DEFAULTS["steps"],
            "guidance": params.guidance if params.guidance is not None else DEFAULTS["guidance"],
            "strength": params.strength if params.strength is not None else DEFAULTS["strength"],
            "samples": params.samples,
            **self._models,
        }
        graph = fill(self.workflow, values)
        status, body = await self._request(
            "POST", "/prompt", json_body={"prompt": graph, "client_id": self.client_id}
        )
        if status == 400:
            log.error(
                "ComfyUI refused the bot's workflow: " + refusal_line(body),
                extra={"workflow": self.workflow.source},
            )
            raise ServiceMisconfigured("ComfyUI refused the workflow", status=status)
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if status != 200 or not isinstance(prompt_id, str) or not prompt_id:
            raise self._trouble(status, "no prompt id")
        return Answer(done=False, remote_id=prompt_id, seed=seed)

    async def poll(self, remote_id: str, poll_url: str | None) -> Answer:
        entry = await self._history(remote_id)
        if entry is None:
            where = await self._queue_place(remote_id)
            if where is None:
                entry = await self._history(remote_id)  # (it may have ended between the two questions)
                if entry is None:
                    raise JobLost("ComfyUI has no such prompt (it restarted?)")
            else:
                progress = self.progress.get(remote_id) if where == "running" else None
                return Answer(
                    done=False,
                    remote_id=remote_id,
                    progress=progress if progress is not None else (0.0 if where == "running" else None),
                )
        return self._finished(remote_id, entry)

    async def download(self, url: str) -> list[bytes]:
        return await download(
            self._session, self._guard, url, timeout=self._timeout, max_bytes=self._max_download
        )

    async def cancel(self, remote_id: str) -> None:
        try:
            where = await self._queue_place(remote_id)
            if where == "pending":
                await self._request("POST", "/queue", json_body={"delete": [remote_id]})
            elif where == "running":
                await self._request("POST", "/interrupt", json_body={"prompt_id": remote_id})
        except Depth2ImgError as exc:
            log.info("ComfyUI cancel not sent", extra={"error": type(exc).__name__})

    async def upkeep(self) -> None:
        """Check the server and the workflow's nodes once (the owner's log), then follow the WebSocket
        for progress."""
        for name, ok, detail in await self.check():
            if ok:
                log.info(f"{name}: {detail}")
            else:
                log.error(detail)
        while True:
            try:
                await self._follow()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("ComfyUI WebSocket dropped", extra={"error": type(exc).__name__})
            except Exception as exc:  # (a frame read wrongly: progress must not stop for good)
                log.warning("ComfyUI WebSocket not readable", extra={"error": type(exc).__name__})
            await asyncio.sleep(self._reconnect_s)

    async def close(self) -> None:
        await self._session.close()

    # --- the owner's checks ------------------------------------------------------------------------

    async def check(self) -> list[CheckLine]:
        """That ComfyUI answers (``/system_stats``) and has every node the workflow uses (``/object_info``)."""
        try:
            status, stats = await self._request("GET", "/system_stats")
            if status != 200 or not isinstance(stats, dict):
                raise self._trouble(status, "no system stats")
            status, nodes = await self._request("GET", "/object_info")
        except Depth2ImgError as exc:
            return [
                (
                    "ComfyUI",
                    False,
                    f"no answer at COMFYUI_URL ({type(exc).__name__}): start ComfyUI, or fix the URL",
                )
            ]
        found = stats.get("system") if isinstance(stats, dict) else None
        system: dict[str, Any] = found if isinstance(found, dict) else {}
        lines: list[CheckLine] = [("ComfyUI", True, f"version {system.get('comfyui_version', '?')} answers")]
        missing = sorted(self.workflow.node_types - (set(nodes) if isinstance(nodes, dict) else set()))
        if missing:
            lines.append(
                (
                    "ComfyUI nodes",
                    False,
                    "ComfyUI lacks nodes the workflow uses: "
                    + ", ".join(missing)
                    + " (DepthAnythingV2Preprocessor "
                    "comes with the comfyui_controlnet_aux custom nodes; install them with ComfyUI-Manager, or "
                    "point COMFYUI_WORKFLOW at a workflow without them)",
                )
            )
        else:
            lines.append(("ComfyUI nodes", True, f"every node of {self.workflow.source} is installed"))
        return lines

    # --- internals ---------------------------------------------------------------------------------

    def _finished(self, remote_id: str, entry: dict[str, Any]) -> Answer:
        found = entry.get("status")
        status: dict[str, Any] = found if isinstance(found, dict) else {}
        if status.get("status_str") != "success":
            said = execution_error(status)
            log.warning("ComfyUI could not run the job: " + said, extra={"prompt_id": remote_id})
            raise JobFailed(said, job_id=remote_id)
        pictures, maps = self._output_urls(entry)
        if not pictures:
            raise JobFailed("the workflow saved no picture", job_id=remote_id)
        urls = pictures + maps
        self.progress.pop(remote_id, None)
        return Answer(done=True, remote_id=remote_id, output_urls=tuple(urls), seed=self._seed_of(entry))

    def _output_urls(self, entry: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The ``/view`` URLs of the pictures and of the depth maps the finished ``entry`` lists, the
        first :data:`MAX_OUTPUT_URLS` of each; what is not shaped as ComfyUI shapes it is passed over (a
        node's outputs that are not an object, a file name no URL can carry)."""
        pictures: list[str] = []
        maps: list[str] = []
        depth_nodes = depth_map_nodes(entry)
        listed = entry.get("outputs")
        outputs: dict[str, Any] = listed if isinstance(listed, dict) else {}
        for node_id in sorted(outputs, key=lambda k: (len(str(k)), str(k))):
            node = outputs[node_id]
            images = node.get("images") if isinstance(node, dict) else None
            kept = maps if str(node_id) in depth_nodes else pictures
            for image in images if isinstance(images, list) else []:
                if len(kept) == MAX_OUTPUT_URLS:
                    break
                if not (isinstance(image, dict) and image.get("type") == "output"):
                    continue
                name, sub = image.get("filename"), image.get("subfolder") or ""
                if isinstance(name, str) and isinstance(sub, str) and is_clean(name) and is_clean(sub):
                    query = urlencode({"filename": name, "subfolder": sub, "type": "output"})
                    kept.append(f"{self._base}/view?{query}{DEPTH_MAP if kept is maps else ''}")
        return pictures, maps

    def _seed_of(self, entry: dict[str, Any]) -> int | None:
        place = self.workflow.seed_at()
        prompt = entry.get("prompt")
        if (
            place is None
            or not isinstance(prompt, list)
            or len(prompt) < 3
            or not isinstance(prompt[2], dict)
        ):
            return None
        node = prompt[2].get(place[0])
        inputs = node.get("inputs") if isinstance(node, dict) else None
        seed = inputs.get(place[1]) if isinstance(inputs, dict) else None
        return storable_seed(seed)

    async def _history(self, prompt_id: str) -> dict[str, Any] | None:
        status, body = await self._request("GET", f"/history/{quote(prompt_id, safe='')}")
        if status != 200 or not isinstance(body, dict):
            raise self._trouble(status, "no history")
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def _queue_place(self, prompt_id: str) -> str | None:
        status, body = await self._request("GET", "/queue")
        if status != 200 or not isinstance(body, dict):
            raise self._trouble(status, "no queue")
        for where in ("running", "pending"):
            listed = body.get(f"queue_{where}")
            for item in listed if isinstance(listed, list) else []:
                if isinstance(item, list) and len(item) > 1 and item[1] == prompt_id:
                    return where
        return None

    async def _follow(self) -> None:
        url = self._base.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        async with self._session.ws_connect(url, heartbeat=30, max_msg_size=1024 * 1024) as ws:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue  # (binary frames are previews)
                try:
                    frame = json.loads(message.data)
                except (ValueError, RecursionError):
                    continue
                data = frame.get("data") if isinstance(frame, dict) else None
                if not isinstance(data, dict) or not isinstance(data.get("prompt_id"), str):
                    continue
                if frame.get("type") == "progress":
                    done = progress_fraction(data.get("value"), data.get("max"))
                    if done is not None:
                        self.progress[data["prompt_id"]] = done
                if len(self.progress) > 1000:
                    self.progress.pop(next(iter(self.progress)))

    async def _request(
        self, method: str, path: str, *, json_body: Any = None, data: aiohttp.FormData | None = None
    ) -> tuple[int, Any]:
        """One call to ComfyUI (every route answers under its root): the status and the JSON, if any
        (``/interrupt`` and ``/queue`` answer with an empty body)."""
        status, raw = await fetch_capped(
            self._session,
            method,
            self._base + path,
            cap=_MAX_ANSWER,
            what="ComfyUI",
            json=json_body,
            data=data,
            timeout=self._timeout,
        )
        if raw is None:
            raise MalformedResponseError("answer too large", status=status)
        text = b"".join(raw)
        if not text.strip():
            return status, None
        try:
            return status, json.loads(text)
        except (ValueError, RecursionError):
            if status >= 500:
                raise ServerError(f"HTTP {status}", status=status) from None
            return status, None

    @staticmethod
    def _trouble(status: int, what: str) -> Depth2ImgError:
        if status >= 500:
            return ServerError(f"HTTP {status}: {what}", status=status)
        if status == 404:
            return ServiceMisconfigured(f"HTTP 404: {what} (is COMFYUI_URL a ComfyUI server?)", status=status)
        return MalformedResponseError(f"HTTP {status}: {what}", status=status)


__all__ = ["ComfyUIBackend", "WorkflowError"]
