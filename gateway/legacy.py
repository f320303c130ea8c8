"""The old Victoria server's HTTP contract, for the clients written against it: a terminal chat,
an MCP server for IDE agents, a Telegram bot, web back ends, scripts. ``docs/compat.md`` lists what
each route takes and answers. Underneath, every goal is an ordinary durable task with its own id,
visible in ``/run/status`` and in traces."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Final, assert_never

import msgspec
import nats.errors
from nats.js.errors import NotFoundError
from opentelemetry.trace import Span, SpanKind
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from victoria import __version__
from victoria.events import contracts, subjects
from victoria.events.codec import encode
from victoria.events.fold import TaskHistory
from victoria.gateway.answer_stream import StepAnswers
from victoria.gateway.backend import Backend, GatewayState
from victoria.gateway.follow import Follower, Quiet, Stored, Tokens
from victoria.gateway.http import json_response, read_body
from victoria.gateway.models import model_servers
from victoria.gateway.operations import service_view, task_counts
from victoria.gateway.requests import (
    MAX_RUN_BODY,
    BadRequest,
    RunRequest,
    parse_bool,
    parse_run_request,
    parse_wait,
)
from victoria.gateway.schemas import (
    Accepted,
    AvailableModels,
    Enhanced,
    Health,
    ModelServer,
    PlanAnswer,
    SystemStatus,
    TaskCancelledAnswer,
    TaskFailedAnswer,
    TaskNeedsClarification,
    TaskResponse,
    TaskSucceeded,
    TelegramBeat,
    TelegramHealth,
    TelegramRegistered,
)
from victoria.gateway.submit import submit, wait_terminal
from victoria.runtime import publish, tracing

log = logging.getLogger(__name__)

AGENT: Final = "Victoria"
WAIT_SLACK: Final = 60.0  # seconds past the task deadline a sync request may wait (none runs it)
MODELS_TIMEOUT: Final = 3.0  # seconds to wait for a runner's first look at the model servers
BOT_INTERVAL: Final = 60.0  # seconds between a Telegram bot's heartbeats unless it says otherwise
BEAT_WAIT: Final = 5.0  # seconds a bot's beat waits for the heartbeat stream to store it
END_VIEW_WAIT: Final = 2.0  # seconds /stream waits for the gateway's view to fold the terminal event
MAX_BOT_VERSION: Final = 200  # characters: it goes into every /services answer
_token_chunk: Final = msgspec.json.Decoder(contracts.TokenChunk)
_INSTANCE: Final = re.compile(r"[^A-Za-z0-9_-]")


def _span(name: str) -> Span:
    return tracing.tracer().start_span(
        name, context=tracing.root_context(), kind=SpanKind.SERVER, attributes={"http.route": name.split()[1]}
    )


async def _goal(request: Request, backend: Backend, *, task_type: str | None = None) -> RunRequest:
    body = parse_run_request(
        await read_body(request, MAX_RUN_BODY), max_steps_ceiling=backend.config.max_steps_ceiling
    )
    if task_type is not None:
        body = msgspec.structs.replace(body, task_type=task_type)
    return body


def _sync_wait(request: Request, backend: Backend) -> float:
    """Until the task ends (its deadline bounds it), unless ``?wait=`` says otherwise."""
    asked = parse_wait(request.query_params.get("wait"))
    return asked if asked is not None else backend.config.task_deadline + WAIT_SLACK


def accepted(task_id: str, history: TaskHistory | None, message: str) -> Accepted:
    return Accepted(
        task_id=task_id,
        correlation_id=history.submitted.correlation_id if history and history.submitted else None,
        status_url=f"/run/status/{task_id}",
        message=message,
        status=history.status if history is not None else "queued",
    )


def task_response(history: TaskHistory) -> TaskResponse:
    """The old server's ``TaskResponse`` for a task whose status is final."""
    view = history.view()
    if view.status == "completed" and view.clarification_questions:
        return TaskNeedsClarification(
            clarification_questions=view.clarification_questions,
            suggested_restatement=str(view.knowledge.get("suggested_restatement", "")),
            correlation_id=view.correlation_id,
            task_id=view.task_id,
        )
    if view.status == "completed":
        return TaskSucceeded(
            output=view.output or "",
            knowledge=view.knowledge,
            correlation_id=view.correlation_id,
            task_id=view.task_id,
        )
    ended = TaskCancelledAnswer if view.status == "cancelled" else TaskFailedAnswer
    return ended(
        error=view.error or view.status,
        error_kind=view.error_kind,
        output=view.output,
        knowledge=view.knowledge,
        correlation_id=view.correlation_id,
        task_id=view.task_id,
    )


