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
from typing import Annotated, Any, Final

import msgspec
import nats.errors
from nats.js.errors import NotFoundError
from opentelemetry.trace import Span, SpanKind
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from victoria import __version__
from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import (
    AnyTaskEvent,
    Heartbeat,
    LLMRequested,
    LLMResult,
    TaskCancelled,
    TaskCancelRequested,
    TaskFailed,
    TaskStage,
    TaskStarted,
    TokenChunk,
    ToolResult,
)
from victoria.events.fold import TaskHistory
from victoria.gateway.answer_stream import AnswerStream
from victoria.gateway.backend import Backend, GatewayState
from victoria.gateway.follow import Follower, Quiet, Stored, Tokens
from victoria.gateway.http import json_response, read_body
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
from victoria.runtime import tracing

log = logging.getLogger(__name__)

AGENT: Final = "Victoria"
WAIT_SLACK: Final = 60.0  # seconds past the task deadline a sync request may wait (none runs it)
MODELS_TIMEOUT: Final = 3.0  # seconds to ask a model server for its models
BOT_INTERVAL: Final = 60.0  # seconds between a Telegram bot's heartbeats unless it says otherwise
END_VIEW_WAIT: Final = 2.0  # seconds /stream waits for the gateway's view to fold the terminal event
MAX_BOT_VERSION: Final = 200  # characters: it goes into every /services answer
_token_chunk: Final = msgspec.json.Decoder(TokenChunk)
_any: Final = msgspec.json.Decoder()
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


def _steps(event: AnyTaskEvent) -> list[dict[str, Any]]:
    """The old server's ``step`` lines for one of our events (none for most)."""
    match event:
        case TaskStarted(attempt=attempt) if attempt > 1:
            return [{"type": "step", "stepType": "attempt", "title": f"Attempt {attempt}", "content": ""}]
        case TaskStage(stage=stage, step=step, detail=detail):
            return [_stage_step(stage, step, detail)]
        case LLMRequested(stage=stage, step=step) if stage is not None:
            return [_stage_step(stage, step, "")]
        case LLMResult(ok=True, request_id=request_id, content=content) if not request_id.startswith("step-"):
            # The model's words before the steps: what it understood, and its plan.
            if request_id.startswith("plan"):
                return [{"type": "step", "stepType": "plan", "title": "Plan", "content": content}]
            return [
                {
                    "type": "step",
                    "stepType": "understood",
                    "title": "Understood",
                    "content": _understood(content),
                }
            ]
        case LLMResult(ok=False, error=error):
            return [
                {
                    "type": "step",
                    "stepType": "model_error",
                    "title": "Model call failed",
                    "content": error or "",
                }
            ]
        case ToolResult(tool=tool, args=args, ok=ok, output=output, error=error):
            return [
                {
                    "type": "step",
                    "stepType": "tool",
                    "title": f"{tool} {args.get('path', '')}".strip(),
                    "content": (output if ok else f"error: {error}")[:4000],
                }
            ]
        case TaskCancelRequested(reason=reason):
            return [{"type": "step", "stepType": "cancel", "title": "Cancel requested", "content": reason}]
        case TaskFailed(error=error):
            return [{"type": "error", "content": error}]
        case TaskCancelled(reason=reason):
            return [{"type": "error", "content": f"cancelled: {reason}"}]
        case _:
            return []


def _understood(content: str) -> str:
    """The understanding in an understand reply (JSON, or plain words from a model that ignored it)."""
    try:
        reply = _any.decode(content)
    except msgspec.DecodeError:
        return content
    if isinstance(reply, dict):
        if reply.get("clear") is False:
            return "\n".join(str(q) for q in reply.get("questions") or [])
        return str(reply.get("understanding") or "")
    return content


def _stage_step(stage: str, step: int | None, detail: str) -> dict[str, Any]:
    title = f"Step {step}" if step is not None else TITLES.get(stage, stage.replace("_", " ").capitalize())
    return {"type": "step", "stepType": stage, "title": title, "content": detail}


async def _legacy_events(backend: Backend, follower: Follower) -> AsyncIterator[bytes]:
    task_id = follower.task_id
    history = await backend.views.get(task_id)
    correlation = history.submitted.correlation_id if history and history.submitted else None
    yield _line({"type": "start", "task_id": task_id, "correlation_id": correlation})
    end: dict[str, Any] = {"type": "end", "task_id": task_id, "correlation_id": correlation}
    answers: dict[str, AnswerStream] = {}
    said = False  # some of the answer went out as chunks
    try:
        async for item in follower.items():
            if isinstance(item, Quiet):
                yield b": keep-alive\n\n"
            elif isinstance(item, Tokens):
                chunk = _token_chunk.decode(item.data)
                if chunk.request_id.startswith("step-"):  # step replies carry the answer
                    words = answers.setdefault(chunk.request_id, AnswerStream()).feed(chunk.text)
                    if words:
                        said = True
                        yield _line({"type": "chunk", "content": words})
            elif isinstance(item, Stored):
                for line in _steps(item.event):
                    yield _line(line)
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
    """``GET /api/available-models``: the models the configured server has, asked now: Ollama's
    ``/api/tags`` under ``ollama``, an OpenAI-compatible server's ``/v1/models`` under ``mlx``."""
    import httpx  # loaded on first use: no other route needs it, and it is slow to import

    config = state.config
    body = AvailableModels(ollama=[], mlx=[])
    path = "/api/tags" if config.llm_api == "ollama" else "/v1/models"
    try:
        async with httpx.AsyncClient(timeout=MODELS_TIMEOUT) as client:
            response = await client.get(config.llm_url + path)
        response.raise_for_status()
        data = response.json()
        if config.llm_api == "ollama":
            body.ollama = [str(m.get("name") or m.get("model")) for m in data.get("models", [])]
        else:
            body.mlx = [str(m.get("id")) for m in data.get("data", [])]
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        body.error = f"{config.llm_url}{path}: {type(exc).__name__}: {exc}"
    return json_response(body)


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


async def _bot_heartbeat(request: Request, backend: Backend) -> Heartbeat:
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
    beat = Heartbeat(
        name=subjects.TELEGRAM,
        instance=instance,
        pid=said.pid or 0,
        rss_bytes=0,
        in_flight=0,
        version=said.version or "",
        interval_s=interval,
        started_at=datetime.now(UTC),
    )
    await backend.nc.publish(subjects.heartbeat(beat.name, beat.instance), encode(beat))
    return beat


async def _last_interval(backend: Backend, instance: str) -> float:
    """The interval the bot gave last (its registration), kept in its last heartbeat."""
    try:
        raw = await backend.js.get_last_msg(
            subjects.HEARTBEAT_STREAM, subjects.heartbeat(subjects.TELEGRAM, instance), direct=True
        )
        return msgspec.json.decode(raw.data or b"{}", type=Heartbeat).interval_s
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
        beat = msgspec.json.decode(raw.data or b"{}", type=Heartbeat)
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
