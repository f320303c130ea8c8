"""The HTTP layer: thin. It turns requests into task events and folds of events into answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from opentelemetry.trace import Span, SpanKind
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import (
    TERMINAL_EVENTS,
    ServicesRequest,
    TaskCancelRequested,
    TaskSubmitted,
)
from victoria.events.fold import TaskHistory
from victoria.gateway.idempotency import IdempotencyStore
from victoria.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from victoria.gateway.metrics import Metrics
from victoria.gateway.requests import (
    MAX_BODY,
    BadRequest,
    clean_header,
    parse_bool,
    parse_idempotency_key,
    parse_run_request,
    parse_wait,
)
from victoria.gateway.views import TaskViews
from victoria.runtime import bus, tracing
from victoria.runtime.config import DEFAULT_MAX_STEPS, Config

log = logging.getLogger(__name__)

SSE_KEEPALIVE: Final = 10.0  # seconds between keep-alive comments while nothing happens
READY_CACHE: Final = 1.0  # seconds a /ready answer is reused
SERVICES_TIMEOUT: Final = 1.0  # seconds to wait for the monitor
CANCEL_VIEW_WAIT: Final = 2.0  # seconds a cancel waits for this gateway's view to show its effect
_json: Final = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json", headers=headers)


def unavailable(detail: str) -> Response:
    return json_response({"error": "unavailable", "detail": detail}, 503, {"Retry-After": "1"})


class Backend:
    """What the HTTP handlers need: set once NATS is connected, None before (and answers 503)."""

    def __init__(self, nc: NATS, views: TaskViews, config: Config, metrics: Metrics | None = None) -> None:
        self.nc = nc
        self.metrics = metrics or Metrics()
        self.js: JetStreamContext = nc.jetstream()
        self.views = views
        self.config = config
        self.idempotency = IdempotencyStore(self.js)
        self._ready_at = 0.0
        self._ready = False

    async def ready(self) -> bool:
        if not self.nc.is_connected:
            return False
        now = time.monotonic()
        if now - self._ready_at < READY_CACHE:
            return self._ready
        ok = False
        if self.nc.is_connected:
            try:
                for stream in subjects.TASK_STREAMS:
                    await self.js.stream_info(stream)
                ok = True
            except Exception:  # any failure means "not ready"; the reason is in the NATS log
                ok = False
        self._ready, self._ready_at = ok, now
        return ok


class GatewayState:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.backend: Backend | None = None
        self.actor: object | None = None


Handler = Callable[[Request], Awaitable[Response]]


def create_app(state: GatewayState) -> Starlette:
    def needs_backend(handler: Callable[[Request, Backend], Awaitable[Response]]) -> Handler:
        async def wrapped(request: Request) -> Response:
            backend = state.backend
            if backend is None or not backend.nc.is_connected:
                return unavailable("NATS is not connected; retry shortly")
            try:
                return await handler(request, backend)
            except BadRequest as exc:
                return json_response(exc.body(), exc.status)
            except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
                log.warning("%s %s: NATS trouble: %s", request.method, request.url.path, exc)
                return unavailable(f"NATS did not answer: {type(exc).__name__}")

        return wrapped

    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(request: Request) -> Response:
        backend = state.backend
        if backend is not None and await backend.ready():
            return json_response({"status": "ready"})
        return json_response({"status": "not ready"}, 503, {"Retry-After": "1"})

    @needs_backend
    async def run(request: Request, backend: Backend) -> Response:
        span = tracing.tracer().start_span(
            "POST /run",
            context=tracing.root_context(),
            kind=SpanKind.SERVER,
            attributes={"http.route": "/run"},
        )
        try:
            response = await submit(request, backend, span)
            span.set_attribute("http.response.status_code", response.status_code)
            return response
        finally:
            span.end()

    async def submit(request: Request, backend: Backend, span: Span) -> Response:
        async_mode = parse_bool("async_mode", request.query_params.get("async_mode"))
        wait = parse_wait(request.query_params.get("wait"))
        idempotency_key = parse_idempotency_key(request.headers.get("idempotency-key"))
        body = parse_run_request(await read_body(request))
        task_id = uuid.uuid4().hex
        span.set_attribute("victoria.task_id", task_id)
        first = True
        if idempotency_key is not None:
            claim = await backend.idempotency.claim(idempotency_key, task_id)
            if not claim.new:
                record = claim.record
                if record.code is not None and record.body is not None:
                    return Response(record.body, record.code, media_type="application/json")
                # The first request is still waiting, or died before it answered: same task.
                task_id, first = record.task_id, False
                span.set_attribute("victoria.task_id", task_id)
                span.set_attribute("victoria.idempotent_repeat", True)
        if first or await backend.views.get(task_id) is None:
            trace_headers = tracing.headers_for(span)
            event = TaskSubmitted(
                task_id=task_id,
                goal=body.goal,
                task_type=body.task_type,
                project_context=body.project_context,
                session_id=body.session_id,
                max_steps=body.max_steps or DEFAULT_MAX_STEPS,
                model=body.model,
                correlation_id=clean_header(request.headers.get("x-correlation-id")),
                idempotency_key=idempotency_key,
                deadline_s=backend.config.task_deadline,
                trace_id=tracing.trace_id_of(span),
                traceparent=trace_headers.get("traceparent"),
            )
            ack = await bus.append(backend.nc, event, "submitted", key="submitted", headers=trace_headers)
            backend.views.record(event, ack.seq)
            log.debug("task %s submitted", task_id, extra={"task_id": task_id, "trace_id": event.trace_id})
        response = await answer_submission(backend.views, task_id, async_mode=async_mode, wait=wait)
        if idempotency_key is not None and first:
            await backend.idempotency.remember(
                idempotency_key, task_id, response.status_code, bytes(response.body)
            )
        return response

    @needs_backend
    async def status(request: Request, backend: Backend) -> Response:
        history = await lookup(backend, request.path_params["task_id"])
        if history is None:
            return not_found(request.path_params["task_id"])
        return json_response(history.view())

    @needs_backend
    async def cancel(request: Request, backend: Backend) -> Response:
        task_id = request.path_params["task_id"]
        history = await lookup(backend, task_id)
        if history is None:
            return not_found(task_id)
        if history.terminal:
            return json_response(history.view(), 200)
        # Recorded, not carried out here: the attempt that holds the task (or the first to see it,
        # if none does yet) writes task_cancelled. The request alone decides the status, unless
        # the terminal event came first; the answer waits until this gateway's view has either.
        cancel = TaskCancelRequested(task_id=task_id, reason="cancelled by request")
        await bus.append(backend.nc, cancel, "cancel", key="cancel")
        await backend.views.wait_terminal(task_id, CANCEL_VIEW_WAIT)
        if history.terminal and history.status != "cancelled":
            return json_response(history.view(), 200)  # it had ended before the request
        return json_response({"task_id": task_id, "status": history.status, "cancel": "requested"}, 202)

    @needs_backend
    async def task_events(request: Request, backend: Backend) -> Response:
        task_id = request.path_params["task_id"]
        if await lookup(backend, task_id) is None:
            return not_found(task_id)
        return StreamingResponse(
            sse_stream(backend.js, backend.nc, task_id),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @needs_backend
    async def services(request: Request, backend: Backend) -> Response:
        try:
            reply = await backend.nc.request(
                subjects.MONITOR_SERVICES, encode(ServicesRequest()), timeout=SERVICES_TIMEOUT
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return unavailable("the service monitor does not answer")
        data = msgspec.json.decode(reply.data)
        return json_response(
            {"services": data.get("services", []), "dependencies": data.get("dependencies", [])}
        )

    @needs_backend
    async def metrics(request: Request, backend: Backend) -> Response:
        body = await backend.metrics.render(backend.nc, backend.js)
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response({"error": "http_error", "detail": exc.detail}, exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return json_response({"error": "internal", "detail": type(exc).__name__}, 500)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/ready", ready, methods=["GET"]),
            Route("/run", run, methods=["POST"]),
            Route("/run/status/{task_id}", status, methods=["GET"]),
            Route("/run/{task_id}/cancel", cancel, methods=["POST"]),
            Route("/run/{task_id}/events", task_events, methods=["GET"]),
            Route("/services", services, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


async def read_body(request: Request) -> bytes:
    """The body, read no further than one byte past ``MAX_BODY`` (a bigger one is refused)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            raise BadRequest(413, "body_too_large", f"the body is over {MAX_BODY} bytes")
    return b"".join(chunks)


