"""Message contracts: tagged, frozen msgspec Structs, one per message type.

Every message on the bus is JSON, readable with ``nats sub``. Each carries ``type`` (the tag),
``v`` (the schema version) and ``ts`` (when it was made, RFC 3339 UTC). Contracts evolve only by
adding fields with defaults at the end; unknown fields are ignored on decode, so an older actor
reads a newer event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Final, Literal, get_args

import msgspec

from victoria.events.goals import RouteKind
from victoria.events.subjects import ResultKind, TaskKind

SCHEMA_VERSION: Final = 1

TaskStatusName = Literal["queued", "running", "completed", "failed", "cancelled"]
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"completed", "failed", "cancelled"})
TASK_TYPES: Final[frozenset[str]] = frozenset(get_args(RouteKind))
"""Explicit routes a client may ask for; without ``task_type`` Victoria's classifier chooses.
``plan`` understands and plans, and answers with the plan (``POST /plan``)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, gc=False):
    """Base of every message. ``v`` is the schema version, ``ts`` the time it was made.

    ``gc=False``: messages are plain data that never refer back to what holds them, so the cyclic
    garbage collector need not track them (a gateway caches thousands; each one tracked lengthened
    every full collection, a pause of the whole event loop)."""

    v: int = SCHEMA_VERSION
    ts: datetime = msgspec.field(default_factory=utcnow)


# --- task events: victoria.task.<shard>.<task_id>.<kind> -----------------------------------------


class TaskEvent(Message, kw_only=True, frozen=True):
    """An event of one task. ``kind`` (a class variable, not a field) is the last token of its
    subject (``victoria.events.subjects.task_event``); a model result's is ``llm_result``, the token
    before its request id."""

    kind: ClassVar[TaskKind | ResultKind]
    task_id: str


