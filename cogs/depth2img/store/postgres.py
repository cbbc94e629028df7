"""The ledger in PostgreSQL (``DATABASE_URL``), for several bot processes: a small asyncpg pool, each
operation in a transaction of its own (whatever it raises rolls it back)."""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import time
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from .base import Execute, ExecuteMany, Fetch, LedgerUnavailable, OpFactory, SchemaTooNew, Statement
from .schema import LATEST, POSTGRES, VERSION_TABLE, pending, version_before_versioning

T = TypeVar("T")
CONNECT_TIMEOUT_S = 10.0
_PLACEHOLDER = re.compile(r"\?")
_MIGRATION_LOCK = 4242424242  # pg_advisory_xact_lock: processes that start together migrate one at a time


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """``?`` → ``$1, $2, …`` (our SQL has no ``?`` inside literals)."""
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _: f"${next(counter)}", sql)


async def _execute(conn: Any, statement: Statement) -> Any:
    if statement.kind == Execute.kind:
        status: str = await conn.execute(_numbered(statement.sql), *cast(Execute, statement).args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0
    if statement.kind == Fetch.kind:
        rows = await conn.fetch(_numbered(statement.sql), *cast(Fetch, statement).args)
        return [dict(r.items()) for r in rows]
    await conn.executemany(_numbered(statement.sql), cast(ExecuteMany, statement).rows)
    return None


def _unavailable(exc: BaseException, url: str) -> LedgerUnavailable:
    """One sentence for the owner (never the URL's password) for why PostgreSQL cannot be used."""
    import asyncpg

    parts = urlsplit(url)
    where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    database = parts.path.lstrip("/") or parts.username or "postgres"
    if isinstance(exc, socket.gaierror):
        return LedgerUnavailable(f"the PostgreSQL host {parts.hostname!r} is unknown", exit_code=2)
    if isinstance(exc, ConnectionRefusedError):
        return LedgerUnavailable(f"PostgreSQL refused the connection at {where}: is it running?", exit_code=1)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return LedgerUnavailable(
            f"PostgreSQL at {where} has no database {database!r}: create it", exit_code=2
        )
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return LedgerUnavailable(
            f"PostgreSQL at {where} refused user {parts.username!r}: wrong user or password", exit_code=2
        )
    if isinstance(exc, TimeoutError):
        return LedgerUnavailable(
            f"PostgreSQL at {where} did not answer within {CONNECT_TIMEOUT_S:g} s", exit_code=1
        )
    if isinstance(exc, OSError):
        return LedgerUnavailable(
            f"PostgreSQL at {where} could not be reached ({type(exc).__name__})", exit_code=1
        )
    return LedgerUnavailable(f"PostgreSQL at {where} refused the bot ({type(exc).__name__})", exit_code=2)


class PostgresDatabase:
    kind = "postgresql"
    event_order = "at, seq"

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self.schema_version = 0

    @classmethod
    async def open(cls, url: str) -> PostgresDatabase:
        import asyncpg  # only needed with DATABASE_URL

        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    url, min_size=1, max_size=8, command_timeout=30, timeout=CONNECT_TIMEOUT_S
                ),
                CONNECT_TIMEOUT_S + 5,
            )
        except Exception as exc:
            raise _unavailable(exc, url) from None
        db = cls(pool)
        try:
            db.schema_version = await db._migrate()
        except BaseException:
            await pool.close()
            raise
        return db

    async def _migrate(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(VERSION_TABLE.format(real=POSTGRES.real))
            version = await conn.fetchval("SELECT MAX(version) FROM schema_version")
            if version is None:
                columns = [
                    r["column_name"]
                    for r in await conn.fetch(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'jobs' AND table_schema = current_schema()"
                    )
                ]
                version = version_before_versioning(columns or None)
                if version:
                    await conn.execute(
                        "INSERT INTO schema_version (version, applied_at, what) VALUES ($1, $2, $3)",
                        version,
                        time.time(),
                        "found: made before schema versions were recorded",
                    )
            if version > LATEST:
                raise SchemaTooNew(version, LATEST)
            for migration in pending(version):
                async with conn.transaction():  # a savepoint: each migration whole or not at all
                    for statement in migration.sql(POSTGRES):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO schema_version (version, applied_at, what) VALUES ($1, $2, $3)",
                        migration.version,
                        time.time(),
                        migration.what,
                    )
                version = migration.version
        return int(version)

    def transient(self, exc: BaseException) -> bool:
        import asyncpg

        return isinstance(
            exc,
            asyncpg.PostgresConnectionError  # class 08, the connection lost or refused
            | asyncpg.InterfaceError  # the connection closed under the pool
            # the server ended the session in the middle of an operation (a restart): asyncpg's
            # protocol then refuses the rollback ("cannot switch to state 15; another operation (2)
            # is in progress", MagicStack/asyncpg#784, sqlalchemy#13241); the pool drops that connection
            | asyncpg.InternalClientError
            | asyncpg.CannotConnectNowError  # the server is starting up
            | asyncpg.AdminShutdownError  # it is stopping (a restart)
            | asyncpg.CrashShutdownError
            | asyncpg.TooManyConnectionsError
            | asyncpg.SerializationError
            | asyncpg.DeadlockDetectedError
            | OSError  # (connection refused while it is down)
            | TimeoutError,
        )

    async def run(self, op: OpFactory[T]) -> T:
        async with self._pool.acquire() as conn, conn.transaction():
            gen = op()
            try:
                statement = next(gen)
                while True:
                    statement = gen.send(await _execute(conn, statement))
            except StopIteration as stop:
                result: T = stop.value
                return result
            finally:
                gen.close()

    async def close(self) -> None:
        await self._pool.close()
