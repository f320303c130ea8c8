"""Taking a goal: one ``task_submitted`` event, idempotent with ``Idempotency-Key``, in the
task's trace; then waiting for the task's end where a route answers synchronously."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from opentelemetry.trace import Span
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from victoria.events import goals as classifier
from victoria.events.contracts import ChatTurn, TaskSubmitted
from victoria.events.fold import TaskHistory
from victoria.gateway.admission import Overloaded
from victoria.gateway.backend import Backend
from victoria.gateway.registry import Expert, Project, UnknownProject
from victoria.gateway.requests import (
    BadRequest,
    RunRequest,
    bounded_turns,
    clean_header,
    parse_idempotency_key,
)
from victoria.gateway.views import TaskViews
from victoria.runtime import memory, publish, tracing
from victoria.runtime.config import DEFAULT_MAX_STEPS

log = logging.getLogger(__name__)

WAKE_EVERY: Final = 5.0  # seconds between looks at a waited-for task that no event woke

Answer = Callable[[str], Awaitable[Response]]


def correlation_id(request: Request) -> str:
    """``X-Correlation-ID`` as the client sent it, or a new one (the old server always gave one)."""
    return clean_header(request.headers.get("x-correlation-id")) or uuid.uuid4().hex


def scoped(request: Request, idempotency_key: str) -> str:
    """A key is one route's: the same key sent to ``/run`` and to ``/stream`` names two requests,
    whose answers differ in kind (JSON, an event stream)."""
    return f"{request.method} {request.url.path} {idempotency_key}"


async def submit(
    request: Request,
    backend: Backend,
    body: RunRequest,
    span: Span,
    answer: Answer,
    *,
    task_id: str | None = None,
) -> Response:
    """Append the task (once per ``Idempotency-Key``) and answer with ``answer(task_id)``; the
    route may choose the new task's id (to follow it before it exists).

    A repeat of a key gets the first answer byte for byte once there is one; while the first
    request still waits (or died before it answered), the repeat answers for the same task. A
    streamed answer is not kept: its repeat streams the same task again."""
    idempotency_key = parse_idempotency_key(request.headers.get("idempotency-key"))
    placed = await admit(backend, body)
    task_id = task_id or uuid.uuid4().hex
    first = True
    if idempotency_key is not None:
        claim = await backend.idempotency.claim(scoped(request, idempotency_key), task_id)
        if not claim.new:
            record = claim.record
            if record.code is not None and record.body is not None:
                return Response(record.body, record.code, media_type="application/json")
            task_id, first = record.task_id, False
            span.set_attribute("victoria.idempotent_repeat", True)
    span.set_attribute("victoria.task_id", task_id)
    if first or await backend.views.get(task_id) is None:
        await append(
            backend,
            body,
            placed,
            span,
            task_id=task_id,
            correlation_id=correlation_id(request),
            idempotency_key=idempotency_key,
        )
    response = await answer(task_id)
    if idempotency_key is not None and first and not isinstance(response, StreamingResponse):
        await backend.idempotency.remember(
            scoped(request, idempotency_key), task_id, response.status_code, bytes(response.body)
        )
    return response


@dataclass(frozen=True, slots=True)
class Placed:
    """Where an admitted goal goes: the project it names and the expert chosen for it."""

    project: Project | None
    expert: Expert


async def admit(backend: Backend, body: RunRequest) -> Placed:
    """Count one more task in flight (``Overloaded`` past ``VICTORIA_MAX_TASKS_IN_FLIGHT``), and
    find the goal's project (``BadRequest`` 422 for one that is not there) and its expert."""
    try:
        await backend.admission.admit()
    except Overloaded:
        backend.metrics.refusal("overloaded")
        raise
    try:
        project = backend.registry.project(body.project_context)
    except UnknownProject as exc:
        raise BadRequest(422, "invalid_field", str(exc), "project_context") from None
    # The classifier runs only when there are experts to choose among (the users' database).
    category = (body.task_type or classifier.classify(body.goal).kind) if backend.registry.experts else ""
    return Placed(project, backend.registry.expert_for(body.goal, category))


async def append(
    backend: Backend,
    body: RunRequest,
    placed: Placed,
    span: Span,
    *,
    task_id: str,
    correlation_id: str,
    idempotency_key: str | None = None,
) -> TaskSubmitted:
    """Store the task's ``task_submitted`` event, in ``span``'s trace, and show it in this
    gateway's view at once."""
    trace_headers = tracing.headers_for(span)
    images = [await backend.images.put(data) for data in body.images]
    project, expert = placed.project, placed.expert
    event = TaskSubmitted(
        task_id=task_id,
        goal=body.goal,
        task_type=body.task_type,
        project_context=body.project_context,
        session_id=body.session_id,
        max_steps=body.max_steps or DEFAULT_MAX_STEPS,
        model=body.model,
        correlation_id=correlation_id,
        idempotency_key=idempotency_key,
        deadline_s=backend.config.task_deadline,
        trace_id=tracing.trace_id_of(span),
        traceparent=trace_headers.get("traceparent"),
        chat_history=body.chat_history or await recall(backend, body.session_id),
        images=images,
        verbose=body.verbose,
        max_steps_requested=body.max_steps_requested,
        project=project.slug if project is not None else None,
        workspace=project.workspace_path if project is not None else None,
        expert=expert.name,
        expert_prompt=expert.system_prompt,
    )
    ack = await publish.append(backend.nc, event, key="submitted", headers=trace_headers)
    backend.views.record(event, ack.seq)
    log.debug("task %s submitted", task_id, extra={"task_id": task_id, "trace_id": event.trace_id})
    return event


async def recall(backend: Backend, session_id: str | None) -> list[ChatTurn]:
    """The session's last exchanges, bounded like ``chat_history``; none when it is slow to say."""
    if not session_id:
        return []
    try:
        return bounded_turns(await asyncio.wait_for(backend.memory.recent(session_id), memory.READ_TIMEOUT))
    except Exception as exc:  # the task goes on without its memory rather than wait
        log.warning("session %s: its memory was not read (%s: %s)", session_id, type(exc).__name__, exc)
        return []


async def wait_terminal(views: TaskViews, task_id: str, wait: float) -> TaskHistory | None:
    """The task's fold once its status is final, or as it is after ``wait`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        history = await views.get(task_id)
        remaining = deadline - loop.time()
        if history is None or history.terminal or remaining <= 0:
            return history
        await views.wait_terminal(task_id, min(remaining, WAKE_EVERY))
