"""Probes of dependencies outside the system, with Kubernetes-style thresholds.

A probe starts after ``initial_delay``, checks every ``interval`` with a ``timeout``, and flips to
``down`` after ``failure_threshold`` failures in a row, back to ``up`` after ``success_threshold``
successes in a row. Only flips are reported. A model server that a runner's call streams from is
``busy`` (``ProbeState.serving``): it is not asked meanwhile, and counts as up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import httpx


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    name: str
    """The dependency's name in /services and in its events' subjects."""
    target: str
    """What is checked: a URL, or a PostgreSQL DSN (reported without its password)."""
    kind: Literal["http", "postgres"]
    initial_delay: float = 1.0
    interval: float = 10.0
    timeout: float = 3.0
    failure_threshold: int = 3
    success_threshold: int = 1


@dataclass(slots=True)
class ProbeState:
    spec: ProbeSpec
    status: Literal["unknown", "up", "busy", "down"] = "unknown"
    failures: int = 0
    successes: int = 0
    last_error: str | None = None
    last_checked: datetime | None = None
    busy_reason: str = ""

    def record(self, error: str | None) -> Literal["up", "down"] | None:
        """Count one result; return the new status if it flipped."""
        ok = error is None
        self.successes = self.successes + 1 if ok else 0
        self.failures = 0 if ok else self.failures + 1
        self.last_error = error
        status: Literal["up", "down"] = "up" if ok else "down"
        count = self.successes if ok else self.failures
        threshold = self.spec.success_threshold if ok else self.spec.failure_threshold
        if self.status == "busy" and ok:
            self.status = "up"  # it was up all along: no news
            return None
        if self.status == status or count < threshold:
            return None
        self.status = status
        return status

    def serving(self, reason: str) -> Literal["up"] | None:
        """A runner's call streams from the server: ``busy``, not asked. Returns ``up`` when that
        is a flip (it was down)."""
        flipped: Literal["up"] | None = "up" if self.status == "down" else None
        self.status, self.busy_reason = "busy", reason
        self.failures, self.last_error = 0, None
        return flipped


def redact(dsn: str) -> str:
    """A DSN fit for logs and events: the password replaced."""
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else dsn


async def check_http(client: httpx.AsyncClient, url: str, timeout: float) -> str | None:
    """None when the URL answers 2xx/3xx; otherwise what went wrong, in words."""
    try:
        response = await client.get(url, timeout=timeout)
    except httpx.ConnectError as exc:
        return f"connection refused or unreachable: {exc}" if str(exc) else "connection refused"
    except httpx.TimeoutException:
        return f"timeout after {timeout:g}s"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if response.status_code >= 400:
        return f"HTTP {response.status_code}"
    return None


async def check_postgres(dsn: str, timeout: float) -> str | None:
    import asyncpg  # loaded on first probe, not at start

    try:
        async with asyncio.timeout(timeout):
            conn = await asyncpg.connect(dsn, timeout=timeout)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close(timeout=timeout)
    except TimeoutError:
        return f"timeout after {timeout:g}s"
    except (OSError, asyncpg.PostgresError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None
