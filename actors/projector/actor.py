"""The projector: folds task events into PostgreSQL tables that can be queried, exactly once.

It reads every event of every task from one durable consumer per task stream, one event at a time
and in stream order (``max_ack_pending`` 1), and applies each in a transaction that also stores the
stream sequence it reached (``victoria.projector_offsets``): an event redelivered after a crash
finds its sequence already reached and changes nothing, and after being down the projector
catches up from where it stopped. While PostgreSQL is away it waits, retrying with backoff, and
holds its place in the streams (in-progress acks keep the event); nothing is skipped.

It also keeps each session's memory there: when a task of a ``session_id`` completes, its goal and
answer go into ``victoria.session_memory``, in the same transaction. It runs only with a database
(``victoria up`` starts it when ``VICTORIA_POSTGRES_DSN`` is set; without one, Victoria keeps the
sessions' memory in a key-value bucket, ``victoria.runtime.memory``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ClassVar, Final, assert_never

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from victoria.errors import ConfigError
from victoria.events import contracts, subjects
from victoria.runtime import db, reads
from victoria.runtime.base import Actor
from victoria.runtime.config import Config
from victoria.runtime.consumer import WorkConsumer
from victoria.runtime.protocol import parse_ack_subject

log = logging.getLogger(__name__)

RETRY_FIRST: Final = 0.5  # seconds before trying PostgreSQL again
RETRY_MAX: Final = 10.0  # seconds between tries, at most


def without_nul(data: bytes) -> bytes:
    """The event's JSON with every U+0000 in its strings replaced by U+FFFD."""

    def clean(value: object) -> object:
        if isinstance(value, str):
            return value.replace("\x00", "\ufffd")
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        return value

    try:
        return msgspec.json.encode(clean(msgspec.json.decode(data)))
    except msgspec.DecodeError:
        return data


class Projector(Actor):
    name: ClassVar[str] = "projector"

    def __init__(self, nc: NATS, config: Config, *, restarts: int = 0, fenced: bool = True) -> None:
        super().__init__(nc, config, restarts=restarts, fenced=fenced)
        self.consumers: list[WorkConsumer] = []
        self.pool: asyncpg.Pool | None = None
        self.migrated = asyncio.Event()
        self.projected = 0
        self._db_down: str | None = None

    async def on_start(self) -> None:
        if not self.config.postgres_dsn:
            raise ConfigError("VICTORIA_POSTGRES_DSN", "the projector needs a database (or DATABASE_URL)")
        self.pool = await db.create_pool(
            self.config.postgres_dsn,
            command_timeout=self.config.db_command_timeout,
            connect_timeout=self.config.db_connect_timeout,
        )
        self.spawn(self._migrate(), critical=True)
        self.consumers = await self.consume_tasks(
            durable="projector",
            kind=None,
            concurrency=subjects.TASK_SHARDS,  # one event at a time in each stream: in order
            handler=self._handle,
            max_ack_pending=1,
        )

    async def on_stop(self) -> None:
        await asyncio.gather(*(consumer.stop() for consumer in self.consumers))
        if self.pool is not None:
            await self.pool.close()

    def health(self) -> tuple[str, str]:
        if self._db_down is not None:
            return "degraded", f"PostgreSQL: {self._db_down}; projection waits"
        return "up", ""

    async def _migrate(self) -> None:
        """Our schema, applied as soon as the database answers (it may be down at start)."""
        pool = self.pool
        assert pool is not None
        await self._retrying("migrating", lambda: db.migrate(pool))
        self.migrated.set()

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[object]]) -> None:
        """Run ``attempt`` until PostgreSQL takes it; a ``DataError`` (no retry can mend it) is raised."""
        delay = RETRY_FIRST
        while True:
            try:
                await attempt()
            except asyncpg.DataError:
                raise
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if self._db_down is None:
                    log.warning("PostgreSQL %s failed (%s); retrying until it answers", what, error)
                self._db_down = error
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            else:
                if self._db_down is not None:
                    log.info("PostgreSQL answers again; %s goes on", what)
                    self._db_down = None
                return

    async def _handle(self, msg: Msg) -> None:
        # PostgreSQL text and jsonb cannot hold U+0000, which JSON (and so an event) can.
        data = without_nul(msg.data) if b"\\u0000" in msg.data else msg.data
        event = reads.decode_task_event(data, msg.subject)
        ack = parse_ack_subject(msg.reply)
        if event is None or ack is None:
            await msg.ack()  # nothing to project (reads.decode_task_event logged it)
            return
        await self.migrated.wait()
        try:
            await self._retrying(
                f"projecting {ack.stream} {ack.stream_seq}",
                lambda: self._project(ack.stream, ack.stream_seq, event),
            )
        except asyncpg.DataError as exc:
            # The database refuses this event's values, now and on every retry: it stays in the
            # stream (the truth) and is left out of the history rather than stop the projection.
            log.error("%s %d not projected: PostgreSQL refuses its data: %s", ack.stream, ack.stream_seq, exc)
        else:
            self.projected += 1
        await msg.ack()

    async def _project(self, stream: str, seq: int, event: contracts.AnyTaskEvent) -> None:
        assert self.pool is not None
        async with self.pool.acquire() as conn, conn.transaction():
            reached = await conn.fetchval(
                "SELECT seq FROM victoria.projector_offsets WHERE stream = $1 FOR UPDATE", stream
            )
            if reached is not None and reached >= seq:
                return  # projected before a crash: once is enough
            await _apply(conn, seq, event)
            await conn.execute(
                "INSERT INTO victoria.projector_offsets (stream, seq) VALUES ($1, $2) "
                "ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq",
                stream,
                seq,
            )


