"""A process-wide budget of bytes for the image service's outputs, from their download until the member
has them (``OUTPUT_MEMORY_BYTES``): what the bot holds in memory for outputs is bounded whatever the
service sends and however many jobs finish at once.

A job takes what it may need all at once (so that two jobs can never each hold half and wait for the
other), first come first served, and gives back what it turned out not to need as it goes. asyncio has
no semaphore that takes several units atomically (taking them one by one deadlocks in just that way),
hence these few lines.
"""

from __future__ import annotations

import asyncio
from collections import deque


class ByteBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def take(self, wanted: int) -> Hold:
        """Wait until ``wanted`` bytes (at most the whole budget) are free, in turn, and hold them."""
        wanted = max(0, min(wanted, self.limit))
        if not self._waiting and self.held + wanted <= self.limit:
            self.held += wanted
            return Hold(self, wanted)
        turn = asyncio.get_running_loop().create_future()
        entry = (wanted, turn)
        self._waiting.append(entry)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted just as it was cancelled: give it back
                self._give(wanted)
            else:
                self._waiting.remove(entry)
                self._wake()  # (those behind it may fit now)
            raise
        return Hold(self, wanted)

    def _give(self, amount: int) -> None:
        self.held -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self.held + self._waiting[0][0] <= self.limit:
            wanted, turn = self._waiting.popleft()
            self.held += wanted
            turn.set_result(None)


class Hold:
    """Bytes held from a :class:`ByteBudget`; give back what is not needed with :meth:`keep`, and all
    of it with :meth:`release` (both may be called any number of times)."""

    def __init__(self, budget: ByteBudget, amount: int) -> None:
        self._budget = budget
        self.amount = amount

    def keep(self, amount: int) -> None:
        """Hold only ``amount`` from now on (never more than is held)."""
        spare = self.amount - max(0, amount)
        if spare > 0:
            self.amount -= spare
            self._budget._give(spare)

    def release(self) -> None:
        self.keep(0)
