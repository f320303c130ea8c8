"""Publishing to a stream: wait until it is stored, and publish again while no stream answers.

``publish`` is the retry loop of every publish that must be stored; ``append`` puts an event into a task's
history unfenced (the gateway's submissions and cancel requests; an attempt's own appends are
fenced: ``victoria.runtime.fence``); ``dead_letter`` keeps what nobody can handle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import DeadLetter, HistoryEvent
from victoria.runtime.protocol import PubAck, decode_pub_ack

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT: Final = 5.0  # seconds, one JetStream publish
STREAM_AWAY_WAIT: Final = 15.0  # seconds a publish waits for a stream that has no leader
JETSTREAM_UNAVAILABLE: Final = 10008  # "JetStream system temporarily unavailable"


def _never() -> bool:
    return False


def event_headers(task_id: str, key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"Nats-Msg-Id": f"{task_id}:{key}"}
    if extra:
        headers.update(extra)
    return headers


async def publish(
    nc: NATS,
    subject: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    wait: float | None = None,
    again_after_timeout: bool = False,
    stopping: Callable[[], bool] = _never,
) -> PubAck:
    """Publish to a stream and wait until it is stored; JetStream's answer, refusals included.

    What ``js.publish`` does, through nats-py's public request API, with the acknowledgement
    decoded by msgspec (``protocol.decode_pub_ack``) instead of ``json.loads``, and without raising
    for a refusal: a fenced writer reads what refused it. While no stream answers it publishes
    again, for up to ``wait`` seconds (``STREAM_AWAY_WAIT`` unless told); after a timeout only when
    ``again_after_timeout`` (the message may have been stored: only a publish that cannot store a
    second copy may say so).
    ``stopping`` ends the waiting early (its process is stopping): the error is raised at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (STREAM_AWAY_WAIT if wait is None else wait)
    delay = 0.05
    while True:
        try:
            reply = await nc.request(subject, payload, timeout=PUBLISH_TIMEOUT, headers=headers)
            answer = decode_pub_ack(reply.data)
            if answer.error_code != JETSTREAM_UNAVAILABLE:
                return answer
        except nats.errors.NoRespondersError:
            pass
        except nats.errors.TimeoutError as exc:
            if not again_after_timeout or stopping():
                raise
            log.warning("%s: not stored yet (%r); publishing it again", subject, exc)
        # Nothing was stored, or (after a timeout) perhaps it was: the stream has no leader now (a
        # server of the cluster went away and its replicas elect another, which takes seconds).
        if loop.time() + delay > deadline or stopping():
            raise NoStreamResponseError from None
        log.debug("no stream answers %s; publishing again in %.2fs", subject, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def raise_for(answer: PubAck) -> None:
    """nats-py's own error for a refused publish."""
    if answer.error is not None:
        raise APIError.from_error(answer.error)


async def append(
    nc: NATS,
    event: HistoryEvent,
    *,
    key: str,
    headers: dict[str, str] | None = None,
) -> PubAck:
    """Append one event to a task's history, unfenced (the gateway's submissions and cancel
    requests), and wait until it is stored. ``key`` makes the append idempotent inside the
    duplicate window."""
    answer = await publish(
        nc,
        subjects.task_event(event.task_id, event.kind),
        encode(event),
        event_headers(event.task_id, key, headers),
    )
    raise_for(answer)
    return answer


async def dead_letter(
    js: JetStreamContext, consumer: str, msg: Any, reason: str, *, task_id: str | None = None
) -> None:
    """Keep a message nobody can handle in the dead-letter stream, with the reason. Never raises."""
    try:
        letter = DeadLetter(
            consumer=consumer,
            subject=msg.subject,
            reason=reason,
            data=bytes(msg.data).decode("utf-8", errors="replace"),
            deliveries=getattr(getattr(msg, "metadata", None), "num_delivered", 0) or 0,
            task_id=task_id,
        )
        subject = subjects.dead_letter_task(task_id) if task_id else subjects.dead_letter_bad(consumer)
        await js.publish(subject, encode(letter), timeout=PUBLISH_TIMEOUT)
        log.warning("dead-lettered a message from %s on %s: %s", consumer, msg.subject, reason)
    except Exception as exc:  # the dead-letter path must not take the actor down
        log.error("could not dead-letter a message from %s: %s", consumer, exc)
