"""What the tests read straight from the ledger's database (nothing in the bot needs these): run as
operations of the store's own kind, on whichever database the ledger uses."""

from __future__ import annotations

from cogs.depth2img.store import Ledger
from cogs.depth2img.store.base import Execute, Fetch, Op


async def _rows(ledger: Ledger, sql: str, *args: object) -> list[dict]:
    def op() -> Op[list[dict]]:
        rows = yield Fetch(sql, args)
        return list(rows)

    return await ledger._db.run(op)


async def count_by_state(ledger: Ledger) -> dict[str, int]:
    rows = await _rows(ledger, "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
    return {str(r["state"]): int(r["n"]) for r in rows}


async def events(ledger: Ledger, job_id: str) -> list[str]:
    """The states a job went through, in order (``claimed`` events left out)."""
    rows = await _rows(
        ledger,
        f"SELECT state, detail FROM job_events WHERE job_id = ? ORDER BY {ledger._db.event_order}",
        job_id,
    )
    return [str(r["state"]) for r in rows if r["detail"] != "claimed"]


async def event_owners(ledger: Ledger, job_id: str) -> list[tuple[str, str | None]]:
    """(state, owner) of each event of a job, in order, ``claimed`` events included."""
    rows = await _rows(
        ledger,
        f"SELECT state, detail, owner FROM job_events WHERE job_id = ? ORDER BY {ledger._db.event_order}",
        job_id,
    )
    return [(str(r["state"]) + ("/claimed" if r["detail"] == "claimed" else ""), r["owner"]) for r in rows]


async def time_passes(ledger: Ledger, seconds: float) -> None:
    """As if ``seconds`` had passed since every job was asked for: their creation and their
    interactions' (the fake Discord is told the same: ``FakeDiscord.age``)."""

    def op() -> Op[None]:
        yield Execute(
            "UPDATE jobs SET created_at = created_at - ?, interaction_created_at = interaction_created_at - ?",
            (seconds, seconds),
        )

    await ledger._db.run(op)