async def _submit(
    request: Request,
    backend: Backend,
    body: RunRequest,
    span: Span,
    answer: Callable[[str], Awaitable[Response]],
    *,
    task_id: str | None = None,
) -> Response:
    """``submit``; a task too big for one event (a huge ``project_context``) is the client's 413."""
    try:
        return await submit(request, backend, body, span, answer, task_id=task_id)
    except nats.errors.MaxPayloadError:
        raise BadRequest(
            413,
            "body_too_large",
            f"the goal with its context and history is over the {backend.nc.max_payload} bytes "
            "one event may carry",
        ) from None


async def run(request: Request, backend: Backend) -> Response:
    """``POST /run``: 202 at once with ``?async_mode=true``; else the ``TaskResponse`` when the task
    ends (200 whatever became of it), or 202 when ``?wait=`` seconds pass first."""
    span = _span("POST /run")
    try:
        async_mode = parse_bool("async_mode", request.query_params.get("async_mode"))
        wait = _sync_wait(request, backend)
        body = await _goal(request, backend)

        async def answer(task_id: str) -> Response:
            if async_mode:
                history = await backend.views.get(task_id)
                return json_response(accepted(task_id, history, "accepted; poll status_url"), 202)
            history = await wait_terminal(backend.views, task_id, wait)
            if history is not None and history.terminal:
                return json_response(task_response(history))
            return json_response(accepted(task_id, history, "still running; poll status_url"), 202)

        response = await _submit(request, backend, body, span, answer)
        span.set_attribute("http.response.status_code", response.status_code)
        return response
    finally:
        span.end()


async def plan(request: Request, backend: Backend) -> Response:
    """``POST /plan``: understand and plan, no steps; ``{"plan": str, "status": "success"}``."""
    span = _span("POST /plan")
    try:
        body = await _goal(request, backend, task_type="plan")
        wait = _sync_wait(request, backend)

        async def answer(task_id: str) -> Response:
            history = await wait_terminal(backend.views, task_id, wait)
            if history is None or not history.terminal:
                return json_response(accepted(task_id, history, "still planning; poll status_url"), 202)
            answered = task_response(history)
            if isinstance(answered, TaskSucceeded):
                return json_response(
                    PlanAnswer(
                        plan=answered.output,
                        status="success",
                        task_id=answered.task_id,
                        correlation_id=answered.correlation_id,
                    )
                )
            return json_response(answered)

        return await _submit(request, backend, body, span, answer)
    finally:
        span.end()


async def stream(request: Request, backend: Backend) -> Response:
    """``POST /stream``: the task as server-sent events, one ``data: {json}`` line each: ``start``,
    ``step`` for each stage, step and tool result, ``chunk`` for the answer's words as the model
    writes them, ``error``, and always a last ``end`` (with the ``TaskResponse`` fields)."""
    span = _span("POST /stream")
    try:
        body = await _goal(request, backend)
        task_id = uuid.uuid4().hex
        follower = Follower(backend.js, backend.nc, task_id)
        await follower.start()  # before the task exists: not one word of the model is missed

        async def answer(submitted: str) -> Response:
            nonlocal follower
            if submitted != task_id:  # an Idempotency-Key repeat: the first request's task
                await follower.close()
                follower = Follower(backend.js, backend.nc, submitted)
            return StreamingResponse(
                _legacy_events(backend, follower),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )

        try:
            response = await _submit(request, backend, body, span, answer, task_id=task_id)
        except BaseException:
            await follower.close()
            raise
        if not isinstance(response, StreamingResponse):  # the first answer to a repeated key
            await follower.close()
        return response
    finally:
        span.end()


def _line(payload: dict[str, Any]) -> bytes:
    return b"data: " + encode(payload) + b"\n\n"


