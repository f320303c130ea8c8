"""The gateway process: uvicorn serving the app, NATS connected in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from typing import ClassVar

import uvicorn

from victoria.errors import VictoriaError
from victoria.gateway.app import create_app
from victoria.gateway.auth import Tokens
from victoria.gateway.backend import Backend, GatewayState
from victoria.gateway.views import TaskViews
from victoria.runtime import connection, credentials, streams
from victoria.runtime.base import Actor
from victoria.runtime.config import Config
from victoria.runtime.listen import refuse_open_listen
from victoria.runtime.logbus import BusLogHandler
from victoria.runtime.process import settle_gc, wait_for_stop
from victoria.runtime.tracing import Tracing

log = logging.getLogger(__name__)


class GatewayActor(Actor):
    """The gateway as seen by the monitor: it heartbeats like every actor."""

    name: ClassVar[str] = "gateway"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to the process, which stops NATS and the server in order.
        yield


async def serve(
    config: Config,
    nats_url: str,
    *,
    host: str,
    port: int,
    insecure: bool = False,
    log_handler: BusLogHandler | None = None,
) -> int:
    tokens = Tokens.from_config(config)
    refuse_open_listen(host, tokens_required=tokens.required, insecure=insecure)
    tracing = Tracing("gateway", config.instance)
    tracing.start()
    state = GatewayState(config, tokens, host=host)
    app = create_app(state)
    settle_gc()
    uv_config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_config=None,  # uvicorn's dictConfig would close the handlers this process set up
        log_level="warning",
        timeout_keep_alive=30,
        backlog=2048,
    )
    server = _Server(uv_config)
    server_task = asyncio.create_task(server.serve(), name="uvicorn")
    connect_task = asyncio.create_task(_connect(state, config, nats_url, log_handler), name="connect")
    stop_reason = asyncio.create_task(wait_for_stop())
    token_watch = asyncio.create_task(tokens.watch(), name="tokens")
    done, _ = await asyncio.wait(
        {server_task, stop_reason, connect_task}, return_when=asyncio.FIRST_COMPLETED
    )
    if connect_task in done and connect_task.exception() is None:
        done, _ = await asyncio.wait({server_task, stop_reason}, return_when=asyncio.FIRST_COMPLETED)
    failed = next((t for t in (server_task, connect_task) if t in done and t.exception() is not None), None)
    if failed is not None:
        error = failed.exception()
        if isinstance(error, VictoriaError):  # a known failure (NATS refused us, a stream missing)
            log.error("gateway %s failed: %s", failed.get_name(), error)
        else:
            log.error("gateway %s failed", failed.get_name(), exc_info=error)
    server.should_exit = True
    await state.mcp.stop()  # its streams end: uvicorn waits for every open one
    connect_task.cancel()
    stop_reason.cancel()
    token_watch.cancel()
    await asyncio.gather(server_task, connect_task, stop_reason, token_watch, return_exceptions=True)
    backend = state.backend
    actor = state.actor
    if isinstance(actor, Actor):
        await actor.stop()
    if log_handler is not None:
        await log_handler.aclose()
    if backend is not None:
        await backend.close()
        await backend.views.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(backend.nc.drain(), 5.0)
    await asyncio.to_thread(tracing.shutdown)
    return 1 if failed is not None or server_task in done else 0


async def _connect(
    state: GatewayState, config: Config, nats_url: str, log_handler: BusLogHandler | None
) -> None:
    views: TaskViews | None = None
    auth = credentials.for_role(config, "gateway", nats_url)

    async def on_reconnect() -> None:
        if views is not None:
            views.forget_all()

    while True:
        try:
            nc = await connection.connect(
                nats_url,
                name=f"gateway:{config.instance}",
                on_reconnect=on_reconnect,
                user=auth.user,
                password=auth.password,
                creds_file=auth.creds_file,
            )
            break
        except ConnectionError as exc:
            log.warning("%s; retrying", exc)
    if log_handler is not None:
        log_handler.attach(nc)
    await streams.wait_for_streams(nc.jetstream(), dedup_window=config.dedup_window, replicas=config.replicas)
    metrics = state.metrics
    views = TaskViews(nc.jetstream(), observer=metrics.observe, nc=nc)
    await views.start()
    backend = Backend(nc, views, config, metrics)
    if config.postgres_dsn:
        from victoria.runtime import db  # asyncpg is loaded only where a database is configured

        # No connection is opened here: a database that is slow or silent delays no start.
        backend.use_database(
            await db.create_pool(
                config.postgres_dsn,
                command_timeout=config.db_command_timeout,
                connect_timeout=config.db_connect_timeout,
            )
        )
    backend.registry.start()
    state.backend = backend
    restarts = int(os.environ.get("VICTORIA_RESTARTS", "0") or 0)
    actor = GatewayActor(nc, config, restarts=restarts)
    await actor.start()
    state.actor = actor
    log.info("gateway connected to NATS at %s", credentials.redact(nats_url))
