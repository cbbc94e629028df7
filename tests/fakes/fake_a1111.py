"""A fake AUTOMATIC1111 / Forge with the ControlNet extension on 127.0.0.1, from their API as documented
(``shared/docs/backends.md`` §3.1; AUTOMATIC1111 ``modules/api/api.py`` and ``models.py``; Mikubill
sd-webui-controlnet ``internal_controlnet/args.py``, ``scripts/api.py`` and ``tests/web_api/template.py``).

* ``POST /sdapi/v1/img2img``: FastAPI's validation (422 ``{"detail": [...]}`` for a field of the wrong
  type, ``init_images`` missing); the answer once the pictures are made: ``{"images": [base64...],
  "parameters": {...}, "info": "<JSON string>"}``, ``info`` holding ``seed`` and, when the ControlNet
  unit ran, ``extra_generation_params["ControlNet 0"]``. A unit whose model is not in the model list
  fails the request (500) as the extension does, or, with ``forge_silent=True``, is dropped silently
  and the picture made without it (Forge #259, #1414). A detected map follows the results in
  ``images`` unless the unit says ``save_detected_map: false``. ``input_image`` (deprecated) is refused.
* ``GET /sdapi/v1/progress``: ``progress`` 0..1, ``eta_relative``, ``state``; ``POST /sdapi/v1/interrupt``.
* ``GET /controlnet/model_list`` and ``GET /controlnet/module_list``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.fake_api import simulate_depth2img, simulate_depth_map
from tests.fakes.server import LocalServer

_NUMBERS = {
    "denoising_strength": float,
    "cfg_scale": float,
    "steps": int,
    "seed": int,
    "batch_size": int,
    "n_iter": int,
    "width": int,
    "height": int,
}


@dataclass
class FakeA1111(LocalServer):
    models: list[str] = field(default_factory=lambda: ["control_v11f1p_sd15_depth [cfd03158]"])
    modules: list[str] = field(default_factory=lambda: ["none", "depth_midas", "depth_zoe", "canny"])
    step_s: float = 0.05
    steps_default: int = 20
    forge_silent: bool = False
    info_depth: int = 0  # > 0: ``info`` is JSON nested that deep (a hostile server's)
    requests: list[dict[str, Any]] = field(default_factory=list)
    progress_asks: int = 0
    interrupts: int = 0

    def __post_init__(self) -> None:
        LocalServer.__init__(self)
        self._progress = 0.0
        self._busy = asyncio.Lock()
        self._interrupted = False
        self.app = web.Application(client_max_size=256 * 1024 * 1024)
        r = self.app.router
        r.add_post("/sdapi/v1/img2img", self._img2img)
        r.add_get("/sdapi/v1/progress", self._progress_get)
        r.add_post("/sdapi/v1/interrupt", self._interrupt)
        r.add_get("/controlnet/model_list", self._model_list)
        r.add_get("/controlnet/module_list", self._module_list)

    async def _model_list(self, request: web.Request) -> web.Response:
        return web.json_response({"model_list": self.models})

    async def _module_list(self, request: web.Request) -> web.Response:
        return web.json_response({"module_list": self.modules, "module_detail": {}})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _invalid(where: str, message: str) -> web.Response:
        return web.json_response(
            {"detail": [{"loc": ["body", where], "msg": message, "type": "type_error"}]}, status=422
        )

    async def _img2img(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return self._invalid("body", "value is not a valid dict")
        if not isinstance(body, dict):
            return self._invalid("body", "value is not a valid dict")
        images = body.get("init_images")
        if not isinstance(images, list) or not images:
            return self._invalid("init_images", "field required")
        try:
            source = base64.b64decode(str(images[0]).split(",", 1)[-1], validate=True)
        except (binascii.Error, ValueError):
            return web.json_response(
                {"error": "IncorrectPadding", "detail": "", "body": "", "errors": "Invalid encoded image"},
                status=500,
            )
        for name, kind in _NUMBERS.items():
            value = body.get(name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (kind is int and not isinstance(value, int))
            ):
                return self._invalid(name, f"value is not a valid {kind.__name__}")
        units = (((body.get("alwayson_scripts") or {}).get("ControlNet") or {}).get("args")) or []
        applied = []
        for unit in units:
            if not isinstance(unit, dict) or not unit.get("enabled", True):
                continue
            if "input_image" in unit:
                return web.json_response(
                    {
                        "error": "RuntimeError",
                        "detail": "",
                        "errors": "input_image is not supported, use image",
                    },
                    status=500,
                )
            if unit.get("model") not in self.models or unit.get("module") not in self.modules:
                if not self.forge_silent:
                    return web.json_response(
                        {
                            "error": "Exception",
                            "detail": "",
                            "body": "",
                            "errors": f"ControlNet model {unit.get('model')} not found",
                        },
                        status=500,
                    )
                continue
            applied.append(unit)
        self.requests.append(body)
        async with self._busy:
            self._interrupted = False
            steps = int(body.get("steps") or self.steps_default)
            for step in range(steps):
                if self._interrupted:
                    break
                self._progress = step / steps
                await asyncio.sleep(self.step_s)
            self._progress = 0.0
        seed = body.get("seed", -1)
        seed = random.randrange(2**32) if seed in (-1, None) else seed
        picture = base64.b64encode(simulate_depth2img(source, str(body.get("prompt", "")))).decode()
        out = [picture] * int(body.get("batch_size") or 1) * int(body.get("n_iter") or 1)
        depth = base64.b64encode(simulate_depth_map(source)).decode()
        out += [depth for unit in applied if unit.get("save_detected_map", True)]  # the detected maps
        extra = {
            f"ControlNet {n}": f"Module: {u['module']}, Model: {u['model']}, Weight: {u.get('weight', 1)}"
            for n, u in enumerate(applied)
        }
        info = {
            "prompt": body.get("prompt", ""),
            "seed": seed,
            "all_seeds": [seed],
            "extra_generation_params": extra,
        }
        return web.json_response(
            {
                "images": out,
                "parameters": {k: v for k, v in body.items() if k != "init_images"},
                "info": "[" * self.info_depth + "]" * self.info_depth
                if self.info_depth
                else json.dumps(info),
            }
        )

    async def _progress_get(self, request: web.Request) -> web.Response:
        self.progress_asks += 1
        busy = self._busy.locked()
        return web.json_response(
            {
                "progress": self._progress if busy else 0.0,
                "eta_relative": 1.0 if busy else 0.0,
                "state": {
                    "skipped": False,
                    "interrupted": self._interrupted,
                    "job": "",
                    "job_count": int(busy),
                    "sampling_step": 0,
                    "sampling_steps": 0,
                },
                "current_image": None,
                "textinfo": None,
            }
        )

    async def _interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        self._interrupted = True
        return web.json_response({})
