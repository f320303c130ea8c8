"""Every route of the gateway, declared once: the table that builds the Starlette routes
(``gateway/app.py``), the OpenAPI document (``gateway/openapi.py``, which only renders it) and the
paths open without a token (``OPEN_PATHS``, for ``RequireToken``).

Each ``Operation`` says its method and path, its handler and what the handler takes (``needs``: the
``Backend``, NATS and what is built on it, answering 503 while it is not there; the
``GatewayState``; or nothing), and for the document: its summary, the types it decodes requests with
and encodes answers with, and every status it can answer. Building the table is cheap; the document
is built on the first request for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from victoria.events.contracts import AnyTaskEvent, TokenChunk
from victoria.events.fold import TaskStatus
from victoria.gateway import (
    approvals,
    dashboard,
    history,
    legacy,
    mcp,
    operations,
    tasklist,
    tasklogs,
    tasks,
    toolinfo,
)
from victoria.gateway.requests import (
    MAX_BODY,
    MAX_RUN_BODY,
    PlanQuery,
    RunQuery,
    SubmitHeaders,
)
from victoria.gateway.requests import (
    RunBodySchema as RunBody,
)
from victoria.gateway.schemas import (
    Accepted,
    AvailableModels,
    CancelRequested,
    ErrorBody,
    Health,
    PlanAnswer,
    Ready,
    RunsPage,
    Services,
    StreamLine,
    SystemStatus,
    TaskLogs,
    TaskResponse,
    TasksPage,
    TaskSummary,
    TelegramBeat,
    TelegramHealth,
    TelegramRegistered,
    ToolsPage,
)

NAMED_UNIONS: Final[dict[str, Any]] = {
    "TaskResponse": TaskResponse,
    "StreamLine": StreamLine,
    "TaskEvent": AnyTaskEvent | TokenChunk,
}
"""Unions that get a component of their own (msgspec inlines them where they are used)."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One status a route can answer, and what its body is."""

    status: int
    description: str
    body: Any = None
    """The type of a JSON body; a tuple of types for one of several."""
    stream: Any = None
    """For ``text/event-stream``: the type of each event's ``data``."""
    text: bool = False
    """Plain text (Prometheus)."""
    media: str | None = None
    """Another media type, as a string (the dashboard's page and files)."""
    retry_after: bool = False


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    handler: Callable[..., Any]
    """Its docstring is the operation's description."""
    answers: tuple[Answer, ...]
    tag: str
    body: Any = None
    query: type[msgspec.Struct] | None = None
    headers: type[msgspec.Struct] | None = None
    open: bool = False
    """Answers without a token (liveness and readiness probes, the dashboard's files)."""
    needs: Literal["backend", "state", "nothing"] = "backend"
    """What the handler takes besides the request."""


_UNAVAILABLE: Final = Answer(
    503,
    "NATS is not connected or did not answer (`unavailable`): retry after `Retry-After` seconds",
    ErrorBody,
    retry_after=True,
)
_OVERLOADED: Final = Answer(
    503,
    "NATS is not connected or did not answer (`unavailable`), or too many tasks are queued or running "
    "(`overloaded`, `VICTORIA_MAX_TASKS_IN_FLIGHT`): retry after `Retry-After` seconds",
    ErrorBody,
    retry_after=True,
)
_BAD_JSON: Final = Answer(400, "The body is not JSON, or it is empty where a goal is needed", ErrorBody)
_INVALID: Final = Answer(
    422, "A field, parameter or header is missing, empty or not what it must be; `field` names it", ErrorBody
)
_NOT_FOUND: Final = Answer(404, "No task has this id", ErrorBody)
UNAUTHORIZED: Final = Answer(
    401,
    "No valid API token (a token is asked for when one is configured): send `Authorization: Bearer "
    "<token>`, or the token as the password of HTTP Basic",
    ErrorBody,
)


def _too_large(limit: int) -> Answer:
    return Answer(413, f"The body is over {limit // (1024 * 1024)} MB", ErrorBody)


_KEY_SPACE: Final = (
    " A repeated `Idempotency-Key` on the same route gets the first request's answer, code and "
    "body (each route has its own keys)."
)


