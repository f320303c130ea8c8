"""One task: its status, its cancel, its events as they happen."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from victoria.events import subjects
from victoria.events.contracts import TaskCancelRequested
from victoria.events.fold import TaskHistory, TaskStatus
from victoria.gateway.backend import Backend
from victoria.gateway.follow import Progress, Quiet, Stored, Tokens, follow
from victoria.gateway.http import json_response, not_found
from victoria.gateway.schemas import CancelRequested
from victoria.runtime import publish

CANCEL_VIEW_WAIT: Final = 2.0  # seconds a cancel waits for this gateway's view to show its effect


async def lookup(backend: Backend, task_id: str) -> TaskHistory | None:
    if not subjects.is_token(task_id):
        return None
    return await backend.views.get(task_id)


async def status(request: Request, backend: Backend) -> Response:
    """``GET /run/status/{task_id}``: the status object, folded from the task's events."""
    history = await lookup(backend, request.path_params["task_id"])
    if history is None:
        return not_found(request.path_params["task_id"])
    return json_response(status_of(backend, history))


def status_of(backend: Backend, history: TaskHistory) -> TaskStatus:
    """The status object: the fold's, with the wait for a model this gateway heard of."""
    view = history.view()
    if view.status == "running" and (wait := backend.views.model_wait(view.task_id)) is not None:
        view.stage, view.model_wait = "waiting_for_model", wait
    return view


async def cancel(request: Request, backend: Backend) -> Response:
    """``POST /run/{task_id}/cancel``: 202 with the status ``cancelled`` from now on, or 200 with
    the status when the task had ended before."""
    task_id = request.path_params["task_id"]
    history = await lookup(backend, task_id)
    if history is None:
        return not_found(task_id)
    if await cancel_unless_ended(backend, history, "cancelled by request"):
        return json_response(history.view(), 200)
    return json_response(CancelRequested(task_id=task_id, status=history.status, cancel="requested"), 202)


async def cancel_unless_ended(backend: Backend, history: TaskHistory, reason: str) -> bool:
    """Cancel the task of ``history`` (``request_cancel``) unless it has ended: True when it had
    ended before the request (its status stands), False when the cancel decides its status."""
    if history.terminal:
        return True
    await request_cancel(backend, history.task_id, reason)
    return history.terminal and history.status != "cancelled"


async def request_cancel(backend: Backend, task_id: str, reason: str) -> None:
    """Record a cancel request, and wait (``CANCEL_VIEW_WAIT`` at most) until this gateway's view
    shows its effect.

    Recorded, not carried out here: the attempt that holds the task (or the first to see it, if
    none does yet) writes task_cancelled. The request alone decides the status, unless the
    terminal event came first; the wait is until this gateway's view has either."""
    await publish.append(backend.nc, TaskCancelRequested(task_id=task_id, reason=reason), key="cancel")
    await backend.views.wait_terminal(task_id, CANCEL_VIEW_WAIT)


async def events(request: Request, backend: Backend) -> Response:
    """``GET /run/{task_id}/events``: server-sent events, the task's own from the first, then live,
    with the model's words as ``token_chunk``; the terminal event last."""
    task_id = request.path_params["task_id"]
    if await lookup(backend, task_id) is None:
        return not_found(task_id)
    return StreamingResponse(
        _sse(backend, task_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(backend: Backend, task_id: str) -> AsyncIterator[bytes]:
    yield b": connected\n\n"
    async for item in follow(backend.js, backend.nc, task_id):
        if isinstance(item, Quiet):
            yield b": keep-alive\n\n"
        elif isinstance(item, Tokens):
            yield b"event: token_chunk\ndata: %s\n\n" % item.data
        elif isinstance(item, Progress):
            yield b"event: model_wait\ndata: %s\n\n" % item.data
        elif isinstance(item, Stored):
            yield b"id: %d\nevent: %s\ndata: %s\n\n" % (item.seq, item.tag.encode(), item.data)
