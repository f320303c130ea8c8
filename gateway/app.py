"""The HTTP layer's assembly: the routes of the table in ``gateway/routes.py``, each to the module
that answers it.

- ``legacy``: the old Victoria server's contract (``POST /run``, ``/stream``, ``/plan``,
  ``GET /status``, ``/health``, ``/api/available-models``, the Telegram bot's routes);
- ``tasks``: one task's status, cancel and events; ``history``: the task history in PostgreSQL;
- ``operations``: readiness, services, metrics;
- ``dashboard``: the page (``GET /``) and its files; ``tasklist``: the live list of tasks
  (``/tasks``, ``/tasks/events``); ``tasklogs``: one task's log records.

Each route is a plain function of the request and what it depends on: the ``Backend`` (NATS and
what is built on it; 503 with ``Retry-After`` while it is not there) or the ``GatewayState``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats.errors
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from victoria.gateway.admission import RETRY_AFTER, Overloaded
from victoria.gateway.auth import RequireToken
from victoria.gateway.backend import Backend, GatewayState
from victoria.gateway.http import json_response, unavailable
from victoria.gateway.requests import BadRequest
from victoria.gateway.routes import OPEN_PATHS, OPERATIONS, Operation

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]
BackendRoute = Callable[[Request, Backend], Awaitable[Response]]
StateRoute = Callable[[Request, GatewayState], Awaitable[Response]]

__all__ = ["Backend", "GatewayState", "create_app"]


def create_app(state: GatewayState) -> Starlette:
    def with_backend(route: BackendRoute) -> Handler:
        async def handle(request: Request) -> Response:
            backend = state.backend
            if backend is None or not backend.nc.is_connected:
                return unavailable("NATS is not connected; retry shortly")
            try:
                return await route(request, backend)
            except BadRequest as exc:
                return json_response(exc.body(), exc.status)
            except Overloaded as exc:
                headers = {"Retry-After": str(RETRY_AFTER)}
                return json_response({"error": "overloaded", "detail": str(exc)}, 503, headers)
            except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
                log.warning("%s %s: NATS trouble: %s", request.method, request.url.path, exc)
                return unavailable(f"NATS did not answer: {type(exc).__name__}")

        return handle

    def with_state(route: StateRoute) -> Handler:
        async def handle(request: Request) -> Response:
            return await route(request, state)

        return handle

    def wrap(op: Operation) -> Handler:
        if op.needs == "backend":
            return with_backend(op.handler)
        if op.needs == "state":
            return with_state(op.handler)
        handler: Handler = op.handler
        return handler

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response({"error": "http_error", "detail": exc.detail}, exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return json_response({"error": "internal", "detail": type(exc).__name__}, 500)

    return Starlette(
        routes=[Route(op.path, wrap(op), methods=[op.method]) for op in OPERATIONS],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        middleware=[
            Middleware(
                RequireToken,
                tokens=state.tokens,
                open_paths=OPEN_PATHS,
                on_refusal=lambda: state.metrics.refusal("unauthorized"),
            )
        ],
    )