TITLES: Final = {
    "understanding": "Understanding the goal",
    "planning": "Planning",
    "delegating": "Delegating to Veronica",
    "answering": "Answering",
    "fallback": "Doing it without Veronica",
    "waiting_for_model": "Waiting for the model",
}


def _steps(event: contracts.AnyTaskEvent) -> list[dict[str, Any]]:
    """The old server's ``step`` lines for one of our events (none for most). What the model's
    replies meant is read by the agent and carried in its events (``LLMRequested.understood``, a
    completed task's clarification questions); here nothing parses a reply."""
    match event:
        case contracts.TaskStarted(attempt=attempt):
            if attempt > 1:
                return [_step("attempt", f"Attempt {attempt}", "")]
            return []
        case contracts.TaskStage(stage=stage, step=step, detail=detail):
            return [_stage_step(stage, step, detail)]
        case contracts.LLMRequested(stage=stage, step=step, understood=understood):
            # The model's words before the steps: what it understood (here), and its plan (below).
            lines = [] if understood is None else [_step("understood", "Understood", understood)]
            return lines if stage is None else [*lines, _stage_step(stage, step, "")]
        case contracts.LLMResult(ok=ok, purpose=purpose, content=content, error=error):
            if not ok:
                return [_step("model_error", "Model call failed", error or "")]
            return [_step("plan", "Plan", content)] if purpose == "plan" else []
        case contracts.ToolResult(tool=tool, args=args, ok=ok, output=output, error=error):
            title = f"{tool} {args.get('path', '')}".strip()
            return [_step("tool", title, (output if ok else f"error: {error}")[:4000])]
        case contracts.ToolOutcome(tool=tool, ok=ok, output=output, error=error):
            return [_step("tool", tool, (output if ok else f"error: {error}")[:4000])]
        case contracts.ToolIntent() | contracts.ToolClaim():
            return []
        case contracts.ApprovalRequested(task_id=task_id, approval_id=approval_id, tool=tool, args=args):
            shown = msgspec.json.encode(args).decode()[:2000]
            waits = (
                f"{tool} {shown} waits for a person's decision: victoria approve {task_id} {approval_id}, "
                f"or victoria deny {task_id} {approval_id} --reason TEXT"
            )
            return [_step("approval", "Waiting for approval", waits)]
        case contracts.ApprovalDecided(decision=decision, by=by, reason=reason):
            said = f"{'Approved' if decision == 'approve' else 'Denied'} by {by or 'someone'}"
            return [_step("approval", said, reason)]
        case contracts.TaskCancelRequested(reason=reason):
            return [_step("cancel", "Cancel requested", reason)]
        case contracts.TaskCompleted(knowledge=knowledge):
            if knowledge is not None and knowledge.clarification_questions:
                return [_step("understood", "Understood", "\n".join(knowledge.clarification_questions))]
            return []
        case contracts.TaskFailed(error=error):
            return [{"type": "error", "content": error}]
        case contracts.TaskCancelled(reason=reason):
            return [{"type": "error", "content": f"cancelled: {reason}"}]
        case contracts.TaskSubmitted():
            return []
        case _:
            assert_never(event)


def _step(kind: str, title: str, content: str) -> dict[str, Any]:
    return {"type": "step", "stepType": kind, "title": title, "content": content}


def _stage_step(stage: str, step: int | None, detail: str) -> dict[str, Any]:
    title = f"Step {step}" if step is not None else TITLES.get(stage, stage.replace("_", " ").capitalize())
    return _step(stage, title, detail)


