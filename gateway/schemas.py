"""What the gateway answers, as msgspec Structs.

The routes encode their JSON answers through these types where they can, and ``gateway/openapi.py``
describes every answer from them, so ``/openapi.json`` and the bytes sent cannot drift apart. The
status object (``victoria.events.fold.TaskStatus``) and the services (``ServiceEntry``,
``DependencyEntry``) are the contracts' own types. Fields are in the order they are sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from victoria.events.contracts import DependencyEntry, ModelInfo, ServiceEntry, TaskStatusName, VerboseStep

# --- errors ---------------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every refusal: ``error`` a short code (``invalid_json``, ``invalid_field``, ``invalid_parameter``,
    ``invalid_header``, ``body_too_large``, ``not_found``, ``unavailable``, ``overloaded``,
    ``unauthorized``, ``no_database``, ``http_error``), ``detail`` what is wrong in words, ``field``
    the offending field, parameter or header when there is one."""

    error: str
    detail: str
    field: str | None = None


# --- one task -------------------------------------------------------------------------------------


class KnowledgeMetadata(msgspec.Struct, kw_only=True):
    model_used: str | None
    source: str


class TaskKnowledge(msgspec.Struct, kw_only=True):
    """The old server's ``knowledge`` object: what a task knows beyond its output. Always an object;
    a task that has not completed has its ``project_context`` only."""

    metadata: KnowledgeMetadata | None = None
    method: str | None = None
    routed_to: str | None = None
    delegated_to: str | None = None
    verbose_steps: list[VerboseStep] | None = None
    clarification_questions: list[str] | None = None
    suggested_restatement: str | None = None
    project_context: Any = None
    expert: str | None = None
    project: str | None = None
    max_steps: int | None = None
    max_steps_requested: int | None = None


KnowledgeObject = Annotated[
    dict[str, Any], msgspec.Meta(extra_json_schema={"$ref": "#/components/schemas/TaskKnowledge"})
]
"""``knowledge`` as it is sent (a dict, its keys present as they apply), described by ``TaskKnowledge``."""


class Accepted(msgspec.Struct, kw_only=True):
    """202: the task is taken (or still runs when ``?wait=`` passed first); poll ``status_url``."""

    task_id: str
    correlation_id: str | None
    status_url: str
    message: str
    status: TaskStatusName


class TaskSucceeded(msgspec.Struct, tag_field="status", tag="success", kw_only=True):
    """The old server's ``TaskResponse`` of a task that completed."""

    output: str
    knowledge: KnowledgeObject
    correlation_id: str | None
    task_id: str


class TaskNeedsClarification(msgspec.Struct, tag_field="status", tag="needs_clarification", kw_only=True):
    """The model found the goal too unclear to act on: the task asks back."""

    clarification_questions: list[str]
    suggested_restatement: str
    correlation_id: str | None
    task_id: str


class TaskFailedAnswer(msgspec.Struct, tag_field="status", tag="failed", kw_only=True):
    """A task that failed: still a 200, with ``error`` and ``error_kind``."""

    error: str
    error_kind: str | None
    output: str | None
    knowledge: KnowledgeObject
    correlation_id: str | None
    task_id: str


class TaskCancelledAnswer(TaskFailedAnswer, tag="cancelled", kw_only=True):
    """A task that was cancelled: still a 200, with ``error``."""


TaskResponse = TaskSucceeded | TaskNeedsClarification | TaskFailedAnswer | TaskCancelledAnswer
"""The old server's ``TaskResponse`` for a task that ended, by its ``status``."""


class PlanAnswer(msgspec.Struct, kw_only=True):
    """``POST /plan`` of a task that completed: its plan."""

    plan: str
    status: Literal["success"]
    task_id: str
    correlation_id: str | None


class CancelRequested(msgspec.Struct, kw_only=True):
    """202: the cancel is recorded; the task's status is ``cancelled`` from now on."""

    task_id: str
    status: TaskStatusName
    cancel: Literal["requested"]


