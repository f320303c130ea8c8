"""``victoria db migrate``, ``victoria experts`` and ``victoria projects``: the users' PostgreSQL,
straight from the command line (``VICTORIA_POSTGRES_DSN`` or ``DATABASE_URL``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

import asyncpg

from victoria.errors import ConfigError
from victoria.runtime import db
from victoria.runtime.config import Config

EXPERT_FIELDS: Final = ("name", "role", "department", "system_prompt")
PROJECT_FIELDS: Final = ("slug", "name", "description", "workspace_path", "is_active")


def add_commands(sub: Any) -> None:
    database = sub.add_parser("db", help="the PostgreSQL schema")
    database.add_argument("action", choices=("migrate",))

    _table_command(
        sub,
        "experts",
        "name",
        {"--role": {}, "--department": {}, "--prompt": {"help": "the expert's system prompt"}},
    )
    _table_command(
        sub,
        "projects",
        "slug",
        {
            "--name": {},
            "--description": {},
            "--path": {"help": "the project's workspace"},
            "--active": {"action": argparse.BooleanOptionalAction, "default": None},
        },
    )


def _table_command(sub: Any, table: str, key: str, options: dict[str, dict[str, Any]]) -> None:
    """``victoria TABLE [list|add|set] [KEY] [options] [--json]``."""
    parser = sub.add_parser(table, help=f"list, add or change the {table} (PostgreSQL)")
    parser.add_argument("action", choices=("list", "add", "set"), nargs="?", default="list")
    parser.add_argument(key, nargs="?")
    for option, settings in options.items():
        parser.add_argument(option, **settings)
    parser.add_argument("--json", action="store_true")


async def run(args: argparse.Namespace, config: Config) -> int:
    if not config.postgres_dsn:
        raise ConfigError("VICTORIA_POSTGRES_DSN", "not set (nor DATABASE_URL): no database to work on")
    pool = await db.create_pool(
        config.postgres_dsn,
        command_timeout=config.db_command_timeout,
        connect_timeout=config.db_connect_timeout,
    )
    try:
        if args.command == "db":
            applied = await db.migrate(pool)
            print(f"applied migrations {applied}" if applied else "the schema is up to date", flush=True)
            return 0
        await db.migrate(pool)
        if args.command == "experts":
            return await _experts(pool, args)
        return await _projects(pool, args)
    except asyncpg.PostgresError as exc:
        print(f"victoria: PostgreSQL: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        await pool.close()


async def _experts(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    if args.action != "list":
        if not args.name:
            raise ConfigError("name", "give the expert's name")
        changes = {"role": args.role, "department": args.department, "system_prompt": args.prompt}
        await _upsert(pool, "experts", "name", args.name, changes, create=args.action == "add")
    rows = await pool.fetch(f"SELECT {', '.join(EXPERT_FIELDS)} FROM experts ORDER BY name")
    _show([dict(r) for r in rows], EXPERT_FIELDS, as_json=args.json)
    return 0


async def _projects(pool: asyncpg.Pool, args: argparse.Namespace) -> int:
    if args.action != "list":
        if not args.slug:
            raise ConfigError("slug", "give the project's slug")
        changes = {
            "name": args.name,
            "description": args.description,
            "workspace_path": args.path,
            "is_active": args.active,
        }
        await _upsert(pool, "projects", "slug", args.slug, changes, create=args.action == "add")
        if args.action == "set":
            await pool.execute("UPDATE projects SET updated_at = now() WHERE slug = $1", args.slug)
    rows = await pool.fetch(f"SELECT {', '.join(PROJECT_FIELDS)} FROM projects ORDER BY slug")
    _show([dict(r) for r in rows], PROJECT_FIELDS, as_json=args.json)
    return 0


async def _upsert(
    pool: asyncpg.Pool, table: str, key: str, value: str, changes: dict[str, Any], *, create: bool
) -> None:
    given = {column: v for column, v in changes.items() if v is not None}
    if create:
        columns = [key, *given]
        marks = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
        await pool.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", value, *given.values()
        )
        return
    if not given:
        return
    sets = ", ".join(f"{column} = ${n}" for n, column in enumerate(given, start=2))
    done = await pool.execute(f"UPDATE {table} SET {sets} WHERE {key} = $1", value, *given.values())
    if done.endswith(" 0"):
        raise ConfigError(key, f"no {table[:-1]} {value!r}; `add` makes one")


def _show(rows: list[dict[str, Any]], fields: tuple[str, ...], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2, default=str), flush=True)
        return
    for row in rows:
        print(
            "  ".join(f"{field}={row[field]!s}" for field in fields if row[field] not in (None, "")),
            flush=True,
        )
