"""The log handler that publishes records on ``victoria.log.<actor>.<level>``, against a real nats-server."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from tests.system import NatsServer
from victoria.events import subjects
from victoria.events.contracts import LogRecord
from victoria.runtime import connection, streams
from victoria.runtime.context import current_task_id, current_trace_id
from victoria.runtime.logbus import BusLogHandler

ACTOR = "logbus-test"
decoder = msgspec.json.Decoder(LogRecord)
strict = pytest.mark.usefixtures("strict_loop")
pytestmark = pytest.mark.nats_streams()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A logger of this test alone, which does not pass records on to the root logger."""
    log = logging.getLogger(f"tests.logbus.{uuid.uuid4().hex[:8]}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)


@pytest.fixture
async def make_handler(nc: NATS, logger: logging.Logger) -> AsyncIterator[Callable[..., BusLogHandler]]:
    """Builds handlers installed on ``logger``; closes them after the test."""
    made: list[BusLogHandler] = []

    def make(**kwargs: Any) -> BusLogHandler:
        handler = BusLogHandler(ACTOR, "inst-1", **kwargs)
        logger.addHandler(handler)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        logger.removeHandler(handler)
        await handler.aclose(timeout=0.5)


@pytest.fixture
async def sub(nc: NATS) -> Subscription:
    """A subscription to every log record on the bus (ask for it before ``handler``)."""
    return await nc.subscribe(subjects.ALL_LOGS)


@pytest.fixture
async def handler(nc: NATS, make_handler: Callable[..., BusLogHandler]) -> BusLogHandler:
    """A handler with the default options, installed on ``logger`` and attached to ``nc``."""
    made = make_handler()
    made.attach(nc)
    return made


async def receive(sub: Subscription, count: int, timeout: float = 5.0) -> list[tuple[str, LogRecord]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    out: list[tuple[str, LogRecord]] = []
    while len(out) < count:
        msg = await sub.next_msg(timeout=max(0.01, deadline - loop.time()))
        out.append((msg.subject, decoder.decode(msg.data)))
    return out


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_records_emitted_before_any_event_loop_are_published_after_attach(
    nats_server: NatsServer, logger: logging.Logger
) -> None:
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    handler = BusLogHandler(ACTOR, "inst-1")
    logger.addHandler(handler)
    logger.info("before the loop, %d", 1)
    assert handler.pending == 1

    async def main() -> list[tuple[str, LogRecord]]:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        nc = await connection.connect(nats_server.url, name="logbus-test")
        try:
            sub = await nc.subscribe(subjects.ALL_LOGS)
            handler.attach(nc)
            got = await receive(sub, 1)
        finally:
            await nc.close()  # no aclose(): the loop closes under the handler
        await asyncio.sleep(0)
        assert not errors
        return got

    [(subject, record)] = asyncio.run(main())
    assert subject == f"victoria.log.{ACTOR}.info"
    assert record.message == "before the loop, 1"
    assert (record.actor, record.instance, record.pid) == (ACTOR, "inst-1", os.getpid())
    assert (record.level, record.logger) == ("INFO", logger.name)
    assert record.task_id is None and record.trace_id is None

    logger.warning("after the loop closed")  # call_soon_threadsafe on a closed loop must not raise
    assert handler.pending == 1
    handler.close()
    assert handler.dropped == 1
    logger.warning("after close")
    assert handler.dropped == 2 and handler.pending == 0


@strict
async def test_records_from_other_threads_reach_the_bus(
    sub: Subscription, logger: logging.Logger, handler: BusLogHandler
) -> None:

    def work(n: int) -> None:
        for i in range(25):
            logger.info("thread %d record %d", n, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    got = await receive(sub, 100)
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert sorted(r.message for _, r in got) == sorted(
        f"thread {n} record {i}" for n in range(4) for i in range(25)
    )
    assert handler.dropped == 0 and handler.pending == 0


@strict
async def test_published_records_are_captured_by_the_logs_stream(
    nc: NATS, logger: logging.Logger, make_handler: Callable[..., BusLogHandler]
) -> None:
    js = nc.jetstream()
    await streams.ensure_streams(js)
    handler = make_handler()
    handler.attach(nc)
    logger.error("kept in memory")
    await handler.aclose()
    msg = await js.get_last_msg(subjects.LOG_STREAM, f"victoria.log.{ACTOR}.error")
    assert decoder.decode(msg.data or b"").message == "kept in memory"


@strict
async def test_records_carry_task_and_trace_ids_from_context_and_extra(
    sub: Subscription, logger: logging.Logger, handler: BusLogHandler
) -> None:

    logger.info("no ids")
    task_token = current_task_id.set("task-ctx")
    trace_token = current_trace_id.set("trace-ctx")
    try:
        logger.info("ids from context")
        logger.info("ids from extra", extra={"task_id": "task-extra", "trace_id": "trace-extra"})
    finally:
        current_task_id.reset(task_token)
        current_trace_id.reset(trace_token)

    async def in_task() -> None:
        current_task_id.set("task-in-task")
        logger.info("ids from a task's context")

    await asyncio.create_task(in_task())
    got = {r.message: (r.task_id, r.trace_id) for _, r in await receive(sub, 4)}
    assert got == {
        "no ids": (None, None),
        "ids from context": ("task-ctx", "trace-ctx"),
        "ids from extra": ("task-extra", "trace-extra"),
        "ids from a task's context": ("task-in-task", None),
    }


@strict
async def test_records_emitted_while_nats_is_down_are_kept_and_published_after_reconnect(
    nats_server: NatsServer, nc: NATS, sub: Subscription, logger: logging.Logger, handler: BusLogHandler
) -> None:
    await asyncio.to_thread(nats_server.stop)
    await wait_until(lambda: not nc.is_connected)

    def emit(first: int) -> None:
        for i in range(first, first + 10):
            logger.warning("while down %d", i)

    emit(0)
    await asyncio.to_thread(emit, 10)
    await asyncio.sleep(0.3)  # the flusher has had time to run, and must not publish
    assert handler.pending == 20
    assert handler.dropped == 0

    await asyncio.to_thread(nats_server.start)
    got = await receive(sub, 20, timeout=10.0)
    assert sorted(r.message for _, r in got) == sorted(f"while down {i}" for i in range(20))
    assert handler.pending == 0 and handler.dropped == 0


@strict
async def test_aclose_while_nats_is_down_gives_up_at_the_timeout_and_counts_the_drops(
    nats_server: NatsServer, nc: NATS, logger: logging.Logger, handler: BusLogHandler
) -> None:
    await asyncio.to_thread(nats_server.stop)
    await wait_until(lambda: not nc.is_connected)
    for i in range(5):
        logger.info("lost %d", i)
    started = time.monotonic()
    await handler.aclose(timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert handler.dropped == 5 and handler.pending == 0


@strict
async def test_a_full_buffer_drops_new_records_and_counts_them(
    nc: NATS, sub: Subscription, logger: logging.Logger, make_handler: Callable[..., BusLogHandler]
) -> None:
    handler = make_handler(capacity=100)
    for i in range(1_000):
        logger.info("record %d", i)
    assert handler.pending == 100
    assert handler.dropped == 900

    def burst() -> None:
        for i in range(5_000):
            logger.info("burst %d", i)

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert handler.pending == 100
    assert handler.dropped == 900 + 20_000

    handler.attach(nc)
    got = await receive(sub, 100)
    assert [r.message for _, r in got] == [f"record {i}" for i in range(100)]  # the oldest are kept
    assert handler.pending == 0


@strict
async def test_aclose_publishes_pending_records_and_can_be_called_twice(
    nc: NATS, sub: Subscription, logger: logging.Logger, handler: BusLogHandler
) -> None:
    for i in range(50):
        logger.info("pending %d", i)
    assert handler.pending == 50  # the flusher has not run yet: nothing awaited since attach()
    await handler.aclose()
    assert handler.closed
    assert handler.pending == 0 and handler.dropped == 0
    got = await receive(sub, 50)
    assert [r.message for _, r in got] == [f"pending {i}" for i in range(50)]
    await handler.aclose()
    assert handler.dropped == 0
    with pytest.raises(RuntimeError):
        handler.attach(nc)


@strict
async def test_aclose_of_a_handler_never_attached_counts_its_records_as_dropped(
    logger: logging.Logger,
) -> None:
    handler = BusLogHandler(ACTOR, "inst-1")
    logger.addHandler(handler)
    logger.info("never published")
    await handler.aclose()
    assert handler.dropped == 1 and handler.pending == 0


@strict
async def test_emit_after_aclose_does_not_raise_and_counts_the_record_as_dropped(
    logger: logging.Logger, handler: BusLogHandler
) -> None:
    await handler.aclose()
    logger.info("after aclose")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("after aclose, with a traceback")
    await asyncio.to_thread(logger.info, "after aclose, from a thread")
    assert handler.dropped == 3 and handler.pending == 0


@strict
async def test_records_of_the_nats_loggers_are_not_published(
    sub: Subscription, logger: logging.Logger, handler: BusLogHandler
) -> None:
    nats_logger = logging.getLogger("nats")
    nats_logger.addHandler(handler)
    try:
        logging.getLogger("nats").error("from nats")
        logging.getLogger("nats.aio.client").error("from nats.aio.client")
        await asyncio.to_thread(logging.getLogger("nats.js").error, "from nats.js in a thread")
        assert handler.pending == 0 and handler.dropped == 0
        logger.error("sentinel")
        [(_, record)] = await receive(sub, 1)
        assert record.message == "sentinel"  # the only record, and the nats ones came before it
    finally:
        nats_logger.removeHandler(handler)


@strict
async def test_a_record_with_an_exception_carries_the_traceback(
    sub: Subscription, logger: logging.Logger, handler: BusLogHandler
) -> None:

    def fail() -> float:
        return 1 / 0

    try:
        fail()
    except ZeroDivisionError:
        logger.exception("step %d failed", 3)
    [(subject, record)] = await receive(sub, 1)
    assert subject == f"victoria.log.{ACTOR}.error"
    assert record.message.startswith("step 3 failed\nTraceback (most recent call last):")
    assert "in fail" in record.message
    assert record.message.rstrip().endswith("ZeroDivisionError: division by zero")


@strict
async def test_a_record_that_cannot_be_formatted_is_counted_not_raised(
    sub: Subscription, logger: logging.Logger, handler: BusLogHandler
) -> None:
    # Straight to the handler: pytest's own capture handler raises on a bad record.
    handler.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 1, "%d items", ("x",), None))
    logger.info("fine")
    [(_, record)] = await receive(sub, 1)
    assert record.message == "fine"
    assert handler.dropped == 1


def test_an_actor_name_that_is_not_a_subject_token_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="actor"):
        BusLogHandler("bad.actor", "inst-1")
    with pytest.raises(ValueError, match="capacity"):
        BusLogHandler(ACTOR, "inst-1", capacity=0)
