"""The ledger's tables, as ordered migrations, and the version table that says which have run.

``schema_version`` holds one row per migration applied (its number, when, and what it did); the
database's version is the highest. At start-up each backend applies, in order and each in its own
transaction, the migrations above the database's version, and refuses a database whose version is
higher than :data:`LATEST` (an older bot must not write to tables it does not know).

Databases made before the version table existed are recognised by their columns. To change the
schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    int: str  # a 64-bit integer
    real: str  # a double
    serial: str  # an auto-numbered primary key column, with its trailing comma (or nothing)


SQLITE = Dialect(int="INTEGER", real="REAL", serial="")
POSTGRES = Dialect(int="BIGINT", real="DOUBLE PRECISION", serial="seq BIGSERIAL PRIMARY KEY, ")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    what: str
    statements: tuple[str, ...]  # ``{int}``, ``{real}`` and ``{serial}`` stand for the dialect's types

    def sql(self, dialect: Dialect) -> list[str]:
        return [s.format(int=dialect.int, real=dialect.real, serial=dialect.serial) for s in self.statements]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs, their events and the servers' settings",
        (
            """CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                user_id {int} NOT NULL,
                channel_id {int} NOT NULL,
                guild_id {int},
                application_id {int} NOT NULL,
                interaction_token TEXT NOT NULL,
                interaction_created_at {real} NOT NULL,
                message_id {int},
                upload_limit_bytes {int} NOT NULL,
                params TEXT NOT NULL,
                source_path TEXT,
                source_url TEXT,
                source_changed INTEGER NOT NULL DEFAULT 0,
                api_job_id TEXT,
                fetch_url TEXT,
                output_urls TEXT NOT NULL DEFAULT '[]',
                generation_time_s {real},
                api_seed {int},
                error_kind TEXT,
                error_text TEXT,
                created_at {real} NOT NULL,
                updated_at {real} NOT NULL,
                submitted_at {real},
                finished_at {real},
                resumes INTEGER NOT NULL DEFAULT 0,
                parent_id TEXT,
                kind TEXT NOT NULL DEFAULT 'command',
                result_path TEXT
            )""",
            "CREATE INDEX jobs_user_created ON jobs(user_id, created_at)",
            "CREATE INDEX jobs_state ON jobs(state)",
            "CREATE INDEX jobs_guild_created ON jobs(guild_id, created_at)",
            """CREATE TABLE guild_settings (
                guild_id {int} PRIMARY KEY,
                data TEXT NOT NULL,
                updated_at {real} NOT NULL,
                updated_by {int}
            )""",
            """CREATE TABLE job_events (
                {serial}job_id TEXT NOT NULL,
                at {real} NOT NULL,
                state TEXT NOT NULL,
                detail TEXT
            )""",
            "CREATE INDEX job_events_job ON job_events(job_id)",
        ),
    ),
    Migration(
        2,
        "job ownership, for several bot processes sharing one ledger",
        (
            "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE jobs ADD COLUMN lease_until {real} NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN delivering INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE job_events ADD COLUMN owner TEXT",
            "CREATE INDEX jobs_owner ON jobs(owner)",
        ),
    ),
)
MIGRATIONS += (
    Migration(
        3,
        "one interaction runs once; jobs recorded when acknowledged; where a result came from, and its deletion",
        (
            "ALTER TABLE jobs ADD COLUMN interaction_id TEXT",
            "CREATE UNIQUE INDEX jobs_interaction ON jobs(interaction_id)",
            "ALTER TABLE jobs ADD COLUMN age_restricted INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN deleted_at {real}",
        ),
    ),
)
MIGRATIONS += (
    Migration(
        4,
        "what the bot learnt and keeps across restarts (the image service's working route)",
        (
            """CREATE TABLE bot_state (
                name TEXT PRIMARY KEY,
                value TEXT NOT NULL,
                updated_at {real} NOT NULL
            )""",
        ),
    ),
)
MIGRATIONS += (
    Migration(
        5,
        "what a delivered result was (timings, size, seed), for its Details button",
        ("ALTER TABLE jobs ADD COLUMN result_info TEXT",),
    ),
)
MIGRATIONS += (
    Migration(
        6,
        "when a job's result began to be posted in its channel (a resumed job posts there again)",
        ("ALTER TABLE jobs ADD COLUMN channel_post_at {real}",),
    ),
)
MIGRATIONS += (
    Migration(
        7,
        "when a result Discord took nothing for was last posted, or tried, after its job ended",
        ("ALTER TABLE jobs ADD COLUMN late_post_at {real}",),
    ),
)
MIGRATIONS += (
    Migration(
        8,
        "indexes for the queries a long-running bot repeats (each scanned the whole jobs table)",
        (
            # taking over abandoned jobs, every lease: by state, the unfinished ones only; pruning,
            # hourly: by state and age (it replaces jobs_state)
            "CREATE INDEX jobs_state_finished ON jobs(state, finished_at)",
            "DROP INDEX jobs_state",
            # pruning old pictures: only the jobs that still have some
            "CREATE INDEX jobs_kept_pictures ON jobs(state, finished_at) "
            "WHERE source_path IS NOT NULL OR result_path IS NOT NULL",
            # kept results posted late, every lease
            "CREATE INDEX jobs_failed_kind ON jobs(state, error_kind, finished_at) WHERE state = 'failed'",
        ),
    ),
)
MIGRATIONS += (
    Migration(
        9,
        "an index of the jobs by when they were made (start-up's daily counts scanned the whole table)",
        # (with the server and the member: the day's counts are read from the index alone)
        ("CREATE INDEX jobs_created ON jobs(created_at, guild_id, user_id)",),
    ),
)
LATEST = MIGRATIONS[-1].version

VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    applied_at {real} NOT NULL,
    what TEXT NOT NULL
)"""


def version_before_versioning(job_columns: Collection[str] | None) -> int:
    """The version of a database made before ``schema_version`` existed, from its ``jobs`` columns
    (None: no ``jobs`` table, an empty database)."""
    if job_columns is None:
        return 0
    return 2 if "owner" in job_columns else 1


def pending(version: int) -> list[Migration]:
    return [m for m in MIGRATIONS if m.version > version]