def _submit(
    path: str,
    summary: str,
    handler: Callable[..., Any],
    done: Answer,
    accepted: Answer,
    *,
    query: type[msgspec.Struct] | None = None,
) -> Operation:
    """A route of the old server that submits a goal (``RunBody``, ``Idempotency-Key``)."""
    errors = (_BAD_JSON, _too_large(MAX_RUN_BODY), _INVALID, _OVERLOADED)
    return Operation(
        "POST",
        path,
        summary,
        handler,
        (done, accepted, *errors),
        "old server",
        body=RunBody,
        query=query,
        headers=SubmitHeaders,
    )


def _bot(path: str, summary: str, handler: Callable[..., Any], done: Answer) -> Operation:
    """A Telegram bot's report (``BotBeat``)."""
    answers = (done, _BAD_JSON, _too_large(MAX_BODY), _INVALID, _UNAVAILABLE)
    return Operation("POST", path, summary, handler, answers, "old server", body=legacy.BotBeat)


_MCP_REFUSED: Final = Answer(
    400, "Not a JSON-RPC message, or no `Mcp-Session-Id` where one is needed", mcp.JsonRpcMessage
)
_MCP_NO_SESSION: Final = Answer(
    404,
    "No session has this `Mcp-Session-Id` (it ended, or the gateway restarted): `initialize` again",
    mcp.JsonRpcMessage,
)
_MCP_NOT_ACCEPTED: Final = Answer(
    406, "`Accept` does not take what the transport answers with", mcp.JsonRpcMessage
)
_MCP_UNAVAILABLE: Final = Answer(
    503,
    "The MCP server is not running (`unavailable`: the gateway stops), or too many sessions are open",
    (ErrorBody, mcp.JsonRpcMessage),
    retry_after=True,
)


def _mcp() -> tuple[Operation, ...]:
    """``/mcp``'s methods: the SDK's transport answers them (``gateway/mcp.py``)."""
    post = (
        Answer(
            200,
            "Server-sent events, each a JSON-RPC message: the call's notifications (progress), then its answer",
            stream=mcp.JsonRpcMessage,
        ),
        Answer(202, "A notification or a response, taken"),
        _MCP_REFUSED,
        _MCP_NO_SESSION,
        _MCP_NOT_ACCEPTED,
        Answer(413, "The body is over 4 MB", mcp.JsonRpcMessage),
        Answer(415, "The body is not `application/json`", mcp.JsonRpcMessage),
        Answer(
            421, "`Host` is not this machine's (no token is asked for: DNS rebinding)", media="text/plain"
        ),
        _MCP_UNAVAILABLE,
    )
    get = (
        Answer(200, "The server's own stream of the session: its notifications", stream=mcp.JsonRpcMessage),
        _MCP_REFUSED,
        _MCP_NO_SESSION,
        _MCP_NOT_ACCEPTED,
        Answer(409, "A stream of this session is open already", mcp.JsonRpcMessage),
        _MCP_UNAVAILABLE,
    )
    delete = (Answer(200, "The session ended"), _MCP_REFUSED, _MCP_NO_SESSION, _MCP_UNAVAILABLE)
    summaries = {
        "POST": "Send an MCP message (JSON-RPC): `initialize`, `tools/list`, `tools/call`, ...",
        "GET": "Open the MCP session's stream of the server's own messages",
        "DELETE": "End an MCP session",
    }
    return tuple(
        Operation(
            method,
            "/mcp",
            summaries[method],
            mcp.endpoint,
            answers,
            "mcp",
            body=mcp.JsonRpcMessage if method == "POST" else None,
            headers=mcp.McpHeaders,
            needs="state",
        )
        for method, answers in (("POST", post), ("GET", get), ("DELETE", delete))
    )