class ChatTurn(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One earlier exchange of the conversation a goal belongs to, as the old server's clients send
    it (``chat_history``)."""

    user: str = ""
    assistant: str = ""


class TaskSubmitted(TaskEvent, tag="task_submitted", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "submitted"
    goal: str
    task_type: str | None = None
    project_context: Any = None
    session_id: str | None = None
    max_steps: int = 8
    model: str | None = None
    correlation_id: str | None = None
    idempotency_key: str | None = None
    deadline_s: float = 900.0
    """Seconds from ``ts`` after which the task fails with a deadline error."""
    trace_id: str | None = None
    """The task's trace (32 hex digits): every attempt of the task joins it."""
    traceparent: str | None = None
    """W3C traceparent of the gateway's request span, the parent of each attempt's span."""
    chat_history: list[ChatTurn] = []
    """The last turns of the conversation (bounded by the gateway), shown to the model."""
    images: list[str] = []
    """Images sent with the goal: keys (SHA-256 of the bytes) in the object store ``victoria_images``."""
    verbose: bool = False
    """The answer's ``knowledge.verbose_steps`` lists each step's thought, tool and input."""
    max_steps_requested: int | None = None
    """What the client asked for when it was above the ceiling and ``max_steps`` was lowered."""
    project: str | None = None
    """The slug of the users' project that ``project_context`` named (PostgreSQL ``projects``)."""
    workspace: str | None = None
    """That project's ``workspace_path``: the task's workspace instead of ``VICTORIA_WORKSPACE``."""
    expert: str | None = None
    """The expert chosen for the task (PostgreSQL ``experts``, by its category and words)."""
    expert_prompt: str = ""
    """That expert's ``system_prompt``: it leads the task's model calls."""


class TaskStarted(TaskEvent, tag="task_started", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "started"
    attempt: int
    instance: str
    route: str = ""


class TaskStage(TaskEvent, tag="task_stage", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "stage"
    stage: str
    step: int | None = None
    detail: str = ""
    key: str | None = None
    """Identity of this stage within the task (defaults to ``stage`` or ``stage:step``)."""


class ToolCallPart(msgspec.Struct, frozen=True, gc=False):
    """One tool call in a model's reply (the protocol's ``tool_calls``), its arguments parsed. The
    id is the server's, or ``<request_id>-call_<n>`` when it gives none (Ollama before 0.12.10)."""

    id: str
    name: str
    arguments: dict[str, Any] = {}
    """Arguments that were not a JSON object are kept as ``{"_raw": "<what the model wrote>"}``."""


class ChatMessage(msgspec.Struct, frozen=True, gc=False):
    role: str
    content: str
    images: list[str] = []
    """Keys of images in the object store ``victoria_images``; the runner sends their bytes in the
    model protocol's own way (Ollama ``images``, OpenAI image parts)."""
    tool_calls: list[ToolCallPart] = []
    """An assistant message that called tools: the calls, as its reply (``LLMResult.tool_calls``) had them."""
    tool_call_id: str | None = None
    """A ``role: "tool"`` message: the id of the call whose result it carries."""
    name: str | None = None
    """A ``role: "tool"`` message: the tool's name (Ollama's ``tool_name``)."""


class LLMRequested(TaskEvent, tag="llm_requested", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "llm_request"
    request_id: str
    """Unique within the task, and the same on every attempt (``understand``, ``plan``, ``step-3``)."""
    purpose: str
    """What is asked: one of ``PURPOSES``."""
    messages: list[ChatMessage]
    model: str | None = None
    timeout_s: float = 300.0
    json_mode: bool = False
    stage: str | None = None
    """Set when this request is the first stored event of a stage: it records the stage entered
    (with ``step``), and no ``task_stage`` event is stored for it. One fsynced append, not two."""
    step: int | None = None
    attempt: int | None = None
    """Set when this request is the first stored event of the task's first attempt: it records the
    start of that attempt on ``instance``, and no ``task_started`` event is stored for it."""
    instance: str = ""
    fingerprint: str = ""
    """A hash of what is asked (messages, model, JSON mode). An attempt that resumes the task
    takes the stored answer only when it would ask the same; else it asks again, under a new id."""
    workflow: int = 0
    """The version of the workflow code that made the request (``actors/agent/workflow.py``)."""
    understood: str | None = None
    """What the agent read in the task's understand reply (its one reader of model replies), on the
    request that follows it: what the old clients' ``/stream`` shows as the "Understood" step."""
    tools: list[dict[str, Any]] = []
    """The tool table sent with the request as the protocol's own ``tools``, JSON Schema function
    specs in OpenAI's shape (``{"type": "function", "function": {"name", "description",
    "parameters"}}``); empty: none are sent, and the reply is text."""


Purpose = Literal["understand", "plan", "step", "answer"]
PURPOSES: Final[tuple[Purpose, ...]] = ("understand", "plan", "step", "answer")
"""What a model request asks for: what the goal means, a plan, a step (a tool call, or the final
answer), the final answer alone."""

LLMErrorKind = Literal["unavailable", "timeout", "http_status", "protocol", "cancelled", "context"]
"""``context``: the request does not fit the model's context window, even trimmed."""
FinishReason = Literal["stop", "length", "interrupted"]
"""How a model's answer ended: it stopped by itself, its output cap cut it (``finish_reason`` or
``done_reason`` ``length``), or the server ended it early without saying why (llama-cpp-python
does that to a stream when another request arrives)."""


class LLMResult(TaskEvent, tag="llm_result", kw_only=True, frozen=True):
    kind: ClassVar[ResultKind] = "llm_result"
    request_id: str
    ok: bool
    content: str = ""
    model: str = ""
    error: str | None = None
    error_kind: LLMErrorKind | None = None
    url: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    duration_s: float = 0.0
    instance: str = ""
    time_to_first_token_s: float | None = None
    purpose: str = ""
    """What the request asked for (its ``LLMRequested.purpose``, one of ``PURPOSES``): readers
    tell an understanding from a plan or a step by it, never by the request id."""
    finish_reason: FinishReason | None = None
    """How the answer ended; ``length``: cut by its cap, and used as it stands."""
    max_tokens: int | None = None
    """The output cap the call was sent with (tokens)."""
    trimmed: str | None = None
    """What was left out of the request to fit the model's context, when anything was."""
    tool_calls: list[ToolCallPart] = []
    """The tools the model called, in order (a request with ``tools``); none: ``content`` is its answer."""
    tools_refused: bool = False
    """The server or model does not take tools (its error said so, or the models file says
    ``tools = false``): ``ok`` is False, and the request may be asked again without them."""


class ToolResult(TaskEvent, tag="tool_result", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "tool_result"
    call_id: str
    tool: str
    args: dict[str, Any] = {}
    ok: bool = True
    output: str = ""
    error: str | None = None


ToolEffect = Literal["read", "write", "execute", "external"]


class ToolIntent(TaskEvent, tag="tool_intent", kw_only=True, frozen=True):
    """A tool call the model asked for, stored in the task's history before it runs: Veronica
    takes it from her durable consumer, claims it once (``ToolClaim``) and stores its outcome
    (``ToolOutcome``). The same ``call_id`` on every attempt of the task."""

    kind: ClassVar[TaskKind] = "tool_intent"
    call_id: str
    tool: str
    args: dict[str, Any] = {}
    effect: ToolEffect = "read"
    rerun: bool = True
    """It may simply run again when a crash left its outcome unknown."""
    workspace: str | None = None
    """The task's project workspace, when it has one (else Veronica's ``VICTORIA_WORKSPACE``)."""
    fingerprint: str = ""
    """A hash of tool and arguments: a resumed attempt takes the stored outcome only for the same call."""
    approved_by: str = ""
    """Who approved it, when its effect needs a person's yes (``ApprovalDecided.by``)."""


class ToolClaim(TaskEvent, tag="tool_claim", kw_only=True, frozen=True):
    """Who took a tool call (``victoria.task.<s>.<id>.tool_claim.<call_id>``, one message ever):
    Veronica before she runs it, or Victoria, giving it up, so that nobody runs it after."""

    kind: ClassVar[ResultKind] = "tool_claim"
    call_id: str
    by: Literal["veronica", "victoria"] = "veronica"
    instance: str = ""
    changes: list[FileChange] = []
    """A write's files (``write_file``, ``apply_patch``): each one's SHA-256 as Veronica found it just
    before she claimed the call, and as the write leaves it. A delivery after her death compares
    the files with them: done, not done, or changed by someone else."""


class FileChange(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """A file a write changed: its content's SHA-256 before (None: it did not exist) and after
    (None: deleted)."""

    path: str
    before: str | None = None
    after: str | None = None


class ToolOutcome(TaskEvent, tag="tool_outcome", kw_only=True, frozen=True):
    """What a tool call did (``victoria.task.<s>.<id>.tool_outcome.<call_id>``, one message ever)."""

    kind: ClassVar[ResultKind] = "tool_outcome"
    call_id: str
    tool: str
    ok: bool
    output: str = ""
    """What the model reads (cut to its cap)."""
    error: str | None = None
    interrupted: bool = False
    """The executor died while it ran: unknown whether it finished (the model decides)."""
    exit_code: int | None = None
    duration_s: float = 0.0
    digest: str = ""
    """SHA-256 of ``output``."""
    changes: list[FileChange] = []
    instance: str = ""


class ApprovalRequested(TaskEvent, tag="approval_requested", kw_only=True, frozen=True):
    """A tool call that waits for a person's yes (its effect is in ``VICTORIA_APPROVAL``), stored in
    the task's history before its intent. ``approval_id`` is the call's id; the decision is an
    ``ApprovalDecided`` on the call's own subject. ``ts`` is when it was asked."""

    kind: ClassVar[TaskKind] = "approval_request"
    approval_id: str
    tool: str
    args: dict[str, Any] = {}
    effect: ToolEffect = "execute"
    timeout_s: float = 0.0
    """Seconds from ``ts`` after which Victoria denies it herself ("timed out")."""


Decision = Literal["approve", "deny"]


class ApprovalDecided(TaskEvent, tag="approval_decided", kw_only=True, frozen=True):
    """A person's answer to an ``ApprovalRequested``
    (``victoria.task.<s>.<id>.approval.<approval_id>``, one message ever: the first decision holds).
    ``by`` is the gateway token's name, or ``victoria`` when the wait timed out."""

    kind: ClassVar[ResultKind] = "approval"
    approval_id: str
    decision: Decision
    reason: str = ""
    by: str = ""


class TaskCancelRequested(TaskEvent, tag="task_cancel_requested", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "cancel"
    reason: str = "cancelled by request"


class ModelCall(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One model call of a task, as the task's terminal event sums them up: what ``/metrics``
    counts, so that gateways need not follow every ``llm_result``."""

    model: str
    outcome: str
    """``ok``, or the error kind of the call (``timeout``, ``unavailable``, ...)."""
    duration_s: float
    time_to_first_token_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class VerboseStep(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One step of an agent run, as ``verbose`` answers list them."""

    step: int
    thought: str
    tool: str
    input: dict[str, Any] = {}


class Knowledge(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """What a finished task knows beyond its output: the old server's ``knowledge`` object."""

    routed_to: str = ""
    """``agent_run``, ``veronica`` or ``capabilities`` (``plan`` for a plan only)."""
    delegated_to: str | None = None
    model_used: str | None = None
    source: str = ""
    """Where the answer came from: ``model``, ``workspace`` or ``capability_registry``."""
    verbose_steps: list[VerboseStep] = []
    clarification_questions: list[str] = []
    """Set when the model found the goal too unclear to act on: the task asks back."""
    suggested_restatement: str = ""


class TaskCompleted(TaskEvent, tag="task_completed", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "completed"
    output: str
    attempts: int = 1
    model_calls: list[ModelCall] = []
    """Every model call of the task, on every attempt, each once."""
    knowledge: Knowledge | None = None


class TaskFailed(TaskEvent, tag="task_failed", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "failed"
    error: str
    error_kind: str = "error"
    attempts: int = 1
    model_calls: list[ModelCall] = []


class TaskCancelled(TaskEvent, tag="task_cancelled", kw_only=True, frozen=True):
    kind: ClassVar[TaskKind] = "cancelled"
    reason: str = "cancelled by request"
    attempts: int = 0
    model_calls: list[ModelCall] = []


AnyTaskEvent = (
    TaskSubmitted
    | TaskStarted
    | TaskStage
    | LLMRequested
    | LLMResult
    | ToolResult
    | ToolIntent
    | ToolClaim
    | ToolOutcome
    | ApprovalRequested
    | ApprovalDecided
    | TaskCancelRequested
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
)

HistoryEvent = (
    TaskSubmitted
    | TaskStarted
    | TaskStage
    | LLMRequested
    | ToolResult
    | ToolIntent
    | ApprovalRequested
    | TaskCancelRequested
    | TaskCompleted
    | TaskFailed
    | TaskCancelled
)
"""The events of a task's own history (``victoria.task.<s>.<id>.<kind>``): all but model results."""

TERMINAL_EVENTS: Final = (TaskCompleted, TaskFailed, TaskCancelled)
RESULT_EVENTS: Final = (LLMResult, ToolClaim, ToolOutcome, ApprovalDecided)
"""Events stored beside a task's own history (``<kind>.<id>`` subjects), by its executors."""


# --- service events: victoria.svc.<name>.<instance>.<kind>, heartbeats -----------------------------


class ServiceEvent(Message, kw_only=True, frozen=True):
    name: str
    instance: str


class ServiceStarted(ServiceEvent, tag="service_started", kw_only=True, frozen=True):
    pid: int
    version: str = ""
    restarts: int = 0


class ServiceDown(ServiceEvent, tag="service_down", kw_only=True, frozen=True):
    reason: str
    source: Literal["supervisor", "heartbeat", "probe"] = "heartbeat"
    pid: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    likely_oom: bool = False
    restarts: int = 0
    url: str | None = None
    error: str | None = None


class ServiceUp(ServiceEvent, tag="service_up", kw_only=True, frozen=True):
    reason: str
    source: Literal["supervisor", "heartbeat", "probe"] = "heartbeat"
    pid: int | None = None
    url: str | None = None


class Heartbeat(ServiceEvent, tag="heartbeat", kw_only=True, frozen=True):
    pid: int
    rss_bytes: int
    in_flight: int
    version: str
    interval_s: float
    started_at: datetime
    status: Literal["up", "degraded"] = "up"
    detail: str = ""
    restarts: int = 0


AnyServiceEvent = ServiceStarted | ServiceDown | ServiceUp | Heartbeat


# --- request/reply contracts ---------------------------------------------------------------------


class FilesRequest(Message, tag="files_request", kw_only=True, frozen=True):
    """Ask Veronica to list a directory or read a file inside her workspace."""

    op: Literal["list", "read", "auto"]
    path: str = "."
    limit: int | None = None
    goal: str = ""
    task_id: str | None = None
    workspace: str | None = None
    """The task's own workspace (its project's), instead of Veronica's ``VICTORIA_WORKSPACE``."""


class FilesReply(Message, tag="files_reply", kw_only=True, frozen=True):
    ok: bool
    output: str = ""
    error: str | None = None
    entries: list[str] = []


class ServicesRequest(Message, tag="services_request", kw_only=True, frozen=True):
    pass


class ServiceEntry(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    instance: str
    pid: int | None
    status: Literal["up", "down", "degraded"]
    reason: str
    restarts: int
    last_seen: datetime | None
    rss_bytes: int | None = None
    in_flight: int | None = None
    version: str | None = None


class DependencyEntry(msgspec.Struct, kw_only=True, frozen=True):
    """A dependency outside the system (the model server, PostgreSQL), as its probe sees it."""

    name: str
    target: str
    status: Literal["unknown", "up", "busy", "down", "restarting"]
    """``busy``: a model server the probe did not ask (or that did not answer in time) while a
    runner's call streamed tokens from it: it serves; asking would queue behind the generation,
    or (llama-cpp-python) cut it short. ``restarting``: an MCP server that ended, started again
    after a backoff."""
    reason: str
    last_checked: datetime | None
    instance: str | None = None
    """For an MCP server (named ``mcp-<server>``): the instance of Veronica that runs it."""
    tools: int | None = None
    """For an MCP server: how many tools it lists."""
    stderr: list[str] = []
    """For an MCP server: the last lines its process wrote to stderr."""


class ServicesReply(Message, tag="services_reply", kw_only=True, frozen=True):
    services: list[ServiceEntry]
    dependencies: list[DependencyEntry] = []


class DeadLetter(Message, tag="dead_letter", kw_only=True, frozen=True):
    """A message set aside, on ``victoria.dlq.>``: one nobody could decode, or a task that
    exhausted its attempts."""

    consumer: str
    """The durable consumer that set it aside."""
    subject: str
    """Where it was published."""
    reason: str
    data: str
    """The original payload, as text (bytes that are not UTF-8 are replaced)."""
    deliveries: int = 0
    task_id: str | None = None


# --- logs and token chunks (plain JSON, best effort) ----------------------------------------------


class LogRecord(Message, tag="log_record", kw_only=True, frozen=True):
    """One log line of one actor, on ``victoria.log.<actor>.<level>``."""

    actor: str
    """The service that logged it (``victoria``, ``llm-runner``, ...)."""
    instance: str
    pid: int
    level: str
    """``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR``."""
    logger: str
    """The Python logger's name (the module)."""
    message: str
    task_id: str | None = None
    """The task it was logged for, when one was running."""
    trace_id: str | None = None


class TokenChunk(Message, tag="token_chunk", kw_only=True, frozen=True):
    """Model output as it is written, on ``victoria.tokens.<task_id>``; not stored."""

    task_id: str
    request_id: str
    seq: int
    """Counts from 0 per request: a reader puts the pieces in order and sees a gap."""
    text: str
    done: bool = False
    """The last piece of the request's answer."""
    purpose: str = ""
    """The purpose of the request these words answer (``LLMRequested.purpose``)."""


# --- model-aware scheduling (issue 14) -------------------------------------------------------------


class ModelWait(Message, tag="model_wait", kw_only=True, frozen=True):
    """A model call waits for its model (another one is loaded), on ``victoria.progress.<task_id>``;
    not stored. ``place`` counts from 1 among the calls waiting for that model; ``waiting`` False
    says the wait is over (the call went to the server)."""

    task_id: str
    request_id: str
    model: str
    place: int = 0
    waiting: bool = True
    server: str = ""
    instance: str = ""
    waited_s: float = 0.0
    """Seconds the call has waited so far."""
    server_up: bool = True
    """With ``waiting`` False: whether the server the call goes to answered its last look."""


class ModelDemand(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One runner instance's work for one model server, in the bucket ``victoria_models`` under
    ``demand.<server>.<instance>``: model -> [has calls running (or just ended), has calls waiting]."""

    instance: str
    models: dict[str, list[bool]] = {}
    at: float = 0.0
    """Unix seconds when written; a record older than a few refreshes is ignored."""


class ModelServerShare(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """What runner instances agree a model server runs now, in ``victoria_models`` under
    ``server.<server>``; changed only with compare-and-set, so two instances never swap it both ways."""

    active: list[str] = []
    """Models calls may go to now (at most the server's ``max_loaded``)."""
    draining: list[str] = []
    """Active models that take no new calls: a call for another model has waited too long."""
    by: str = ""
    at: float = 0.0


class ModelInfo(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    name: str
    loaded: bool = False
    size_bytes: int | None = None
    parameter_size: str | None = None
    calls: int = 0
    """Calls measured below (the recent ones)."""
    ttft_s: float | None = None
    """Median time to first token of recent calls, seconds."""
    tokens_per_s: float | None = None
    """Median output tokens per second of recent calls."""
    listed: bool = False
    """The server lists it (``/api/tags``, ``/v1/models``) or the models file names it; False for a
    name known only from the calls served (what ``/api/available-models`` leaves out)."""
    context: int | None = None
    """Its context window, tokens, as the server or the models file says (None: not known)."""
    tools: bool | None = None
    """It takes tool definitions (Ollama ``capabilities``, llama.cpp's chat template); None: not known."""


class McpToolInfo(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One tool of an MCP server, as its ``tools/list`` gives it. The hints are MCP's tool
    annotations, with the specification's defaults where the server gives none."""

    name: str
    """The server's own name for it; the model calls it ``mcp__<server>__<name>``."""
    description: str = ""
    input_schema: dict[str, Any] = {}
    """Its ``inputSchema``: a JSON Schema object."""
    read_only: bool = False
    """``readOnlyHint``: it changes nothing (effect ``read``; else ``external``)."""
    destructive: bool = True
    """``destructiveHint``."""
    idempotent: bool = False
    """``idempotentHint``: calling it again with the same arguments does nothing more."""
    open_world: bool = True
    """``openWorldHint``: it reaches the world outside (the web, another system)."""


class McpServerState(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One MCP server of ``VICTORIA_MCP_CONFIG`` as one instance of Veronica runs it, in the bucket
    ``victoria_mcp`` under ``<server>.<instance>``: written at every change and every
    ``MCP_REFRESH`` seconds, so that a record older than ``MCP_FRESH`` is of an instance gone.
    The agent offers the tools of the servers that are up; ``/tools`` lists them; ``/services``
    shows each server as a dependency."""

    server: str
    instance: str
    transport: Literal["stdio", "http"]
    target: str
    """The command line, or the URL (a secret in it redacted)."""
    status: Literal["starting", "up", "restarting", "down"]
    reason: str = ""
    """Why it is not up: the exit code, the error of the last try."""
    tools: list[McpToolInfo] = []
    stderr: list[str] = []
    """The last lines its process wrote to stderr (stdio servers)."""
    restarts: int = 0
    at: float = 0.0
    """When it was written (``time.time()``)."""


class ModelServerInfo(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One model server as a runner sees it, in ``victoria_models`` under ``info.<server>``: for
    ``/services`` and ``victoria models``."""

    url: str
    api: str
    status: Literal["unknown", "up", "busy", "down"] = "unknown"
    """``busy``: a look timed out, or was not made, while a call streamed from the server: it
    serves, and cannot answer anything else meanwhile."""
    models: list[ModelInfo] = []
    loaded: list[str] = []
    """Loaded now: what the server says (Ollama /api/ps), or for servers that cannot tell, the
    model of the last call it served."""
    loaded_source: Literal["server", "last_served"] = "last_served"
    swaps: int = 0
    """Model changes this runner instance has seen the server make since it started."""
    instance: str = ""
    at: float = 0.0
    error: str | None = None
    """Why the runner's last look at the server failed: the URL and the failure, named the same
    whatever the HTTP client calls it (``ConnectError``, ``TimeoutError``, ``HTTPStatusError``);
    None while it answers."""
    kind: str = ""
    """What server it is, as far as it tells: ``ollama``, ``llama.cpp``, ``llama-cpp-python``,
    ``vllm``, ``mlx``, or ``openai`` (some other OpenAI-compatible server)."""
    slots: int | None = None
    """Generations it runs at once (llama.cpp ``total_slots``; 1 for llama-cpp-python)."""
    streaming: int = 0
    """Calls of this runner instance the server works on now (sent, waiting for their first token
    or streaming)."""
    progress_at: float = 0.0
    """When a call of this instance last began or received a token there (Unix time; 0: never)."""
