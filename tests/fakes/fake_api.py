"""A fake of the ModelsLab / stablediffusionapi.com API on 127.0.0.1, built from
``shared/docs/api-contract.md`` §9. Every scenario of the contract's test-double table can be played,
chosen per test with :attr:`FakeModelsLab.scenario`; every request is recorded.

Routes: ``POST /api/v5/depth2img``, ``POST /api/v5/controlnet``, ``POST /api/v3/fetch/{id}``,
``POST /api/v6/image_editing/fetch/{id}``, ``POST /api/v6/images/fetch/{id}``,
``POST /api/v6/base64_to_url``, ``POST /api/v6/image_editing/base64_to_url``,
``POST /api/v3/base64_crop``, ``POST /api/wallet_balance`` and ``GET /files/{name}``.

What ModelsLab serves today (``shared/docs/backends.md``): ``depth2img_dead`` plays the retired
``v5/depth2img`` (§1.1: HTTP 200 ``{"status": "failed", "id": "", "messege": "Failed, Try Again",
"output": ""}`` in about a second; or, with ``"404"``/``"405"``, the route gone); ``v5/controlnet``
refuses a request without what the docs' depth example sends (§1.3, §2.1: ``model_id``,
``controlnet_model``, ``controlnet_type``, ``init_image``, ``prompt``; the numbers may be strings);
``base64_outputs`` serves each output as a URL ending in ``.base64`` whose body is the picture in
base64 without its padding (§1.4); ``wallet_balance`` answers as documented in §1.5.

The ``transform`` scenario is the demo's stand-in for the real model: it downloads ``init_image``
and returns a visibly transformed copy, labelled SIMULATED.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from PIL import Image, ImageDraw, ImageOps

from tests.fakes.server import LocalServer

# The scenarios of the contract's table (§9), by number and name.
SCENARIOS = {
    1: "success",
    2: "success_list",
    3: "queued",
    4: "queued_then_failed",
    5: "queued_forever",
    6: "processing_without_id",
    7: "invalid_key_200",
    8: "invalid_key_401",
    9: "no_credits_402",
    10: "rate_limited",
    11: "validation_object",
    12: "legacy_messege",
    13: "unfetchable_image",
    14: "server_error_then_success",
    15: "bad_gateway_html",
    16: "success_string_id",
    17: "output_404",
    18: "multiple_samples",
    22: "slow",
}
EXTRA_SCENARIOS = {
    "no_credits_200",
    "transform",
    "server_error_always",
    "output_not_image",
    "output_huge",
    "reset",  # the connection drops in the middle of the answer
    "stall",  # the answer starts, then never ends
    "output_reset",  # the output download drops mid-body
    "mixed",  # each submission plays the next scenario of MIXED
    "queued_surrogate",  # queued, its fetch_result holding a lone surrogate ("\\ud800", valid JSON)
}
MIXED = [
    "success",
    "queued",
    "success_list",
    "rate_limited",
    "queued_then_failed",
    "output_404",
    "bad_gateway_html",
    "success_string_id",
    "invalid_key_200",
    "reset",
]


# What a service having a bad moment answers (backends.md §1: 5xx pages from its proxy, 429 with and
# without retry_after, connections dropped; and what a broken one might: an answer that is no JSON).
FAULTS = {
    "500",  # {"status": "error", "message": "Server Error"} with HTTP 500
    "502_html",  # the proxy's HTML error page
    "503_empty",  # a 503 with no body
    "429",  # a JSON 429 with a short retry_after
    "429_long",  # a JSON 429 whose retry_after (20 s) is past what a submission waits out
    "429_header",  # a 429 with only a Retry-After header (1 s)
    "reset",  # the connection drops mid-answer
    "garbage",  # HTTP 200 with text that is not JSON
    "deep",  # HTTP 200 with JSON nested 100 000 deep
}


def make_png(width: int = 512, height: int = 512, *, seed: int = 0, noise: bool = False) -> bytes:
    """A deterministic test picture: a gradient with a few shapes (or noise, to make it large)."""
    if noise:
        import os

        img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        horizontal = Image.linear_gradient("L").rotate(90).resize((width, height))
        vertical = Image.linear_gradient("L").resize((width, height))
        img = Image.merge("RGB", (horizontal, vertical, Image.new("L", (width, height), (seed * 40) % 256)))
        draw = ImageDraw.Draw(img)
        draw.ellipse(
            (width // 4, height // 4, width * 3 // 4, height * 3 // 4), outline=(255, 255, 255), width=6
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A valid PNG of ``width`` x ``height`` black pixels (1 bit each) that weighs a few kilobytes and
    decodes to gigabytes: 400 megapixels by default. Written chunk by chunk, never decoded here."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def simulate_depth_map(data: bytes) -> bytes:
    """A stand-in for a depth preprocessor's output: the picture in grey, blurred (what a self-hosted
    service sends back as the depth map it used)."""
    with Image.open(io.BytesIO(data)) as src:
        img = ImageOps.grayscale(ImageOps.exif_transpose(src))
    img.thumbnail((512, 512))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def simulate_depth2img(data: bytes, prompt: str) -> bytes:
    """The demo's stand-in for the model: posterise + tint + label, so the change is obvious."""
    with Image.open(io.BytesIO(data)) as src:
        img = ImageOps.exif_transpose(src).convert("RGB")
    img.thumbnail((1024, 1024))
    img = ImageOps.posterize(img, 3)
    img = ImageOps.colorize(
        ImageOps.grayscale(img), black=(20, 10, 60), mid=(200, 80, 140), white=(255, 230, 160)
    )
    draw = ImageDraw.Draw(img)
    label = f"SIMULATED depth2img: {prompt[:40]}"
    draw.rectangle((0, 0, img.width, 22), fill=(0, 0, 0))
    draw.text((6, 5), label, fill=(255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Submission:
    path: str
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)  # when the API received it
    raw_path: str = ""  # as sent, percent-encoding and query included


@dataclass
class FakeModelsLab(LocalServer):
    """Start with ``await api.start()``; the bot's ``SD_API_BASE_URL`` is :attr:`base_url`."""

    api_key: str = "test-api-key-0123456789"
    scenario: str = "success"
    latency_s: float = 0.0  # simulated generation time before the submit answer
    eta_s: float = 0.05  # eta reported by processing answers
    polls_before_done: int = 2  # scenario 3: processing answers before success
    slow_s: float = 30.0  # scenario 22: how long to hold the connection
    output_png: bytes = field(default_factory=make_png)
    submissions: list[Submission] = field(default_factory=list)
    fetches: list[Submission] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    uploads: list[Submission] = field(default_factory=list)
    max_in_flight: int = 0
    legacy_uploads_only: bool = False  # scenario 21: only the v3 base64_crop route exists
    fetch_body: bytes | None = None  # when set, every fetch answers 200 with these bytes as its JSON
    fetch_redirect: str | None = None  # when set, every fetch answers 307 to this URL
    compress: bool = (
        False  # answers and files sent gzip-compressed (Content-Encoding, correct Content-Length)
    )
    retry_after_header: str | None = (
        None  # with rate_limited: a Retry-After header and no retry_after in the body
    )
    redirects: dict[str, str] = field(default_factory=dict)  # file name → where GET /files/{name} redirects
    error_message: str = "Something is wrong with this request."  # what the error_message scenario says
    output_count: int | None = None  # when set, every finished job has this many outputs (e.g. 10)
    # Bad moments of the API, played one per request before it answers normally (FAULTS):
    depth2img_dead: str | None = None  # "failed" (the signature), "404" or "405": v5/depth2img is retired
    base64_outputs: bool = False  # outputs as .base64 URLs of unpadded base64 text
    balance: float = 43.6  # what wallet_balance answers, in USD
    balance_checks: int = 0
    fetch_faults: list[str] = field(default_factory=list)  # on polls
    file_faults: list[str] = field(default_factory=list)  # on output downloads

    def __post_init__(self) -> None:
        self._ids = itertools.count(13481504)
        self._jobs: dict[str, dict[str, Any]] = {}
        self._files: dict[str, bytes] = {}
        LocalServer.__init__(self)
        self._in_flight = 0
        self._attempts = 0
        self._mixed = 0
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        r = self.app.router
        r.add_post("/api/v5/depth2img", self._submit)
        r.add_post("/api/v5/controlnet", self._submit)
        for prefix in ("/api/v3/fetch", "/api/v6/image_editing/fetch", "/api/v6/images/fetch"):
            r.add_post(prefix + "/{id}", self._fetch)
        r.add_post("/api/v6/base64_to_url", self._b64)
        r.add_post("/api/v6/image_editing/base64_to_url", self._b64)
        r.add_post("/api/v3/base64_crop", self._b64_crop)
        r.add_post("/api/wallet_balance", self._wallet)
        r.add_get("/files/{name}", self._file)
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        await LocalServer.stop(self)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def file_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"

    def add_file(self, name: str, data: bytes) -> str:
        self._files[name] = data
        return self.file_url(name)

    # --- helpers -----------------------------------------------------------------------------------

    def _json(self, data: Any, status: int = 200) -> web.Response:
        response = web.json_response(data, status=status)
        if self.compress:
            response.enable_compression(web.ContentCoding.gzip)
        return response

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def _outputs(self, prefix: str, count: int) -> list[str]:
        count = self.output_count or count
        if self.base64_outputs:
            text = base64.b64encode(self.output_png).rstrip(b"=")
            return [self.add_file(f"{prefix}-{i}.base64", text) for i in range(count)]
        return [self.add_file(f"{prefix}-{i}.png", self.output_png) for i in range(count)]

    @staticmethod
    def _controlnet_refusal(body: dict[str, Any]) -> str | None:
        """What v5/controlnet's validation says about a request (its openapi.json: numbers as numbers or
        numeric strings; width and height within 1024 and multiples of 8; a ControlNet type it knows)."""
        for name in ("width", "height", "samples", "num_inference_steps"):
            value = body.get(name)
            if value is None:
                continue
            try:
                number = int(value)
            except (TypeError, ValueError):
                return f"The {name} must be an integer."
            if name in ("width", "height") and (number > 1024 or number % 8 or number < 64):
                return f"The {name} must be a multiple of 8 from 64 to 1024."
        if body.get("controlnet_type") not in (None, "depth", "canny", "openpose", "normal", "seg", "mlsd"):
            return "The selected controlnet type is invalid."
        if body.get("auto_hint") not in (None, "yes", "no"):
            return "The auto hint must be yes or no."
        return None

    async def _wallet(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.balance_checks += 1
        if body is None or body.get("key") != self.api_key:
            return self._json({"status": "error", "message": "Invalid API key"}, 401)
        return self._json({"status": "success", "data": {"balance": self.balance, "currency": "USD"}})

    # --- routes ------------------------------------------------------------------------------------

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        if body is None:
            return self._json({"status": "error", "message": "Invalid JSON"}, 400)
        self.submissions.append(Submission(request.path, body, raw_path=request.raw_path))
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            return await self._answer_submit(body, request)
        finally:
            self._in_flight -= 1

    async def _answer_submit(self, body: dict[str, Any], request: web.Request) -> web.StreamResponse:
        s = self.scenario
        if s == "mixed":
            s = MIXED[self._mixed % len(MIXED)]
            self._mixed += 1
        if body.get("key") != self.api_key or s == "invalid_key_401":
            return self._json({"status": "error", "message": "Invalid API key"}, 401)
        if request.path.endswith("/v5/depth2img") and self.depth2img_dead:
            if self.depth2img_dead in ("404", "405"):
                return web.Response(status=int(self.depth2img_dead), text="Not Found")
            await asyncio.sleep(0.05)
            return self._json({"status": "failed", "id": "", "messege": "Failed, Try Again", "output": ""})
        required = ("init_image", "prompt")
        if request.path.endswith("/v5/controlnet"):
            required += ("model_id", "controlnet_model", "controlnet_type")
            refused = self._controlnet_refusal(body)
            if refused:
                return self._json({"status": "error", "messege": refused})
        missing = [f for f in required if not body.get(f)]
        if missing:
            return self._json(
                {"status": "error", "message": {f: [f"The {f} field is required."] for f in missing}}
            )
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        job = str(next(self._ids))
        try:
            samples = int(body.get("samples", 1))
        except (TypeError, ValueError):
            samples = 1
        if s == "success":
            return self._json(
                {
                    "status": "success",
                    "generationTime": 1.32,
                    "id": int(job),
                    "output": self._outputs(f"a{job}", 1)[0],
                }
            )
        if s == "success_list":
            urls = self._outputs(f"a{job}", 1)
            return self._json(
                {
                    "status": "success",
                    "generationTime": 2.9,
                    "id": int(job),
                    "output": urls,
                    "proxy_links": urls,
                    "meta": {"seed": 1793745243, "W": 512, "H": 512},
                }
            )
        if s in ("queued", "queued_then_failed", "queued_forever"):
            self._jobs[job] = {"polls": 0, "samples": samples, "scenario": s}
            return self._json(
                {
                    "status": "processing",
                    "tip": "for faster speed, keep resolution upto 512x512",
                    "eta": self.eta_s,
                    "messege": "Try to fetch request after given estimated time",
                    "fetch_result": f"http://127.0.0.1:{self.port}/api/v3/fetch/{job}",
                    "id": int(job),
                    "output": [],
                    "future_links": [self.file_url(f"b{job}-0.png")],
                    "meta": {},
                }
            )
        if s == "queued_surrogate":  # a queued answer whose fetch_result holds a lone surrogate
            self._jobs[job] = {"polls": 0, "samples": samples, "scenario": "queued"}
            text = (
                json.dumps({"status": "processing", "eta": self.eta_s, "id": int(job), "output": []})[:-1]
                + f', "fetch_result": "http://127.0.0.1:{self.port}/api/v3/fetch/{job}\\ud800", "tip": "\\ud800"}}'
            )
            return web.Response(text=text, content_type="application/json")
        if s == "processing_without_id":
            return self._json({"status": "processing"})
        if s == "invalid_key_200":
            return self._json({"status": "error", "message": "Invalid API key"})
        if s == "no_credits_402":
            return self._json(
                {"status": "error", "message": "Insufficient credits. Please add more credits to continue."},
                402,
            )
        if s == "no_credits_200":
            return self._json(
                {"status": "error", "message": "Insufficient credits. Please add more credits to continue."}
            )
        if s == "rate_limited":
            if self.retry_after_header is not None:
                response = self._json(
                    {"status": "error", "message": "Rate limit exceeded. Maximum 5 queued requests allowed."},
                    429,
                )
                response.headers["Retry-After"] = self.retry_after_header
                return response
            return self._json(
                {
                    "status": "error",
                    "message": "Rate limit exceeded. Maximum 5 queued requests allowed.",
                    "retry_after": 30,
                },
                429,
            )
        if s == "validation_object":
            return self._json(
                {"status": "error", "message": {"init_image": ["The init image field is required."]}}
            )
        if s == "error_message":  # a validation error whose text the API writes itself
            return self._json({"status": "error", "message": self.error_message}, 400)
        if s == "legacy_messege":
            return self._json({"status": "error", "messege": "prompt is required"})
        if s == "unfetchable_image":
            return self._json({"status": "error", "message": "Unable to fetch image from provided URL"})
        if s in ("server_error_then_success", "server_error_always"):
            self._attempts += 1
            if s == "server_error_always" or self._attempts == 1:
                return self._json(
                    {"status": "error", "message": "Internal server error. Please try again."}, 500
                )
            return self._json(
                {
                    "status": "success",
                    "generationTime": 1.32,
                    "id": int(job),
                    "output": self._outputs(f"a{job}", 1)[0],
                }
            )
        if s == "bad_gateway_html":
            return web.Response(status=502, text="<html>Bad gateway</html>", content_type="text/html")
        if s == "success_string_id":
            return self._json(
                {"status": "success", "id": "abc123-def456", "output": self._outputs(f"c{job}", 1)}
            )
        if s == "output_404":
            return self._json(
                {
                    "status": "success",
                    "generationTime": 1.0,
                    "id": int(job),
                    "output": self.file_url("missing-0.png"),
                }
            )
        if s == "output_not_image":
            url = self.add_file(f"n{job}-0.png", b"<html>this is not an image</html>")
            return self._json({"status": "success", "id": int(job), "output": url})
        if s == "output_huge":
            url = self.add_file(f"h{job}-0.png", make_png(1400, 1400, noise=True))
            return self._json({"status": "success", "id": int(job), "output": url})
        if s == "multiple_samples":
            return self._json(
                {
                    "status": "success",
                    "generationTime": 2.0,
                    "id": int(job),
                    "output": self._outputs(f"m{job}", samples),
                }
            )
        if s == "slow":
            await asyncio.sleep(self.slow_s)
            return self._json({"status": "success", "id": int(job), "output": self._outputs(f"s{job}", 1)})
        if s == "transform":
            return await self._transform(job, body)
        if s in ("reset", "stall"):
            return await self._broken(request, stall=s == "stall")
        if s == "output_reset":
            return self._json({"status": "success", "id": int(job), "output": self.file_url("reset-0.png")})
        return self._json({"status": "error", "message": f"fake API: unknown scenario {s}"}, 500)

    async def _transform(self, job: str, body: dict[str, Any]) -> web.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(str(body["init_image"])) as resp:
                if resp.status != 200:
                    return self._json(
                        {"status": "error", "message": "Unable to fetch image from provided URL"}
                    )
                data = await resp.read()
            out = await asyncio.to_thread(simulate_depth2img, data, str(body.get("prompt", "")))
        except (aiohttp.ClientError, OSError, ValueError):
            return self._json({"status": "error", "message": "Unable to fetch image from provided URL"})
        url = self.add_file(f"t{job}-0.png", out)
        return self._json(
            {
                "status": "success",
                "generationTime": self.latency_s or 0.01,
                "id": int(job),
                "output": url,
                "meta": {"seed": int(body.get("seed") or 424242)},
            }
        )

    async def _fault(self, request: web.Request, fault: str) -> web.StreamResponse:
        if fault == "500":
            return self._json({"status": "error", "message": "Server Error"}, 500)
        if fault == "502_html":
            return web.Response(
                status=502, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        if fault == "503_empty":
            return web.Response(status=503)
        if fault == "429":
            return self._json({"status": "error", "message": "Rate limit exceeded", "retry_after": 0.05}, 429)
        if fault == "429_long":
            return self._json({"status": "error", "message": "Rate limit exceeded", "retry_after": 20}, 429)
        if fault == "429_header":
            return web.Response(status=429, text="Too Many Requests", headers={"Retry-After": "1"})
        if fault == "reset":
            return await self._broken(request, stall=False)
        if fault == "garbage":
            return web.Response(text="upstream connect error or disconnect/reset before headers", status=200)
        if fault == "deep":
            return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")
        raise ValueError(f"unknown fault {fault!r}")

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request) or {}
        job = request.match_info["id"]
        self.fetches.append(Submission(request.path, body, raw_path=request.raw_path))
        if self.fetch_faults:
            return await self._fault(request, self.fetch_faults.pop(0))
        if self.fetch_redirect is not None:  # e.g. a 307, which would re-POST the key elsewhere
            return web.Response(status=307, headers={"Location": self.fetch_redirect})
        if self.fetch_body is not None:
            return web.Response(body=self.fetch_body, content_type="application/json")
        if body.get("key") != self.api_key:
            return self._json({"status": "error", "message": "Invalid API key"}, 401)
        state = self._jobs.get(job)
        if state is None:
            return self._json({"status": "error", "message": "Request not found"}, 404)
        state["polls"] += 1
        processing = {
            "status": "processing",
            "message": "Request is still being processed",
            "output": "",
            "tip": "for faster processing, use a dedicated server",
        }
        scenario = state.get("scenario", self.scenario)
        if scenario == "queued_forever" or state["polls"] <= self.polls_before_done:
            if scenario == "queued_then_failed" and state["polls"] >= 1:
                return self._json(
                    {
                        "status": "failed",
                        "id": int(job),
                        "message": "Processing failed: Invalid input dimensions",
                    }
                )
            return self._json(processing)
        return self._json(
            {"status": "success", "id": int(job), "output": self._outputs(f"b{job}", state["samples"])}
        )

    async def _b64(self, request: web.Request) -> web.Response:
        if self.legacy_uploads_only:
            return web.Response(status=404, text="Not Found")
        body = await self._body(request) or {}
        self.uploads.append(Submission(request.path, body))
        if body.get("key") != self.api_key:
            return self._json({"status": "error", "message": "Invalid API key"}, 401)
        data_uri = body.get("base64_string") or body.get("init_image") or ""
        try:
            raw = base64.b64decode(str(data_uri).split(",", 1)[-1], validate=True)
        except ValueError:
            return self._json({"status": "error", "message": "Invalid base64 string"}, 400)
        if len(raw) > 5 * 1024 * 1024:
            return self._json({"status": "error", "message": "File size exceeds 5MB"})
        job = next(self._ids)
        return self._json({"status": "success", "id": job, "output": [self.add_file(f"up{job}.png", raw)]})

    async def _b64_crop(self, request: web.Request) -> web.Response:
        body = await self._body(request) or {}
        self.uploads.append(Submission(request.path, body))
        raw = base64.b64decode(str(body.get("image", "")).split(",", 1)[-1] or b"")
        job = next(self._ids)
        return self._json(
            {
                "status": "success",
                "messege": "image uploaded",
                "link": self.add_file(f"up{job}.png", raw),
                "request_id": job,
            }
        )

    async def _broken(self, request: web.Request, *, stall: bool) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "application/json", "Content-Length": "4000"}
        )
        await resp.prepare(request)
        await resp.write(b'{"status": "success", "output": ["http://127.0.0.1/fi')
        if stall:
            await asyncio.sleep(self.slow_s)
        if request.transport is not None:
            request.transport.close()
        return resp

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.downloads.append(name)
        if self.file_faults:
            return await self._fault(request, self.file_faults.pop(0))
        if name.startswith("reset-"):
            return await self._broken(request, stall=False)
        if name in self.redirects:
            return web.Response(status=302, headers={"Location": self.redirects[name]})
        if name.startswith("endless-"):  # a body without Content-Length that never ends
            resp = web.StreamResponse(headers={"Content-Type": "image/png"})
            await resp.prepare(request)
            with contextlib.suppress(ConnectionError):
                for _ in range(100_000):
                    await resp.write(b"\x89PNG" + b"\0" * 65532)
            return resp
        data = self._files.get(name)
        if data is None:
            return web.Response(status=404, text="Not Found")
        kind = "text/plain" if name.endswith(".base64") else "image/png"
        response = web.Response(body=data, content_type=kind)
        if self.compress:
            response.enable_compression(web.ContentCoding.gzip)
        return response