# --- POST /stream: one JSON object per ``data:`` line ---------------------------------------------


class StreamStart(msgspec.Struct, tag_field="type", tag="start", kw_only=True):
    task_id: str
    correlation_id: str | None


class StreamStep(msgspec.Struct, tag_field="type", tag="step", kw_only=True):
    """A stage, a step, the model's understanding or plan, a tool's result."""

    stepType: str
    title: str
    content: str


class StreamChunk(msgspec.Struct, tag_field="type", tag="chunk", kw_only=True):
    """The answer's words as the model writes them."""

    content: str


class StreamError(msgspec.Struct, tag_field="type", tag="error", kw_only=True):
    content: str


class StreamEnd(msgspec.Struct, tag_field="type", tag="end", kw_only=True):
    """Always the last line: the ``TaskResponse`` fields, or ``status: interrupted`` when the event
    stream broke off (the task goes on)."""

    task_id: str
    correlation_id: str | None
    status: Literal["success", "needs_clarification", "failed", "cancelled", "interrupted"] | None = None
    output: str | None = None
    knowledge: KnowledgeObject | None = None
    error: str | None = None
    error_kind: str | None = None
    clarification_questions: list[str] | None = None
    suggested_restatement: str | None = None


StreamLine = StreamStart | StreamStep | StreamChunk | StreamError | StreamEnd
"""A line of ``POST /stream``, by its ``type``."""


# --- the system -----------------------------------------------------------------------------------

Connection = Literal["connected", "disconnected"]


class Health(msgspec.Struct, kw_only=True):
    """This gateway's liveness."""

    status: Literal["ok"]
    agent: str
    version: str
    nats: Connection


class Ready(msgspec.Struct, kw_only=True):
    status: Literal["ready", "not ready"]


class ModelServer(msgspec.Struct, kw_only=True):
    default: str
    api: Literal["ollama", "openai"]
    url: str


class Enhanced(msgspec.Struct, kw_only=True):
    enabled: bool


class TaskCounts(msgspec.Struct, kw_only=True):
    queued: int
    running: int


class ModelServerView(msgspec.Struct, kw_only=True):
    """One model server as the runners see it: the newest record, swaps added over instances."""

    url: str
    api: str
    status: Literal["unknown", "up", "busy", "down"] = "unknown"
    """``busy``: a runner's call streams from it (it serves, and is not asked meanwhile)."""
    models: list[ModelInfo] = []
    loaded: list[str] = []
    loaded_source: Literal["server", "last_served"] = "last_served"
    swaps: int = 0
    instances: list[str] = []
    at: float = 0.0
    kind: str = ""
    """``ollama``, ``llama.cpp``, ``llama-cpp-python``, ``vllm`` or ``openai`` (another server)."""
    slots: int | None = None
    streaming: int = 0
    """Calls streaming from it now, over every runner instance."""


class Services(msgspec.Struct, kw_only=True):
    """The service monitor's live view: one entry per actor instance, the probed dependencies, and
    the model servers with their loaded models."""

    services: list[ServiceEntry]
    dependencies: list[DependencyEntry]
    model_servers: list[ModelServerView] = []


class SystemStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What is true of this system now; ``services``, ``dependencies`` and ``tasks`` while NATS is
    connected (the lists are empty when the monitor does not answer)."""

    status: Literal["online"]
    agent: str
    version: str
    uptime_s: float
    nats: Connection
    models: ModelServer
    victoria_enhanced: Enhanced
    services: list[ServiceEntry] | None = None
    dependencies: list[DependencyEntry] | None = None
    tasks: TaskCounts | None = None


class AvailableModels(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The configured model server's models, asked now; ``error`` when it did not answer."""

    ollama: list[str]
    mlx: list[str]
    error: str | None = None


class TelegramRegistered(msgspec.Struct, kw_only=True):
    status: Literal["registered"]
    service: str
    instance: str
    heartbeat_interval_s: float


