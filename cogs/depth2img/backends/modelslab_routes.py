"""ModelsLab's two depth routes and what each is sent (``shared/docs/backends.md`` §1.1, §1.3, §2.1).

* ``v5/depth2img``: the endpoint this bot was made for (``api-contract.md`` §2). The vendor's own test
  harness saw it answer every run with HTTP 200 ``{"status": "failed", "id": "", "messege": "Failed,
  Try Again", "output": ""}`` (backends.md §1.1): the *dead-endpoint signature*.
* ``v5/controlnet`` with a depth ControlNet: the documented route for depth-conditioned generation
  today; the docs' own depth example (backends.md §2.1) is followed field by field, including sending
  width, height, samples and steps as strings, as that example does.

Both routes map the member's options the same way. Pure functions: no I/O.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from cogs.depth2img.errors import BadRequestError, Depth2ImgError, JobFailed, MalformedResponseError
from cogs.depth2img.models import GenerationParams

MAX_SIDE = 1024  # the ControlNet route's largest side


class Route(StrEnum):
    DEPTH2IMG = "depth2img"
    CONTROLNET = "controlnet"

    @property
    def path(self) -> str:
        return f"/v5/{self.value}"


def options(params: GenerationParams) -> dict[str, Any]:
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


def fit_size(width: int, height: int) -> tuple[int, int]:
    """The source's size for the ControlNet route: at most 1024 a side (keeping the shape), each side
    a multiple of 8, at least 64."""
    scale = min(1.0, MAX_SIDE / max(width, height, 1))
    return tuple(max(64, int(side * scale) // 8 * 8) for side in (width, height))  # type: ignore[return-value]


def body(route: Route, params: GenerationParams, source: str, *, key: str, model_id: str) -> dict[str, Any]:
    """The whole request for ``route``: the key, the source picture (a URL) and the member's options."""
    payload: dict[str, Any] = {"key": key, "init_image": source, **options(params)}
    if route is Route.CONTROLNET:
        payload |= {
            "model_id": model_id,
            "controlnet_model": "depth",
            "controlnet_type": "depth",
            "auto_hint": "yes",
            "guess_mode": "no",
            "base64": "no",
            "samples": str(params.samples),
        }
        if "num_inference_steps" in payload:
            payload["num_inference_steps"] = str(payload["num_inference_steps"])
        if params.width and params.height:
            width, height = fit_size(params.width, params.height)
            payload |= {"width": str(width), "height": str(height)}
    return payload


def is_dead_endpoint(exc: Depth2ImgError) -> bool:
    """Whether the first, synchronous answer to a ``v5/depth2img`` submission is the dead endpoint's:
    ``failed`` without an id (nothing was started, nothing charged), or the route is not there at all
    (404, 405)."""
    if isinstance(exc, JobFailed):
        return exc.job_id is None
    if isinstance(exc, BadRequestError | MalformedResponseError):
        return exc.status in (404, 405)
    return False
