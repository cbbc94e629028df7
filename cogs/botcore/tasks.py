"""Background tasks that never fail silently (python-discord bot-core's ``scheduling.create_task``
model): a reference is kept until the task ends, and an exception that ends it is logged."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def create_task(
    coro: Coroutine[Any, Any, T],
    *,
    name: str,
    keep_in: set[asyncio.Task[Any]],
    suppressed: tuple[type[BaseException], ...] = (),
) -> asyncio.Task[T]:
    """Start ``coro`` as a task held in ``keep_in`` until it ends; if it ends with an exception (other
    than cancellation or one of ``suppressed``), the exception is logged as an error."""
    task = asyncio.create_task(coro, name=name)
    keep_in.add(task)
    task.add_done_callback(keep_in.discard)
    task.add_done_callback(functools.partial(_log_failure, suppressed))
    return task


def _log_failure(suppressed: tuple[type[BaseException], ...], task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None or isinstance(exc, suppressed):
        return
    log.error(
        "background task failed",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"task": task.get_name()},
    )
