"""Victoria as an MCP server: the tools of ``/mcp`` and the official SDK's server that offers them.

The protocol is the SDK's (``mcp``): its low-level ``Server`` answers ``initialize``, ``tools/list``
and ``tools/call``, sends progress notifications and cancels a call on a client's
``notifications/cancelled``; its ``StreamableHTTPSessionManager`` is the Streamable HTTP transport
(sessions by ``Mcp-Session-Id``, each call answered with server-sent events, ``GET`` for the
server's own stream). Nothing here reads or writes JSON-RPC.

The tools take the routes' own paths, never HTTP: a goal is checked like ``POST /run``'s body
(``requests.checked_run_request``) and submitted by ``submit.admit`` and ``submit.append``; a status
is ``tasks.status_of``; a cancel is ``tasks.cancel_unless_ended``; a decision is
``approvals.record``; the models are ``legacy.models_available``. ``run_task`` follows the task's
events (``follow.Follower``) when the client asked for progress, and sends one notification per
stage, step, tool call and approval; without a ``progressToken`` it waits on this gateway's view, as a sync ``POST /run`` does.
A client's ``notifications/cancelled`` of a waiting ``run_task`` cancels its task; the end of the
session or of the gateway, which cancel the call too, leave the task running.

A bad argument, an unknown task, a refusal (too many tasks in flight, NATS away) is the call's
result with ``isError`` and a text that says what is wrong, never a JSON-RPC error or a broken
session. This module imports the SDK; ``gateway/mcp.py`` loads it on the first request to ``/mcp``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import anyio
import msgspec
import nats.errors
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.session import ServerSession
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.context import RequestContext
from opentelemetry.trace import Span, SpanKind
from starlette.requests import Request

from victoria import __version__
from victoria.events import contracts
from victoria.events.fold import TaskHistory, TaskStatus
from victoria.gateway import approvals, legacy, submit, tasks
from victoria.gateway.admission import Overloaded
from victoria.gateway.backend import Backend, GatewayState
from victoria.gateway.follow import Follower, Stored
from victoria.gateway.requests import MAX_GOAL, BadRequest, RunBody, checked_run_request
from victoria.gateway.schemas import AvailableModels
from victoria.runtime import listen, tracing

log = logging.getLogger(__name__)

NAME: Final = "victoria"
INSTRUCTIONS: Final = (
    "Victoria runs goals as durable tasks: run_task waits for the end (with progress when asked), "
    "start_task answers with the task id at once; task_status and cancel_task take that id; a tool "
    "call of a task that waits for a person is approved or denied with decide_approval."
)
SESSION_IDLE: Final = 30 * 60.0  # seconds without a request after which a session is closed
PROGRESS_SEND: Final = 5.0  # seconds a progress notification may take to be sent; then it is dropped
CANCEL_SEND: Final = 10.0  # seconds the cancel of a task whose call was cancelled may take
MAX_SHOWN: Final = 120  # characters of a tool call's arguments in a progress message

# --- arguments and results: each tool's inputSchema and outputSchema are these types' schemas ------

TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="The task's id")]


class RunTaskArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A goal for Victoria."""

    goal: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_GOAL, description="What to do, in words")]
    project: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1, max_length=200, description="A project's slug: the task works in its folder"
            ),
        ]
        | None
    ) = None
    max_steps: (
        Annotated[int, msgspec.Meta(ge=1, description="Steps at most (lowered to the gateway's ceiling)")]
        | None
    ) = None
    model: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=200, description="The model to ask, by name")]
        | None
    ) = None


class TaskArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One task, by id."""

    task_id: TaskId


class DecisionArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A person's decision on a tool call that waits for one."""

    task_id: TaskId
    approval_id: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=200,
            description="The call's id, as pending_approvals of task_status names it",
        ),
    ]
    decision: Literal["approve", "deny"]
    reason: Annotated[
        str, msgspec.Meta(max_length=approvals.MAX_REASON, description="Said to the model with the decision")
    ] = ""


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    """No arguments."""


class TaskOutcome(msgspec.Struct, kw_only=True):
    """A task as it stands: ``output`` once it completed, ``error`` once it failed or was cancelled."""

    task_id: str
    status: contracts.TaskStatusName
    output: str | None = None
    error: str | None = None


class Started(msgspec.Struct, kw_only=True):
    """A task taken: follow it with task_status."""

    task_id: str
    status: contracts.TaskStatusName