async def _legacy_events(backend: Backend, follower: Follower) -> AsyncIterator[bytes]:
    task_id = follower.task_id
    history = await backend.views.get(task_id)
    correlation = history.submitted.correlation_id if history and history.submitted else None
    yield _line({"type": "start", "task_id": task_id, "correlation_id": correlation})
    end: dict[str, Any] = {"type": "end", "task_id": task_id, "correlation_id": correlation}
    answers = StepAnswers()
    said = False  # some of the answer went out as chunks
    try:
        async for item in follower.items():
            if isinstance(item, Quiet):
                yield b": keep-alive\n\n"
            elif isinstance(item, Tokens):
                chunk = _token_chunk.decode(item.data)
                if chunk.purpose == "step":  # step replies carry the answer
                    words = answers.feed(chunk.request_id, chunk.text)
                    if words:
                        said = True
                        yield _line({"type": "chunk", "content": words})
            elif isinstance(item, Stored):
                for line in _steps(item.event):
                    yield _line(line)
                if isinstance(item.event, contracts.LLMRequested) and item.event.purpose == "step":
                    # A native step reply is the answer itself; a JSON one holds it under a key.
                    words = answers.requested(item.event.request_id, native=bool(item.event.tools))
                    if words:
                        said = True
                        yield _line({"type": "chunk", "content": words})
                if item.terminal:
                    # This gateway's own view folds the same event, perhaps a moment later.
                    await backend.views.wait_terminal(task_id, END_VIEW_WAIT)
                    ended = await backend.views.get(task_id)
                    if ended is not None and ended.terminal:
                        end.update(msgspec.to_builtins(task_response(ended)))
                    if not said and end.get("status") == "success" and end.get("output"):
                        yield _line({"type": "chunk", "content": end["output"]})  # no model wrote it
    except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
        log.warning("POST /stream of task %s: NATS trouble: %s", task_id, exc)
        yield _line(
            {
                "type": "error",
                "content": f"the event stream broke off ({type(exc).__name__}); the task goes on",
            }
        )
        end["status"] = "interrupted"
    finally:
        await follower.close()
    yield _line(end)


async def status(request: Request, state: GatewayState) -> Response:
    """``GET /status``: what is true of this system now; it claims nothing that does not exist."""
    config = state.config
    backend = state.backend
    connected = backend is not None and backend.nc.is_connected
    body = SystemStatus(
        status="online",
        agent=AGENT,
        version=__version__,
        uptime_s=round(time.monotonic() - state.started, 1),
        nats="connected" if connected else "disconnected",
        models=ModelServer(default=config.model, api=config.llm_api, url=config.llm_url),
        victoria_enhanced=Enhanced(enabled=False),
    )
    if backend is not None and connected:
        view = await service_view(backend)
        body.services = view.services if view is not None else []
        body.dependencies = view.dependencies if view is not None else []
        body.tasks = await task_counts(backend.js)
    return json_response(body)


async def health(request: Request, state: GatewayState) -> Response:
    """``GET /health``: this gateway's liveness, always immediate."""
    connected = state.backend is not None and state.backend.nc.is_connected
    return json_response(
        Health(
            status="ok", agent=AGENT, version=__version__, nats="connected" if connected else "disconnected"
        )
    )


async def available_models(request: Request, state: GatewayState) -> Response:
    """``GET /api/available-models``: the models of the model servers as the LLM runner last saw
    them (it is the only one that talks to them): Ollama servers' under ``ollama``, OpenAI-compatible
    servers' under ``mlx``; ``error`` says why a server did not answer."""
    return json_response(await models_available(state))


async def models_available(state: GatewayState) -> AvailableModels:
    """What ``GET /api/available-models`` answers (and the MCP tool ``list_models``)."""
    body = AvailableModels(ollama=[], mlx=[])
    backend = state.backend
    if backend is None or not backend.nc.is_connected:
        body.error = "NATS is not connected: the runner's view of the model servers cannot be read"
        return body
    servers = await model_servers(backend.js, wait=MODELS_TIMEOUT)
    errors = [str(server["error"]) for server in servers if server.get("error")]
    for server in servers:
        names = [str(model["name"]) for model in server["models"] if model.get("listed")]
        listed = [name for name in names if f"{name}:latest" not in names]  # not Ollama's aliases
        (body.ollama if server["api"] == "ollama" else body.mlx).extend(listed)
    if not servers:
        errors.append(f"no LLM runner has looked at a model server within {MODELS_TIMEOUT:g}s")
    body.error = "; ".join(errors) or None
    return body


_INTERVAL: Final = {"exclusiveMinimum": 0, "maximum": 86_400}


