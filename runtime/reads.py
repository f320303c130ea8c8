"""Reading what the streams hold: the stored messages of a filter (``Scan``), one task's history,
the last event of a kind (direct gets), and what a delivered message says of itself.

``Scan`` is the one way to read a range of a stream: the gateway's task list and log pages, a
task's history (``task_events``) and the test helpers all go through it. Live feeds (the gateway's
views, a followed task, the monitor's heartbeats) are subscriptions, not scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from datetime import datetime
from types import TracebackType
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    NoKeysError,
    NotFoundError,
    ServiceUnavailableError,
)

from victoria.events import contracts, subjects
from victoria.events.codec import task_decoder
from victoria.events.contracts import (
    AnyTaskEvent,
    ApprovalDecided,
    LLMResult,
    McpServerState,
    ModelServerInfo,
    ToolClaim,
    ToolOutcome,
)
from victoria.runtime.protocol import parse_ack_subject

log = logging.getLogger(__name__)

SCAN_WAIT: Final = 5.0  # seconds a scan waits for the next batch of messages it knows are stored
SCAN_BATCH: Final = 256  # messages one pull request of a scan asks for
SCAN_IDLE: Final = 30.0  # seconds after which the server drops a scan's consumer left behind
NOT_YET_KNOWN: Final = 0.05  # seconds between pull requests that found no consumer to answer them


class Scan:
    """The messages of ``stream`` that match ``subject`` and are stored when the scan starts, oldest
    first, from the stream's start, from sequence ``start_seq`` or from the time ``start_time``.

    An async context manager (the scan's short-lived consumer lives inside it) and an async
    iterator over the messages::

        async with Scan(js, stream, subject) as messages:
            async for msg in messages:
                ...

    Its consumer's creation reports how many messages match (``pending``), so a filter that
    matches nothing ends at once instead of after a timeout, and messages stored after the start
    are not read. The consumer has a random name, which nats-py then puts in the creation's
    subject (``$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>``): NATS permissions can refuse
    that subject for a work consumer's name, where a name in the body of the nameless form
    (``$JS.API.CONSUMER.CREATE.<stream>``) would change that consumer's settings
    (``nats-users.conf``). ``TimeoutError`` when ``wait`` seconds pass without the next messages: they
    expired meanwhile, or the stream lost its leader. A caller for whom what was read stands
    catches it; one that needs every message (a task's history) lets it go up."""

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        *,
        start_seq: int | None = None,
        start_time: datetime | None = None,
        wait: float = SCAN_WAIT,
    ) -> None:
        if start_seq is not None:
            policy = jsapi.DeliverPolicy.BY_START_SEQUENCE
        elif start_time is not None:
            policy = jsapi.DeliverPolicy.BY_START_TIME
        else:
            policy = jsapi.DeliverPolicy.ALL
        self.js = js
        self.stream = stream
        self.config = jsapi.ConsumerConfig(
            name=uuid.uuid4().hex,
            filter_subject=subject,
            deliver_policy=policy,
            opt_start_seq=start_seq,
            opt_start_time=start_time,
            ack_policy=jsapi.AckPolicy.NONE,
            inactive_threshold=SCAN_IDLE,
            mem_storage=True,
            num_replicas=1,
        )
        self.wait = wait
        self.pending = 0
        """The messages the scan reads: those that matched when it started."""
        self._consumer = ""
        self._sub: JetStreamContext.PullSubscription | None = None
        self._batch: list[Msg] = []
        self._delivered = 0

    async def __aenter__(self) -> Scan:
        info = await self.js.add_consumer(self.stream, config=self.config)
        self._consumer = info.name or ""
        self.pending = info.num_pending or 0
        if self.pending:
            try:
                self._sub = await self.js.pull_subscribe_bind(stream=self.stream, name=self._consumer)
            except BaseException:
                await self._delete()
                raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            if self._sub is not None:
                sub, self._sub = self._sub, None
                await sub.unsubscribe()
        finally:
            await self._delete()

    async def _delete(self) -> None:
        with contextlib.suppress(NotFoundError, TimeoutError, nats.errors.Error):
            await self.js.delete_consumer(self.stream, self._consumer)

    def __aiter__(self) -> Scan:
        return self

    async def __anext__(self) -> Msg:
        if not self._batch:
            if self._sub is None or self._delivered >= self.pending:
                raise StopAsyncIteration
            self._batch = await self._fetch(self._sub, min(SCAN_BATCH, self.pending - self._delivered))
            self._batch.reverse()
            self._delivered += len(self._batch)
        return self._batch.pop()

    async def _fetch(self, sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        """The next ``batch`` messages, asked again while nobody answers the pull request: in a
        cluster, the server this connection is on may not know yet of a consumer just made on
        another (no responders, 503)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            try:
                messages: list[Msg] = await sub.fetch(batch=batch, timeout=max(0.01, deadline - loop.time()))
                return messages
            except (ServiceUnavailableError, nats.errors.NoRespondersError):
                if loop.time() + NOT_YET_KNOWN > deadline:
                    raise
                await asyncio.sleep(NOT_YET_KNOWN)


async def task_events(js: JetStreamContext, task_id: str) -> list[tuple[int, AnyTaskEvent]]:
    """Every stored event of one task with its stream sequence, oldest first (an unknown task
    answers at once). ``TimeoutError`` rather than a history with a hole."""
    out: list[tuple[int, AnyTaskEvent]] = []
    async with Scan(js, subjects.task_stream_of(task_id), subjects.task_events(task_id)) as messages:
        async for msg in messages:
            event = decode_task_event(msg.data, msg.subject)
            if event is not None:
                out.append((stream_sequence(msg), event))
    return out


def stream_sequence(msg: Msg) -> int:
    """The stream sequence of a message a consumer delivered, read from its reply subject without
    building the rest of nats-py's ``Metadata`` (a gateway reads it for every event it follows)."""
    ack = parse_ack_subject(msg.reply)
    if ack is not None:
        return ack.stream_seq
    return msg.metadata.sequence.stream  # nats' own error for a message no consumer delivered


def delivery_count(msg: Msg) -> int:
    """How many times the consumer has delivered this message (1 for a first delivery)."""
    ack = parse_ack_subject(msg.reply)
    if ack is not None:
        return ack.delivered
    return msg.metadata.num_delivered or 1


def decode_task_event(data: bytes, subject: str) -> AnyTaskEvent | None:
    try:
        event: AnyTaskEvent = task_decoder.decode(data)
    except Exception as exc:  # msgspec.DecodeError and friends; a bad message must not be fatal
        log.warning("undecodable task event on %s: %s", subject, exc)
        return None
    return event


async def _last(js: JetStreamContext, task_id: str, subject: str) -> jsapi.RawStreamMsg | None:
    """The newest message of one task on ``subject`` (a wildcard too), or None: one direct get."""
    try:
        return await js.get_last_msg(subjects.task_stream_of(task_id), subject, direct=True)
    except NotFoundError:
        return None


async def last_task_event(js: JetStreamContext, task_id: str, kind: subjects.TaskKind) -> Any | None:
    """The newest event of one kind for a task, or None (one direct get, no consumer)."""
    raw = await _last(js, task_id, subjects.task_event(task_id, kind))
    if raw is None or raw.data is None:
        return None
    event: AnyTaskEvent | None = decode_task_event(raw.data, raw.subject or "")
    return event


async def last_llm_result(js: JetStreamContext, task_id: str, request_id: str) -> LLMResult | None:
    """The stored answer to one model request of a task, or None (one direct get)."""
    raw = await _last(js, task_id, subjects.llm_result(task_id, request_id))
    if raw is None:
        return None
    event = decode_task_event(raw.data or b"", raw.subject or "")
    return event if isinstance(event, LLMResult) else None


async def last_tool_claim(js: JetStreamContext, task_id: str, call_id: str) -> ToolClaim | None:
    """Who took one tool call of a task, or None (one direct get)."""
    raw = await _last(js, task_id, subjects.tool_claim(task_id, call_id))
    event = decode_task_event(raw.data or b"", raw.subject or "") if raw is not None else None
    return event if isinstance(event, ToolClaim) else None


async def last_tool_outcome(js: JetStreamContext, task_id: str, call_id: str) -> ToolOutcome | None:
    """What one tool call of a task did, or None (one direct get)."""
    raw = await _last(js, task_id, subjects.tool_outcome(task_id, call_id))
    event = decode_task_event(raw.data or b"", raw.subject or "") if raw is not None else None
    return event if isinstance(event, ToolOutcome) else None


async def last_approval(js: JetStreamContext, task_id: str, approval_id: str) -> ApprovalDecided | None:
    """The decision on one approval of a task, or None (one direct get)."""
    raw = await _last(js, task_id, subjects.approval(task_id, approval_id))
    event = decode_task_event(raw.data or b"", raw.subject or "") if raw is not None else None
    return event if isinstance(event, ApprovalDecided) else None


async def unwanted_after(js: JetStreamContext, task_id: str, seq: int) -> str | None:
    """Why what the attempt stored at ``seq`` (a model request, a tool call) is wanted no more,
    from what came after it in the task's own history (one direct get); None while it is wanted.

    The attempt that stored it writes nothing more until its answer comes, so it is wanted while it
    is the last event of the history, or when only a newer attempt's start follows it (that
    attempt takes up what it finds waiting). Anything else after it means the task ended, was
    cancelled, or went on without it."""
    last = await last_history_event(js, task_id)
    if last is None or last[0] <= seq:
        return None
    later_seq, later = last
    if isinstance(later, contracts.TaskStarted):
        return None
    if isinstance(later, contracts.TERMINAL_EVENTS):
        return "the task has ended"
    if isinstance(later, contracts.TaskCancelRequested):
        return "the task was cancelled"
    if later is None:
        return f"an unreadable event at sequence {later_seq} came after it"
    tag = type(later).__struct_config__.tag
    return f"it is superseded: {tag} at sequence {later_seq} came after it"


async def last_history_event(js: JetStreamContext, task_id: str) -> tuple[int, AnyTaskEvent | None] | None:
    """The last event of the task's own history and its stream sequence, or None (one direct get;
    the event is None when it cannot be decoded)."""
    raw = await _last(js, task_id, subjects.task_history(task_id))
    if raw is None:
        return None
    return raw.seq or 0, decode_task_event(raw.data or b"", raw.subject or "")


_server_info: Final = msgspec.json.Decoder(ModelServerInfo)
_mcp_state: Final = msgspec.json.Decoder(McpServerState)


MCP_REFRESH: Final = 10.0
"""Seconds between two records of an MCP server by the instance of Veronica that runs it."""
MCP_FRESH: Final = 3 * MCP_REFRESH
"""A record of an MCP server older than this is of an instance that is gone."""


async def mcp_servers(js: JetStreamContext, *, fresh: float = MCP_FRESH) -> list[McpServerState]:
    """Every live instance of Veronica's record of every MCP server, from the bucket
    ``victoria_mcp``, by server then instance (none when there is no bucket or it does not answer).
    Records older than ``fresh`` seconds are left out."""
    try:
        kv = await js.key_value(subjects.MCP_BUCKET)
        keys = await kv.keys()
    except (NotFoundError, BucketNotFoundError, NoKeysError):
        return []
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("MCP servers not read: %s", exc)
        return []
    now = time.time()
    states = []
    for key in sorted(keys):
        with contextlib.suppress(KeyNotFoundError, msgspec.DecodeError, nats.errors.Error):
            entry = await kv.get(key)
            if entry.value:
                state = _mcp_state.decode(entry.value)
                if now - state.at <= fresh:
                    states.append(state)
    return states


async def model_server_infos(js: JetStreamContext) -> list[ModelServerInfo]:
    """Every runner instance's record of every model server, from the bucket ``victoria_models``
    (none when there is no bucket)."""
    try:
        kv = await js.key_value(subjects.MODELS_BUCKET)
        keys = [key for key in await kv.keys() if key.startswith("info.")]
    except (NotFoundError, BucketNotFoundError, NoKeysError):
        return []
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("model servers not read: %s", exc)
        return []
    infos = []
    for key in keys:
        with contextlib.suppress(KeyNotFoundError, msgspec.DecodeError, nats.errors.Error):
            entry = await kv.get(key)
            if entry.value:
                infos.append(_server_info.decode(entry.value))
    return infos
