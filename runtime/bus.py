"""Transport glue: connecting to NATS, declaring streams, appending and reading task events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import (
    APIError,
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from victoria.errors import (
    BrokerRefused,
    BrokerUnavailable,
    FencingUnsupported,
    ReplicasUnavailable,
    StreamMissing,
)
from victoria.events import subjects
from victoria.events.codec import encode, task_decoder
from victoria.events.contracts import AnyTaskEvent, DeadLetter, HistoryEvent, LLMResult
from victoria.runtime import credentials, images, memory
from victoria.runtime.config import DEFAULT_DEDUP_WINDOW, Config
from victoria.runtime.protocol import (
    REFUSED_EXPECTATION,
    PubAck,
    decode_pub_ack,
    fencing_supported,
    format_version,
    parse_ack_subject,
)

log = logging.getLogger(__name__)

DAY: Final = 86_400.0  # seconds
PUBLISH_TIMEOUT: Final = 5.0  # seconds, one JetStream publish
BROKER_AWAY: Final = (
    TimeoutError,
    nats.errors.NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    nats.errors.ConnectionClosedError,
)
"""What a request meets while NATS is away or a stream elects a leader (a server of the cluster
went away): worth asking again, or handing the message back, not a bug."""
STREAMS_WAIT: Final = 30.0  # seconds a starting process waits for JetStream to answer
STREAM_AWAY_WAIT: Final = 15.0  # seconds a publish waits for a stream that has no leader
RESULT_STORE_WAIT: Final = 120.0  # seconds a model's answer is published again until it is stored
JETSTREAM_UNAVAILABLE: Final = 10008  # "JetStream system temporarily unavailable"
REPLAY_FETCH_TIMEOUT: Final = 5.0  # seconds, one batch of a task's history
PLACEMENT_ERRORS: Final = frozenset({10074, 10023, 10005})
"""JetStream's answers when a stream's replicas cannot be placed: replicas > 1 on a server without
a cluster; insufficient resources; no suitable peers."""
IDEMPOTENCY_TTL: Final = 7 * DAY  # how long POST /run remembers an Idempotency-Key
MODELS_TTL: Final = DAY  # a model server's shared state untouched this long is forgotten


def stream_configs(
    *, dedup_window: float = DEFAULT_DEDUP_WINDOW, replicas: int = 1
) -> list[jsapi.StreamConfig]:
    """Every stream the system uses. Task and service events are on disk; heartbeats in memory.

    ``dedup_window`` (seconds) is the task streams' ``duplicate_window``: how long an append's
    ``Nats-Msg-Id`` is remembered. Fencing, not this window, keeps a lost attempt from writing.
    ``replicas`` (``VICTORIA_REPLICAS``) is every stream's number of copies, on as many servers."""
    configs = [
        *(
            jsapi.StreamConfig(
                name=subjects.task_stream(shard),
                subjects=[subjects.shard_events(shard)],
                storage=jsapi.StorageType.FILE,
                retention=jsapi.RetentionPolicy.LIMITS,
                max_age=30 * DAY,
                max_bytes=2 * 1024**3,
                discard=jsapi.DiscardPolicy.OLD,
                duplicate_window=dedup_window,
                allow_direct=True,
            )
            for shard in range(subjects.TASK_SHARDS)
        ),
        jsapi.StreamConfig(
            name=subjects.SERVICE_STREAM,
            subjects=[subjects.ALL_SERVICE_EVENTS],
            storage=jsapi.StorageType.FILE,
            max_age=7 * DAY,
            max_msgs_per_subject=200,
            allow_direct=True,
        ),
        jsapi.StreamConfig(
            name=subjects.HEARTBEAT_STREAM,
            subjects=[subjects.ALL_HEARTBEATS],
            storage=jsapi.StorageType.MEMORY,
            max_age=3600.0,
            max_msgs_per_subject=1,
            allow_direct=True,
        ),
        jsapi.StreamConfig(
            # Logs are many and cheap: memory storage, so they never wait for an fsync.
            name=subjects.LOG_STREAM,
            subjects=[subjects.ALL_LOGS],
            storage=jsapi.StorageType.MEMORY,
            max_age=DAY,
            max_bytes=64 * 1024**2,
            discard=jsapi.DiscardPolicy.OLD,
        ),
        jsapi.StreamConfig(
            name=subjects.DLQ_STREAM,
            subjects=[subjects.ALL_DEAD_LETTERS],
            storage=jsapi.StorageType.FILE,
            max_age=30 * DAY,
            max_bytes=512 * 1024**2,
        ),
    ]
    for config in configs:
        config.num_replicas = replicas
    return configs


