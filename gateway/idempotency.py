"""``Idempotency-Key`` for POST /run: a repeat gets the first answer, byte for byte.

The key (hashed) maps to the task id and, once the first request has answered, its status code
and body, in a JetStream key-value bucket on disk. It outlives the stream's duplicate window and
restarts of the whole system (seven days by default, ``victoria.runtime.streams.IDEMPOTENCY_TTL``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from victoria.events import subjects


class IdempotencyRecord(msgspec.Struct, kw_only=True, frozen=True):
    task_id: str
    code: int | None = None
    body: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    new: bool
    record: IdempotencyRecord


_decoder = msgspec.json.Decoder(IdempotencyRecord)


def bucket_key(header: str) -> str:
    return hashlib.sha256(header.encode("utf-8")).hexdigest()


class IdempotencyStore:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(subjects.IDEMPOTENCY_BUCKET)
        return self._kv

    async def claim(self, header: str, task_id: str) -> Claim:
        """Take the key for ``task_id``, or learn which task took it first."""
        kv = await self._bucket()
        key = bucket_key(header)
        mine = IdempotencyRecord(task_id=task_id)
        try:
            await kv.create(key, msgspec.json.encode(mine))
            return Claim(new=True, record=mine)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:  # expired between the two calls: take it again
            await kv.put(key, msgspec.json.encode(mine))
            return Claim(new=True, record=mine)
        return Claim(new=False, record=_decoder.decode(entry.value or b"{}"))

    async def remember(self, header: str, task_id: str, code: int, body: bytes) -> None:
        kv = await self._bucket()
        record = IdempotencyRecord(task_id=task_id, code=code, body=body.decode("utf-8"))
        await kv.put(bucket_key(header), msgspec.json.encode(record))