async def _apply(conn: asyncpg.Connection, seq: int, event: contracts.AnyTaskEvent) -> None:
    """One event into the tables, as the fold reads it (``victoria.events.fold``): a cancel request
    decides the status; the terminal event closes the task."""
    task_id, at = event.task_id, event.ts
    match event:
        case contracts.TaskSubmitted():
            await conn.execute(
                "INSERT INTO victoria.tasks (task_id, status, goal, task_type, project, expert, session_id, "
                "correlation_id, created_at, updated_at) VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $8) "
                "ON CONFLICT (task_id) DO NOTHING",
                task_id,
                event.goal,
                event.task_type,
                event.project,
                event.expert,
                event.session_id,
                event.correlation_id,
                at,
            )
        case contracts.TaskStarted(attempt=attempt, instance=instance):
            await _started(conn, task_id, attempt, instance, at)
        case contracts.TaskStage(stage=stage, step=step, detail=detail):
            await _stage(conn, task_id, seq, stage, step, detail, at)
        case contracts.LLMRequested(attempt=attempt, instance=instance, stage=stage, step=step):
            if attempt is not None:
                await _started(conn, task_id, attempt, instance, at)
            if stage is not None:
                await _stage(conn, task_id, seq, stage, step, "", at)
        case contracts.LLMResult():
            await conn.execute(
                "INSERT INTO victoria.model_calls (task_id, request_id, model, ok, error_kind, duration_s, "
                "time_to_first_token_s, prompt_tokens, completion_tokens, answered_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
                task_id,
                event.request_id,
                event.model or "unknown",
                event.ok,
                event.error_kind,
                event.duration_s,
                event.time_to_first_token_s,
                event.prompt_tokens,
                event.completion_tokens,
                at,
            )
        case contracts.TaskCancelRequested(reason=reason):
            await conn.execute(
                "UPDATE victoria.tasks SET status = 'cancelled', stage = 'cancelled', error = $2, updated_at = $3 "
                "WHERE task_id = $1 AND status IN ('queued', 'running')",
                task_id,
                reason,
                at,
            )
        case contracts.TaskCompleted() | contracts.TaskFailed() | contracts.TaskCancelled():
            status, stage = {
                contracts.TaskCompleted: ("completed", "done"),
                contracts.TaskFailed: ("failed", "failed"),
                contracts.TaskCancelled: ("cancelled", "cancelled"),
            }[type(event)]
            output = event.output if isinstance(event, contracts.TaskCompleted) else None
            error = event.error if isinstance(event, contracts.TaskFailed) else getattr(event, "reason", None)
            kind = event.error_kind if isinstance(event, contracts.TaskFailed) else None
            ended = await conn.fetchval(
                "UPDATE victoria.tasks SET "
                "status = CASE WHEN status = 'cancelled' THEN status ELSE $2 END, "
                "stage = CASE WHEN status = 'cancelled' THEN stage ELSE $3 END, "
                "output = $4, error = COALESCE($5, error), error_kind = $6, "
                "attempts = GREATEST(attempts, $7), ended_at = $8, updated_at = $8 "
                "WHERE task_id = $1 AND ended_at IS NULL RETURNING status",
                task_id,
                status,
                stage,
                output,
                error,
                kind,
                event.attempts,
                at,
            )
            if ended == "completed" and output is not None:
                await conn.execute(
                    "INSERT INTO victoria.session_memory (task_id, session_id, goal, answer, at) "
                    "SELECT task_id, session_id, goal, $2, $3 FROM victoria.tasks "
                    "WHERE task_id = $1 AND session_id IS NOT NULL ON CONFLICT (task_id) DO NOTHING",
                    task_id,
                    output,
                    at,
                )
        case (
            contracts.ToolResult()
            | contracts.ToolIntent()
            | contracts.ToolClaim()
            | contracts.ToolOutcome()
            | contracts.ApprovalRequested()
            | contracts.ApprovalDecided()
        ):
            pass  # a tool's call has no table of its own
        case _:
            assert_never(event)


async def _started(conn: asyncpg.Connection, task_id: str, attempt: int, instance: str, at: object) -> None:
    await conn.execute(
        "INSERT INTO victoria.task_attempts (task_id, attempt, instance, started_at) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT DO NOTHING",
        task_id,
        attempt,
        instance,
        at,
    )
    await conn.execute(
        "UPDATE victoria.tasks SET status = CASE WHEN status = 'queued' THEN 'running' ELSE status END, "
        "attempts = GREATEST(attempts, $2), updated_at = $3 WHERE task_id = $1 AND ended_at IS NULL",
        task_id,
        attempt,
        at,
    )


async def _stage(
    conn: asyncpg.Connection, task_id: str, seq: int, stage: str, step: int | None, detail: str, at: object
) -> None:
    await conn.execute(
        "INSERT INTO victoria.task_stages (task_id, seq, stage, step, detail, entered_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        task_id,
        seq,
        stage,
        step,
        detail,
        at,
    )
    await conn.execute(
        "UPDATE victoria.tasks SET stage = $2, status = CASE WHEN status = 'queued' THEN 'running' ELSE status END, "
        "updated_at = $3 WHERE task_id = $1 AND status IN ('queued', 'running')",
        task_id,
        stage,
        at,
    )
