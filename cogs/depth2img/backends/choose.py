"""The image service the owner chose (``IMAGE_BACKEND``), built on the extension's guarded session."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import aiohttp

from cogs.depth2img.config import Depth2ImgSettings

from .base import Backend
from .guard import Guard

log = logging.getLogger(__name__)

ROUTE_KEY = "modelslab.route"  # the ModelsLab route SD_ENDPOINT=auto learnt (kept in the ledger)


async def build_backend(
    settings: Depth2ImgSettings,
    session: aiohttp.ClientSession,
    guard: Guard,
    *,
    recall: Callable[[str], Awaitable[str | None]],
    remember: Callable[[str, str], Awaitable[None]],
) -> Backend:
    """``recall`` / ``remember``: what the bot learnt, by name (the ledger's)."""
    if settings.image_backend == "a1111":
        from .a1111 import A1111Backend

        assert settings.a1111_url is not None
        log.info("image service", extra={"backend": "a1111", "url": settings.a1111_url})
        return A1111Backend(
            session,
            base_url=settings.a1111_url,
            module=settings.a1111_controlnet_module,
            model=settings.a1111_controlnet_model,
            generation_timeout_s=settings.job_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            max_output_bytes=settings.max_output_bytes,
        )
    if settings.image_backend == "comfyui":
        from .comfyui import ComfyUIBackend

        assert settings.comfyui_url is not None
        log.info("image service", extra={"backend": "comfyui", "url": settings.comfyui_url})
        return ComfyUIBackend.from_settings(session, guard, settings)

    from .modelslab import ModelsLabBackend

    async def remember_route(route: str) -> None:
        await remember(ROUTE_KEY, route)

    backend = ModelsLabBackend(
        session,
        guard=guard,
        base_url=settings.api_base_url,
        api_key=settings.api_key,
        request_timeout_s=settings.request_timeout_s,
        max_retries=settings.max_retries,
        rate_limit_max_wait_s=settings.rate_limit_max_wait_s,
        max_download_bytes=settings.max_output_bytes,
        endpoint=settings.endpoint,
        known_route=await recall(ROUTE_KEY),
        remember=remember_route,
        model_id=settings.model_id,
        low_balance=settings.low_balance,
    )
    log.info("image service", extra={"backend": "modelslab", "route": str(backend.route)})
    return backend
