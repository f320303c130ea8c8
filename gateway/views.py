"""Task status for the gateway: folds of task events, cached, always rebuildable from the stream.

The cache is only a cache. A task not in it is replayed from JetStream on demand; live events
reach cached tasks through one ordered consumer. Several gateways each keep their own folds of the
same log, so they agree. Events that arrive while a task is being replayed are buffered and applied
after it, by stream sequence, so none is lost or applied twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.client import JetStreamContext as _JS

from victoria.events import subjects
from victoria.events.contracts import AnyTaskEvent, TaskSubmitted
from victoria.events.fold import TaskHistory
from victoria.runtime import bus

log = logging.getLogger(__name__)

MAX_CACHED: Final = 20_000  # task folds kept in memory (about 1-2 KB each)
STATUS_KINDS: Final[tuple[subjects.TaskKind, ...]] = (
    "submitted",
    "started",
    "stage",
    "llm_request",  # the first request of a stage (or of attempt 1) records its start
    "cancel",
    "completed",
    "failed",
    "cancelled",
)


class _Entry:
    """One cached task. Lists are made only while needed: a cache of 20,000 entries is 40,000
    objects for the garbage collector to walk, not 100,000."""

    __slots__ = ("buffer", "history", "loading", "waiters")

    def __init__(self, task_id: str) -> None:
        self.history = TaskHistory(task_id, memo=False)
        self.loading: asyncio.Future[None] | None = None
        self.buffer: list[tuple[int, AnyTaskEvent]] | None = None
        self.waiters: list[asyncio.Future[None]] | None = None


class TaskViews:
    def __init__(self, js: JetStreamContext, observer: Callable[[AnyTaskEvent], None] | None = None) -> None:
        self.js = js
        self.observer = observer
        self.cache: OrderedDict[str, _Entry] = OrderedDict()
        self._subs: list[_JS.PushSubscription] = []

    async def start(self) -> None:
        for shard in range(subjects.TASK_SHARDS):
            self._subs.append(
                await self.js.subscribe(
                    subjects.shard_events(shard),
                    stream=subjects.task_stream(shard),
                    ordered_consumer=True,
                    deliver_policy=jsapi.DeliverPolicy.NEW,
                    idle_heartbeat=2.0,
                    cb=self._on_event,
                    # Tool and model results change no status field; /metrics takes model calls
                    # from the terminal event.
                    config=jsapi.ConsumerConfig(
                        filter_subjects=[subjects.shard_events_of_kind(shard, kind) for kind in STATUS_KINDS]
                    ),
                )
            )

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may already be gone
                log.debug("unsubscribe: %s", exc)

    def forget_all(self) -> None:
        """After a reconnect the cache may have missed events: drop it; reads replay."""
        for task_id, entry in list(self.cache.items()):
            if entry.loading is None and not entry.waiters:
                del self.cache[task_id]

    async def _on_event(self, msg: Msg) -> None:
        event = bus.decode_task_event(msg.data, msg.subject)
        if event is None:
            return
        seq = bus.stream_sequence(msg)
        if self.observer is not None:
            try:
                self.observer(event)
            except Exception:  # metrics must never break status
                log.exception("metrics observer failed")
        entry = self.cache.get(event.task_id)
        if entry is None:
            if not isinstance(event, TaskSubmitted):
                return
            entry = self._put(event.task_id)
        if entry.loading is not None:
            if entry.buffer is None:
                entry.buffer = []
            entry.buffer.append((seq, event))
            return
        self._apply(entry, seq, event)

    def _apply(self, entry: _Entry, seq: int, event: AnyTaskEvent) -> None:
        if entry.history.apply(event, seq) and entry.waiters and entry.history.terminal:
            waiters, entry.waiters = entry.waiters, None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _put(self, task_id: str) -> _Entry:
        entry = _Entry(task_id)
        self.cache[task_id] = entry
        while len(self.cache) > MAX_CACHED:
            self.cache.popitem(last=False)
        return entry

    def record(self, event: TaskSubmitted, seq: int) -> None:
        """The gateway's own submission, known before the live consumer sees it."""
        entry = self.cache.get(event.task_id) or self._put(event.task_id)
        self._apply(entry, seq, event)

    async def get(self, task_id: str) -> TaskHistory | None:
        """The task's fold, or None if the log has no event of it."""
        entry = self.cache.get(task_id)
        if entry is not None:
            self.cache.move_to_end(task_id)
            if entry.loading is not None:
                await asyncio.shield(entry.loading)
            return entry.history if entry.history.submitted is not None else None
        entry = self._put(task_id)
        entry.loading = asyncio.get_running_loop().create_future()
        try:
            events = await bus.read_task_events(self.js, task_id)
            for seq, event in events:
                entry.history.apply(event, seq)
            for seq, event in sorted(entry.buffer or (), key=lambda item: item[0]):
                entry.history.apply(event, seq)
        except BaseException:
            self.cache.pop(task_id, None)
            raise
        finally:
            entry.buffer = None
            loading, entry.loading = entry.loading, None
            if not loading.done():
                loading.set_result(None)
        if entry.history.submitted is None:
            self.cache.pop(task_id, None)
            return None
        return entry.history

    async def wait_terminal(self, task_id: str, timeout: float) -> None:
        """Wait until a cached task's terminal event is applied, or ``timeout`` seconds."""
        entry = self.cache.get(task_id)
        if entry is None or timeout <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if entry.waiters is None:
            entry.waiters = []
        entry.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            if entry.waiters is not None and waiter in entry.waiters:
                entry.waiters.remove(waiter)
                if not entry.waiters:
                    entry.waiters = None
