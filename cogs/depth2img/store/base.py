"""What the ledger asks of a database: operations written once, run all-or-nothing on either backend.

A ledger operation is a *generator* that yields the statements it needs and receives each one's result
(rows affected, or the rows fetched), then returns its value. It does no I/O itself, so the same
operation runs on SQLite's own thread (synchronously, inside a savepoint of a group commit) and on
PostgreSQL (asynchronously, inside a transaction). Whatever it raises, its database or its own code,
undoes everything it wrote and fails only its caller.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from cogs.depth2img.errors import Depth2ImgError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Execute:
    """One statement; its result is the number of rows it changed."""

    kind: ClassVar[str] = "execute"  # (the drivers go by this, not by class: a reloaded extension
    # brings new classes, and an operation may come from code loaded before the reload)
    sql: str  # ``?`` placeholders
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Fetch:
    """One statement that returns rows (a ``SELECT``, or ``… RETURNING``); its result is the rows as dicts."""

    kind: ClassVar[str] = "fetch"
    sql: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ExecuteMany:
    """One statement for each parameter row; its result is None."""

    kind: ClassVar[str] = "many"
    sql: str
    rows: Sequence[Sequence[Any]] = ()


Statement = Execute | Fetch | ExecuteMany
Op = Generator[Statement, Any, T]
OpFactory = Callable[[], Op[T]]


class Database(Protocol):
    kind: str  # "sqlite" | "postgresql"
    event_order: str  # ORDER BY for a job's events, oldest first
    schema_version: int

    async def run(self, op: OpFactory[T]) -> T:
        """Run one operation as one transaction: all of it, or (raising) none of it."""
        ...

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the database is out of reach for now (locked, restarting, the
        connection lost), so that the same operation may succeed if run again."""
        ...

    async def close(self) -> None: ...


class StoreError(Depth2ImgError):
    """The job ledger's database cannot be used as it is."""

    owner_message: str | None = None  # what the bot's owner is told when it stops the start (our words)


class SchemaTooNew(StoreError):
    """The database was upgraded by a newer version of the bot."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the job ledger's database has schema version {found}, but this version of depth2img-bot "
            f"knows versions up to {known}: it was upgraded by a newer bot. Run that newer version "
            "(or restore the backup taken before the upgrade)."
        )
        self.found = found
        self.known = known
        self.owner_message = f"depth2img-bot cannot start: {self}"


class LedgerUnavailable(StoreError):
    """The ledger's database cannot be reached or refuses the bot at start-up. ``exit_code``: 2 when
    the owner must fix a setting, 1 when it may pass by itself (a server that is down, or slow)."""

    def __init__(self, message: str, *, exit_code: int, fix: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        if fix is None:  # ("": the message says what to do)
            fix = (
                "fix DATABASE_URL"
                if exit_code == 2
                else "this may pass by itself: the bot can be started again"
            )
        self.owner_message = f"depth2img-bot cannot start: {message}" + (f" ({fix})." if fix else ".")


class LedgerClosed(StoreError):
    """The ledger was closed (the bot is stopping)."""
