"""Who may start a job, and when: tickets, the per-member and per-server limits, the first-come,
first-served queue for generation slots, and "answer first".

Decided synchronously before the acknowledgement, so that a refusal stays private and costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

from cogs.depth2img.errors import AlreadyRunning, CoolingDown, QueueFull, QuotaExceeded, ShuttingDown

# Told its new place in the queue whenever it changes (1: next); called on the event loop, must not block.
OnPosition = Callable[[int], None]


class Ticket:
    """One admitted request. Release it with ``with``/``close()`` whatever happens."""

    def __init__(self, admission: Admission, user_id: int) -> None:
        self._admission = admission
        self.user_id = user_id
        self.closed = False
        self.member_released = False

    def release_member(self) -> None:
        """The member has been told the outcome (or is about to be): they may ask again at once, while
        the job's last bookkeeping still counts as work in flight (shutdown waits for it)."""
        if not self.member_released:
            self.member_released = True
            self._admission._release_member(self)

    @contextlib.contextmanager
    def closed_if_raised(self) -> Iterator[None]:
        """Around what may fail before the ticket's owner takes it over with ``with``."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.release_member()
            self._admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def day_start(now: float) -> float:
    return now - (now % 86400)


class Admission:
    """Fair admission: per member (jobs in flight and a cooldown), per server (a daily quota), and
    overall (generations at the API at once, and a bounded waiting queue)."""

    def __init__(
        self,
        *,
        max_concurrent: int,
        max_queued: int,
        per_user: int,
        cooldown_s: float = 0.0,
        guild_daily_quota: int = 0,
        bot_daily_quota: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.per_user = per_user
        self.cooldown_s = cooldown_s
        self.guild_daily_quota = guild_daily_quota
        self.bot_daily_quota = bot_daily_quota  # pictures, across every server and DM
        self._bot_pictures = 0
        self.draining = False
        self._clock = clock
        self._wall = wall_clock
        self._slots = _Slots(max_concurrent)
        self._per_user: dict[int, int] = {}
        self._last_request: dict[int, float] = {}
        self._guild_day = day_start(wall_clock())
        self._guild_counts: dict[int, int] = {}
        self._member_counts: dict[tuple[int, int], int] = {}
        self._admitted = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def in_flight(self) -> int:
        return self._admitted

    @property
    def waiting(self) -> int:
        return self._slots.waiting

    def seed_counts(
        self, guilds: dict[int, int], members: dict[tuple[int, int], int], pictures: int = 0
    ) -> None:
        """Today's counts per server and per member, and the pictures asked for bot-wide, from the
        ledger, so a restart resets no quota."""
        self._guild_counts = dict(guilds)
        self._member_counts = dict(members)
        self._bot_pictures = pictures

    def admit(
        self,
        user_id: int,
        guild_id: int | None = None,
        *,
        cooldown_s: float | None = None,
        member_daily_quota: int = 0,
        pictures: int = 1,
    ) -> Ticket:
        """Raises a :class:`RequestRejected` when the request must not run now. ``cooldown_s`` and
        ``member_daily_quota`` are the server's own rules, when it set them."""
        if self.draining:
            raise ShuttingDown()
        if self._per_user.get(user_id, 0) >= self.per_user:
            raise AlreadyRunning(self.per_user)
        now = self._clock()
        last = self._last_request.get(user_id)
        cooldown = self.cooldown_s if cooldown_s is None else cooldown_s
        if cooldown > 0 and last is not None and now - last < cooldown:
            raise CoolingDown(cooldown - (now - last))
        if self._admitted >= self.max_concurrent + self.max_queued:
            raise QueueFull(retry_after_s=30.0)
        day = day_start(self._wall())
        if day != self._guild_day:
            self._guild_day, self._guild_counts, self._member_counts = day, {}, {}
            self._bot_pictures = 0
        if 0 < self.bot_daily_quota < self._bot_pictures + pictures:
            raise QuotaExceeded(self.bot_daily_quota, resets_at=day + 86400, bot_wide=True)
        guild_used = self._guild_counts.get(guild_id, 0) if guild_id is not None else 0
        if guild_id is not None and 0 < self.guild_daily_quota <= guild_used:
            raise QuotaExceeded(self.guild_daily_quota, resets_at=day + 86400)
        member_key = (guild_id or 0, user_id)
        if member_daily_quota > 0 and self._member_counts.get(member_key, 0) >= member_daily_quota:
            raise QuotaExceeded(member_daily_quota, resets_at=day + 86400, per_member=True)
        if guild_id is not None:
            self._guild_counts[guild_id] = self._guild_counts.get(guild_id, 0) + 1
        self._member_counts[member_key] = self._member_counts.get(member_key, 0) + 1
        self._bot_pictures += pictures
        self._last_request[user_id] = now
        if len(self._last_request) > 10_000:  # forget old cooldowns
            cutoff = now - max(self.cooldown_s, 1.0)
            self._last_request = {u: t for u, t in self._last_request.items() if t >= cutoff}
        return self._ticket(user_id)

    def admit_resumed(self, user_id: int) -> Ticket:
        """A job resumed after a restart: it was admitted once already; count it, refuse nothing."""
        return self._ticket(user_id)

    def _ticket(self, user_id: int) -> Ticket:
        self._admitted += 1
        self.idle.clear()
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        return Ticket(self, user_id)

    def _release(self, ticket: Ticket) -> None:
        self._admitted -= 1
        if self._admitted == 0:
            self.idle.set()

    def _release_member(self, ticket: Ticket) -> None:
        left = self._per_user.get(ticket.user_id, 1) - 1
        if left > 0:
            self._per_user[ticket.user_id] = left
        else:
            self._per_user.pop(ticket.user_id, None)

    @contextlib.asynccontextmanager
    async def slot(self, on_position: OnPosition | None = None) -> AsyncIterator[None]:
        """One of the ``max_concurrent`` generation slots, handed out first come, first served.
        ``on_position`` hears the waiter's place in the queue each time it changes."""
        await self._slots.acquire(on_position)
        try:
            yield
        finally:
            self._slots.release()


