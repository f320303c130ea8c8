"""``GET /runs``: the task history the projector keeps in PostgreSQL, newest first, a page at a time."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from victoria.events import subjects
from victoria.events.contracts import TaskStatusName
from victoria.gateway.backend import Backend
from victoria.gateway.http import json_response
from victoria.gateway.requests import BadRequest
from victoria.gateway.schemas import RunRow, RunsPage

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
STATUSES: Final[tuple[TaskStatusName, ...]] = ("queued", "running", "completed", "failed", "cancelled")
OUTPUT_SHOWN: Final = 500  # characters of each task's output in a listing
_UNIX_SECONDS: Final = r"^[0-9]+(\.[0-9]+)?$"


class RunsQuery(msgspec.Struct, kw_only=True):
    """The query of ``GET /runs``, as the parsers below read it."""

    status: TaskStatusName | None = None
    since: (
        Annotated[
            str,
            msgspec.Meta(
                description="Tasks created at or after: an ISO 8601 time or Unix seconds",
                extra_json_schema={"anyOf": [{"format": "date-time"}, {"pattern": _UNIX_SECONDS}]},
            ),
        ]
        | None
    ) = None
    project: Annotated[str, msgspec.Meta(description="The project's slug")] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="Tasks per page")] = DEFAULT_LIMIT
    cursor: Annotated[str, msgspec.Meta(description="The `next` of the page before")] | None = None


def _since(raw: str | None) -> datetime | None:
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    try:
        if text.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(text), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise BadRequest(
            422, "invalid_parameter", f"since must be an ISO 8601 time or Unix seconds, got {raw!r}", "since"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _limit(raw: str | None) -> int:
    if raw is None or not raw.strip():
        return DEFAULT_LIMIT
    text = raw.strip()
    try:
        # isdecimal, not isdigit: int() refuses digits such as "²"; and it refuses over 4,300 of them
        value = int(text) if text.isdecimal() else 0
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise BadRequest(422, "invalid_parameter", f"limit must be 1 to {MAX_LIMIT}, got {raw!r}", "limit")
    return value


def _cursor(created_at: datetime, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{task_id}".encode()).decode()


def _after_cursor(raw: str | None) -> tuple[datetime, str] | None:
    if raw is None or not raw.strip():
        return None
    try:
        moment, task_id = base64.urlsafe_b64decode(raw.encode()).decode().split("|", 1)
        if not subjects.is_token(task_id):  # no task id has one; and PostgreSQL text takes no NUL
            raise ValueError(task_id)
        return datetime.fromisoformat(moment), task_id
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(422, "invalid_parameter", "cursor is not one this listing gave", "cursor") from None


async def runs(request: Request, backend: Backend) -> Response:
    """Tasks from the history, newest first: ``status``, ``since``, ``project`` filter; ``limit``
    (50, at most 500) per page; ``next`` is the ``cursor`` of the page after."""
    if backend.pool is None:
        return json_response(
            {
                "error": "no_database",
                "detail": "the task history needs PostgreSQL: set VICTORIA_POSTGRES_DSN",
            },
            501,
        )
    query = request.query_params
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(422, "invalid_parameter", f"status must be one of {list(STATUSES)}", "status")
    limit = _limit(query.get("limit"))
    if "\x00" in query.get("project", ""):  # PostgreSQL text cannot hold it; no slug has it
        raise BadRequest(422, "invalid_parameter", "project must not contain NUL characters", "project")
    where: list[str] = ["TRUE"]
    args: list[object] = []
    for clause, value in (
        ("status = ${}", status),
        ("created_at >= ${}", _since(query.get("since"))),
        ("project = ${}", query.get("project") or None),
    ):
        if value is not None:
            args.append(value)
            where.append(clause.format(len(args)))
    after = _after_cursor(query.get("cursor"))
    if after is not None:
        args += [after[0], after[1]]
        where.append(f"(created_at, task_id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit + 1)
    sql = (
        "SELECT task_id, status, goal, task_type, project, expert, session_id, correlation_id, stage, "
        "output, error, error_kind, attempts, created_at, updated_at, ended_at FROM victoria.tasks "
        f"WHERE {' AND '.join(where)} ORDER BY created_at DESC, task_id DESC LIMIT ${len(args)}"
    )
    import asyncpg  # loaded with the database, not before

    try:
        rows = await backend.pool.fetch(sql, *args)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return json_response(
            {"error": "unavailable", "detail": f"PostgreSQL: {type(exc).__name__}: {exc}"},
            503,
            {"Retry-After": "5"},
        )
    page = [_run(row) for row in rows[:limit]]
    following = (
        _cursor(rows[limit - 1]["created_at"], rows[limit - 1]["task_id"]) if len(rows) > limit else None
    )
    return json_response(RunsPage(runs=page, next=following))


def _run(row: Any) -> RunRow:
    out = dict(row)
    if out.get("output") and len(out["output"]) > OUTPUT_SHOWN:
        out["output"] = out["output"][:OUTPUT_SHOWN] + "…"
    return RunRow(**out)
