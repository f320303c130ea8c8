"""Setting up the streams and buckets: what each holds and for how long, made where missing.

Only the NATS user ``supervisor`` may create or change a stream (``nats-users.conf``); every other
process only checks that they are there (``wait_for_streams``), and waits while JetStream does not
answer yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final

from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, BadRequestError, BucketNotFoundError, NotFoundError

from victoria.errors import BrokerUnavailable, ReplicasUnavailable, StreamMissing
from victoria.events import subjects
from victoria.runtime import images, memory
from victoria.runtime.config import DEFAULT_DEDUP_WINDOW
from victoria.runtime.connection import BROKER_AWAY

log = logging.getLogger(__name__)

DAY: Final = 86_400.0  # seconds
STREAMS_WAIT: Final = 30.0  # seconds a starting process waits for JetStream to answer
PLACEMENT_ERRORS: Final = frozenset({10074, 10023, 10005})
"""JetStream's answers when a stream's replicas cannot be placed: replicas > 1 on a server without
a cluster; insufficient resources; no suitable peers."""
IDEMPOTENCY_TTL: Final = 7 * DAY  # how long POST /run remembers an Idempotency-Key
MODELS_TTL: Final = DAY  # a model server's shared state untouched this long is forgotten
_FILE: Final = jsapi.StorageType.FILE
_MEMORY: Final = jsapi.StorageType.MEMORY


def _per_subject(
    name: str, subject: str, storage: jsapi.StorageType, *, max_age: float, keep: int
) -> jsapi.StreamConfig:
    """A stream that keeps the last ``keep`` messages of each subject, read by direct gets."""
    return jsapi.StreamConfig(
        name=name,
        subjects=[subject],
        storage=storage,
        max_age=max_age,
        max_msgs_per_subject=keep,
        allow_direct=True,
    )


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
        _per_subject(subjects.SERVICE_STREAM, subjects.ALL_SERVICE_EVENTS, _FILE, max_age=7 * DAY, keep=200),
        _per_subject(subjects.HEARTBEAT_STREAM, subjects.ALL_HEARTBEATS, _MEMORY, max_age=3600.0, keep=1),
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
            subjects.IMAGES_STREAM,
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
    await ensure_key_value(
        js,
        subjects.MCP_BUCKET,
        replicas=replicas,
        ttl=MODELS_TTL,
        description="MCP servers: each instance of Veronica's, its state and its tools",
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
            subjects.bucket_stream(bucket),
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