class _Slots:
    """A FIFO semaphore that tells each waiter its place in the queue as it moves up."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[tuple[asyncio.Future[None], OnPosition | None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, on_position: OnPosition | None) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (future, on_position)
        self._waiters.append(entry)
        if on_position is not None:
            on_position(len(self._waiters))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._tell_positions()
            raise

    def release(self) -> None:
        while self._waiters:
            future, _ = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                self._tell_positions()
                return
        self._free += 1

    def _tell_positions(self) -> None:
        for place, (_, on_position) in enumerate(self._waiters, start=1):
            if on_position is not None:
                on_position(place)


class AnswerFirst:
    """Answering a new request comes before work that can wait.

    A burst of requests arrives within milliseconds, and each must be answered (acknowledged) at once;
    the picture work of those already answered (downloading, checking and storing megabytes) can wait
    that long. So requests being answered are counted (:meth:`answering`), and :meth:`wait_turn` lets
    work that can wait through only once none is being answered and none has arrived for ``quiet_s``
    (the burst's later requests are often still on their way), or after ``max_hold_s`` whatever
    happens, so that a steady stream of requests cannot starve the work.

    Recording an answered job can wait a few milliseconds too, for the acknowledgements still being
    made (:meth:`acknowledging`, :meth:`acknowledgements_out`, bounded by ``max_hold_s`` as well): in a
    burst, each record (about 0.1 ms on the loop, and the ledger thread's turn at the GIL) otherwise
    ran between the acknowledgements of the requests behind it."""

    def __init__(
        self,
        *,
        quiet_s: float = 0.003,
        max_hold_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_s = quiet_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._answering = 0
        self._last_arrival = -float("inf")
        self._open = asyncio.Event()
        self._open.set()
        self._timer: asyncio.TimerHandle | None = None
        self._acknowledging = 0
        self._acknowledged = asyncio.Event()
        self._acknowledged.set()

    @contextlib.contextmanager
    def acknowledging(self) -> Iterator[None]:
        """Around a request's acknowledgement, from its turn (:class:`Rounds`) to Discord's reply."""
        self._acknowledging += 1
        self._acknowledged.clear()
        try:
            yield
        finally:
            self._acknowledging -= 1
            if self._acknowledging == 0:
                self._acknowledged.set()

    async def acknowledgements_out(self) -> None:
        """Once no acknowledgement is being made (or after ``max_hold_s``)."""
        await self._hold(self._acknowledged)

    async def _hold(self, until: asyncio.Event) -> None:
        if until.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_hold_s):
                await until.wait()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around everything from a request's arrival to its answer."""
        self._answering += 1
        self._last_arrival = self._clock()
        self._open.clear()
        try:
            yield
        finally:
            self._answering -= 1
            if self._answering == 0 and self._timer is None:
                self._check()

    def _check(self) -> None:
        self._timer = None
        if self._answering:
            return  # the last answer calls again
        left = self._last_arrival + self.quiet_s - self._clock()
        if left > 0:
            self._timer = asyncio.get_running_loop().call_later(left, self._check)
            return
        self._open.set()

    async def wait_turn(self) -> None:
        await self._hold(self._open)


class Rounds:
    """At most ``per_round`` callers of :meth:`pass_` go on in one round of the event loop; the others
    go on in the rounds after it, first come first served.

    A burst of requests reaches discord.py in a few reads of the gateway, and each read starts one task
    per request; in the next round of the loop every one of those tasks runs up to its acknowledgement
    (about 0.4 ms apiece, 0.25 of it discord.py and aiohttp building and writing the request): traced
    during a 200-burst, 101-144 of them in one round held the loop for 35-95 ms at a stretch, and with
    it the replies, the gateway and the heartbeats. Spread over rounds, the same
    work lets everything else waiting on the loop run in between (the other rounds' work is the same,
    so the last acknowledgement is not later)."""

    def __init__(self, per_round: int) -> None:
        self.per_round = per_round
        self._passed = 0  # in the current round
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._next: asyncio.Handle | None = None

    async def pass_(self) -> None:
        if self._passed < self.per_round and not self._waiting:
            self._passed += 1
            self._schedule()
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._schedule()
        await future  # (cancelled: its place is skipped)

    def _schedule(self) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().call_soon(self._new_round)

    def _new_round(self) -> None:
        self._next = None
        self._passed = 0
        while self._waiting and self._passed < self.per_round:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._passed += 1
        if self._passed:
            self._schedule()
