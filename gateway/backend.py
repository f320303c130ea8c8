"""What the routes depend on: the NATS connection and what is built on it, once it is there."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from victoria.events import subjects
from victoria.gateway.admission import Admission
from victoria.gateway.auth import Tokens
from victoria.gateway.idempotency import IdempotencyStore
from victoria.gateway.mcp import McpEndpoint
from victoria.gateway.metrics import Metrics
from victoria.gateway.registry import Registry
from victoria.gateway.views import TaskViews
from victoria.runtime.config import Config
from victoria.runtime.images import ImageStore
from victoria.runtime.memory import KvMemory, PgMemory
from victoria.runtime.tooltable import ToolTables

if TYPE_CHECKING:  # asyncpg is loaded only where a database is configured
    import asyncpg

READY_CACHE: Final = 1.0  # seconds a /ready answer is reused


class Backend:
    """What the HTTP handlers need: set once NATS is connected, None before (and answers 503)."""

    def __init__(self, nc: NATS, views: TaskViews, config: Config, metrics: Metrics | None = None) -> None:
        self.nc = nc
        self.metrics = metrics or Metrics()
        self.js: JetStreamContext = nc.jetstream()
        self.views = views
        self.config = config
        self.idempotency = IdempotencyStore(self.js)
        self.images = ImageStore(self.js)
        self.pool: asyncpg.Pool | None = None
        self.registry = Registry(
            None,
            experts_timeout=config.startup_experts_timeout,
            projects_timeout=config.startup_registry_timeout,
            refresh=config.registry_refresh,
        )
        self.memory: KvMemory | PgMemory = KvMemory(self.js)
        self.admission = Admission(self.js, config.max_tasks_in_flight)
        self.tool_tables = ToolTables(self.js)
        self._ready_at = 0.0
        self._ready = False

    def use_database(self, pool: asyncpg.Pool) -> None:
        """The users' PostgreSQL: experts, projects, session memory and the task history."""
        self.pool = pool
        self.registry.pool = pool
        self.memory = PgMemory(pool)

    async def close(self) -> None:
        await self.registry.stop()
        if self.pool is not None:
            await self.pool.close()

    async def ready(self) -> bool:
        if not self.nc.is_connected:
            return False
        now = time.monotonic()
        if now - self._ready_at < READY_CACHE:
            return self._ready
        ok = False
        try:
            for stream in subjects.TASK_STREAMS:
                await self.js.stream_info(stream)
            ok = True
        except Exception:  # any failure means "not ready"; the reason is in the NATS log
            ok = False
        self._ready, self._ready_at = ok, now
        return ok


class GatewayState:
    """What lives as long as the process: set before NATS is there (and ``backend`` once it is)."""

    def __init__(self, config: Config, tokens: Tokens | None = None, *, host: str | None = None) -> None:
        self.config = config
        self.tokens = tokens if tokens is not None else Tokens.from_config(config)
        self.metrics = Metrics()
        self.mcp = McpEndpoint(self, host=host or config.host)
        """``/mcp``: the MCP server, started on its first request; ``host`` is the address listened on."""
        self.backend: Backend | None = None
        self.actor: object | None = None
        self.started = time.monotonic()