OPERATIONS: Final[tuple[Operation, ...]] = (
    # the old server's contract
    _submit(
        "/run",
        "Run a goal: its TaskResponse when it ends, or 202 at once with ?async_mode=true",
        legacy.run,
        Answer(
            200, "The task ended: the old server's `TaskResponse`." + _KEY_SPACE, (TaskResponse, PlanAnswer)
        ),
        Answer(202, "Accepted (`?async_mode=true`), or still running when `?wait=` passed", Accepted),
        query=RunQuery,
    ),
    _submit(
        "/stream",
        "Run a goal, and follow it as server-sent events",
        legacy.stream,
        Answer(
            200,
            "One `data: {json}` line per event (`StreamLine`): `start`, `step`, `chunk`, `error`, and "
            "always a last `end` with the `TaskResponse` fields. A repeated `Idempotency-Key` streams "
            "the same task again (a stream is not kept).",
            (TaskResponse, PlanAnswer),
            stream=StreamLine,
        ),
        Answer(202, "A repeated `Idempotency-Key` whose first answer was a 202", Accepted),
    ),
    _submit(
        "/plan",
        "Understand and plan a goal, no steps",
        legacy.plan,
        Answer(
            200,
            "The plan; the `TaskResponse` when the task did not complete." + _KEY_SPACE,
            (PlanAnswer, TaskResponse),
        ),
        Answer(202, "Still planning when `?wait=` passed", Accepted),
        query=PlanQuery,
    ),
    Operation(
        "GET",
        "/status",
        "What is true of this system now",
        legacy.status,
        (Answer(200, "The system's status", SystemStatus),),
        "old server",
        needs="state",
    ),
    Operation(
        "GET",
        "/health",
        "This gateway's liveness",
        legacy.health,
        (Answer(200, "Alive", Health),),
        "old server",
        open=True,
        needs="state",
    ),
    Operation(
        "GET",
        "/api/available-models",
        "The models of the configured model server",
        legacy.available_models,
        (Answer(200, "The models; `error` when the model server did not answer", AvailableModels),),
        "old server",
        needs="state",
    ),
    _bot(
        "/api/telegram/register",
        "A Telegram bot says it is there",
        legacy.telegram_register,
        Answer(200, "Registered: watched from now on like any service", TelegramRegistered),
    ),
    _bot(
        "/api/telegram/heartbeat",
        "A Telegram bot's heartbeat",
        legacy.telegram_heartbeat,
        Answer(200, "Beat recorded", TelegramBeat),
    ),
    Operation(
        "GET",
        "/health/telegram",
        "The Telegram bot's health, from its last heartbeat",
        legacy.telegram_health,
        (Answer(200, "The bot's health", TelegramHealth), _UNAVAILABLE),
        "old server",
    ),
    # one task; the history of all of them
    Operation(
        "GET",
        "/run/status/{task_id}",
        "A task's status object",
        tasks.status,
        (
            Answer(200, "The status object, folded from the task's events", TaskStatus),
            _NOT_FOUND,
            _UNAVAILABLE,
        ),
        "tasks",
    ),
    Operation(
        "GET",
        "/runs",
        "The task history (PostgreSQL), newest first",
        history.runs,
        (
            Answer(200, "A page of the history", RunsPage),
            _INVALID,
            Answer(501, "No database is configured (`no_database`)", ErrorBody),
            Answer(
                503,
                "NATS or PostgreSQL did not answer (`unavailable`): retry after `Retry-After` seconds",
                ErrorBody,
                retry_after=True,
            ),
        ),
        "tasks",
        query=history.RunsQuery,
    ),
    Operation(
        "POST",
        "/run/{task_id}/cancel",
        "Cancel a task",
        tasks.cancel,
        (
            Answer(200, "The task had ended before: its status object", TaskStatus),
            Answer(202, "Cancel recorded: the task's status is `cancelled` from now on", CancelRequested),
            _NOT_FOUND,
            _UNAVAILABLE,
        ),
        "tasks",
    ),
    Operation(
        "POST",
        "/run/{task_id}/approvals/{approval_id}",
        "Approve or deny a tool call that waits for a person",
        approvals.decide,
        (
            Answer(200, "Decided: the call runs (approve), or the model hears the denial", approvals.Decided),
            _BAD_JSON,
            _too_large(MAX_BODY),
            _INVALID,
            Answer(404, "No task has this id, or the task no approval of this id", ErrorBody),
            Answer(409, "Decided before (`already_decided`): the decision that holds", approvals.Decided),
            _UNAVAILABLE,
        ),
        "tasks",
        body=approvals.DecisionBody,
    ),
    Operation(
        "GET",
        "/run/{task_id}/events",
        "A task's events, from the first, then live",
        tasks.events,
        (
            Answer(
                200,
                "Server-sent events: each stored event as `id: <stream sequence>`, `event: <its type>`, "
                "`data: <the event>`, the model's words as `event: token_chunk`, comments to keep the "
                "connection alive; the terminal event last, then the stream closes. Each `data` is a "
                "`TaskEvent`.",
                stream=NAMED_UNIONS["TaskEvent"],
            ),
            _NOT_FOUND,
            _UNAVAILABLE,
        ),
        "tasks",
    ),
    # MCP: Victoria as an MCP server (Streamable HTTP)
    *_mcp(),
    # operations
    Operation(
        "GET",
        "/ready",
        "Readiness: NATS and the task streams answer",
        operations.ready,
        (Answer(200, "Ready", Ready), Answer(503, "Not ready yet", Ready, retry_after=True)),
        "operations",
        open=True,
        needs="state",
    ),
    Operation(
        "GET",
        "/services",
        "The actors' instances and the probed dependencies",
        operations.services,
        (
            Answer(200, "The service monitor's view", Services),
            Answer(
                503,
                "NATS or the service monitor did not answer (`unavailable`): retry after `Retry-After` seconds",
                ErrorBody,
                retry_after=True,
            ),
        ),
        "operations",
    ),
    Operation(
        "GET",
        "/tools",
        "The tools the model may call, and which wait for a person's yes",
        toolinfo.tools,
        (Answer(200, "Every tool, in the order the prompts name them", ToolsPage),),
        "operations",
        needs="state",
    ),
    Operation(
        "GET",
        "/metrics",
        "Prometheus metrics",
        operations.metrics,
        (Answer(200, "Prometheus text exposition format 0.0.4", text=True), _UNAVAILABLE),
        "operations",
    ),
    Operation(
        "GET",
        "/openapi.json",
        "This document",
        operations.openapi,
        (Answer(200, "The OpenAPI 3.1 document of this gateway", dict[str, Any]),),
        "operations",
        needs="nothing",
    ),
    # the dashboard
    Operation(
        "GET",
        "/tasks",
        "The tasks this gateway has seen, newest first (no database needed)",
        tasklist.tasks,
        (Answer(200, "The tasks, filtered", TasksPage), _INVALID, _UNAVAILABLE),
        "dashboard",
        query=tasklist.TasksQuery,
    ),
    Operation(
        "GET",
        "/tasks/events",
        "Every task's changes, live",
        tasklist.task_events,
        (
            Answer(
                200,
                "Server-sent events: `event: task` with the task's line (`TaskSummary`) each time its "
                "status, stage or attempt changes; comments to keep the connection alive. Never ends.",
                stream=TaskSummary,
            ),
            _UNAVAILABLE,
        ),
        "dashboard",
    ),
    Operation(
        "GET",
        "/run/{task_id}/logs",
        "A task's log records",
        tasklogs.logs,
        (
            Answer(200, "The records, oldest first", TaskLogs),
            _INVALID,
            _NOT_FOUND,
            _UNAVAILABLE,
        ),
        "dashboard",
        query=tasklogs.LogsQuery,
    ),
    *(
        Operation(
            "GET",
            path,
            "The dashboard" if path == "/" else f"The dashboard's {dashboard.FILES[path][0]}",
            dashboard.page if path == "/" else dashboard.asset,
            (Answer(200, "The file", media=dashboard.FILES[path][1].split(";")[0]),),
            "dashboard",
            open=True,
            needs="nothing",
        )
        for path in sorted(dashboard.PATHS)
    ),
)


OPEN_PATHS: Final = frozenset(op.path for op in OPERATIONS if op.open)
"""The paths that answer without a token: liveness and readiness probes of orchestrators, and the
dashboard's page and files (they hold no data; the routes they read ask for the token)."""
