"""Log records as events: a logging handler that publishes each record on ``victoria.log.<actor>.<level>``.

``BusLogHandler`` has two halves that share one bounded buffer:

- ``emit()`` runs in whatever thread logs. It turns the record into a ``LogRecord`` event, encodes it
  and appends ``(subject, bytes)`` to the buffer. It never raises, never blocks on I/O and never calls
  into the event loop except through ``loop.call_soon_threadsafe`` (guarded against a closed loop), so
  the handler can be installed at process start, before any event loop exists.
- ``attach(nc)``, called inside the running loop once the process has connected to NATS, starts one
  flusher task that drains the buffer with core NATS ``publish``; the memory stream ``VICTORIA_LOGS``
  captures what is published.

Delivery is at most once. Drop policy, all counted in ``BusLogHandler.dropped``:

- A record that finds the buffer full is discarded (the newest record is dropped; the records already
  buffered, which are the oldest, are kept).
- While NATS is disconnected the flusher publishes nothing: records stay in the buffer, which keeps
  filling under the rule above, instead of going into the client's reconnect buffer. They are
  published after the reconnect.
- A publish that raises counts one drop; the flusher carries on.
- A record that cannot be formatted or encoded counts one drop.
- Once ``aclose()`` or ``close()`` has begun, new records are dropped, and whatever is still buffered
  when it ends (the timeout ran out, or NATS stayed away) is dropped.

Records published just before a connection dies unnoticed are lost without being counted: core NATS
gives no acknowledgement.

Records of the nats client's own loggers (``nats`` and ``nats.*``) are never published: while NATS is
away they would describe the outage to the outage. They are neither buffered nor counted; other
handlers (stderr) still see them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import threading
from datetime import UTC, datetime
from typing import Final

from nats.aio.client import Client as NATS

from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import LogRecord
from victoria.runtime.context import current_task_id, current_trace_id

DEFAULT_CAPACITY: Final = 10_000  # records held while nobody publishes them
RECONNECT_POLL: Final = 0.1  # seconds between checks of a disconnected connection
YIELD_EVERY: Final = 256  # publishes between two yields to the event loop
MAX_MESSAGE_CHARS: Final = 65_536  # longer messages are cut, far below the 1 MB max payload
EXCLUDED_LOGGER: Final = "nats"  # this logger and its children are not published

_formatter: Final = logging.Formatter()
_NOT_TOKEN: Final = re.compile(r"[^A-Za-z0-9_-]")


class BusLogHandler(logging.Handler):
    """Publishes log records as ``LogRecord`` events on ``victoria.log.<actor>.<level>``.

    ``actor`` must be a valid subject token (``ValueError`` otherwise); ``instance`` goes into each
    record. ``capacity`` is the most records held in the buffer before new ones are dropped.
    """

    def __init__(self, actor: str, instance: str, *, capacity: int = DEFAULT_CAPACITY) -> None:
        subjects.log(actor, "info")  # fails here, at start, on an actor name that is not a token
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        super().__init__()
        self.actor: Final = actor
        self.instance: Final = instance
        self.capacity: Final = capacity
        self.dropped: int = 0
        """Records not published: buffer full, publish failed, unformattable, or emitted after close."""
        self._lock = threading.Lock()
        self._buffer: collections.deque[tuple[str, bytes]] = collections.deque()
        self._subjects: dict[str, str] = {}
        self._closed = False
        self._stopping = False
        self._signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._nc: NATS | None = None

    @property
    def pending(self) -> int:
        """Records in the buffer, waiting to be published."""
        with self._lock:
            return len(self._buffer)

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` or ``close()`` has begun."""
        return self._closed

    # --- any thread ----------------------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        """Buffer ``record`` as an encoded ``LogRecord`` event. Never raises, never waits for I/O."""
        try:
            name = record.name
            if name == EXCLUDED_LOGGER or name.startswith(EXCLUDED_LOGGER + "."):
                return
            item = (self._subject(record.levelname), encode(self._event(record)))
        except Exception:  # a record we cannot render is counted, not raised into the caller
            with self._lock:
                self.dropped += 1
            return
        with self._lock:
            if self._closed or len(self._buffer) >= self.capacity:
                self.dropped += 1
                return
            self._buffer.append(item)
            loop = self._loop
            if loop is None or self._signalled:
                return
            self._signalled = True
        # A closed loop raises RuntimeError: the record then waits for the next attach() or close.
        with contextlib.suppress(Exception):
            loop.call_soon_threadsafe(self._wake)

    def close(self) -> None:
        """Stop at once, without flushing: buffered records are dropped. Safe from any thread.

        ``logging.shutdown()`` calls this at exit. Prefer ``await aclose()`` inside the loop.
        """
        self._shut()
        task, loop = self._task, self._loop
        with self._lock:
            self._loop = None
        if task is not None and loop is not None and not task.done():
            with contextlib.suppress(Exception):  # a closed loop took the task with it
                loop.call_soon_threadsafe(task.cancel)
        super().close()

    # --- inside the running loop ---------------------------------------------------------------
    def attach(self, nc: NATS) -> None:
        """Start publishing through ``nc``: one flusher task on the running loop.

        Call it inside the loop, after connecting. Records buffered before are published first.
        ``RuntimeError`` without a running loop, after ``aclose()``/``close()``, or while a flusher
        is still running; a handler whose flusher ended because its connection closed may be
        attached again to a new connection.
        """
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RuntimeError("BusLogHandler is closed")
        if self._task is not None and not self._task.done():
            raise RuntimeError("BusLogHandler is already attached")
        self._nc = nc
        self._wakeup = asyncio.Event()
        self._task = loop.create_task(self._run(nc, self._wakeup), name=f"logbus-{self.actor}")
        with self._lock:
            self._loop = loop
            self._signalled = True  # the task drains the buffer when it starts

    async def aclose(self, timeout: float = 2.0) -> None:
        """Publish what is buffered, within ``timeout`` seconds, and stop the flusher.

        Records emitted from now on are dropped and counted; so are records still buffered when the
        timeout runs out or if NATS stays away. A second call returns at once. Call it on the loop
        that ``attach()`` ran on, before draining or closing the connection.
        """
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task, wakeup, nc = self._task, self._wakeup, self._nc
        with self._lock:
            self._closed = True
        try:
            if task is not None and wakeup is not None and not task.done():
                self._stopping = True
                wakeup.set()
                await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
            if nc is not None and nc.is_connected and not nc.is_draining:
                remaining = deadline - loop.time()
                # nats-py's flush takes whole seconds, and cancelling it from outside breaks its
                # PONG bookkeeping: flush only when a full second is left.
                if remaining >= 1.0:
                    # A failed flush loses nothing more: the records were handed to the client.
                    with contextlib.suppress(Exception):
                        await nc.flush(timeout=int(remaining))
        finally:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task})
            self._shut()
            with self._lock:
                self._loop = None

    # --- internals -----------------------------------------------------------------------------
    def _shut(self) -> None:
        with self._lock:
            self._closed = True
            self.dropped += len(self._buffer)
            self._buffer.clear()

    def _subject(self, levelname: str) -> str:
        subject = self._subjects.get(levelname)
        if subject is None:
            token = _NOT_TOKEN.sub("_", levelname)[:64] or "unknown"
            subject = self._subjects[levelname] = subjects.log(self.actor, token)
        return subject

    def _event(self, record: logging.LogRecord) -> LogRecord:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{record.exc_text or _formatter.formatException(record.exc_info)}"
        elif record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{_formatter.formatStack(record.stack_info)}"
        if len(message) > MAX_MESSAGE_CHARS:
            cut = len(message) - MAX_MESSAGE_CHARS
            message = f"{message[:MAX_MESSAGE_CHARS]}\n[{cut} characters cut]"
        task_id = getattr(record, "task_id", None)
        trace_id = getattr(record, "trace_id", None)
        return LogRecord(
            ts=datetime.fromtimestamp(record.created, UTC),
            actor=self.actor,
            instance=self.instance,
            pid=record.process if record.process is not None else os.getpid(),
            level=record.levelname,
            logger=record.name,
            message=message,
            task_id=str(task_id) if task_id is not None else current_task_id.get(),
            trace_id=str(trace_id) if trace_id is not None else current_trace_id.get(),
        )

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _pop(self) -> tuple[str, bytes] | None:
        with self._lock:
            return self._buffer.popleft() if self._buffer else None

    async def _run(self, nc: NATS, wakeup: asyncio.Event) -> None:
        while True:
            with self._lock:
                self._signalled = False
            wakeup.clear()
            await self._drain(nc)
            if nc.is_closed:
                return  # never comes back; records wait for another attach() or aclose()
            if not nc.is_connected:
                # Polling, because the reconnect callback belongs to whoever made the connection.
                await asyncio.sleep(RECONNECT_POLL)
                continue
            if self._stopping:
                return
            await wakeup.wait()

    async def _drain(self, nc: NATS) -> None:
        """Publish until the buffer is empty or the connection is down."""
        sent = 0
        while nc.is_connected:
            item = self._pop()
            if item is None:
                return
            try:
                await nc.publish(*item)
            except Exception:  # closed, draining, too big: one record lost, the flusher lives on
                with self._lock:
                    self.dropped += 1
            sent += 1
            if sent % YIELD_EVERY == 0:
                await asyncio.sleep(0)
