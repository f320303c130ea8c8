"""Following one task as it happens: its stored events from the first, then live, with the
model's words in between. Two renderings use it: ``GET /run/{id}/events`` (our events as they
are) and ``POST /stream`` (the old server's step, chunk, error and end lines)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi

from victoria.events import subjects
from victoria.events.contracts import TERMINAL_EVENTS, AnyTaskEvent
from victoria.runtime import reads

log = logging.getLogger(__name__)

KEEPALIVE: Final = 10.0  # seconds of silence after which a keep-alive is due
QUEUE: Final = 10_000  # messages waiting for a slow reader; past it, tokens are dropped (not events)


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored event of the task: its stream sequence, its type tag, its payload and itself."""

    seq: int
    tag: str
    data: bytes
    event: AnyTaskEvent

    @property
    def terminal(self) -> bool:
        return isinstance(self.event, TERMINAL_EVENTS)


@dataclass(frozen=True, slots=True)
class Tokens:
    """A batch of the model's words (a ``token_chunk`` payload, not stored)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Quiet:
    """Nothing happened for ``KEEPALIVE`` seconds."""


@dataclass(frozen=True, slots=True)
class Progress:
    """A ``model_wait`` payload: the task's model call waits for its model (not stored)."""

    data: bytes


Followed = Stored | Tokens | Progress | Quiet


class Follower:
    """One task followed: ``start()`` subscribes (before the task is submitted, so that no word of
    the model is missed), ``items()`` yields until the terminal event, ``close()`` unsubscribes."""

    def __init__(self, js: JetStreamContext, nc: NATS, task_id: str) -> None:
        self.js = js
        self.nc = nc
        self.task_id = task_id
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=QUEUE)
        self._subs: list[Any] = []

    async def _put(self, msg: Msg) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a reader this slow loses tokens, not events
            self._queue.put_nowait(msg)

    async def start(self) -> None:
        if self._subs:
            return
        self._subs.append(await self.nc.subscribe(subjects.tokens(self.task_id), cb=self._put))
        self._subs.append(await self.nc.subscribe(subjects.progress(self.task_id), cb=self._put))
        self._subs.append(
            await self.js.subscribe(
                subjects.task_events(self.task_id),
                stream=subjects.task_stream_of(self.task_id),
                ordered_consumer=True,
                deliver_policy=jsapi.DeliverPolicy.ALL,
                idle_heartbeat=5.0,
                cb=self._put,
            )
        )

    async def items(self) -> AsyncIterator[Followed]:
        """Everything about the task, until (and with) its terminal event."""
        await self.start()
        while True:
            try:
                msg = await asyncio.wait_for(self._queue.get(), KEEPALIVE)
            except TimeoutError:
                yield Quiet()
                continue
            if msg.subject.startswith(f"{subjects.PREFIX}.tokens."):
                yield Tokens(bytes(msg.data))
                continue
            if msg.subject.startswith(f"{subjects.PREFIX}.progress."):
                yield Progress(bytes(msg.data))
                continue
            event = reads.decode_task_event(msg.data, msg.subject)
            if event is None:
                continue
            stored = Stored(
                reads.stream_sequence(msg), str(type(event).__struct_config__.tag), bytes(msg.data), event
            )
            yield stored
            if stored.terminal:
                return

    async def close(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be gone; the consumer expires by itself
                log.debug("unsubscribe: %s", exc)


async def follow(js: JetStreamContext, nc: NATS, task_id: str) -> AsyncIterator[Followed]:
    """Everything about a task that exists already, until (and with) its terminal event."""
    follower = Follower(js, nc, task_id)
    try:
        async for item in follower.items():
            yield item
    finally:
        await follower.close()
