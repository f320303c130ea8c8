"""A database of its own for a test, on this machine's PostgreSQL (127.0.0.1:5432, trust auth),
created from the database ``test`` and dropped after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def execute(dsn: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def fetch(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return [dict(row) for row in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    name = f"victoria_t_{uuid.uuid4().hex[:12]}"
    asyncio.run(execute(ADMIN_DSN, f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(execute(ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
