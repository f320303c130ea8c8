"""``GET /tasks`` and ``GET /tasks/events``: the live list of tasks, without PostgreSQL.

Both read the gateway's own folds of the task streams (``TaskViews``): the tasks submitted since
this gateway started, any looked up since, and (read once, on the first list) the newest
``BACKFILL_TASKS`` submitted before it started. ``/tasks/events`` pushes a task's line whenever a
status event changes it, coalesced: at most one line per task every ``COALESCE`` seconds, and
never one per model word (tokens and model results are not status events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from victoria.events import subjects
from victoria.events.contracts import TaskStatusName
from victoria.events.fold import TaskHistory
from victoria.gateway.backend import Backend
from victoria.gateway.http import json_response
from victoria.gateway.requests import BadRequest
from victoria.gateway.schemas import TasksPage, TaskSummary
from victoria.runtime import reads

log = logging.getLogger(__name__)

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
GOAL_SHOWN: Final = 300  # characters of a goal in a line
ERROR_SHOWN: Final = 300  # characters of an error in a line
COALESCE: Final = 0.2  # seconds: changes of one task within this go out as one line
KEEPALIVE: Final = 10.0  # seconds of silence after which a comment keeps the connection open
MAX_PENDING: Final = 10_000  # tasks waiting to go out to one slow reader; past it, the oldest wait
BACKFILL_TASKS: Final = 200  # tasks submitted before this gateway started that the list shows
BACKFILL_SCAN: Final = 20_000  # messages of each task stream, from its end, that are looked through
BACKFILL_WAIT: Final = 3.0  # seconds the first GET /tasks waits for them (the read goes on after)
BACKFILL_AT_ONCE: Final = 16  # tasks replayed at once
STATUSES: Final[tuple[TaskStatusName, ...]] = ("queued", "running", "completed", "failed", "cancelled")
_encode: Final = msgspec.json.Encoder().encode


class TasksQuery(msgspec.Struct, kw_only=True):
    """The query of ``GET /tasks``."""

    status: TaskStatusName | None = None
    project: Annotated[str, msgspec.Meta(description="The project's slug")] | None = None
    q: (
        Annotated[str, msgspec.Meta(description="Words that the task id or the goal must all contain")] | None
    ) = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="Tasks at most")] = DEFAULT_LIMIT


def summary(history: TaskHistory) -> TaskSummary:
    """A task's line in the list."""
    submitted = history.submitted
    goal = submitted.goal if submitted is not None else ""
    model = submitted.model if submitted is not None else None
    if model is None and history.knowledge is not None:
        model = history.knowledge.model_used
    duration: float | None = None
    if history.terminal and history.created_at is not None and history.updated_at is not None:
        duration = round((history.updated_at - history.created_at).total_seconds(), 3)
    error = history.error[:ERROR_SHOWN] if history.error else None
    return TaskSummary(
        task_id=history.task_id,
        goal=goal[:GOAL_SHOWN],
        status=history.status,
        stage=history.shown_stage,
        attempts=history.attempts,
        model=model,
        project=submitted.project if submitted is not None else None,
        created_at=history.created_at,
        updated_at=history.updated_at,
        duration_s=duration,
        error=error,
    )


def matches(history: TaskHistory, query: TasksQuery) -> bool:
    if history.submitted is None:
        return False
    if query.status is not None and history.status != query.status:
        return False
    if query.project is not None and history.submitted.project != query.project:
        return False
    if query.q:
        text = f"{history.task_id} {history.submitted.goal}".casefold()
        return all(word in text for word in query.q.casefold().split())
    return True


def _query(request: Request) -> TasksQuery:
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadRequest(422, "invalid_parameter", f"status must be one of {', '.join(STATUSES)}", "status")
    raw_limit = (params.get("limit") or "").strip()
    limit = DEFAULT_LIMIT
    if raw_limit:
        limit = int(raw_limit) if raw_limit.isdecimal() and len(raw_limit) < 6 else 0
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(422, "invalid_parameter", f"limit must be 1 to {MAX_LIMIT}", "limit")
    return TasksQuery(
        status=status,  # checked against STATUSES above
        project=params.get("project") or None,
        q=params.get("q") or None,
        limit=limit,
    )


