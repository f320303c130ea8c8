"""Our schema in the users' PostgreSQL (runtime/db.py) and their experts and projects
(gateway/registry.py), against this machine's PostgreSQL, a database per test."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.pg import execute, fetch
from victoria.gateway.registry import (
    DEFAULT_EXPERT,
    Expert,
    Project,
    Registry,
    UnknownProject,
    choose_expert,
    project_slug,
)
from victoria.runtime import db

pytestmark = pytest.mark.usefixtures("strict_loop")

COLUMNS = """SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns
WHERE table_schema IN ('public', 'victoria') ORDER BY 1, 2, 3"""


async def pool_of(dsn: str) -> Any:
    return await db.create_pool(dsn, command_timeout=10, connect_timeout=5)


async def test_migrations_applied_twice_change_nothing(pg_dsn: str) -> None:
    pool = await pool_of(pg_dsn)
    try:
        assert await db.migrate(pool) == [version for version, _, _ in db.MIGRATIONS]
        before = await fetch(pg_dsn, COLUMNS)
        assert await db.migrate(pool) == []
        assert await fetch(pg_dsn, COLUMNS) == before
        together = await asyncio.gather(db.migrate(pool), db.migrate(pool))  # two processes starting
        assert together == [[], []]
    finally:
        await pool.close()


async def test_processes_migrating_a_new_database_at_once_apply_each_migration_once(pg_dsn: str) -> None:
    pools = [await pool_of(pg_dsn) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(db.migrate(pool) for pool in pools))
        assert sorted(v for versions in applied for v in versions) == [v for v, _, _ in db.MIGRATIONS]
    finally:
        for pool in pools:
            await pool.close()


async def test_the_users_tables_their_rows_and_other_tables_come_through_untouched(pg_dsn: str) -> None:
    # What the old server's users already have: the two tables with rows, and tables that are not ours.
    await execute(
        pg_dsn,
        """
        CREATE TABLE experts (id uuid PRIMARY KEY, name text UNIQUE, role text, department text,
            system_prompt text, metadata jsonb, created_at timestamptz);
        CREATE TABLE projects (id uuid PRIMARY KEY, slug text UNIQUE, name text, description text,
            workspace_path text, is_active boolean, created_at timestamptz, updated_at timestamptz);
        CREATE TABLE knowledge_notes (id serial PRIMARY KEY, body text);
        INSERT INTO experts VALUES ('00000000-0000-0000-0000-000000000001', 'Ada', 'DBA', 'data',
            'You are Ada.', '{"team": "core"}', '2026-01-01T00:00:00Z');
        INSERT INTO projects VALUES ('00000000-0000-0000-0000-000000000002', 'alpha', 'Alpha', 'x',
            '/srv/alpha', true, '2026-01-01T00:00:00Z', '2026-01-02T00:00:00Z');
        INSERT INTO knowledge_notes (body) VALUES ('keep me');
        """,
    )
    before = (
        await fetch(pg_dsn, "SELECT * FROM experts"),
        await fetch(pg_dsn, "SELECT * FROM projects"),
        await fetch(pg_dsn, "SELECT * FROM knowledge_notes"),
        [c for c in await fetch(pg_dsn, COLUMNS) if c["table_schema"] == "public"],
    )
    pool = await pool_of(pg_dsn)
    try:
        await db.migrate(pool)
    finally:
        await pool.close()
    after = (
        await fetch(pg_dsn, "SELECT * FROM experts"),
        await fetch(pg_dsn, "SELECT * FROM projects"),
        await fetch(pg_dsn, "SELECT * FROM knowledge_notes"),
        [c for c in await fetch(pg_dsn, COLUMNS) if c["table_schema"] == "public"],
    )
    assert after == before


async def test_missing_experts_and_projects_are_created_with_exactly_the_old_servers_columns(
    pg_dsn: str,
) -> None:
    pool = await pool_of(pg_dsn)
    try:
        await db.migrate(pool)
    finally:
        await pool.close()
    columns = await fetch(pg_dsn, COLUMNS)

    def of(table: str) -> list[tuple[str, str]]:
        return [
            (c["column_name"], c["data_type"])
            for c in columns
            if (c["table_schema"], c["table_name"]) == ("public", table)
        ]

    assert sorted(of("experts")) == sorted(
        [
            ("id", "uuid"),
            ("name", "text"),
            ("role", "text"),
            ("department", "text"),
            ("system_prompt", "text"),
            ("metadata", "jsonb"),
            ("created_at", "timestamp with time zone"),
        ]
    )
    assert sorted(of("projects")) == sorted(
        [
            ("id", "uuid"),
            ("slug", "text"),
            ("name", "text"),
            ("description", "text"),
            ("workspace_path", "text"),
            ("is_active", "boolean"),
            ("created_at", "timestamp with time zone"),
            ("updated_at", "timestamp with time zone"),
        ]
    )
    ours = {c["table_name"] for c in columns if c["table_schema"] == "victoria"}
    assert ours == {
        "schema_migrations",
        "tasks",
        "task_attempts",
        "task_stages",
        "model_calls",
        "projector_offsets",
        "session_memory",
    }


async def test_the_registry_loads_the_users_experts_and_projects_and_sees_changes_within_seconds(
    pg_dsn: str,
) -> None:
    pool = await pool_of(pg_dsn)
    await db.migrate(pool)
    await execute(
        pg_dsn,
        "INSERT INTO experts (name, role, department, system_prompt) VALUES ('Ada', 'database administrator', "
        "'infrastructure', 'You are Ada.'); INSERT INTO projects (slug, workspace_path) VALUES ('alpha', '/srv/a')",
    )
    registry = Registry(pool, experts_timeout=5, projects_timeout=5, refresh=0.2)
    registry.start()
    try:
        assert await registry.wait_first_load(5)
        assert [e.name for e in registry.experts] == ["Ada"]
        project = registry.project("alpha")
        assert project is not None and project.workspace_path == "/srv/a"
        await execute(
            pg_dsn, "INSERT INTO projects (slug, workspace_path, is_active) VALUES ('beta', '/srv/b', false)"
        )
        await execute(pg_dsn, "INSERT INTO projects (slug, workspace_path) VALUES ('gamma', '/srv/g')")
        for _ in range(50):
            if "gamma" in registry.projects:
                break
            await asyncio.sleep(0.1)
        assert registry.project({"slug": "gamma"}) is not None
        with pytest.raises(UnknownProject, match="not active"):
            registry.project("beta")
        with pytest.raises(UnknownProject) as unknown:
            registry.project("omega")
        assert unknown.value.known == ["alpha", "gamma"]
    finally:
        await registry.stop()
        await pool.close()


async def test_a_registry_whose_database_never_answers_stays_on_its_defaults(unused_tcp_server: int) -> None:
    pool = await db.create_pool(
        f"postgresql://postgres@127.0.0.1:{unused_tcp_server}/db", command_timeout=0.5, connect_timeout=0.5
    )
    registry = Registry(pool, experts_timeout=0.5, projects_timeout=0.5, refresh=0.2)
    registry.start()
    try:
        assert not await registry.wait_first_load(5)
        assert registry.error is not None
        assert registry.expert_for("anything", "agent") == DEFAULT_EXPERT
        assert registry.project("alpha") is None  # recorded only, as without a database
    finally:
        await registry.stop()
        await pool.close()


@pytest.fixture
async def unused_tcp_server() -> Any:
    """A socket that accepts connections and never says a word: a database that hangs."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def test_an_expert_is_chosen_by_the_words_of_the_goal_and_the_tasks_category() -> None:
    experts = [
        Expert(name="Ada", role="database administrator", department="infrastructure"),
        Expert(name="Борис", role="разработчик", department="файлы и репозитории"),
        Expert(name="Cleo", role="planner", department="management"),
    ]
    assert choose_expert(experts, "Tune the database indexes", "agent").name == "Ada"
    assert choose_expert(experts, "Покажи файлы репозитория", "files").name == "Борис"
    assert choose_expert(experts, "Migrate everything", "plan").name == "Cleo"
    assert choose_expert(experts, "Write a haiku", "agent") == DEFAULT_EXPERT
    assert choose_expert([], "Tune the database", "agent") == DEFAULT_EXPERT


@pytest.mark.parametrize(
    ("context", "slug"),
    [
        ("alpha", "alpha"),
        ({"slug": "alpha"}, "alpha"),
        ({"project": "alpha", "x": 1}, "alpha"),
        ({"repo": "x"}, None),
        (None, None),
        ("  ", None),
        (5, None),
    ],
)
def test_the_project_a_project_context_names(context: object, slug: str | None) -> None:
    assert project_slug(context) == slug


def test_projects_are_not_checked_before_they_are_loaded() -> None:
    registry = Registry(None, experts_timeout=1, projects_timeout=1, refresh=1)
    assert registry.project("anything") is None
    registry.projects, registry.loaded = {"a": Project(slug="a")}, True
    with pytest.raises(UnknownProject):
        registry.project("anything")
