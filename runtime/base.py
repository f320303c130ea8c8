"""What every actor has: a NATS connection passed in, a lifecycle, heartbeats."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, ClassVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from victoria import __version__
from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import Heartbeat, utcnow
from victoria.runtime.config import Config
from victoria.runtime.consumer import Handler, WorkConsumer

log = logging.getLogger(__name__)


def resident_bytes() -> int:
    import psutil  # loaded on first heartbeat, not at import

    return int(psutil.Process().memory_info().rss)


class Actor:
    """Base of the actor processes. ``start()`` and ``stop()`` are safe to call twice."""

    name: ClassVar[str] = "actor"

    def __init__(self, nc: NATS, config: Config, *, restarts: int = 0, fenced: bool = True) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.config = config
        self.instance = config.instance
        self.restarts = restarts
        self.fenced = fenced
        """Whether appends to a task's history are fenced (False only on a server older than 2.11,
        run so on purpose: ``VICTORIA_ALLOW_UNFENCED``)."""
        self.started_at = utcnow()
        self._started = False
        self._stopped = False
        self._background: set[asyncio.Task[None]] = set()
        self.crashed = asyncio.Event()
        """Set when a critical background task fails: the process then exits and is restarted."""

    # --- to override ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Subscribe, create consumers. Called once by ``start()``."""

    async def on_stop(self) -> None:
        """Stop taking work and let work in flight end. Called once by ``stop()``."""

    def in_flight(self) -> int:
        return 0

    def health(self) -> tuple[str, str]:
        """("up" | "degraded", detail) for the heartbeat."""
        return "up", ""

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self.on_start()
        # The first heartbeat announces the process: the monitor, which alone may publish service
        # events besides the supervisor, stores its ``service_started`` (pid, version, restarts).
        self.spawn(self._heartbeat_loop())
        log.info("%s instance %s started, pid %d", self.name, self.instance, os.getpid())

    async def stop(self) -> None:
        if not self._started or self._stopped:
            return
        self._stopped = True
        await self.on_stop()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        log.info("%s instance %s stopped", self.name, self.instance)

    async def __aenter__(self) -> Actor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def consume_tasks(
        self,
        *,
        durable: str,
        kind: subjects.TaskKind | None,
        concurrency: int,
        handler: Handler,
        max_deliver: int = -1,
        max_ack_pending: int = 20_000,
    ) -> list[WorkConsumer]:
        """One durable consumer of ``kind`` events (every event of every task, model results
        included, for None) per task shard, ``concurrency`` handlers in all."""
        gate = asyncio.Semaphore(concurrency)
        per_shard = max(1, -(-concurrency // subjects.TASK_SHARDS))
        return [
            await self.start_consumer(
                WorkConsumer(
                    self.nc,
                    stream=subjects.task_stream(shard),
                    durable=durable,
                    filter_subject=_filter(shard, kind),
                    ack_wait=self.config.ack_wait,
                    concurrency=per_shard,
                    handler=handler,
                    max_deliver=max_deliver,
                    max_ack_pending=max_ack_pending,
                    gate=gate,
                )
            )
            for shard in range(subjects.TASK_SHARDS)
        ]

    async def start_consumer(self, consumer: WorkConsumer) -> WorkConsumer:
        """Start a work consumer whose loop, if it ever fails, takes the actor down with it."""
        await consumer.start()
        assert consumer.task is not None
        consumer.task.add_done_callback(
            lambda t: None if t.cancelled() or self._stopped else self.crashed.set()
        )
        return consumer

    def spawn(self, coro: Coroutine[Any, Any, None], *, critical: bool = False) -> asyncio.Task[None]:
        """Run ``coro`` in the background; if ``critical`` and it fails, the actor crashes."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

        def done(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())
            if critical:
                self.crashed.set()

        task.add_done_callback(done)
        return task

    async def heartbeat(self) -> None:
        status, detail = self.health()
        beat = Heartbeat(
            name=self.name,
            instance=self.instance,
            pid=os.getpid(),
            rss_bytes=resident_bytes(),
            in_flight=self.in_flight(),
            version=__version__,
            interval_s=self.config.heartbeat_interval,
            started_at=self.started_at,
            status="degraded" if status == "degraded" else "up",
            detail=detail,
            restarts=self.restarts,
        )
        if self.nc.is_connected:
            await self.nc.publish(subjects.heartbeat(self.name, self.instance), encode(beat))

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception as exc:  # a missed beat is reported by the monitor, not fatal here
                log.warning("heartbeat not sent: %s", exc)
            await asyncio.sleep(self.config.heartbeat_interval)


def _filter(shard: int, kind: subjects.TaskKind | None) -> str:
    return subjects.shard_events(shard) if kind is None else subjects.shard_events_of_kind(shard, kind)
