"""What the service tests share: the settings they run with, a member's origin, the steps the UI's
flow takes, and the fixtures (an in-memory image service, a real ledger, a service maker), which
conftest.py makes available to every test module."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from cogs.depth2img.config import Depth2ImgSettings
from cogs.depth2img.core.intake import Origin
from cogs.depth2img.core.service import Depth2ImgService
from cogs.depth2img.metrics import Metrics
from cogs.depth2img.models import GenerationParams
from cogs.depth2img.store import Ledger
from tests.fakes.fake_api import make_png
from tests.fakes.memory_backend import MemoryAttachments, MemoryBackend

SOURCE = "http://127.0.0.1:1/attachments/1/2/photo.png"


def settings(**kw: object) -> Depth2ImgSettings:
    base = {
        "api_key": "k" * 12,
        "poll_initial_s": 0.01,
        "poll_max_s": 0.05,
        "job_timeout_s": 5.0,
        "request_timeout_s": 5.0,
        "user_cooldown_s": 0.0,
        "image_workers": 0,  # threads here; the end-to-end tests run the bot's worker processes
    }
    base.update(kw)
    return Depth2ImgSettings(**base)  # type: ignore[arg-type]


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()


@pytest.fixture
async def ledger(tmp_path) -> AsyncIterator[Ledger]:
    led = await Ledger.open(tmp_path / "jobs.sqlite3")
    yield led
    await led.close()


@pytest.fixture
async def make_service(backend, ledger, tmp_path):
    made: list[Depth2ImgService] = []
    reopened: list[Ledger] = []

    def make(*, on: Ledger | None = None, **kw) -> Depth2ImgService:
        service = Depth2ImgService(
            backend,
            settings(**kw),
            on or ledger,
            attachments=MemoryAttachments(),
            data_dir=tmp_path,
            metrics=Metrics(CollectorRegistry()),
        )
        made.append(service)
        return service

    async def make_restarted(**kw) -> Depth2ImgService:
        """As a new process would: its own connection to the same ledger."""
        reopened.append(await Ledger.open(tmp_path / "jobs.sqlite3"))
        return make(on=reopened[-1], **kw)

    make.restarted = make_restarted  # type: ignore[attr-defined]
    yield make
    for service in made:
        service.pictures.close()
    for led in reopened:
        await led.close()


def origin(user: int = 1, limit: int = 10 * 1024 * 1024) -> Origin:
    return Origin(
        user_id=user,
        channel_id=10,
        guild_id=20,
        application_id=30,
        interaction_token="tok",
        interaction_created_at=time.time(),
        message_id=40,
        upload_limit_bytes=limit,
    )


async def take_in(service, params, where_from, read):
    """As the flow does once the member is answered: the job recorded, then its picture taken in."""
    job = await service.record(params, where_from, source_url=SOURCE)
    return await service.accept(job, read=read)


async def run(service, user: int = 1, limit: int = 10 * 1024 * 1024, params=None, events=None, image=None):
    """admit → accept → run → delivered, as the UI's flow does; returns the result (or raises the error)."""
    data = image if image is not None else make_png()

    async def read() -> bytes:
        return data

    with service.admit(user, 20) as ticket:
        job = await take_in(
            service, params or GenerationParams(prompt="cabin", seed=7), origin(user, limit), read
        )
        emit = events.append if events is not None else (lambda _: None)
        outcome = await service.run(job, ticket, emit=emit, started_at=time.monotonic())
        async with service.delivering(outcome) as mine:
            assert mine
    if outcome.error is not None:
        raise outcome.error
    return outcome.result
