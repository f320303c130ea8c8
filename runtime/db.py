"""PostgreSQL: a pool with deadlines, and the schema this system keeps in the users' database.

The database is the users' own (the old server's "Knowledge OS"): it holds ``experts`` and
``projects``, which their other tools fill, beside many tables that are not ours. We create those two
only when they are missing, with exactly the columns the old server had, and touch no other table
of theirs. Our own tables live in the schema ``victoria``; ``MIGRATIONS`` is their versioned
history, applied in order, each once (``victoria.schema_migrations`` records them), under an
advisory lock so that processes starting together do not race. Every statement has a deadline
(``command_timeout``), and so has every connection.
"""

from __future__ import annotations

import logging
from typing import Final

import asyncpg

log = logging.getLogger(__name__)

SCHEMA: Final = "victoria"
MIGRATION_LOCK: Final = 7_401_937_311  # pg_advisory_xact_lock key of our migrations

MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (
        1,
        "the users' experts and projects (if missing), our task history and session memory",
        """
        CREATE TABLE IF NOT EXISTS experts (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text UNIQUE NOT NULL,
            role text,
            department text,
            system_prompt text,
            metadata jsonb DEFAULT '{}'::jsonb,
            created_at timestamptz DEFAULT now()
        );
        CREATE TABLE IF NOT EXISTS projects (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            slug text UNIQUE NOT NULL,
            name text,
            description text,
            workspace_path text,
            is_active boolean DEFAULT true,
            created_at timestamptz DEFAULT now(),
            updated_at timestamptz DEFAULT now()
        );
        CREATE TABLE victoria.tasks (
            task_id text PRIMARY KEY,
            status text NOT NULL,
            goal text NOT NULL,
            task_type text,
            project text,
            expert text,
            session_id text,
            correlation_id text,
            stage text,
            output text,
            error text,
            error_kind text,
            attempts integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            ended_at timestamptz
        );
        CREATE INDEX tasks_by_time ON victoria.tasks (created_at DESC, task_id DESC);
        CREATE INDEX tasks_by_status ON victoria.tasks (status, created_at DESC);
        CREATE INDEX tasks_by_project ON victoria.tasks (project, created_at DESC);
        CREATE TABLE victoria.task_attempts (
            task_id text NOT NULL,
            attempt integer NOT NULL,
            instance text NOT NULL,
            started_at timestamptz NOT NULL,
            PRIMARY KEY (task_id, attempt)
        );
        CREATE TABLE victoria.task_stages (
            task_id text NOT NULL,
            seq bigint NOT NULL,
            stage text NOT NULL,
            step integer,
            detail text NOT NULL DEFAULT '',
            entered_at timestamptz NOT NULL,
            PRIMARY KEY (task_id, seq)
        );
        CREATE TABLE victoria.model_calls (
            task_id text NOT NULL,
            request_id text NOT NULL,
            model text NOT NULL,
            ok boolean NOT NULL,
            error_kind text,
            duration_s double precision NOT NULL,
            time_to_first_token_s double precision,
            prompt_tokens integer,
            completion_tokens integer,
            answered_at timestamptz NOT NULL,
            PRIMARY KEY (task_id, request_id)
        );
        CREATE TABLE victoria.projector_offsets (
            stream text PRIMARY KEY,
            seq bigint NOT NULL
        );
        CREATE TABLE victoria.session_memory (
            task_id text PRIMARY KEY,
            session_id text NOT NULL,
            goal text NOT NULL,
            answer text NOT NULL,
            at timestamptz NOT NULL
        );
        CREATE INDEX session_memory_by_session ON victoria.session_memory (session_id, at DESC);
        """,
    ),
)


async def create_pool(
    dsn: str, *, command_timeout: float, connect_timeout: float, max_size: int = 4
) -> asyncpg.Pool:
    """A small pool; no connection is opened before it is needed (a slow database delays nothing)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=connect_timeout,
    )
    return pool


async def migrate(pool: asyncpg.Pool) -> list[int]:
    """Apply the migrations not applied yet, in order; the versions applied now (none: all were)."""
    applied: list[int] = []
    async with pool.acquire() as conn:
        async with conn.transaction():  # two processes starting together: one creates, one waits
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                f"""
                CREATE SCHEMA IF NOT EXISTS {SCHEMA};
                CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
                    version integer PRIMARY KEY,
                    description text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now()
                );
                """
            )
        for version, description, sql in MIGRATIONS:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                done = await conn.fetchval(
                    f"SELECT 1 FROM {SCHEMA}.schema_migrations WHERE version = $1", version
                )
                if done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.schema_migrations (version, description) VALUES ($1, $2)",
                    version,
                    description,
                )
                applied.append(version)
                log.info("database migration %d applied: %s", version, description)
    return applied