DIALECT: Final = "http://json-schema.org/draft-07/schema#"
"""What the schemas declare. msgspec's schemas use nothing draft 7 lacks, and the SDK's client
checks each ``structuredContent`` against its ``outputSchema`` with ``jsonschema.validate``, which
checks the schema against its dialect's meta-schema on every call first: against 2020-12's (the
default) that took 1.7 ms for run_task's schema and 13 ms for task_status's, against draft 7's
0.4 and 2 ms."""


def _schema(t: Any) -> dict[str, Any]:
    """A type's JSON Schema, whole: an object at the top, the types it uses under ``$defs``."""
    (ref,), components = msgspec.json.schema_components([t], ref_template="#/$defs/{name}")
    top: dict[str, Any] = {"$schema": DIALECT}
    top.update(components.pop(str(ref["$ref"]).rsplit("/", 1)[1]))
    top.pop("title", None)
    if components:
        top["$defs"] = components
    return top


class ToolFailed(Exception):
    """A call that cannot be done as asked: its result is ``isError`` with this text."""


Context = RequestContext[ServerSession, Any, Any]
Call = Callable[[Any, Context], Awaitable[types.CallToolResult]]


@dataclass(frozen=True, slots=True)
class McpTool:
    """One tool: what ``tools/list`` says of it, and the method of ``Tools`` that answers it."""

    name: str
    title: str
    description: str
    args: type[msgspec.Struct]
    result: Any
    read_only: bool
    destructive: bool = False
    idempotent: bool = False
    open_world: bool = False

    def spec(self) -> types.Tool:
        return types.Tool(
            name=self.name,
            title=self.title,
            description=self.description,
            inputSchema=_schema(self.args),
            outputSchema=_schema(self.result),
            annotations=types.ToolAnnotations(
                title=self.title,
                readOnlyHint=self.read_only,
                destructiveHint=self.destructive,
                idempotentHint=self.idempotent,
                openWorldHint=self.open_world,
            ),
        )


TOOLS: Final[tuple[McpTool, ...]] = (
    McpTool(
        "run_task",
        "Run a task",
        "Give Victoria a goal and wait for its end: the output as text, and {task_id, status, output, "
        "error}. With a progressToken, each stage, step, tool call and approval it waits for is a "
        "progress notification; cancelling the call cancels the task.",
        RunTaskArgs,
        TaskOutcome,
        read_only=False,
        destructive=True,  # the task's tools may write files and run commands
        open_world=True,
    ),
    McpTool(
        "start_task",
        "Start a task",
        "Give Victoria a goal and answer at once with the task's id; task_status follows it.",
        RunTaskArgs,
        Started,
        read_only=False,
        destructive=True,
        open_world=True,
    ),
    McpTool(
        "task_status",
        "A task's status",
        "The task's status object: status, stage, step, output, error, the tool calls waiting for a "
        "person (pending_approvals), and more.",
        TaskArgs,
        TaskStatus,
        read_only=True,
        idempotent=True,
    ),
    McpTool(
        "cancel_task",
        "Cancel a task",
        "Cancel a task: its status is cancelled from now on, unless it had ended before.",
        TaskArgs,
        TaskOutcome,
        read_only=False,
        destructive=True,
        idempotent=True,
    ),
    McpTool(
        "decide_approval",
        "Approve or deny a tool call",
        "Approve or deny a tool call of a task that waits for a person's decision (pending_approvals "
        "of task_status names the calls). The first decision holds.",
        DecisionArgs,
        approvals.Decided,
        read_only=False,
        destructive=True,  # an approved call runs
        idempotent=True,
    ),
    McpTool(
        "list_models",
        "List the models",
        "The models of the model servers, as the LLM runner last saw them (GET /api/available-models).",
        NoArgs,
        AvailableModels,
        read_only=True,
        idempotent=True,
    ),
)
BY_NAME: Final = {tool.name: tool for tool in TOOLS}


def _text(text: str, structured: msgspec.Struct, *, error: bool = False) -> types.CallToolResult:
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
    return types.CallToolResult(
        content=content, structuredContent=msgspec.to_builtins(structured), isError=error
    )


def _error(text: str) -> types.CallToolResult:
    content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
    return types.CallToolResult(content=content, isError=True)


def cancelled_by_client(ctx: Context) -> bool:
    """Whether the call in ``ctx`` was ended by the client's ``notifications/cancelled``, rather than
    by the end of its session or of the server (which cancel it too). The SDK cancels the call's
    responder then, and only then; it keeps the responder in flight until the call returns."""
    responder = ctx.session._in_flight.get(ctx.request_id)
    return responder is not None and responder.cancelled