async def ensure_streams(
    js: JetStreamContext, *, dedup_window: float = DEFAULT_DEDUP_WINDOW, replicas: int = 1
) -> None:
    """Create every stream that is missing. Safe to call from every process at every start.

    An existing stream is left as it is (its operator may have tuned it); only its subjects are
    checked, since routing depends on them.

    Only the NATS user ``supervisor`` may create or change a stream (nats.conf): the server drops
    anyone else's request, which then times out, and ``StreamMissing`` names the stream and what to
    do. With every stream in place, this only reads. ``replicas`` applies to what is created
    (streams and buckets); ``ReplicasUnavailable`` when the servers are too few for it.
    """
    for config in stream_configs(dedup_window=dedup_window, replicas=replicas):
        name = config.name or ""
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await creating(name, "is missing", js.add_stream(config=config), replicas=replicas)
            continue
        if sorted(info.config.subjects or []) != sorted(config.subjects or []):
            log.warning("stream %s has subjects %s; updating", name, info.config.subjects)
            await creating(name, f"has the subjects {info.config.subjects}", js.update_stream(config=config))
    try:
        await js.object_store(subjects.IMAGES_BUCKET)
    except (NotFoundError, BucketNotFoundError):
        await creating(
            f"OBJ_{subjects.IMAGES_BUCKET}",
            "is missing",
            js.create_object_store(
                subjects.IMAGES_BUCKET,
                config=jsapi.ObjectStoreConfig(
                    description="images sent with goals, by SHA-256",
                    ttl=images.TTL,
                    storage=jsapi.StorageType.FILE,
                    replicas=replicas,
                ),
            ),
            replicas=replicas,
        )
    await ensure_key_value(
        js,
        subjects.IDEMPOTENCY_BUCKET,
        replicas=replicas,
        ttl=IDEMPOTENCY_TTL,
        description="Idempotency-Key of POST /run -> the first answer",
    )
    await ensure_key_value(
        js,
        subjects.SESSIONS_BUCKET,
        replicas=replicas,
        ttl=memory.TTL,
        description="session id -> its last exchanges (goal, answer)",
    )
    await ensure_key_value(
        js,
        subjects.MODELS_BUCKET,
        replicas=replicas,
        ttl=MODELS_TTL,
        description="model servers: what each runs now, what waits for it, what it serves",
    )


