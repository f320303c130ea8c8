"""Task status for the gateway: folds of task events, cached, always rebuildable from the stream.

The cache is only a cache. A task not in it is replayed from JetStream on demand; live events
reach cached tasks through one ordered consumer. Several gateways each keep their own folds of the
same log, so they agree. Events that arrive while a task is being replayed are buffered and applied
after it, by stream sequence, so none is lost or applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.client import JetStreamContext as _JS

from victoria.events import subjects
from victoria.events.contracts import AnyTaskEvent, ModelWait, TaskSubmitted
from victoria.events.fold import TaskHistory
from victoria.runtime import reads

log = logging.getLogger(__name__)

MAX_CACHED: Final = 20_000  # task folds kept in memory (about 1-2 KB each)
RECHECK_AFTER: Final = 10.0  # seconds of silence after which a running task is read again
MODEL_WAIT_STALE: Final = 15.0  # seconds: a wait the runner has not repeated since is forgotten
_model_wait: Final = msgspec.json.Decoder(ModelWait)
STATUS_KINDS: Final[tuple[subjects.TaskKind, ...]] = (
    "submitted",
    "started",
    "stage",
    "llm_request",  # the first request of a stage (or of attempt 1) records its start
    "approval_request",
    "cancel",
    "completed",
    "failed",
    "cancelled",
)


class _Entry:
    """One cached task. Lists are made only while needed: a cache of 20,000 entries is 40,000
    objects for the garbage collector to walk, not 100,000."""

    __slots__ = ("buffer", "checked", "history", "loading", "waiters")

    def __init__(self, task_id: str) -> None:
        self.history = TaskHistory(task_id, memo=False)
        self.checked = time.monotonic()
        """When the stream or the live feed last told this entry something."""
        self.loading: asyncio.Future[None] | None = None
        self.buffer: list[tuple[int, AnyTaskEvent]] | None = None
        self.waiters: list[asyncio.Future[None]] | None = None


class TaskViews:
    def __init__(
        self,
        js: JetStreamContext,
        observer: Callable[[AnyTaskEvent], None] | None = None,
        *,
        nc: NATS | None = None,
    ) -> None:
        self.js = js
        self.observer = observer
        self.nc = nc
        self.cache: OrderedDict[str, _Entry] = OrderedDict()
        self._subs: list[_JS.PushSubscription] = []
        self.model_waits: OrderedDict[str, tuple[ModelWait, float]] = OrderedDict()
        """Model calls waiting for their model, by task (from the runners' progress messages)."""
        self._progress: Subscription | None = None
        self.listeners: list[Callable[[TaskHistory], None]] = []
        """Called with a task's fold after each live event applied to it (``GET /tasks/events``)."""
        self.backfill: asyncio.Task[None] | None = None
        """The read of the tasks submitted before this gateway started (``GET /tasks``), once."""

    def model_wait(self, task_id: str) -> dict[str, Any] | None:
        """The task's model call waiting for its model, or None."""
        found = self.model_waits.get(task_id)
        if found is None:
            return None
        wait, seen = found
        if time.monotonic() - seen > MODEL_WAIT_STALE:
            del self.model_waits[task_id]
            return None
        return {
            "model": wait.model,
            "place": wait.place,
            "request_id": wait.request_id,
            "waited_s": wait.waited_s,
        }

    async def _on_progress(self, msg: Msg) -> None:
        try:
            wait = _model_wait.decode(msg.data)
        except msgspec.DecodeError:
            return
        if not wait.waiting:
            found = self.model_waits.get(wait.task_id)
            if found is not None and found[0].request_id == wait.request_id:
                del self.model_waits[wait.task_id]
            return
        self.model_waits[wait.task_id] = (wait, time.monotonic())
        self.model_waits.move_to_end(wait.task_id)
        while len(self.model_waits) > MAX_CACHED:
            self.model_waits.popitem(last=False)

    async def start(self) -> None:
        if self.nc is not None:
            self._progress = await self.nc.subscribe(subjects.ALL_PROGRESS, cb=self._on_progress)
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
                    # from the terminal event. A decision on an approval ends a wait.
                    config=jsapi.ConsumerConfig(
                        filter_subjects=[
                            *(subjects.shard_events_of_kind(shard, kind) for kind in STATUS_KINDS),
                            subjects.shard_approvals(shard),
                        ]
                    ),
                )
            )

    async def stop(self) -> None:
        if self._progress is not None:
            progress, self._progress = self._progress, None
            try:
                await progress.unsubscribe()
            except Exception as exc:  # the connection may already be gone
                log.debug("unsubscribe: %s", exc)
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
        event = reads.decode_task_event(msg.data, msg.subject)
        if event is None:
            return
        seq = reads.stream_sequence(msg)
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
        entry.checked = time.monotonic()
        if entry.history.apply(event, seq):
            self._changed(entry)

    def _changed(self, entry: _Entry) -> None:
        if entry.waiters and entry.history.terminal:
            waiters, entry.waiters = entry.waiters, None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        for listener in self.listeners:
            try:
                listener(entry.history)
            except Exception:  # a watcher must never break status
                log.exception("task listener failed")

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
        """The task's fold, or None if the log has no event of it.

        A cached task that is not finished and has heard nothing for ``RECHECK_AFTER`` seconds is
        read from the stream again: a live feed can go quiet without a word (its consumer lived on
        a server that died, and nats-py's ordered consumer is recreated only when it can be)."""
        entry = self.cache.get(task_id)
        if entry is not None:
            self.cache.move_to_end(task_id)
            if entry.loading is not None:
                await asyncio.shield(entry.loading)
            elif not entry.history.terminal and time.monotonic() - entry.checked > RECHECK_AFTER:
                await self._load(entry, forget_on_error=False)
            return entry.history if entry.history.submitted is not None else None
        entry = self._put(task_id)
        await self._load(entry, forget_on_error=True)
        if entry.history.submitted is None:
            self.cache.pop(task_id, None)
            return None
        return entry.history

    async def _load(self, entry: _Entry, *, forget_on_error: bool) -> None:
        """Apply the task's events from the stream (and those the live feed brought meanwhile)."""
        entry.loading = asyncio.get_running_loop().create_future()
        try:
            events = await reads.task_events(self.js, entry.history.task_id)
            buffered = sorted(entry.buffer or (), key=lambda item: item[0])
            applied = [entry.history.apply(event, seq) for seq, event in (*events, *buffered)]
            entry.checked = time.monotonic()
            if not forget_on_error and any(applied):
                log.info(
                    "task %s: the live feed had missed events; read from the stream", entry.history.task_id
                )
                self._changed(entry)
        except BaseException:
            if forget_on_error:
                self.cache.pop(entry.history.task_id, None)
            raise
        finally:
            entry.buffer = None
            loading, entry.loading = entry.loading, None
            if not loading.done():
                loading.set_result(None)

    async def wait_terminal(self, task_id: str, timeout: float) -> None:
        """Wait until a cached task's terminal event is applied, or ``timeout`` seconds."""
        entry = self.cache.get(task_id)
        if entry is None or entry.history.terminal or timeout <= 0:
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
