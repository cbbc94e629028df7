"""The member's progress line while a job runs: its place in the bot's queue or at the image service,
with an ETA as a live Discord timestamp and a Cancel button.

Driven only by the events the job sends (:class:`ProgressEvent`, plain data); it never asks the job
anything. Edits at most every ``PROGRESS_INTERVAL_S`` seconds, however many events arrive, and
stops when its ``async with`` block ends, whatever ended it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from types import TracebackType
from typing import Any

import discord

from cogs.depth2img.models import ProgressEvent
from cogs.i18n import text

from .components import cancel_view, spent
from .langs import channels
from .text import progress_text

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()
# Interaction tokens live 15 minutes; the progress line's last edit comes this long after the command
# (a minute before delivery stops trying the token: delivery.TOKEN_SAFE_AGE_S).
LAST_EDIT_AGE_S = 13 * 60
# An edit on its way when the job ends is let through, so that it does not land after the result; for
# at most this long: discord.py would wait out aiohttp's 5 minutes for an answer that does not come,
# holding the token's lock, and the result with it. (A progress edit carries no files: if it lands
# late after all, the result's pictures stay.)
IN_FLIGHT_WAIT_S = 10.0


class ProgressMessage:
    def __init__(self, interaction: discord.Interaction[Any], job_id: str, *, interval_s: float) -> None:
        self.interaction = interaction
        self.lang = channels(interaction)  # the line is in the channel: the server's language
        self.long_wait = text(self.lang, "progress.long_wait")
        # past this (unix time) the token may not last until the result: the line says so, once, and
        # stops (the result will be a message of its own: see delivery.deliver)
        self.last_edit_at = interaction.created_at.timestamp() + LAST_EDIT_AGE_S
        self.job_id = job_id
        self.interval_s = interval_s
        self.edits = 0
        self._event: ProgressEvent | None = None
        self._received_at = 0.0
        self._shown: str | None = None
        self._shown_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._editing = False
        self._limited_until = -math.inf  # (monotonic) Discord rate-limits the token's edits until then

    @property
    def rate_limited(self) -> bool:
        """Whether Discord refuses the job message's edits now, for longer than the bot waits (an edit
        met a 429 naming a long wait: botcore/ratelimits.py)."""
        return time.monotonic() < self._limited_until

    @property
    def limited_until(self) -> float | None:
        """Until when (monotonic) Discord refuses the job message's edits, if it does now."""
        return self._limited_until if self.rate_limited else None

    def update(self, event: ProgressEvent) -> None:
        """The job's latest news (called on the event loop; returns at once)."""
        if self._closed:
            return
        self._event, self._received_at = event, time.time()
        if self._task is None:
            self._task = asyncio.create_task(self._show_now_and_then(), name=f"progress-{self.job_id}")

    async def __aenter__(self) -> ProgressMessage:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closed = True
        if self._task is not None:
            if not self._editing:  # an edit on its way is let through (above)
                self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=IN_FLIGHT_WAIT_S)
            if not done:
                log.warning("progress edit unanswered; the result goes ahead", extra={"job": self.job_id})
                self._task.cancel()
                await asyncio.wait({self._task})
            # (a cancelled task keeps its CancelledError, whose traceback holds this object: a cycle)
            self._task = None

    async def _show_now_and_then(self) -> None:
        while not self._closed:
            if time.time() >= self.last_edit_at:
                await self._show(self.long_wait)
                return
            await self._show()
            if not self._closed:
                await asyncio.sleep(min(self.interval_s, max(0.0, self.last_edit_at - time.time())))

    async def _show(self, line: str | None = None) -> None:
        if self._event is None:
            return
        if line is None:
            line = progress_text(self._event, self._received_at, time.time(), self.lang)
        if line is None or line == self._shown:
            return
        if line != self.long_wait and time.monotonic() - self._shown_at < self.interval_s:
            return
        if self.rate_limited:  # (an edit now would be refused, and counted by Discord)
            return
        self._shown, self._shown_at = line, time.monotonic()
        self._editing = True
        try:
            with spent(cancel_view(self.job_id, self.lang)) as view:
                await self.interaction.edit_original_response(
                    content=line, view=view, allowed_mentions=NO_MENTIONS
                )
            self.edits += 1
        except discord.RateLimited as exc:  # (for longer than the bot waits: botcore/ratelimits.py)
            self._limited_until = time.monotonic() + exc.retry_after
            log.warning("progress edits rate-limited", extra={"job": self.job_id})
        except Exception as exc:  # a progress line is not worth failing for (the result comes next)
            log.warning("progress edit failed", extra={"job": self.job_id, "error": type(exc).__name__})
        finally:
            self._editing = False