def _outcome(history: TaskHistory) -> TaskOutcome:
    view = history.view()
    return TaskOutcome(task_id=view.task_id, status=view.status, output=view.output, error=view.error)


def _said(outcome: TaskOutcome) -> str:
    if outcome.status == "completed":
        return outcome.output or ""
    if outcome.status in ("queued", "running"):
        return f"task {outcome.task_id} is still {outcome.status}; task_status says when it ends"
    return f"task {outcome.task_id} {outcome.status}: {outcome.error or ''}".rstrip(": ")


def _shown(args: dict[str, Any]) -> str:
    words = " ".join(str(value) for value in args.values() if isinstance(value, str | int | float))
    words = " ".join(words.split())
    return words if len(words) <= MAX_SHOWN else words[: MAX_SHOWN - 1] + "…"


class Progress:
    """The notifications of one ``run_task`` call: one per line, the counter going up; none when the
    client gave no ``progressToken``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.token = ctx.meta.progressToken if ctx.meta is not None else None
        self.count = 0
        self.step: int | None = None

    @property
    def wanted(self) -> bool:
        return self.token is not None

    async def say(self, message: str) -> None:
        if self.token is None:
            return
        self.count += 1
        with anyio.move_on_after(PROGRESS_SEND):  # a client that reads nothing loses notifications
            await self.ctx.session.send_progress_notification(
                self.token, self.count, None, message, related_request_id=str(self.ctx.request_id)
            )

    def lines(self, event: contracts.AnyTaskEvent) -> list[str]:
        """What one event says, for a person: nothing for the events that are no start, stage, step,
        tool call, approval or end."""
        if isinstance(event, contracts.TaskStarted):
            return [f"running (attempt {event.attempt})"]
        if isinstance(event, contracts.LLMRequested):
            # The first request of an attempt, or of a stage, records their start (no event of its own).
            started = [] if event.attempt is None else [f"running (attempt {event.attempt})"]
            return started + ([] if event.stage is None else [self._stage(event.stage, event.step, "")])
        if isinstance(event, contracts.TaskStage):
            return [self._stage(event.stage, event.step, event.detail)]
        if isinstance(event, contracts.ToolIntent | contracts.ToolResult):
            call = f"{event.tool} {_shown(event.args)}".strip()
            return [f"step {self.step}: {call}" if self.step is not None else call]
        if isinstance(event, contracts.ApprovalRequested):
            call = f"{event.tool} {_shown(event.args)}".strip()
            return [f"waiting for approval {event.approval_id} of {call} (decide_approval)"]
        if isinstance(event, contracts.ApprovalDecided):
            said = "approved" if event.decision == "approve" else "denied"
            return [f"{event.approval_id} {said} by {event.by}"]
        if isinstance(event, contracts.TaskCancelRequested):
            return ["cancel requested"]
        if isinstance(event, contracts.TaskCompleted):
            return ["completed"]
        if isinstance(event, contracts.TaskFailed):
            return [f"failed: {event.error}"]
        if isinstance(event, contracts.TaskCancelled):
            return ["cancelled"]
        return []

    def _stage(self, stage: str, step: int | None, detail: str) -> str:
        self.step = step if step is not None else self.step
        where = f"step {step}" if step is not None else stage.replace("_", " ")
        return f"{where}: {detail}" if detail else where


class Tools:
    """What each tool does, on the gateway's own state: the method named as the tool."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.calls: dict[str, Call] = {tool.name: getattr(self, tool.name) for tool in TOOLS}

    async def call(self, name: str, arguments: dict[str, Any], ctx: Context) -> types.CallToolResult:
        tool = BY_NAME.get(name)
        if tool is None:
            return _error(f"no tool {name!r}; the tools are {', '.join(BY_NAME)}")
        try:
            args = msgspec.convert(arguments, tool.args)
        except msgspec.ValidationError as exc:
            return _error(f"{name}: {exc}")
        try:
            return await self.calls[name](args, ctx)
        except ToolFailed as exc:
            return _error(f"{name}: {exc}")
        except BadRequest as exc:
            return _error(f"{name}: {exc.detail}")
        except Overloaded as exc:
            return _error(f"{name}: {exc}")
        except nats.errors.MaxPayloadError:
            return _error(f"{name}: the goal is over the bytes one event may carry")
        except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
            log.warning("MCP %s: NATS trouble: %s", name, exc)
            return _error(f"{name}: NATS did not answer ({type(exc).__name__}); retry shortly")
        except Exception as exc:  # the SDK would answer str(exc) and log nothing
            log.exception("MCP %s failed", name)
            return _error(f"{name}: the gateway failed ({type(exc).__name__}); its log says more")

    def _backend(self) -> Backend:
        backend = self.state.backend
        if backend is None or not backend.nc.is_connected:
            raise ToolFailed("NATS is not connected; retry shortly")
        return backend

    async def _history(self, backend: Backend, task_id: str) -> TaskHistory:
        history = await tasks.lookup(backend, task_id)
        if history is None:
            raise ToolFailed(f"no task {task_id!r}")
        return history

    async def _submit(self, args: RunTaskArgs, ctx: Context, span: Span) -> tuple[Backend, str]:
        backend = self._backend()
        body = checked_run_request(
            RunBody(goal=args.goal, project_context=args.project, max_steps=args.max_steps, model=args.model),
            max_steps_ceiling=backend.config.max_steps_ceiling,
        )
        placed = await submit.admit(backend, body)
        task_id = uuid.uuid4().hex
        request = ctx.request
        correlation = submit.correlation_id(request) if isinstance(request, Request) else uuid.uuid4().hex
        span.set_attribute("victoria.task_id", task_id)
        await submit.append(backend, body, placed, span, task_id=task_id, correlation_id=correlation)
        return backend, task_id

    async def run_task(self, args: RunTaskArgs, ctx: Context) -> types.CallToolResult:
        span = _span("run_task")
        try:
            backend, task_id = await self._submit(args, ctx, span)
            progress = Progress(ctx)
            wait = backend.config.task_deadline + legacy.WAIT_SLACK
            try:
                await progress.say(f"task {task_id} submitted")
                if progress.wanted:
                    history = await self._follow(backend, task_id, wait, progress)
                else:
                    history = await submit.wait_terminal(backend.views, task_id, wait)
            except asyncio.CancelledError:
                if cancelled_by_client(ctx):
                    with anyio.move_on_after(CANCEL_SEND, shield=True):
                        await tasks.request_cancel(backend, task_id, "cancelled by the MCP client")
                    log.info("task %s cancelled: its MCP call was", task_id, extra={"task_id": task_id})
                raise
            if history is None:
                raise ToolFailed(f"task {task_id} is not in this gateway's view")
            outcome = _outcome(history)
            # A task that failed or was cancelled is the call's error, with its outcome all the same.
            return _text(_said(outcome), outcome, error=outcome.status in ("failed", "cancelled"))
        finally:
            span.end()

    async def _follow(
        self, backend: Backend, task_id: str, wait: float, progress: Progress
    ) -> TaskHistory | None:
        follower = Follower(backend.js, backend.nc, task_id)
        try:
            async with asyncio.timeout(wait):
                async for item in follower.items():
                    if not isinstance(item, Stored):
                        continue
                    for line in progress.lines(item.event):
                        await progress.say(line)
                    if item.terminal:
                        # This gateway's own view folds the same event, perhaps a moment later.
                        await backend.views.wait_terminal(task_id, legacy.END_VIEW_WAIT)
                        break
        except TimeoutError:
            pass  # the deadline came first: the task as it stands
        finally:
            with anyio.CancelScope(shield=True):
                await follower.close()
        return await backend.views.get(task_id)

    async def start_task(self, args: RunTaskArgs, ctx: Context) -> types.CallToolResult:
        span = _span("start_task")
        try:
            backend, task_id = await self._submit(args, ctx, span)
        finally:
            span.end()
        history = await backend.views.get(task_id)
        started = Started(task_id=task_id, status=history.status if history is not None else "queued")
        return _text(f"task {task_id} {started.status}; task_status follows it", started)

    async def task_status(self, args: TaskArgs, ctx: Context) -> types.CallToolResult:
        backend = self._backend()
        view = tasks.status_of(backend, await self._history(backend, args.task_id))
        said = f"task {view.task_id}: {view.status}" + (f", {view.stage}" if view.stage else "")
        if view.pending_approvals:
            said += "; waiting for approval: " + ", ".join(
                f"{call.id} ({call.tool})" for call in view.pending_approvals
            )
        if view.output:
            said += f"\n{view.output}"
        elif view.error:
            said += f"\n{view.error}"
        return _text(said, view)

    async def cancel_task(self, args: TaskArgs, ctx: Context) -> types.CallToolResult:
        backend = self._backend()
        history = await self._history(backend, args.task_id)
        ended = await tasks.cancel_unless_ended(backend, history, "cancelled by request")
        outcome = _outcome(history)
        if ended:
            return _text(f"task {outcome.task_id} had ended before: {outcome.status}", outcome)
        return _text(f"task {outcome.task_id}: cancel recorded, its status is {outcome.status}", outcome)

    async def decide_approval(self, args: DecisionArgs, ctx: Context) -> types.CallToolResult:
        backend = self._backend()
        history = await self._history(backend, args.task_id)
        said = approvals.DecisionBody(decision=args.decision, reason=args.reason)
        client = (
            ctx.request.scope.get("state", {}).get("client") if isinstance(ctx.request, Request) else None
        )
        found = await approvals.record(backend, history, args.approval_id, said, by=str(client or "local"))
        if found is None:
            raise ToolFailed(f"task {args.task_id!r} has no approval {args.approval_id!r}")
        decided, new = found
        if not new:
            raise ToolFailed(f"{args.approval_id} was decided before: {decided.decision} by {decided.by}")
        body = approvals.decided_body(args.task_id, decided)
        return _text(f"{args.approval_id}: {decided.decision} by {decided.by}", body)

    async def list_models(self, args: NoArgs, ctx: Context) -> types.CallToolResult:
        models = await legacy.models_available(self.state)
        names = [*models.ollama, *models.mlx]
        said = ", ".join(names) if names else "no model is listed"
        return _text(said + (f" ({models.error})" if models.error else ""), models)


