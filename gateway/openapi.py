"""``GET /openapi.json``: the gateway's OpenAPI 3.1 document, made from the msgspec types its routes
decode requests with (``gateway/requests.py``) and encode answers with (``gateway/schemas.py``, the
status object, the contracts' events), never written by hand.

``OPERATIONS`` says, for every route of ``gateway/app.py``, which types those are and every status
it can answer; a test fails for a route that is not here. The document is built on the first
request and kept (``operations.openapi`` imports this module then, so none of it runs at start-up).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from victoria import __version__
from victoria.events.contracts import AnyTaskEvent, TokenChunk
from victoria.events.fold import TaskStatus
from victoria.gateway import dashboard, history, legacy, operations, tasklist, tasklogs, tasks
from victoria.gateway.requests import (
    MAX_BODY,
    MAX_RUN_BODY,
    PlanQuery,
    RunQuery,
    SubmitHeaders,
    TaskPath,
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
    TaskKnowledge,
    TaskLogs,
    TaskResponse,
    TasksPage,
    TaskSummary,
    TelegramBeat,
    TelegramHealth,
    TelegramRegistered,
)

OPENAPI_VERSION: Final = "3.1.0"
REF: Final = "#/components/schemas/{name}"
JSON: Final = "application/json"
EVENT_STREAM: Final = "text/event-stream"
PROMETHEUS_TEXT: Final = "text/plain"

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
    """Answers without a token (liveness and readiness probes)."""


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
_UNAUTHORIZED: Final = Answer(
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
_SUBMIT_ERRORS: Final = (_BAD_JSON, _too_large(MAX_RUN_BODY), _INVALID, _OVERLOADED)

OPERATIONS: Final[tuple[Operation, ...]] = (
    # the old server's contract
    Operation(
        "POST",
        "/run",
        "Run a goal: its TaskResponse when it ends, or 202 at once with ?async_mode=true",
        legacy.run,
        (
            Answer(
                200,
                "The task ended: the old server's `TaskResponse`." + _KEY_SPACE,
                (TaskResponse, PlanAnswer),
            ),
            Answer(202, "Accepted (`?async_mode=true`), or still running when `?wait=` passed", Accepted),
            *_SUBMIT_ERRORS,
        ),
        "old server",
        body=RunBody,
        query=RunQuery,
        headers=SubmitHeaders,
    ),
    Operation(
        "POST",
        "/stream",
        "Run a goal, and follow it as server-sent events",
        legacy.stream,
        (
            Answer(
                200,
                "One `data: {json}` line per event (`StreamLine`): `start`, `step`, `chunk`, `error`, and "
                "always a last `end` with the `TaskResponse` fields. A repeated `Idempotency-Key` streams "
                "the same task again (a stream is not kept).",
                (TaskResponse, PlanAnswer),
                stream=StreamLine,
            ),
            Answer(202, "A repeated `Idempotency-Key` whose first answer was a 202", Accepted),
            *_SUBMIT_ERRORS,
        ),
        "old server",
        body=RunBody,
        headers=SubmitHeaders,
    ),
    Operation(
        "POST",
        "/plan",
        "Understand and plan a goal, no steps",
        legacy.plan,
        (
            Answer(
                200,
                "The plan; the `TaskResponse` when the task did not complete." + _KEY_SPACE,
                (PlanAnswer, TaskResponse),
            ),
            Answer(202, "Still planning when `?wait=` passed", Accepted),
            *_SUBMIT_ERRORS,
        ),
        "old server",
        body=RunBody,
        query=PlanQuery,
        headers=SubmitHeaders,
    ),
    Operation(
        "GET",
        "/status",
        "What is true of this system now",
        legacy.status,
        (Answer(200, "The system's status", SystemStatus),),
        "old server",
    ),
    Operation(
        "GET",
        "/health",
        "This gateway's liveness",
        legacy.health,
        (Answer(200, "Alive", Health),),
        "old server",
        open=True,
    ),
    Operation(
        "GET",
        "/api/available-models",
        "The models of the configured model server",
        legacy.available_models,
        (Answer(200, "The models; `error` when the model server did not answer", AvailableModels),),
        "old server",
    ),
    Operation(
        "POST",
        "/api/telegram/register",
        "A Telegram bot says it is there",
        legacy.telegram_register,
        (
            Answer(200, "Registered: watched from now on like any service", TelegramRegistered),
            _BAD_JSON,
            _too_large(MAX_BODY),
            _INVALID,
            _UNAVAILABLE,
        ),
        "old server",
        body=legacy.BotBeat,
    ),
    Operation(
        "POST",
        "/api/telegram/heartbeat",
        "A Telegram bot's heartbeat",
        legacy.telegram_heartbeat,
        (
            Answer(200, "Beat recorded", TelegramBeat),
            _BAD_JSON,
            _too_large(MAX_BODY),
            _INVALID,
            _UNAVAILABLE,
        ),
        "old server",
        body=legacy.BotBeat,
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
    # operations
    Operation(
        "GET",
        "/ready",
        "Readiness: NATS and the task streams answer",
        operations.ready,
        (Answer(200, "Ready", Ready), Answer(503, "Not ready yet", Ready, retry_after=True)),
        "operations",
        open=True,
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
        )
        for path in sorted(dashboard.PATHS)
    ),
)


def _types(op: Operation) -> list[Any]:
    found = [t for t in (op.body, op.query, op.headers) if t is not None]
    if "{" in op.path:
        found.append(TaskPath)
    for answer in op.answers:
        found += answer.body if isinstance(answer.body, tuple) else [answer.body]
        found.append(answer.stream)
    return [t for t in found if t is not None]


class _Schemas:
    """Every type's JSON schema, in one set of components."""

    def __init__(self, types: list[Any]) -> None:
        unique = list(dict.fromkeys([*types, TaskKnowledge, *NAMED_UNIONS.values()]))
        schemas, self.components = msgspec.json.schema_components(unique, ref_template=REF)
        self._by_type = dict(zip(unique, schemas, strict=True))
        for name, union in NAMED_UNIONS.items():
            self.components[name] = self._by_type[union]

    def of(self, t: Any) -> dict[str, Any]:
        if isinstance(t, tuple):
            return {"anyOf": [self.of(one) for one in t]}
        for name, union in NAMED_UNIONS.items():
            if t == union:
                return {"$ref": REF.format(name=name)}
        schema: dict[str, Any] = self._by_type[t]
        return schema

    def parameters(self, struct: type[msgspec.Struct], where: str) -> list[dict[str, Any]]:
        """One parameter per field of ``struct``."""
        schema = self.components[struct.__name__]
        required = set(schema.get("required", ()))
        out = []
        for name, field in schema["properties"].items():
            field = _present(field)
            parameter: dict[str, Any] = {
                "name": name,
                "in": where,
                "required": where == "path" or name in required,
            }
            description = field.pop("description", None)
            if description:
                parameter["description"] = description
            parameter["schema"] = field
            out.append(parameter)
        return out


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema: a parameter is there or not, never null."""
    schema = dict(schema)
    if schema.get("default", 0) is None:
        del schema["default"]
    alternatives = schema.get("anyOf")
    if alternatives is not None:
        kept = [one for one in alternatives if one != {"type": "null"}]
        if len(kept) == 1:
            del schema["anyOf"]
            schema = {**kept[0], **schema}
        else:
            schema["anyOf"] = kept
    return schema


def _sse_event(data: dict[str, Any], *, with_id: bool) -> dict[str, Any]:
    """One server-sent event as a client parses it; its ``data`` is JSON described by ``data``."""
    properties: dict[str, Any] = {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": JSON, "contentSchema": data},
    }
    if with_id:
        properties["id"] = {"type": "string"}
    return {"type": "object", "properties": properties, "required": ["data"]}


def _answer(answer: Answer, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    content: dict[str, Any] = {}
    if answer.stream is not None:
        events = answer.stream == NAMED_UNIONS["TaskEvent"]
        content[EVENT_STREAM] = {"schema": _sse_event(schemas.of(answer.stream), with_id=events)}
    if answer.body is not None:
        content[JSON] = {"schema": schemas.of(answer.body)}
    if answer.text:
        content[PROMETHEUS_TEXT] = {"schema": {"type": "string"}}
    if answer.media is not None:
        content[answer.media] = {"schema": {"type": "string"}}
    if content:
        out["content"] = content
    if answer.retry_after:
        out["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
        }
    if answer.status == 401:
        out["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return out


def _description(handler: Callable[..., Any]) -> str:
    text = inspect.cleandoc(handler.__doc__ or "")
    return re.sub(r"\s*\n\s*", " ", text).replace("``", "`")


def _operation(op: Operation, schemas: _Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tags": [op.tag],
        "summary": op.summary,
        "description": _description(op.handler),
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{op.method.lower()}{op.path}").strip("_"),
    }
    parameters: list[dict[str, Any]] = []
    if "{" in op.path:
        parameters += schemas.parameters(TaskPath, "path")
    if op.query is not None:
        parameters += schemas.parameters(op.query, "query")
    if op.headers is not None:
        parameters += schemas.parameters(op.headers, "header")
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": False, "content": {JSON: {"schema": schemas.of(op.body)}}}
    answers = op.answers if op.open else (*op.answers, _UNAUTHORIZED)
    responses: dict[str, Any] = {}
    for answer in sorted(answers, key=lambda a: a.status):
        responses[str(answer.status)] = _answer(answer, schemas)
    out["responses"] = responses
    if op.open:
        out["security"] = []
    return out


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in ``OPERATIONS``."""
    schemas = _Schemas([t for op in OPERATIONS for t in _types(op)])
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    for op in OPERATIONS:  # parameters are described in place, not as components
        for struct in (op.query, op.headers, TaskPath):
            if struct is not None:
                schemas.components.pop(struct.__name__, None)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "victoria",
            "version": __version__,
            "description": "A crash-proof runtime for LLM agent tasks: the HTTP gateway, which speaks the "
            "old Victoria server's contract (docs/compat.md).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}, {"basicAuth": []}],
        "tags": [{"name": "old server"}, {"name": "tasks"}, {"name": "operations"}, {"name": "dashboard"}],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API token"},
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "The API token as the password (or as the user name, with no password)",
                },
            },
        },
    }


@functools.cache
def encoded() -> bytes:
    """The document as JSON, built once."""
    return msgspec.json.encode(document())