def not_found(task_id: str) -> Response:
    return json_response({"error": "not_found", "detail": f"no task {task_id!r}", "field": "task_id"}, 404)


async def lookup(backend: Backend, task_id: str) -> TaskHistory | None:
    if not subjects.is_token(task_id):
        return None
    return await backend.views.get(task_id)


async def answer_submission(views: TaskViews, task_id: str, *, async_mode: bool, wait: float) -> Response:
    """202 with the task id at once (async), or the terminal status within ``wait`` seconds."""
    accepted = {"task_id": task_id, "status": "queued", "status_url": f"/run/status/{task_id}"}
    if async_mode:
        return json_response(accepted, 202)
    history = await wait_terminal(views, task_id, wait)
    if history is not None and history.terminal:
        return json_response(history.view(), 200)
    if history is not None:
        accepted["status"] = history.status
    return json_response(accepted, 202)


async def wait_terminal(views: TaskViews, task_id: str, wait: float) -> TaskHistory | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        history = await views.get(task_id)
        remaining = deadline - loop.time()
        if history is None or history.terminal or remaining <= 0:
            return history
        await views.wait_terminal(task_id, min(remaining, 5.0))


async def sse_stream(js: JetStreamContext, nc: NATS, task_id: str) -> AsyncIterator[bytes]:
    """The task's events from the first, then live, with model tokens as they are written in
    between (``event: token_chunk``); ends after the terminal event."""
    queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10_000)

    async def put(msg: Msg) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a reader this slow loses tokens, not events
            queue.put_nowait(msg)

    tokens = await nc.subscribe(subjects.tokens(task_id), cb=put)
    events = await js.subscribe(
        subjects.task_events(task_id),
        stream=subjects.task_stream_of(task_id),
        ordered_consumer=True,
        deliver_policy=jsapi.DeliverPolicy.ALL,
        idle_heartbeat=5.0,
        cb=put,
    )
    try:
        yield b": connected\n\n"
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), SSE_KEEPALIVE)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            if msg.subject.startswith(f"{subjects.PREFIX}.tokens."):
                yield b"event: token_chunk\ndata: %s\n\n" % bytes(msg.data)
                continue
            event = bus.decode_task_event(msg.data, msg.subject)
            if event is None:
                continue
            tag = type(event).__struct_config__.tag
            seq = bus.stream_sequence(msg)
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, str(tag).encode(), bytes(msg.data))
            if isinstance(event, TERMINAL_EVENTS):
                return
    finally:
        for sub in (tokens, events):
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection may be gone; the consumer expires by itself
                log.debug("sse unsubscribe: %s", exc)
