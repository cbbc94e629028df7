"""A fake ComfyUI on 127.0.0.1, built to answer as the real server did in ``shared/docs/comfyui-real/``
(ComfyUI 0.33.0, recorded on a machine like ours; see its README) and as ComfyUI's API is documented
(``shared/docs/backends.md`` §3.2; comfyanonymous/ComfyUI ``server.py``, ``execution.py``).

* ``POST /upload/image``: multipart ``image`` (400 with an empty body without it) ->
  ``{"name", "subfolder", "type": "input"}``;
* ``POST /prompt``: validated as the real server does, against node definitions taken from the
  recording (``comfyui_recorded/object_info_used_nodes.json``; two more from ComfyUI's sources, below):
  unknown node -> 400 ``missing_node_type``; a missing required input, a value not in a list, a number
  out of range, a link to an absent node -> 400 ``prompt_outputs_failed_validation`` with
  ``node_errors``; no SaveImage -> ``prompt_no_outputs``; a body that is not JSON -> 500 plain text;
* one prompt at a time, its frames to the client's WebSocket in the recorded order (``status``,
  ``execution_start``, ``execution_cached``, ``executing`` per node, ``progress`` per sampler step,
  ``executed``, ``execution_success``, ``status``, last ``executing {node: null}``);
* ``GET /history/{id}`` (``{}`` until it ends), ``GET /queue``, ``POST /queue {"delete": [...]}`` and
  ``POST /interrupt`` (200, empty body, no Content-Type), ``GET /view`` (404 empty for a missing file,
  400 for ``../``), ``GET /system_stats``, ``GET /object_info``.

:meth:`forget` plays a restart of ComfyUI: its history and queue are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from tests.fakes.fake_api import simulate_depth2img, simulate_depth_map
from tests.fakes.server import LocalServer

RECORDED = Path(__file__).parent / "comfyui_recorded" / "object_info_used_nodes.json"

# Nodes the recording did not use, from ComfyUI's sources: RepeatLatentBatch (comfy core, nodes.py) and
# DepthAnythingV2Preprocessor (Fannovel16/comfyui_controlnet_aux, node_wrappers/depth_anything_v2.py).
EXTRA_NODES: dict[str, dict[str, Any]] = {
    "RepeatLatentBatch": {
        "input": {
            "required": {"samples": ["LATENT"], "amount": ["INT", {"default": 1, "min": 1, "max": 64}]}
        },
        "output": ["LATENT"],
    },
    "DepthAnythingV2Preprocessor": {
        "input": {
            "required": {"image": ["IMAGE"]},
            "optional": {
                "ckpt_name": [
                    [
                        "depth_anything_v2_vitg.pth",
                        "depth_anything_v2_vitl.pth",
                        "depth_anything_v2_vitb.pth",
                        "depth_anything_v2_vits.pth",
                    ]
                ],
                "resolution": ["INT", {"default": 512, "min": 64, "max": 16384, "step": 64}],
            },
        },
        "output": ["IMAGE"],
    },
}


def _recorded_nodes() -> dict[str, dict[str, Any]]:
    recorded = json.loads(RECORDED.read_text())
    nodes = {name: entry["body"][name] for name, entry in recorded.items() if entry["body"]}
    return nodes | copy.deepcopy(EXTRA_NODES)


@dataclass
class Run:
    prompt_id: str
    number: int
    graph: dict[str, Any]
    client_id: str | None


@dataclass
class FakeComfyUI(LocalServer):
    checkpoints: list[str] = field(default_factory=lambda: ["v1-5-pruned-emaonly.safetensors"])
    controlnets: list[str] = field(default_factory=lambda: ["control_v11f1p_sd15_depth.pth"])
    custom_nodes: bool = True  # comfyui_controlnet_aux installed (its DepthAnythingV2Preprocessor)
    step_s: float = 0.02  # time per sampler step
    fail_at_run: bool = False  # LoadImage fails while running (as with a file that is not a picture)
    prompts: list[dict[str, Any]] = field(default_factory=list)  # every accepted /prompt body
    refused: list[dict[str, Any]] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    interrupts: int = 0
    deleted: list[str] = field(default_factory=list)
    history_asked: list[str] = field(default_factory=list)  # every GET /history/{prompt_id}
    # changes a copy of each history entry before it is sent (a hostile or odd server's answer)
    tamper_history: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        LocalServer.__init__(self)
        self.nodes = _recorded_nodes()
        if not self.custom_nodes:
            self.nodes.pop("DepthAnythingV2Preprocessor")
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[str, bytes] = {}
        self.history: dict[str, dict[str, Any]] = {}
        self.pending: list[Run] = []
        self.running: Run | None = None
        self._numbers = itertools.count()
        self._files = itertools.count(1)
        self._sockets: dict[str, set[web.WebSocketResponse]] = {}
        self._wake = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        r = self.app.router
        r.add_post("/upload/image", self._upload)
        r.add_post("/prompt", self._prompt)
        r.add_get("/history/{id}", self._history)
        r.add_get("/queue", self._queue)
        r.add_post("/queue", self._queue_post)
        r.add_post("/interrupt", self._interrupt_post)
        r.add_get("/view", self._view)
        r.add_get("/system_stats", self._stats)
        r.add_get("/object_info", self._object_info)
        r.add_get("/ws", self._ws)

    async def start(self, port: int = 0) -> None:
        await LocalServer.start(self, port)
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for sockets in self._sockets.values():
            for ws in list(sockets):
                await ws.close()
        await LocalServer.stop(self)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def forget(self) -> None:
        """ComfyUI restarted: nothing of its queue or history is left."""
        self.history.clear()
        self.pending.clear()
        if self.running is not None:
            self._interrupt.set()
        self.running = None

    # --- routes ------------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        name = str(image.filename)
        data = image.file.read()
        subfolder = str(form.get("subfolder") or "")
        key = f"{subfolder}/{name}" if subfolder else name
        if key in self.inputs and self.inputs[key] != data and str(form.get("overwrite")) != "true":
            stem, _, ext = name.rpartition(".")
            name = f"{stem} ({next(self._files)}).{ext}"
            key = f"{subfolder}/{name}" if subfolder else name
        self.inputs[key] = data
        self.uploads.append(key)
        return web.json_response({"name": name, "subfolder": subfolder, "type": "input"})

    async def _prompt(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=500, text="500 Internal Server Error\n\nServer got itself in trouble")
        graph = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(graph, dict) or not graph:
            return self._refuse(
                body,
                {
                    "type": "no_prompt",
                    "message": "No prompt provided",
                    "details": "No prompt provided",
                    "extra_info": {},
                },
                {},
            )
        error, node_errors = self._validate(graph)
        if error is not None:
            return self._refuse(body, error, node_errors)
        run = Run(str(uuid.uuid4()), next(self._numbers), graph, body.get("client_id"))
        self.prompts.append(body)
        self.pending.append(run)
        await self._send(
            run.client_id,
            "status",
            {"status": {"exec_info": {"queue_remaining": len(self.pending) + bool(self.running)}}},
        )
        self._wake.set()
        return web.json_response({"prompt_id": run.prompt_id, "number": run.number, "node_errors": {}})

    def _refuse(self, body: Any, error: dict[str, Any], node_errors: dict[str, Any]) -> web.Response:
        self.refused.append({"body": body, "error": error, "node_errors": node_errors})
        next(self._numbers)  # (refused prompts use numbers too)
        return web.json_response({"error": error, "node_errors": node_errors}, status=400)

    def _validate(self, graph: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        for node_id, node in graph.items():
            kind = node.get("class_type") if isinstance(node, dict) else None
            if kind not in self.nodes:
                return {
                    "type": "missing_node_type",
                    "message": f"Node '{kind}' not found. The custom node may not be installed.",
                    "details": f"Node ID '#{node_id}'",
                    "extra_info": {"node_id": node_id, "class_type": kind, "node_title": kind},
                }, {}
        if not any(n["class_type"] == "SaveImage" for n in graph.values()):
            return {
                "type": "prompt_no_outputs",
                "message": "Prompt has no outputs",
                "details": "",
                "extra_info": {},
            }, {}
        node_errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            errors = self._node_errors(graph, node)
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": [],
                    "class_type": node["class_type"],
                }
        if node_errors:
            return {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
                "extra_info": {},
            }, node_errors
        return None, {}

    def _node_errors(self, graph: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
        spec = self.nodes[node["class_type"]]["input"]
        inputs = node.get("inputs") or {}
        errors: list[dict[str, Any]] = []
        for name, (kind, *rest) in [*spec.get("required", {}).items(), *spec.get("optional", {}).items()]:
            required = name in spec.get("required", {})
            if name not in inputs:
                if required:
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):  # a link: [node id, output index]
                if len(value) != 2 or str(value[0]) not in graph:
                    errors.append(
                        {
                            "type": "exception_during_inner_validation",
                            "message": "link to an absent node",
                            "details": name,
                            "extra_info": {},
                        }
                    )
                continue
            options = rest[0] if rest else {}
            if isinstance(kind, list):
                choices = self._choices(node["class_type"], name, kind)
                if value not in choices:
                    errors.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: '{value}' not in {choices}",
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
            elif kind in ("INT", "FLOAT"):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int | float)
                    or (kind == "INT" and not isinstance(value, int))
                ):
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {kind} value",
                            "details": f"{name}, {value}",
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
                elif "min" in options and value < options["min"]:
                    errors.append(
                        {
                            "type": "value_smaller_than_min",
                            "message": f"Value {value} smaller than min of {options['min']}",
                            "details": name,
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
                elif "max" in options and value > options["max"]:
                    errors.append(
                        {
                            "type": "value_bigger_than_max",
                            "message": f"Value {value} bigger than max of {options['max']}",
                            "details": name,
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
            elif kind == "STRING" and not isinstance(value, str):
                errors.append(
                    {
                        "type": "invalid_input_type",
                        "message": "not a string",
                        "details": name,
                        "extra_info": {"input_name": name},
                    }
                )
        return errors

    def _choices(self, kind: str, name: str, recorded: list[Any]) -> list[Any]:
        if name == "ckpt_name" and kind == "CheckpointLoaderSimple":
            return self.checkpoints
        if name == "control_net_name":
            return self.controlnets
        if kind == "LoadImage" and name == "image":
            return sorted(self.inputs)
        return recorded

    async def _history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["id"]
        self.history_asked.append(prompt_id)
        entry = self.history.get(prompt_id)
        if entry and self.tamper_history is not None:
            entry = copy.deepcopy(entry)
            self.tamper_history(entry)
        return web.json_response({prompt_id: entry} if entry else {})

    def _queue_item(self, run: Run) -> list[Any]:
        outputs = [k for k, n in run.graph.items() if n["class_type"] == "SaveImage"]
        return [run.number, run.prompt_id, run.graph, {"client_id": run.client_id}, outputs]

    async def _queue(self, request: web.Request) -> web.Response:
        running = [self._queue_item(self.running)] if self.running else []
        return web.json_response(
            {"queue_running": running, "queue_pending": [self._queue_item(r) for r in self.pending]}
        )

    async def _queue_post(self, request: web.Request) -> web.Response:
        body = await request.json()
        for prompt_id in body.get("delete") or []:
            self.deleted.append(prompt_id)
            self.pending = [r for r in self.pending if r.prompt_id != prompt_id]
        return web.Response(status=200)

    async def _interrupt_post(self, request: web.Request) -> web.Response:
        raw = await request.read()
        wanted = json.loads(raw).get("prompt_id") if raw.strip() else None
        if self.running is not None and wanted in (None, self.running.prompt_id):
            self.interrupts += 1
            self._interrupt.set()
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.Response:
        name = request.query.get("filename", "")
        if ".." in name or "/" in name:
            return web.Response(status=400)
        kind = request.query.get("type", "output")
        sub = request.query.get("subfolder", "")
        key = f"{sub}/{name}" if sub else name
        data = (self.outputs if kind == "output" else self.inputs).get(key)
        if data is None:
            return web.Response(status=404)
        return web.Response(
            body=data, content_type="image/png", headers={"Content-Disposition": f'filename="{name}"'}
        )

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"system": {"os": "linux", "comfyui_version": "0.33.0", "python_version": "3.11"}, "devices": []}
        )

    async def _object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self.nodes)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client = request.query.get("clientId") or uuid.uuid4().hex
        self._sockets.setdefault(client, set()).add(ws)
        await ws.send_json(
            {
                "type": "status",
                "data": {"status": {"exec_info": {"queue_remaining": len(self.pending)}}, "sid": client},
            }
        )
        try:
            async for _ in ws:
                pass
        finally:
            self._sockets[client].discard(ws)
        return ws

    # --- running prompts, one at a time ------------------------------------------------------------

    async def broadcast(self, text: str) -> None:
        """Send ``text`` as a frame to every WebSocket client (a test's odd or hostile frame)."""
        for sockets in list(self._sockets.values()):
            for ws in list(sockets):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(text)

    @property
    def ws_clients(self) -> int:
        return sum(len(sockets) for sockets in self._sockets.values())

    async def _send(self, client: str | None, kind: str, data: dict[str, Any]) -> None:
        for ws in list(self._sockets.get(client or "", ())):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_json({"type": kind, "data": data})

    async def _work(self) -> None:
        while True:
            while not self.pending:
                self._wake.clear()
                await self._wake.wait()
            run = self.pending.pop(0)
            self.running = run
            self._interrupt.clear()
            try:
                await self._execute(run)
            finally:
                self.running = None

    async def _execute(self, run: Run) -> None:
        pid, client = run.prompt_id, run.client_id
        messages: list[list[Any]] = []

        async def say(kind: str, data: dict[str, Any]) -> None:
            data = {**data, "prompt_id": pid}
            if kind.startswith("execution_"):
                messages.append([kind, {**data, "timestamp": int(time.time() * 1000)}])
            await self._send(client, kind, data)

        await say("execution_start", {})
        await say("execution_cached", {"nodes": []})
        graph = run.graph
        outputs: dict[str, Any] = {}
        status = "success"
        for node_id, node in graph.items():
            if self._interrupt.is_set():
                await say(
                    "execution_interrupted",
                    {"node_id": node_id, "node_type": node["class_type"], "executed": []},
                )
                status = "error"
                break
            await say("executing", {"node": node_id, "display_node": node_id})
            if node["class_type"] == "LoadImage" and self.fail_at_run:
                await say(
                    "execution_error",
                    {
                        "node_id": node_id,
                        "node_type": "LoadImage",
                        "executed": [],
                        "exception_message": "cannot identify image file",
                        "exception_type": "PIL.UnidentifiedImageError",
                        "traceback": [],
                        "current_inputs": {},
                        "current_outputs": {},
                    },
                )
                status = "error"
                break
            if node["class_type"] == "KSampler":
                steps = int(node["inputs"]["steps"])
                for step in range(1, steps + 1):
                    if self._interrupt.is_set():
                        break
                    await asyncio.sleep(self.step_s)
                    await self._send(
                        client, "progress", {"value": step, "max": steps, "prompt_id": pid, "node": node_id}
                    )
            if node["class_type"] == "SaveImage":
                images = self._pictures(graph, node)
                outputs[node_id] = {"images": images}
                await say(
                    "executed", {"node": node_id, "display_node": node_id, "output": {"images": images}}
                )
        if status == "success":
            await say("execution_success", {})
        if pid not in self.history and self.running is run:
            self.history[pid] = {
                "prompt": self._queue_item(run),
                "outputs": outputs if status == "success" else {},
                "status": {"status_str": status, "completed": status == "success", "messages": messages},
                "meta": {},
            }
        await self._send(client, "status", {"status": {"exec_info": {"queue_remaining": len(self.pending)}}})
        await self._send(client, "executing", {"node": None, "prompt_id": pid})

    def _pictures(self, graph: dict[str, Any], save: dict[str, Any]) -> list[dict[str, str]]:
        prefix = str(save["inputs"].get("filename_prefix", "ComfyUI"))
        fed_by = graph.get(str(save["inputs"]["images"][0]), {}).get("class_type")
        load = next(n for n in graph.values() if n["class_type"] == "LoadImage")
        source = self.inputs[load["inputs"]["image"]]
        prompt = next(
            (n["inputs"]["text"] for n in graph.values() if n["class_type"] == "CLIPTextEncode"), ""
        )
        amount = next(
            (int(n["inputs"]["amount"]) for n in graph.values() if n["class_type"] == "RepeatLatentBatch"), 1
        )
        if fed_by == "DepthAnythingV2Preprocessor":  # the depth map itself, once
            amount, picture = 1, simulate_depth_map(source)
        else:
            picture = simulate_depth2img(source, str(prompt))
        with Image.open(io.BytesIO(picture)) as img:
            img.load()
        images = []
        for _ in range(amount):
            name = f"{prefix}_{next(self._files):05d}_.png"
            self.outputs[name] = picture
            images.append({"filename": name, "subfolder": "", "type": "output"})
        return images