async def wait_for_streams(
    js: JetStreamContext,
    *,
    dedup_window: float = DEFAULT_DEDUP_WINDOW,
    replicas: int = 1,
    timeout: float = STREAMS_WAIT,
) -> None:
    """``ensure_streams``, asked again while the servers do not answer (a cluster electing its
    leaders after a server went away), until ``timeout`` seconds have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await ensure_streams(js, dedup_window=dedup_window, replicas=replicas)
            return
        except BROKER_AWAY as exc:
            if loop.time() > deadline:
                raise BrokerUnavailable(f"JetStream did not answer within {timeout:g}s: {exc!r}") from None
            log.info("JetStream does not answer yet (%r); asking again", exc)
            await asyncio.sleep(0.5)


async def ensure_key_value(
    js: JetStreamContext, bucket: str, *, ttl: float, description: str, replicas: int = 1
) -> None:
    """A key-value bucket on disk, one value a key, made if missing."""
    try:
        await js.key_value(bucket)
    except (NotFoundError, BucketNotFoundError):
        await creating(
            f"KV_{bucket}",
            "is missing",
            js.create_key_value(
                bucket=bucket,
                history=1,
                ttl=ttl,
                storage=jsapi.StorageType.FILE,
                description=description,
                replicas=replicas,
            ),
            replicas=replicas,
        )


async def creating(stream: str, problem: str, change: Awaitable[object], *, replicas: int = 1) -> None:
    """Create or change a stream; ``StreamMissing`` when the server does not answer (NATS drops a
    request its user may not make, and says so only in the connection's error callback);
    ``ReplicasUnavailable`` when the servers are too few for ``replicas``."""
    try:
        await change
    except TimeoutError:
        raise StreamMissing(stream, problem) from None
    except APIError as exc:
        if exc.err_code in PLACEMENT_ERRORS:
            raise ReplicasUnavailable(stream, replicas, exc.description or str(exc)) from None
        if not isinstance(exc, BadRequestError):
            raise
        # Another process made it in the meantime (10058: the name is in use).
        log.debug("stream %s: %s", stream, exc)


async def connect(
    url: str,
    *,
    name: str,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    connect_timeout: float = 5.0,
    user: str | None = None,
    password: str | None = None,
    creds_file: Path | None = None,
) -> NATS:
    """Connect with endless reconnects: a NATS restart is something to ride out, not to die of.

    ``user`` and ``password`` (or a NATS ``creds_file``) authenticate; credentials in ``url``
    win over them. A server without authorization ignores them. Log lines show the URL without
    its password. A connection as a user takes its replies on ``_INBOX.<user>.>``, the only
    inboxes nats.conf lets that user subscribe to: nobody reads another's replies."""
    shown = credentials.redact(url)
    if credentials.has_credentials(url):
        user = password = creds_file = None
    inbox_prefix = credentials.inbox_prefix(user or credentials.user_in(url))

    client: list[NATS] = []
    loop = asyncio.get_running_loop()
    refused: asyncio.Future[Exception] = loop.create_future()

    async def error_cb(exc: Exception) -> None:
        if not client and _authorization_violation(exc):
            # At the first connect nats-py would try again forever: no waiting mends this.
            if not refused.done():
                refused.set_result(exc)
            return
        log.warning("nats %s: %s", type(exc).__name__, exc)

    async def disconnected_cb() -> None:
        if not client or client[0].is_closed:  # our own close or drain, or a first connect given up
            log.debug("nats connection to %s closed", shown)
        else:
            log.warning("nats disconnected from %s", shown)

    async def reconnected_cb() -> None:
        log.info("nats reconnected to %s", shown)
        if on_reconnect is not None:
            await on_reconnect()

    deadline = loop.time() + connect_timeout
    last: BaseException | None = None
    while loop.time() < deadline:
        nc = NATS()
        options: dict[str, Any] = {
            "servers": credentials.servers(url),
            "name": name,
            "connect_timeout": min(2.0, connect_timeout),
            "reconnect_time_wait": 0.5,
            "max_reconnect_attempts": -1,
            "allow_reconnect": True,
            "ping_interval": 5,
            "max_outstanding_pings": 3,
            "error_cb": error_cb,
            "disconnected_cb": disconnected_cb,
            "reconnected_cb": reconnected_cb,
            "user": user,
            "password": password,
            "user_credentials": str(creds_file) if creds_file is not None else None,
            "inbox_prefix": inbox_prefix,
        }
        attempt = asyncio.ensure_future(nc.connect(**options))
        waiting: set[asyncio.Future[Any]] = {attempt, refused}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
            client.append(nc)
            return nc
        if attempt.done():
            last = attempt.exception()
        else:
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
        with contextlib.suppress(Exception):
            await nc.close()
        if refused.done():
            who = f"the user {user!r}" if user else f"the creds {creds_file}" if creds_file else "no user"
            raise BrokerRefused(
                f"NATS at {shown} refused {who}: authorization violation (wrong or missing credentials: "
                "VICTORIA_NATS_USER and VICTORIA_NATS_PASSWORD, VICTORIA_NATS_CREDS, or the data dir's "
                "nats-credentials.json)"
            )
        await asyncio.sleep(0.2)
    raise BrokerUnavailable(f"cannot connect to NATS at {shown}: {last}")


def _authorization_violation(exc: Exception) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


def resolve_nats_url(config: Config, explicit: str | None = None) -> str:
    """``--nats-url`` first, then ``NATS_URL``, then the URL that ``victoria up`` recorded."""
    if explicit:
        return explicit
    if config.nats_url:
        return config.nats_url
    path: Path = config.nats_url_file
    try:
        url = path.read_text(encoding="utf-8").strip()
    except OSError:
        raise BrokerUnavailable(
            f"no NATS URL: pass --nats-url, set NATS_URL, or start `victoria up` (it records {path})"
        ) from None
    if not url:
        raise BrokerUnavailable(f"{path} is empty")
    return url


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
    wait: float = STREAM_AWAY_WAIT,
    again_after_timeout: bool = False,
) -> PubAck:
    """Publish to a stream and wait until it is stored; JetStream's answer, refusals included.

    What ``js.publish`` does, through nats-py's public request API, with the acknowledgement
    decoded by msgspec (``protocol.decode_pub_ack``) instead of ``json.loads``, and without raising
    for a refusal: a fenced writer reads what refused it. While no stream answers it publishes
    again, for up to ``wait`` seconds; after a timeout only when ``again_after_timeout`` (the
    message may have been stored: only a publish that cannot store a second copy may say so)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
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
            if not again_after_timeout:
                raise
            log.warning("%s: not stored yet (%r); publishing it again", subject, exc)
        # Nothing was stored, or (after a timeout) perhaps it was: the stream has no leader now (a
        # server of the cluster went away and its replicas elect another, which takes seconds).
        if loop.time() + delay > deadline:
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
    ``victoria.runtime.fence`` decides what a refusal means.

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


async def append_result(nc: NATS, result: LLMResult, *, headers: dict[str, str] | None = None) -> bool:
    """Store the model's answer to one request: True, or False when an answer to that request is
    stored already (each request's result subject takes one message, ever: expected sequence 0).

    An answer is paid for: while the stream does not answer (a server of the cluster went away and
    the stream elects a leader), it is published again, for up to ``RESULT_STORE_WAIT`` seconds.
    Publishing again is safe: the expected sequence refuses a second copy, whoever stored the first.
    """
    all_headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
    if headers:
        all_headers.update(headers)
    payload = encode(result)
    subject = subjects.llm_result(result.task_id, result.request_id)
    answer = await publish(
        nc, subject, payload, all_headers, wait=RESULT_STORE_WAIT, again_after_timeout=True
    )
    if answer.error_code in REFUSED_EXPECTATION or answer.duplicate:
        return False
    raise_for(answer)
    # Stored: now tell the attempt that waits (an answer it acts on is always in the log).
    await nc.publish(subjects.result_stored(result.task_id, result.request_id), payload)
    return True


async def read_task_events(js: JetStreamContext, task_id: str) -> list[tuple[int, AnyTaskEvent]]:
    """Every stored event of one task with its stream sequence, oldest first.

    Uses a short-lived pull consumer: its creation reports how many messages match, so an unknown
    task answers at once instead of after a timeout.
    """
    config = jsapi.ConsumerConfig(
        filter_subject=subjects.task_events(task_id),
        deliver_policy=jsapi.DeliverPolicy.ALL,
        ack_policy=jsapi.AckPolicy.NONE,
        inactive_threshold=30.0,
        mem_storage=True,
        num_replicas=1,
    )
    stream = subjects.task_stream_of(task_id)
    info = await js.add_consumer(stream, config=config)
    pending = info.num_pending or 0
    out: list[tuple[int, AnyTaskEvent]] = []
    try:
        if pending == 0:
            return out
        sub = await js.pull_subscribe_bind(stream=stream, name=info.name)
        try:
            while len(out) < pending:
                msgs = await sub.fetch(batch=min(256, pending - len(out)), timeout=REPLAY_FETCH_TIMEOUT)
                for msg in msgs:
                    event = decode_task_event(msg.data, msg.subject)
                    if event is not None:
                        out.append((stream_sequence(msg), event))
                    else:
                        pending -= 1
        finally:
            await sub.unsubscribe()
    finally:
        with contextlib.suppress(NotFoundError, TimeoutError, nats.errors.Error):
            await js.delete_consumer(stream, info.name or "")
    return out


def stream_sequence(msg: Msg) -> int:
    """The stream sequence of a message a consumer delivered, read from its reply subject without
    building the rest of nats-py's ``Metadata`` (a gateway reads it for every event it follows)."""
    ack = parse_ack_subject(msg.reply)
    if ack is not None:
        return ack.stream_seq
    return msg.metadata.sequence.stream  # nats' own error for a message no consumer delivered


def delivery_count(msg: Msg) -> int:
    """How many times the consumer has delivered this message (1 for a first delivery)."""
    ack = parse_ack_subject(msg.reply)
    if ack is not None:
        return ack.delivered
    return msg.metadata.num_delivered or 1


def decode_task_event(data: bytes, subject: str) -> AnyTaskEvent | None:
    try:
        event: AnyTaskEvent = task_decoder.decode(data)
    except Exception as exc:  # msgspec.DecodeError and friends; a bad message must not be fatal
        log.warning("undecodable task event on %s: %s", subject, exc)
        return None
    return event


async def last_task_event(js: JetStreamContext, task_id: str, kind: subjects.TaskKind) -> Any | None:
    """The newest event of one kind for a task, or None (one direct get, no consumer)."""
    try:
        raw = await js.get_last_msg(
            subjects.task_stream_of(task_id), subjects.task_event(task_id, kind), direct=True
        )
    except NotFoundError:
        return None
    if raw.data is None:
        return None
    event: AnyTaskEvent | None = decode_task_event(raw.data, raw.subject or "")
    return event


async def last_llm_result(js: JetStreamContext, task_id: str, request_id: str) -> LLMResult | None:
    """The stored answer to one model request of a task, or None (one direct get)."""
    try:
        raw = await js.get_last_msg(
            subjects.task_stream_of(task_id), subjects.llm_result(task_id, request_id), direct=True
        )
    except NotFoundError:
        return None
    event = decode_task_event(raw.data or b"", raw.subject or "")
    return event if isinstance(event, LLMResult) else None


async def last_history_event(js: JetStreamContext, task_id: str) -> tuple[int, AnyTaskEvent | None] | None:
    """The last event of the task's own history and its stream sequence, or None (one direct get;
    the event is None when it cannot be decoded)."""
    try:
        raw = await js.get_last_msg(
            subjects.task_stream_of(task_id), subjects.task_history(task_id), direct=True
        )
    except NotFoundError:
        return None
    return raw.seq or 0, decode_task_event(raw.data or b"", raw.subject or "")


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
