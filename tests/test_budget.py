"""The output budget (issue 12, item 13): what the bot holds for outputs, all jobs together, never
passes OUTPUT_MEMORY_BYTES; jobs past it wait their turn, and every byte is given back."""

from __future__ import annotations

import asyncio
import time

import pytest

from cogs.depth2img.core.budget import ByteBudget
from cogs.depth2img.models import GenerationParams
from tests.service_kit import origin, take_in


async def test_a_job_takes_all_it_may_need_at_once_in_turn():
    budget = ByteBudget(100)
    first = await budget.take(60)
    waiting = asyncio.create_task(budget.take(50))  # does not fit: waits, holding nothing
    small = asyncio.create_task(budget.take(10))  # would fit, but comes after: waits its turn
    await asyncio.sleep(0.01)
    assert not waiting.done() and not small.done()
    assert budget.held == 60
    first.keep(40)  # 40 held now: 50 fits, then 10
    second = await asyncio.wait_for(waiting, 1)
    third = await asyncio.wait_for(small, 1)
    assert budget.held == 100
    for hold in (first, second, third):
        hold.release()
        hold.release()  # twice is harmless
    assert budget.held == 0


async def test_more_than_the_whole_budget_takes_the_whole_budget():
    budget = ByteBudget(100)
    hold = await budget.take(10**9)
    assert hold.amount == 100 == budget.held
    hold.release()
    assert budget.held == 0


async def test_a_cancelled_wait_leaves_nothing_held_and_lets_the_next_in():
    budget = ByteBudget(100)
    first = await budget.take(90)
    big = asyncio.create_task(budget.take(50))
    after = asyncio.create_task(budget.take(10))
    await asyncio.sleep(0.01)
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    third = await asyncio.wait_for(after, 1)  # the 10 fits now that the 50 ahead of it is gone
    assert budget.held == 100
    first.release()
    third.release()
    assert budget.held == 0


async def test_jobs_wait_for_the_budget_and_give_it_all_back(make_service, backend):
    """Budget for four outputs of MAX_OUTPUT_BYTES at once; six jobs of one picture finish together:
    each holds the most it may need until it knows better (its picture at its largest, and one more
    while it is joined), so the downloads happen two at a time; every job is delivered, and nothing
    stays held."""
    cap = 1 << 20
    service = make_service(max_output_bytes=cap, output_memory_bytes=4 * cap, max_jobs_per_user=6)
    budget = service.runner.budget
    peaks: list[int] = []
    at_once = [0, 0]  # now, most
    downloads = backend.download

    async def watched(url: str) -> list[bytes]:
        peaks.append(budget.held)
        at_once[0] += 1
        at_once[1] = max(at_once)
        try:
            await asyncio.sleep(0.05)
            return await downloads(url)
        finally:
            at_once[0] -= 1

    backend.download = watched  # type: ignore[method-assign]

    async def one(n: int) -> None:
        async def read() -> bytes:
            from tests.fakes.fake_api import make_png

            return make_png()

        with service.admit(n, 20) as ticket:
            job = await take_in(service, GenerationParams(prompt=f"{n}"), origin(n), read)
            outcome = await service.run(job, ticket, emit=lambda _: None, started_at=time.monotonic())
            assert outcome.result is not None
            async with service.delivering(outcome) as mine:
                assert mine

    await asyncio.gather(*(one(n) for n in range(6)))
    assert len(peaks) == 6
    assert max(peaks) <= 4 * cap
    assert at_once[1] == 2  # (without the budget: 6)
    assert budget.held == 0


def test_a_budget_too_small_for_one_job_is_refused_at_start():
    from cogs.depth2img import settings_problems

    base = {"DISCORD_TOKEN": "x" * 60, "SD_API_KEY": "k" * 16}
    (problem,) = settings_problems(base | {"OUTPUT_MEMORY_BYTES": str(100 * 1024 * 1024)})
    assert "OUTPUT_MEMORY_BYTES=104857600 is less than 5 x MAX_OUTPUT_BYTES" in problem
    assert settings_problems(base | {"OUTPUT_MEMORY_BYTES": str(125 * 1024 * 1024)}) == []
