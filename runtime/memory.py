"""Memory across a session: the last exchanges (goal and answer) of a ``session_id``, which go into
the next task's prompts like ``chat_history`` (which, when a client sends it, wins).

Kept in PostgreSQL (``victoria.session_memory``) when it is configured, else in the JetStream
key-value bucket ``victoria_sessions``, so that it works without a database too. An exchange is
written when a task of a session completes (by the projector with a database, by Victoria without);
the gateway reads them when the next task of that session is submitted, with a short deadline (a
slow database costs a task its memory, never its start).
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from victoria.events import subjects
from victoria.events.contracts import ChatTurn

if TYPE_CHECKING:  # asyncpg is loaded only where a database is configured
    import asyncpg

KEPT: Final = 10  # exchanges of a session kept (and read)
TTL: Final = 30 * 86_400.0  # seconds a session's memory lives in the key-value bucket
READ_TIMEOUT: Final = 1.0  # seconds the gateway waits for a session's memory
CAS_TRIES: Final = 10  # writes of one session racing each other


class Exchange(msgspec.Struct, frozen=True, gc=False):
    task_id: str
    goal: str
    answer: str
    at: datetime


_exchanges: Final = msgspec.json.Decoder(list[Exchange])


def session_key(session_id: str) -> str:
    """A key-value key for any session id (keys take only a few characters)."""
    return base64.urlsafe_b64encode(session_id.encode()).decode().rstrip("=") or "_"


def turns(exchanges: list[Exchange]) -> list[ChatTurn]:
    return [ChatTurn(user=e.goal, assistant=e.answer) for e in exchanges]


class KvMemory:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.SESSIONS_BUCKET)
        return self._kv

    async def recent(self, session_id: str) -> list[ChatTurn]:
        kv = await self._bucket()
        try:
            entry = await kv.get(session_key(session_id))
        except KeyNotFoundError:
            return []
        return turns(_exchanges.decode(entry.value or b"[]"))

    async def remember(self, session_id: str, exchange: Exchange) -> None:
        """Add one exchange (once: a task already there is not added again)."""
        kv = await self._bucket()
        key = session_key(session_id)
        for _ in range(CAS_TRIES):
            try:
                entry = await kv.get(key)
                kept, revision = _exchanges.decode(entry.value or b"[]"), entry.revision
            except KeyNotFoundError:
                kept, revision = [], None
            if any(e.task_id == exchange.task_id for e in kept):
                return
            value = msgspec.json.encode(sorted([*kept, exchange], key=lambda e: e.at)[-KEPT:])
            try:
                if revision is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another write of this session came first: read it and try again
        raise RuntimeError(f"session {session_id!r}: {CAS_TRIES} writes in a row raced this one")


class PgMemory:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def recent(self, session_id: str) -> list[ChatTurn]:
        rows = await self.pool.fetch(
            "SELECT task_id, goal, answer, at FROM victoria.session_memory "
            "WHERE session_id = $1 ORDER BY at DESC LIMIT $2",
            session_id,
            KEPT,
        )
        return turns([Exchange(r["task_id"], r["goal"], r["answer"], r["at"]) for r in reversed(rows)])