_EPOCH: Final = datetime.min.replace(tzinfo=UTC)


async def tasks(request: Request, backend: Backend) -> Response:
    """``GET /tasks``: the tasks this gateway has seen (submitted since it started, or looked up,
    and the newest 200 submitted before it started), newest first; `status`, `project` and `q` (words the id or goal must contain) filter them. The
    whole history, across restarts, is `GET /runs` (PostgreSQL)."""
    query = _query(request)
    await _backfilled(backend)
    found = [
        entry.history
        for entry in list(backend.views.cache.values())
        if entry.loading is None and matches(entry.history, query)
    ]
    found.sort(key=lambda history: history.created_at or _EPOCH, reverse=True)
    lines = [summary(history) for history in found[: query.limit]]
    return json_response(TasksPage(tasks=lines, trace_url=backend.config.trace_url))


async def _backfilled(backend: Backend) -> None:
    """The first list after a start also shows the tasks submitted before it (the newest
    ``BACKFILL_TASKS``): the folds know only what was submitted or looked up since."""
    views = backend.views
    if views.backfill is None:
        views.backfill = asyncio.create_task(_backfill(backend), name="tasks-backfill")
    if not views.backfill.done():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(views.backfill), BACKFILL_WAIT)


async def _backfill(backend: Backend) -> None:
    submitted: list[tuple[datetime, str]] = []
    try:
        for shard in range(subjects.TASK_SHARDS):
            submitted += await _submissions(backend, shard)
        submitted.sort(reverse=True)
        limit = asyncio.Semaphore(BACKFILL_AT_ONCE)

        async def load(task_id: str) -> None:
            async with limit:
                await backend.views.get(task_id)

        await asyncio.gather(*(load(task_id) for _, task_id in submitted[:BACKFILL_TASKS]))
    except Exception as exc:  # the list goes on without them; a later look-up still finds each
        log.warning("tasks submitted before this gateway started are not listed: %r", exc)


async def _submissions(backend: Backend, shard: int) -> list[tuple[datetime, str]]:
    """(time, id) of the last submissions among the last ``BACKFILL_SCAN`` messages of a stream."""
    info = await backend.js.stream_info(subjects.task_stream(shard))
    last = info.state.last_seq
    if info.state.messages == 0:
        return []
    found: list[tuple[datetime, str]] = []
    scan = reads.Scan(
        backend.js,
        subjects.task_stream(shard),
        subjects.shard_events_of_kind(shard, "submitted"),
        start_seq=max(1, last - BACKFILL_SCAN),
        wait=1.0,
    )
    async with scan as messages:
        try:
            async for msg in messages:
                event = reads.decode_task_event(msg.data, msg.subject)
                if event is not None:
                    found.append((event.ts, event.task_id))
                if reads.stream_sequence(msg) >= last:
                    break
        except TimeoutError:
            pass  # the rest expired meanwhile: what was read stands
    return found[-BACKFILL_TASKS:]


async def task_events(request: Request, backend: Backend) -> Response:
    """``GET /tasks/events``: server-sent events, `event: task` with a `TaskSummary` each time a
    task's status, stage or attempt changes (one line per task at most every 0.2 s), comments to
    keep the connection alive. Never ends by itself."""
    return StreamingResponse(
        _changes(backend),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _changes(backend: Backend) -> AsyncIterator[bytes]:
    pending: dict[str, TaskHistory] = {}
    wake = asyncio.Event()

    def changed(history: TaskHistory) -> None:
        if history.submitted is None:
            return
        if len(pending) >= MAX_PENDING and history.task_id not in pending:
            return  # a reader this slow sees the task's next change instead
        pending[history.task_id] = history
        wake.set()

    backend.views.listeners.append(changed)
    try:
        yield b": connected\n\n"
        while True:
            try:
                await asyncio.wait_for(wake.wait(), KEEPALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            await asyncio.sleep(COALESCE)
            wake.clear()
            batch = list(pending.values())
            pending.clear()
            yield b"".join(b"event: task\ndata: %s\n\n" % _encode(summary(history)) for history in batch)
    finally:
        backend.views.listeners.remove(changed)
