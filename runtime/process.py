"""Run one actor as a process: connect, start, wait for a signal, a crash or the parent's death."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any, Final

from victoria.runtime import connection, credentials, fence, streams
from victoria.runtime.base import Actor
from victoria.runtime.config import Config
from victoria.runtime.logbus import BusLogHandler
from victoria.runtime.tracing import Tracing

log = logging.getLogger(__name__)

PARENT_CHECK_INTERVAL: Final = 1.0  # seconds
GC_THRESHOLDS: Final = (10_000, 20, 20)
"""The cyclic garbage collector's thresholds in a long-lived process (CPython's are 700, 10, 10)."""
EXIT_CRASHED: Final = 70  # EX_SOFTWARE: the supervisor restarts the actor


def run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it exists (not on Windows), else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def settle_gc() -> None:
    """Call once start-up is done. The objects made so far (modules, classes, configuration) leave
    the garbage collector's view for good, and young collections come after 10,000 allocations, not
    700. Every collection pauses the event loop (what it cost under load: bench/README.md)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def wait_for_stop(extra: asyncio.Event | None = None) -> str:
    """Wait for SIGINT/SIGTERM, the death of the parent supervisor, or ``extra``."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reason = "signal"
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters: list[asyncio.Task[object]] = [asyncio.create_task(_wait(stop))]
    if extra is not None:
        waiters.append(asyncio.create_task(_wait(extra)))
    parent = os.environ.get("VICTORIA_PARENT_PID")
    if parent and parent.isdigit():
        waiters.append(asyncio.create_task(_parent_gone(int(parent))))
    _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    if extra is not None and extra.is_set():
        reason = "crashed"
    elif not stop.is_set():
        reason = "parent gone"
    return reason


async def _wait(event: asyncio.Event) -> object:
    return await event.wait()


async def _parent_gone(pid: int) -> object:
    # No event tells a child that its parent died (short of Linux-only prctl): poll, portably.
    while os.getppid() == pid:  # noqa: ASYNC110
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    return None


async def serve_actor(
    factory: type[Actor],
    config: Config,
    nats_url: str,
    *,
    name: str,
    log_handler: BusLogHandler | None = None,
) -> int:
    restarts = int(os.environ.get("VICTORIA_RESTARTS", "0") or 0)
    tracing = Tracing(name, config.instance)
    tracing.start()
    auth = credentials.for_role(config, name, nats_url)
    nc = await connection.connect(
        nats_url,
        name=f"{name}:{config.instance}",
        connect_timeout=15.0,
        user=auth.user,
        password=auth.password,
        creds_file=auth.creds_file,
    )
    if log_handler is not None:
        log_handler.attach(nc)
    try:
        fenced = fence.fenced_appends(nc, nats_url, allow_unfenced=config.allow_unfenced)
        await streams.wait_for_streams(
            nc.jetstream(), dedup_window=config.dedup_window, replicas=config.replicas
        )
        actor = factory(nc, config, restarts=restarts, fenced=fenced)
        await actor.start()
        settle_gc()
        reason = await wait_for_stop(actor.crashed)
        log.info("%s stopping: %s", name, reason)
        await actor.stop()
        return EXIT_CRASHED if reason == "crashed" else 0
    finally:
        if log_handler is not None:
            await log_handler.aclose()  # before the drain, which makes publishes fail
        try:
            await asyncio.wait_for(nc.drain(), 5.0)
        except Exception:  # closing anyway
            try:
                await nc.close()
            except Exception as exc:  # NATS is away (reconnecting): nothing left to flush to it
                log.debug("close while NATS is away: %r", exc)
        await asyncio.to_thread(tracing.shutdown)