class BotBeat(msgspec.Struct, kw_only=True):
    """What a Telegram bot may say of itself when it registers or beats; all of it optional. The
    interval (seconds, 0 to 86,400) is ``heartbeat_interval``, else ``interval``, else the last one
    given, else 60."""

    bot_username: str | None = None
    bot_name: str | None = None
    username: str | None = None
    name: str | None = None
    instance: str | None = None
    heartbeat_interval: Annotated[float, msgspec.Meta(extra_json_schema=_INTERVAL)] | None = None
    interval: Annotated[float, msgspec.Meta(extra_json_schema=_INTERVAL)] | None = None
    pid: int | None = None
    version: Annotated[str, msgspec.Meta(max_length=MAX_BOT_VERSION)] | None = None


_bot_beat: Final = msgspec.json.Decoder(BotBeat)


async def _bot_heartbeat(request: Request, backend: Backend) -> contracts.Heartbeat:
    raw = await read_body(request)
    try:
        said = _bot_beat.decode(raw) if raw.strip() else BotBeat()
    except msgspec.ValidationError as exc:
        raise BadRequest(422, "invalid_field", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    name = said.instance or said.bot_username or said.username or said.bot_name or said.name or "bot"
    instance = _INSTANCE.sub("-", name.lstrip("@"))[:48] or "bot"
    interval = said.heartbeat_interval or said.interval or await _last_interval(backend, instance)
    if not 0 < interval <= 86_400:
        raise BadRequest(
            422, "invalid_field", "heartbeat_interval must be 0-86400 seconds", "heartbeat_interval"
        )
    beat = contracts.Heartbeat(
        name=subjects.TELEGRAM,
        instance=instance,
        pid=said.pid or 0,
        rss_bytes=0,
        in_flight=0,
        version=said.version or "",
        interval_s=interval,
        started_at=datetime.now(UTC),
    )
    # Stored before the answer: the bot's next beat, which may come at once, reads its interval.
    stored = await publish.publish(
        backend.nc, subjects.heartbeat(beat.name, beat.instance), encode(beat), {}, wait=BEAT_WAIT
    )
    publish.raise_for(stored)
    return beat


async def _last_interval(backend: Backend, instance: str) -> float:
    """The interval the bot gave last (its registration), kept in its last heartbeat."""
    try:
        raw = await backend.js.get_last_msg(
            subjects.HEARTBEAT_STREAM, subjects.heartbeat(subjects.TELEGRAM, instance), direct=True
        )
        return msgspec.json.decode(raw.data or b"{}", type=contracts.Heartbeat).interval_s
    except (NotFoundError, msgspec.DecodeError):
        return BOT_INTERVAL


async def telegram_register(request: Request, backend: Backend) -> Response:
    """``POST /api/telegram/register``: the bot is watched from now on like any service."""
    beat = await _bot_heartbeat(request, backend)
    log.info("telegram bot %s registered (heartbeat every %gs)", beat.instance, beat.interval_s)
    return json_response(
        TelegramRegistered(
            status="registered",
            service=beat.name,
            instance=beat.instance,
            heartbeat_interval_s=beat.interval_s,
        )
    )


async def telegram_heartbeat(request: Request, backend: Backend) -> Response:
    """``POST /api/telegram/heartbeat``: one beat; the service monitor reports a bot that stops."""
    beat = await _bot_heartbeat(request, backend)
    return json_response(TelegramBeat(status="ok", instance=beat.instance))


async def telegram_health(request: Request, backend: Backend) -> Response:
    """``GET /health/telegram``: ``status`` first (``ok``, ``stale`` after three missed beats, or
    ``unknown``), then ``heartbeat_age_seconds``."""
    try:
        raw = await backend.js.get_last_msg(
            subjects.HEARTBEAT_STREAM, subjects.heartbeats_of(subjects.TELEGRAM), direct=True
        )
        beat = msgspec.json.decode(raw.data or b"{}", type=contracts.Heartbeat)
    except NotFoundError:
        return json_response(TelegramHealth(status="unknown", heartbeat_age_seconds=None, registered=False))
    except msgspec.DecodeError:
        return json_response(TelegramHealth(status="unknown", heartbeat_age_seconds=None, registered=True))
    age = max(0.0, (datetime.now(UTC) - beat.ts).total_seconds())
    return json_response(
        TelegramHealth(
            status="ok" if age <= 3 * beat.interval_s else "stale",
            heartbeat_age_seconds=round(age, 3),
            registered=True,
            instance=beat.instance,
            heartbeat_interval_s=beat.interval_s,
        )
    )