def _span(tool: str) -> Span:
    return tracing.tracer().start_span(
        f"MCP {tool}",
        context=tracing.root_context(),
        kind=SpanKind.SERVER,
        attributes={"http.route": "/mcp", "mcp.tool": tool},
    )


def _security(host: str, tokens_required: bool) -> TransportSecuritySettings | None:
    """With no token asked for, a page a browser was led to (DNS rebinding) could reach ``/mcp`` on
    loopback: then only this machine's names (and the address listened on) are taken as ``Host``."""
    if tokens_required:
        return None
    names = ["127.0.0.1", "localhost", "[::1]"]
    if not listen.is_loopback(host) and host not in ("0.0.0.0", "::"):
        names.append(host)
    hosts = [*names, *(f"{name}:*" for name in names)]
    origins = [
        f"{scheme}://{name}{port}" for scheme in ("http", "https") for name in names for port in ("", ":*")
    ]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


class _SessionEnded(logging.Filter):
    """The SDK logs an error, with its traceback, when a session ends (``DELETE``, its idle time
    out) while its ``GET`` stream is open: the stream's reader is closed under it. That is how such
    a session ends, not a failure; the record is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, anyio.ClosedResourceError) and "standalone SSE" in record.getMessage())


_SDK_TRANSPORT: Final = logging.getLogger("mcp.server.streamable_http")


class McpServer:
    """The SDK's server with Victoria's tools, and its session manager; ``serve()`` runs the
    sessions until it is cancelled."""

    def __init__(self, state: GatewayState, *, host: str) -> None:
        if not any(isinstance(f, _SessionEnded) for f in _SDK_TRANSPORT.filters):
            _SDK_TRANSPORT.addFilter(_SessionEnded())
        self.tools = Tools(state)
        self.server: Server[Any, Any] = Server(NAME, version=__version__, instructions=INSTRUCTIONS)
        specs = [tool.spec() for tool in TOOLS]

        async def list_tools() -> list[types.Tool]:
            return specs

        async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
            return await self.tools.call(name, arguments, self.server.request_context)

        self.server.list_tools()(list_tools)  # type: ignore[no-untyped-call]  # the SDK's decorator
        # The arguments are checked against the tools' types (msgspec), which name the field.
        self.server.call_tool(validate_input=False)(call_tool)
        self.sessions = StreamableHTTPSessionManager(
            self.server,
            security_settings=_security(host, state.tokens.required),
            session_idle_timeout=SESSION_IDLE,
        )

    async def serve(self, ready: asyncio.Future[None]) -> None:
        """Run the sessions (``ready`` done once they take requests) until cancelled."""
        try:
            async with self.sessions.run():
                ready.set_result(None)
                await asyncio.Event().wait()
        finally:
            if not ready.done():  # it never started: the requests waiting for it are answered 503
                ready.set_result(None)
