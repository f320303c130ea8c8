"""What an operator asks the gateway: readiness, the services and their dependencies, metrics."""

from __future__ import annotations

from typing import Final

import msgspec
import nats.errors
from nats.js import JetStreamContext
from starlette.requests import Request
from starlette.responses import Response

from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import ServicesReply, ServicesRequest
from victoria.gateway import models
from victoria.gateway.backend import Backend, GatewayState
from victoria.gateway.http import json_response, unavailable
from victoria.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from victoria.gateway.metrics import consumer_counts
from victoria.gateway.schemas import ModelServerView, Ready, Services, TaskCounts

SERVICES_TIMEOUT: Final = 1.0  # seconds to wait for the monitor
_services: Final = msgspec.json.Decoder(ServicesReply)


async def ready(request: Request, state: GatewayState) -> Response:
    """``GET /ready``: 200 once NATS and the task streams answer, else 503 with ``Retry-After``."""
    backend = state.backend
    if backend is not None and await backend.ready():
        return json_response(Ready(status="ready"))
    return json_response(Ready(status="not ready"), 503, {"Retry-After": "1"})


async def service_view(backend: Backend) -> Services | None:
    """The monitor's services and dependencies; None when it does not answer."""
    try:
        reply = await backend.nc.request(
            subjects.MONITOR_SERVICES, encode(ServicesRequest()), timeout=SERVICES_TIMEOUT
        )
        answer = _services.decode(reply.data)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, msgspec.DecodeError):
        return None
    return Services(services=answer.services, dependencies=answer.dependencies)


async def services(request: Request, backend: Backend) -> Response:
    """``GET /services``: one entry per actor instance, and the probed dependencies."""
    view = await service_view(backend)
    if view is None:
        return unavailable("the service monitor does not answer")
    servers = msgspec.convert(await models.model_servers(backend.js), list[ModelServerView])
    return json_response(msgspec.structs.replace(view, model_servers=servers))


async def task_counts(js: JetStreamContext) -> TaskCounts:
    queued, running = await consumer_counts(js, "victoria")
    return TaskCounts(queued=queued, running=running)


async def metrics(request: Request, backend: Backend) -> Response:
    """``GET /metrics``: Prometheus text."""
    body = await backend.metrics.render(backend.nc, backend.js)
    body += models.swaps_metric(await models.model_servers(backend.js))
    return Response(body, media_type=METRICS_CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the OpenAPI 3.1 document of every route, made from the msgspec types
    the routes decode and encode with; built on the first request."""
    from victoria.gateway import openapi  # not before it is asked for: start-up stays light

    return Response(openapi.encoded(), media_type="application/json")
