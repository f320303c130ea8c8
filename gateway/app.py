"""The HTTP layer's assembly: every route, by path, to the module that answers it.

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

from victoria.gateway import dashboard, history, legacy, operations, tasklist, tasklogs, tasks
from victoria.gateway.admission import RETRY_AFTER, Overloaded
from victoria.gateway.auth import RequireToken
from victoria.gateway.backend import Backend, GatewayState
from victoria.gateway.http import json_response, unavailable
from victoria.gateway.requests import BadRequest

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

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response({"error": "http_error", "detail": exc.detail}, exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return json_response({"error": "internal", "detail": type(exc).__name__}, 500)

    return Starlette(
        routes=[
            # the old server's contract
            Route("/run", with_backend(legacy.run), methods=["POST"]),
            Route("/stream", with_backend(legacy.stream), methods=["POST"]),
            Route("/plan", with_backend(legacy.plan), methods=["POST"]),
            Route("/status", with_state(legacy.status), methods=["GET"]),
            Route("/health", with_state(legacy.health), methods=["GET"]),
            Route("/api/available-models", with_state(legacy.available_models), methods=["GET"]),
            Route("/api/telegram/register", with_backend(legacy.telegram_register), methods=["POST"]),
            Route("/api/telegram/heartbeat", with_backend(legacy.telegram_heartbeat), methods=["POST"]),
            Route("/health/telegram", with_backend(legacy.telegram_health), methods=["GET"]),
            # one task; the history of all of them
            Route("/run/status/{task_id}", with_backend(tasks.status), methods=["GET"]),
            Route("/runs", with_backend(history.runs), methods=["GET"]),
            Route("/run/{task_id}/cancel", with_backend(tasks.cancel), methods=["POST"]),
            Route("/run/{task_id}/events", with_backend(tasks.events), methods=["GET"]),
            # operations
            Route("/ready", with_state(operations.ready), methods=["GET"]),
            Route("/services", with_backend(operations.services), methods=["GET"]),
            Route("/metrics", with_backend(operations.metrics), methods=["GET"]),
            Route("/openapi.json", operations.openapi, methods=["GET"]),
            # the dashboard and what it reads beyond the routes above
            Route("/tasks", with_backend(tasklist.tasks), methods=["GET"]),
            Route("/tasks/events", with_backend(tasklist.task_events), methods=["GET"]),
            Route("/run/{task_id}/logs", with_backend(tasklogs.logs), methods=["GET"]),
            Route("/", dashboard.page, methods=["GET"]),
            *(Route(path, dashboard.asset, methods=["GET"]) for path in sorted(dashboard.PATHS - {"/"})),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        middleware=[
            Middleware(
                RequireToken, tokens=state.tokens, on_refusal=lambda: state.metrics.refusal("unauthorized")
            )
        ],
    )
