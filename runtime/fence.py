"""Fenced appends: only the attempt that holds a task can write its history.

A task's own history is every event on ``victoria.task.<shard>.<task_id>.<kind>``: the
submission, cancel requests and what its attempts write (started, stages, model requests, tool
results, the terminal event). Model results are on a subject one token longer
(``....llm_result.<request_id>``), outside that wildcard, because the runner writes them while the
holder waits. Each append of an attempt carries ``Nats-Expected-Last-Subject-Sequence``: the stream
sequence of the last event of the task's own history that the attempt knows of (its own previous
append, read from that append's acknowledgement), with
``Nats-Expected-Last-Subject-Sequence-Subject`` naming the wildcard. When anything else was
appended there meanwhile, JetStream refuses the append, and what was appended decides:

- a cancel request: the attempt still holds the task, and its only write left is
  ``task_cancelled`` (which it retries on top of the request). So a task whose cancel was stored
  before its terminal event always ends ``cancelled``, guaranteed by the server, not by timing.
- anything else (another attempt's ``task_started`` or model request, a terminal event): a newer
  attempt has taken the task. This one has lost it: :class:`TaskLost`, and it writes nothing more.

An attempt that never writes again (it was frozen, then killed) needs no fencing at all.

The runner's answers are fenced too, on their own subject: each takes one message, ever
(``append_result``). ``fenced_appends`` says whether the server can fence at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from victoria.errors import CancelRequested, FencingUnsupported, TaskLost
from victoria.events import subjects
from victoria.events.codec import encode, task_decoder
from victoria.events.contracts import HistoryEvent, LLMResult, TaskCancelled, TaskCancelRequested, TaskEvent
from victoria.runtime import credentials
from victoria.runtime.protocol import (
    REFUSED_EXPECTATION,
    PubAck,
    fencing_supported,
    format_version,
    found_sequence,
)
from victoria.runtime.publish import event_headers, publish, raise_for

log = logging.getLogger(__name__)

CANCEL_RETRIES: Final = 5  # cancel requests one terminal append may find on its way
RESULT_STORE_WAIT: Final = 120.0  # seconds a model's answer is published again until it is stored


def fenced_appends(nc: NATS, url: str, *, allow_unfenced: bool) -> bool:
    """Whether this server fences appends on a wildcard (nats-server 2.11 or later). An older one
    is refused, naming its version, unless ``allow_unfenced`` (``VICTORIA_ALLOW_UNFENCED``) says
    to run without fencing; then appends carry no expectation and False is returned."""
    server = nc.connected_server_version
    version = (server.major, server.minor, server.patch)
    if fencing_supported(version):
        return True
    if not allow_unfenced:
        raise FencingUnsupported(credentials.redact(url), format_version(version))
    log.warning(
        "nats-server %s at %s cannot fence appends; running unfenced as VICTORIA_ALLOW_UNFENCED says: "
        "an attempt that lost its task may still write to its history",
        format_version(version),
        credentials.redact(url),
    )
    return False


async def append_fenced(
    nc: NATS,
    event: HistoryEvent,
    *,
    key: str,
    expect: int | None,
    headers: dict[str, str] | None = None,
) -> PubAck:
    """Append one event of an attempt: refused (``WRONG_LAST_SEQUENCE``) unless the last event of
    the task's own history is at stream sequence ``expect``. The answer is returned as it is;
    ``TaskWriter`` decides what a refusal means.

    A fenced append carries no ``Nats-Msg-Id``: the fence already refuses a repeat, at any distance
    in time, and every header is stored with the event and read by every consumer of it. With
    ``expect`` None (a server that cannot fence) the message id is what is left against repeats."""
    if expect is None:
        all_headers = event_headers(event.task_id, key, headers)
    else:
        all_headers = {
            "Nats-Expected-Last-Subject-Sequence": str(expect),
            "Nats-Expected-Last-Subject-Sequence-Subject": subjects.task_history(event.task_id),
        }
        if headers:
            all_headers.update(headers)
    return await publish(nc, subjects.task_event(event.task_id, event.kind), encode(event), all_headers)


async def append_once(
    nc: NATS,
    subject: str,
    event: TaskEvent,
    *,
    notice: str | None = None,
    headers: dict[str, str] | None = None,
) -> bool:
    """Store ``event`` on ``subject``, which takes one message ever (expected sequence 0): True, or
    False when one is stored already (by whoever). Published again while the stream does not
    answer, for up to ``RESULT_STORE_WAIT`` seconds (safe: the expectation refuses a second copy).
    Once stored, the payload goes to ``notice`` too, for the attempt that waits for it."""
    all_headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
    if headers:
        all_headers.update(headers)
    payload = encode(event)
    answer = await publish(
        nc, subject, payload, all_headers, wait=RESULT_STORE_WAIT, again_after_timeout=True
    )
    if answer.error_code in REFUSED_EXPECTATION or answer.duplicate:
        return False
    raise_for(answer)
    if notice is not None:
        await nc.publish(notice, payload)
    return True


async def append_result(nc: NATS, result: LLMResult, *, headers: dict[str, str] | None = None) -> bool:
    """Store the model's answer to one request: True, or False when an answer to that request is
    stored already (``append_once``; an answer is paid for, so it is published again while the
    stream does not answer)."""
    return await append_once(
        nc,
        subjects.llm_result(result.task_id, result.request_id),
        result,
        notice=subjects.result_stored(result.task_id, result.request_id),
        headers=headers,
    )


class TaskWriter:
    """The appends of one attempt of one task, in order, each fenced on the one before.

    ``expected`` is the stream sequence of the last event of the task's own history this attempt
    knows of: the submission's for a first delivery (from the delivered message itself), the last
    one read for a redelivery. With ``fenced`` False (a server older than 2.11, run on purpose
    without fencing) appends carry no expectation.

    An append runs to its end even when its caller is cancelled (a cancel request stops the
    workflow while it writes), so the writer never loses track of its own last sequence: the next
    append waits for it first.
    """

    def __init__(self, nc: NATS, task_id: str, *, attempt: int, expected: int, fenced: bool = True) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.task_id = task_id
        self.attempt = attempt
        self.expected = expected
        self.fenced = fenced
        self.lost: TaskLost | None = None
        self._filter = subjects.task_history(task_id)
        self._inflight: asyncio.Future[int] | None = None

    def restart_from(self, expected: int) -> None:
        """Fence the next append on ``expected`` (after the attempt read the history again)."""
        self.expected = expected
        self.lost = None

    async def append(self, event: HistoryEvent, *, key: str, headers: dict[str, str] | None = None) -> int:
        """Append ``event`` to the task's history (under its own kind) and return its stream sequence.

        Raises :class:`TaskLost` when another attempt holds the task now, and
        :class:`CancelRequested` when a cancel request was stored since this attempt's last append
        (unless ``event`` is the ``task_cancelled`` that answers it)."""
        previous = self._inflight
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        if self.lost is not None:
            raise self.lost
        work = asyncio.ensure_future(self._append(event, key, headers))
        work.add_done_callback(_retrieve)
        self._inflight = work
        return await asyncio.shield(work)

    async def _append(self, event: HistoryEvent, key: str, headers: dict[str, str] | None) -> int:
        for _ in range(CANCEL_RETRIES):
            fence = self.expected if self.fenced else None
            answer = await append_fenced(self.nc, event, key=key, expect=fence, headers=headers)
            if answer.error is None:
                # (A fenced append carries no message id, so it is never taken for a duplicate.)
                self.expected = answer.seq
                return answer.seq
            if answer.error_code not in REFUSED_EXPECTATION:
                raise_for(answer)
            # Refused: what stands last in the history decides.
            found = await self._found(found_sequence(answer.error))
            if found is not None and isinstance(found[1], TaskCancelRequested):
                seq, reason = found[0], found[1].reason
                self.expected = seq
                if isinstance(event, TaskCancelled):
                    continue  # the answer to that request: append it on top of the request
                raise CancelRequested(self.task_id, reason, seq=seq)
            self.lost = TaskLost(self.task_id, self.attempt, found=_describe(found))
            raise self.lost
        self.lost = TaskLost(self.task_id, self.attempt, found=f"{CANCEL_RETRIES} cancel requests in a row")
        raise self.lost

    async def _found(self, seq: int | None) -> tuple[int, object] | None:
        """The event that stands last in the task's own history: the one the refusal named, or
        (when it named none) the last one on the history's subjects."""
        stream = subjects.task_stream_of(self.task_id)
        try:
            if seq is not None:
                raw = await self.js.get_msg(stream, seq=seq, direct=True)
            else:
                raw = await self.js.get_last_msg(stream, self._filter, direct=True)
        except (NotFoundError, nats.errors.TimeoutError) as exc:
            log.debug("task %s: could not read what fenced its append: %s", self.task_id, exc)
            return None
        if raw.data is None:
            return None
        try:
            decoded: object = task_decoder.decode(raw.data)
        except msgspec.DecodeError:
            decoded = raw.subject
        return raw.seq or 0, decoded


def _describe(found: tuple[int, object] | None) -> str:
    if found is None:
        return "an event it could not read"
    seq, event = found
    tag = type(event).__struct_config__.tag if isinstance(event, msgspec.Struct) else str(event)
    attempt = getattr(event, "attempt", None)
    return f"{tag}{f' of attempt {attempt}' if attempt else ''} at sequence {seq}"


def _retrieve(future: asyncio.Future[int]) -> None:
    """The append's outcome is the writer's state; a caller that was cancelled never asks for it."""
    if not future.cancelled():
        with contextlib.suppress(Exception):
            future.exception()