class TelegramBeat(msgspec.Struct, kw_only=True):
    status: Literal["ok"]
    instance: str


class TelegramHealth(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``ok`` within three heartbeat intervals, ``stale`` after, ``unknown`` when no bot registered."""

    status: Literal["ok", "stale", "unknown"]
    heartbeat_age_seconds: float | None
    registered: bool
    instance: str | None = None
    heartbeat_interval_s: float | None = None


# --- the task history (PostgreSQL) ----------------------------------------------------------------


class RunRow(msgspec.Struct, kw_only=True):
    """One task of the history; ``output`` is cut to its first 500 characters."""

    task_id: str
    status: str
    goal: str
    task_type: str | None
    project: str | None
    expert: str | None
    session_id: str | None
    correlation_id: str | None
    stage: str | None
    output: str | None
    error: str | None
    error_kind: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


class RunsPage(msgspec.Struct, kw_only=True):
    """A page of the history, newest first; ``next`` is the ``cursor`` of the page after."""

    runs: list[RunRow]
    next: str | None


# --- the dashboard's live list and a task's log (gateway/tasklist.py, gateway/tasklogs.py) -------


class TaskSummary(msgspec.Struct, kw_only=True):
    """One task as the live list shows it: a line of ``GET /tasks`` and of ``GET /tasks/events``."""

    task_id: str
    goal: str
    """The goal, cut at 300 characters."""
    status: TaskStatusName
    stage: str | None
    attempts: int
    model: str | None
    """The model it asked for, or the one that answered; None: the default model."""
    project: str | None
    created_at: datetime | None
    updated_at: datetime | None
    duration_s: float | None
    """From submission to the terminal event; None while the task runs."""
    error: str | None


class TasksPage(msgspec.Struct, kw_only=True):
    """The tasks this gateway has seen (submitted since it started, or looked up, and the newest 200
    submitted before it started), newest first."""

    tasks: list[TaskSummary]
    trace_url: str | None
    """``VICTORIA_TRACE_URL``: a trace viewer's URL of one trace, ``{trace_id}`` where its id goes."""


class TaskLogRecord(msgspec.Struct, kw_only=True):
    """One log record of a task, from ``victoria.log.<actor>.<level>``."""

    seq: int
    ts: datetime
    actor: str
    instance: str
    level: str
    logger: str
    message: str


class TaskLogs(msgspec.Struct, kw_only=True):
    """The task's log records, oldest first; ``next`` is the ``after`` of the next read."""

    records: list[TaskLogRecord]
    next: int
    truncated: bool
    """True when the read stopped at its bound (records or messages scanned) before the stream's end."""


# --- the tools the model may call (gateway/toolinfo.py) -------------------------------------------


class ToolInfo(msgspec.Struct, kw_only=True):
    """One tool of the table (``events/tools.py``), as ``GET /tools`` lists it."""

    name: str
    description: str
    effect: Literal["read", "write", "execute", "external"]
    """``read`` changes nothing; ``write`` changes files of the workspace; ``execute`` runs a
    command; ``external`` reaches outside the system."""
    rerun: bool
    """It may simply run again when a crash left its outcome unknown."""
    executor: str
    """Who runs it: ``veronica`` or ``victoria``."""
    source: str
    """``builtin`` for the table's own tools; ``mcp:NAME`` for a tool of the MCP server NAME."""
    needs_approval: bool
    """Its effect is in ``VICTORIA_APPROVAL`` (or is ``execute`` while ``VICTORIA_SANDBOX=none``):
    each call waits for a person's yes."""
    schema: dict[str, Any]
    """The JSON Schema of its arguments."""


class ToolsPage(msgspec.Struct, kw_only=True):
    """Every tool the model may call, in the order the prompts name them."""

    tools: list[ToolInfo]
    approvals_needed: list[str]
    """The effects whose calls wait for a person's yes, sorted."""
