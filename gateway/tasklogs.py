"""``GET /run/{task_id}/logs``: the log records of one task, from the ``VICTORIA_LOGS`` stream.

Log subjects name the actor and the level, not the task (``victoria.log.<actor>.<level>``), so
there is no index to ask: one read scans the stream from the task's submission (or from the
sequence after ``after``) to its end as it is now (``reads.Scan``), and keeps the
records whose ``task_id`` is this task's. Bytes that do not hold the id are skipped before any
decoding. A read is bounded three ways (records kept, messages scanned, seconds); ``next`` says
where the next read starts, so a page following a running task asks only for what is new.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Annotated, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from victoria.events import subjects
from victoria.events.contracts import LogRecord
from victoria.gateway.backend import Backend
from victoria.gateway.http import json_response, not_found
from victoria.gateway.requests import BadRequest
from victoria.gateway.schemas import TaskLogRecord, TaskLogs
from victoria.gateway.tasks import lookup
from victoria.runtime import reads

MAX_RECORDS: Final = 500  # records one read returns
MAX_SCANNED: Final = 100_000  # messages one read looks at
MAX_SECONDS: Final = 2.0  # seconds one read may take
MESSAGE_WAIT: Final = 1.0  # seconds to wait for the next message of a stream that has more
EARLY: Final = timedelta(seconds=1)  # records a moment older than the submission (clock skew)
_record: Final = msgspec.json.Decoder(LogRecord)
_SHOWN: Final = tuple(name for name in TaskLogRecord.__struct_fields__ if name != "seq")
"""The fields of a log record that a page shows, under the same names."""


class LogsQuery(msgspec.Struct, kw_only=True):
    """The query of ``GET /run/{task_id}/logs``."""

    after: (
        Annotated[int, msgspec.Meta(ge=0, description="Only records past this stream sequence (a `next`)")]
        | None
    ) = None


def _of_task(data: bytes, needle: bytes, task_id: str) -> LogRecord | None:
    if needle not in data:
        return None
    try:
        record = _record.decode(data)
    except msgspec.DecodeError:
        return None
    return record if record.task_id == task_id else None


def _after(request: Request) -> int:
    raw = (request.query_params.get("after") or "").strip()
    if not raw:
        return 0
    if not raw.isdecimal() or len(raw) > 18:
        raise BadRequest(422, "invalid_parameter", "after must be a stream sequence (0 or more)", "after")
    return int(raw)


async def logs(request: Request, backend: Backend) -> Response:
    """``GET /run/{task_id}/logs``: the task's log records, oldest first (every actor's records
    that carry its id, at the level the actors log at: INFO shows retries, failures and cancels, a
    task that goes well logs nothing). `after`: only records past this stream sequence (the
    `next` of the read before). At most 500 records a read; `truncated` says when there is more."""
    task_id = request.path_params["task_id"]
    after = _after(request)
    history = await lookup(backend, task_id)
    if history is None:
        return not_found(task_id)
    info = await backend.js.stream_info(subjects.LOG_STREAM)
    last = info.state.last_seq
    if last <= after or info.state.messages == 0:
        return json_response(TaskLogs(records=[], next=max(after, last), truncated=False))
    scan = reads.Scan(
        backend.js,
        subjects.LOG_STREAM,
        subjects.ALL_LOGS,
        start_seq=after + 1 if after else None,
        start_time=history.created_at - EARLY if not after and history.created_at is not None else None,
        wait=MESSAGE_WAIT,
    )
    needle = task_id.encode()
    records: list[TaskLogRecord] = []
    seen = after
    truncated = False
    scanned = 0
    deadline = time.monotonic() + MAX_SECONDS
    async with scan as messages:
        try:
            async for msg in messages:
                scanned += 1
                seen = reads.stream_sequence(msg)
                record = _of_task(msg.data, needle, task_id)
                if record is not None:
                    records.append(
                        TaskLogRecord(seq=seen, **{name: getattr(record, name) for name in _SHOWN})
                    )
                if seen >= last:
                    break
                if len(records) >= MAX_RECORDS or scanned >= MAX_SCANNED or time.monotonic() > deadline:
                    truncated = True
                    break
        except TimeoutError:
            pass  # the rest of the stream expired or was not delivered: what was read stands
    return json_response(TaskLogs(records=records, next=max(seen, after), truncated=truncated))
