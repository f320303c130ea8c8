"""Admission control: past ``VICTORIA_MAX_TASKS_IN_FLIGHT`` tasks queued or running, new tasks are
refused with 503 and ``Retry-After`` rather than queued without end.

The count is the agent's durable consumer on the task streams: messages not yet delivered (queued)
plus delivered and not yet acknowledged (running); the same for every gateway, since it lives in
JetStream. It is read at most every ``REFRESH`` seconds (one read shared by the requests that
arrive meanwhile), and the tasks this gateway accepted since the last read are added to it, so a
burst cannot slip through between two reads.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import nats.errors
from nats.js import JetStreamContext

from victoria.gateway.metrics import consumer_counts

log = logging.getLogger(__name__)

REFRESH: Final = 0.5  # seconds a count of tasks in flight is reused
RETRY_AFTER: Final = 5  # seconds, what a refused client is told to wait
AGENT_CONSUMER: Final = "victoria"


class Overloaded(Exception):
    """Too many tasks are queued or running: the route answers 503 with ``Retry-After``."""

    def __init__(self, in_flight: int, limit: int) -> None:
        super().__init__(
            f"{in_flight} tasks are queued or running, the limit is {limit} "
            f"(VICTORIA_MAX_TASKS_IN_FLIGHT); retry after {RETRY_AFTER}s"
        )
        self.in_flight = in_flight
        self.limit = limit


class Admission:
    def __init__(self, js: JetStreamContext, limit: int) -> None:
        self.js = js
        self.limit = limit
        """0: no limit."""
        self.refused = 0
        self._count = 0
        self._read_at = float("-inf")
        self._accepted_since = 0
        self._reading: asyncio.Task[None] | None = None

    async def admit(self) -> None:
        """Return if one more task may be taken (and count it), else raise ``Overloaded``."""
        if self.limit <= 0:
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._read_at > REFRESH:
            if self._reading is None or self._reading.done():
                self._reading = asyncio.create_task(self._read())
            await asyncio.shield(self._reading)
        in_flight = self._count + self._accepted_since
        if in_flight >= self.limit:
            self.refused += 1
            raise Overloaded(in_flight, self.limit)
        self._accepted_since += 1

    async def _read(self) -> None:
        try:
            queued, running = await consumer_counts(self.js, AGENT_CONSUMER)
        except (nats.errors.Error, TimeoutError) as exc:  # the last count stands
            log.debug("tasks in flight not read: %s", exc)
            return
        self._count, self._accepted_since = queued + running, 0
        self._read_at = asyncio.get_running_loop().time()
