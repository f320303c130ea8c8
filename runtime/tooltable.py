"""The tool table of this moment: the table's own tools and those of the MCP servers that are up,
as Veronica's instances record them in ``victoria_mcp`` (``reads.mcp_servers``).

Read at most once every ``every`` seconds, however many ask (the agent at each step of each task,
the gateway at each ``GET /tools``); callers that ask while a read is on its way wait for it. A read
that fails keeps the table read before."""

from __future__ import annotations

import asyncio
import time
from typing import Final

from nats.js import JetStreamContext

from victoria.events.contracts import McpServerState
from victoria.events.tools import BUILTINS, Table
from victoria.runtime import reads

EVERY: Final = 1.0  # seconds a table read is used for


class ToolTables:
    def __init__(self, js: JetStreamContext, *, every: float = EVERY) -> None:
        self.js = js
        self.every = every
        self.table = BUILTINS
        self.servers: list[McpServerState] = []
        """The records the table was made of."""
        self._read_at = -float("inf")
        self._reading: asyncio.Task[None] | None = None

    async def current(self) -> Table:
        if time.monotonic() - self._read_at >= self.every:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._read())
            await asyncio.shield(self._reading)
        return self.table

    async def _read(self) -> None:
        self.servers = await reads.mcp_servers(self.js)
        self.table = Table.of(self.servers)
        self._read_at = time.monotonic()
