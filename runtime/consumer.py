"""A durable JetStream pull consumer that runs one handler task per message, up to a limit.

While a handler runs, its message is kept alive with in-progress acks, so a long task is never
redelivered to a second worker while the first is alive; when the worker dies the acks stop and
JetStream redelivers after ``ack_wait``. One task per consumer sends them, for every message held
longer than a quarter of ``ack_wait`` (most are done sooner and cost nothing). The handler acks,
naks or terms the message itself; ``delivered_event`` gives it the event its message holds, and
sets aside a message that holds none of the kind it takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import BadRequestError

from victoria.events.contracts import TaskEvent
from victoria.runtime.connection import BROKER_AWAY
from victoria.runtime.protocol import pull_status
from victoria.runtime.publish import dead_letter
from victoria.runtime.reads import decode_task_event

log = logging.getLogger(__name__)

START_WAIT: Final = 30.0  # seconds a starting consumer waits for its stream to answer
AWAY_REDELIVERY: Final = 2.0  # seconds before a message whose handler met BROKER_AWAY comes again

FETCH_WAIT: Final = 5.0  # seconds one pull request stays open at the server
MAX_BATCH: Final = 256  # messages one pull request asks for
STOP_GRACE: Final = 3.0  # seconds handlers get to finish on a clean stop

Handler = Callable[[Msg], Awaitable[None]]
E = TypeVar("E", bound=TaskEvent)


async def delivered_event(
    js: JetStreamContext, msg: Msg, kind: type[E], *, consumer: str, reason: str
) -> E | None:
    """The event of type ``kind`` that a message of the durable ``consumer`` holds; else None, and
    the message is kept in the dead-letter stream with ``reason`` and never delivered again."""
    event = decode_task_event(msg.data, msg.subject)
    if isinstance(event, kind):
        return event
    await dead_letter(js, consumer, msg, reason)
    await msg.term()
    return None


class WorkConsumer:
    def __init__(
        self,
        nc: NATS,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        ack_wait: float,
        concurrency: int,
        handler: Handler,
        max_deliver: int = -1,
        max_ack_pending: int = 20_000,
        gate: asyncio.Semaphore | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.stream = stream
        self.durable = durable
        self.config = jsapi.ConsumerConfig(
            durable_name=durable,
            filter_subject=filter_subject,
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            deliver_policy=jsapi.DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            max_waiting=512,
        )
        self.ack_wait = ack_wait
        self.concurrency = concurrency
        self.handler = handler
        self.gate = gate
        """Shared by the consumers of one actor (one per shard): handlers running at once."""
        self.active: dict[asyncio.Task[None], tuple[Msg, float]] = {}
        """Handlers running: their message and when it arrived (loop time)."""
        self._keepalive_task: asyncio.Task[None] | None = None
        self._slot_free = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._pulled = 0  # messages asked for and not yet delivered

    async def start(self) -> None:
        if self._loop_task is not None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WAIT
        while True:
            try:
                await self.js.add_consumer(self.stream, config=self.config)
                break
            except BadRequestError as exc:
                # Already there with other settings (an older version made it): use it as it is.
                log.warning("consumer %s exists with other settings, using it: %s", self.durable, exc)
                break
            except BROKER_AWAY as exc:
                # The stream elects a leader (a server of the cluster just went away): ask again.
                if loop.time() > deadline:
                    raise
                log.info("consumer %s on %s not made yet (%r); asking again", self.durable, self.stream, exc)
                await asyncio.sleep(0.5)
        self._loop_task = asyncio.create_task(self._loop(), name=f"consume-{self.durable}")
        self._keepalive_task = asyncio.create_task(self._keep_alive(), name=f"keepalive-{self.durable}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._loop_task

    async def _loop(self) -> None:
        """Keep pull requests outstanding for as many messages as there are free slots.

        Messages are handled as each arrives (a ``fetch`` of a batch would wait for the whole batch
        or the request's expiry). A pull request that is lost (a server restart) is forgotten after
        its expiry, so the loop never goes silent.
        """
        nc = self.nc
        inbox = nc.new_inbox()
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        wake = self._slot_free

        async def on_msg(msg: Msg) -> None:
            status = pull_status(msg.headers)
            if status is not None:
                if status.heartbeat:
                    return
                # The request expired (408) or was dropped (409), or there was nothing (404): the
                # messages it will not bring are said, or else none of those asked for will come.
                if status.unfilled is not None:
                    self._pulled = max(0, self._pulled - status.unfilled)
                else:
                    self._pulled = 0
                wake.set()
                return
            self._pulled = max(0, self._pulled - 1)
            task = asyncio.create_task(self._run(msg))
            self.active[task] = (msg, loop.time())
            task.add_done_callback(self._done)

        sub = await nc.subscribe(inbox, cb=on_msg)
        loop = asyncio.get_running_loop()
        expires_at = 0.0
        try:
            while not self._stopping:
                wanted = self.concurrency - len(self.active) - self._pulled
                refill = self._pulled == 0 or wanted >= max(1, min(self.concurrency, MAX_BATCH) // 4)
                if loop.time() > expires_at + 1.0:
                    self._pulled = 0  # requests past their expiry are gone, whatever happened
                    wanted = self.concurrency - len(self.active)
                    refill = True
                if wanted > 0 and refill and nc.is_connected:
                    batch = min(wanted, MAX_BATCH)
                    request = {"batch": batch, "expires": int(FETCH_WAIT * 1e9)}
                    try:
                        await nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)
                        self._pulled += batch
                        expires_at = loop.time() + FETCH_WAIT
                    except nats.errors.Error as exc:
                        log.warning("consumer %s pull failed: %s", self.durable, exc)
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), max(0.05, expires_at - loop.time()))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.active.pop(task, None)
        self._slot_free.set()
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, BROKER_AWAY):
            # A server of the cluster went away and its streams elect new leaders: no bug here.
            log.warning("handler of %s: NATS did not answer (%s); the message comes again", self.durable, exc)
        else:
            log.error("handler of %s failed", self.durable, exc_info=exc)

    async def _run(self, msg: Msg) -> None:
        try:
            if self.gate is None:
                await self.handler(msg)
            else:
                async with self.gate:
                    await self.handler(msg)
        except asyncio.CancelledError:
            # Stopping: hand the message back at once instead of waiting out ack_wait.
            await _quietly(msg.nak())
            raise
        except BROKER_AWAY:
            await _quietly(msg.nak(delay=AWAY_REDELIVERY))
            raise
        except Exception:
            await _quietly(msg.nak(delay=1.0))
            raise

    async def _keep_alive(self) -> None:
        """An in-progress ack, every ``ack_wait / 4``, for each message held at least that long:
        the first goes out at most ``ack_wait / 2`` after the message arrived."""
        period = max(0.25, self.ack_wait / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            held_since = loop.time() - period
            for task, (msg, arrived) in list(self.active.items()):
                if arrived <= held_since and not task.done():
                    try:
                        await msg.in_progress()
                    except Exception as exc:  # then the ack wait runs out and another worker takes it
                        log.warning(
                            "consumer %s: in-progress ack failed (%s); after %gs another worker may take "
                            "the message",
                            self.durable,
                            exc,
                            self.ack_wait,
                        )

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._slot_free.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        if self.active:
            _, pending = await asyncio.wait(list(self.active), timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            await asyncio.gather(self._keepalive_task, return_exceptions=True)


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception as exc:  # a nak that fails: the ack wait brings the message back all the same
        log.debug("nak failed: %s", exc)
