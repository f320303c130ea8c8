"""What the code running now works for: the task and its trace, for log records and spans."""

from __future__ import annotations

from contextvars import ContextVar

current_task_id: ContextVar[str | None] = ContextVar("current_task_id", default=None)
current_trace_id: ContextVar[str | None] = ContextVar("current_trace_id", default=None)
