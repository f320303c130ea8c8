"""The scheduler's decisions, shared by every runner instance through the bucket ``victoria_models``.

Keys (``<server>`` is ``ModelServer.key``, the URL's host, port and path as one token):

- ``server.<server>``: ``ModelServerShare``, the models the server runs now and those being
  drained. Written only with compare-and-set on the revision this instance last saw: of two
  instances that want to switch a server at once, one wins and the other adopts its decision.
- ``demand.<server>.<instance>``: ``ModelDemand``, which models this instance has calls running
  for (or just ended) and waiting for. Written when that changes and every ``REFRESH`` seconds while
  there is any, so a dead instance's record goes stale and stops counting.
- ``info.<server>.<instance>``: ``ModelServerInfo``, written by ``servers.Registry``.

Every instance watches the bucket and applies what the others write. A switch is decided by the
instance whose call waits, once the others' records show no work for the model it replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from victoria.actors.llm_runner.scheduler import Scheduler, Slot
from victoria.events import subjects
from victoria.events.contracts import ModelDemand, ModelServerShare

log = logging.getLogger(__name__)

REFRESH: Final = 5.0  # seconds between rewrites of a demand record that has work in it
MIN_GAP: Final = 0.05  # seconds between two writes of this instance's demand
_share: Final = msgspec.json.Decoder(ModelServerShare)
_demand: Final = msgspec.json.Decoder(ModelDemand)
_encode: Final = msgspec.json.Encoder()


class Share:
    def __init__(self, js: JetStreamContext, scheduler: Scheduler, instance: str) -> None:
        self.js = js
        self.scheduler = scheduler
        self.instance = instance
        self.kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._watcher: KeyValue.KeyWatcher | None = None
        self._published: dict[str, tuple[dict[str, list[bool]], float]] = {}

    async def start(self) -> None:
        self.kv = await self.js.key_value(subjects.MODELS_BUCKET)
        self._watcher = await self.kv.watchall()
        # What is there now, before any call is placed.
        with contextlib.suppress(nats.errors.TimeoutError):
            while (entry := await self._watcher.updates(timeout=2.0)) is not None:  # type: ignore[no-untyped-call]
                self._take(entry)
        self.scheduler.propose = self.propose
        self._tasks = [
            asyncio.create_task(self._watch(), name="models-watch"),
            asyncio.create_task(self._publish(), name="models-demand"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self.kv is not None:  # say at once that this instance has no work any more
            for key in list(self.scheduler.slots):
                with contextlib.suppress(Exception):
                    await self.kv.delete(f"demand.{key}.{self.instance}")

    async def propose(self, slot: Slot, share: ModelServerShare) -> bool:
        assert self.kv is not None
        key = f"server.{slot.key}"
        try:
            revision = await self.kv.update(key, _encode.encode(share), last=slot.share_rev)
        except KeyWrongLastSequenceError:
            # Another instance decided first: take its decision, and place calls after it.
            with contextlib.suppress(KeyNotFoundError):
                entry = await self.kv.get(key)
                if entry.value and (entry.revision or 0) > slot.share_rev:
                    slot.share_rev = entry.revision or 0
                    self.scheduler.apply(slot, _share.decode(entry.value))
            return False
        except (nats.errors.Error, OSError) as exc:
            # The bucket does not answer (or this user may not write it): decide alone rather than
            # leave calls waiting; the next write that works settles with the others.
            log.warning("model server %s: the shared state was not written (%s)", slot.spec.url, exc)
            self.scheduler.apply(slot, share)
            return True
        if revision > slot.share_rev:
            slot.share_rev = revision
            self.scheduler.apply(slot, share)
        log.info(
            "model server %s now runs %s%s",
            slot.spec.url,
            ", ".join(share.active) or "nothing",
            f" (draining {', '.join(share.draining)})" if share.draining else "",
        )
        return True

    def _take(self, entry: KeyValue.Entry) -> None:
        parts = entry.key.split(".")
        slot = self.scheduler.slots.get(parts[1]) if len(parts) >= 2 else None
        if slot is None:
            return
        deleted = entry.operation in ("DEL", "PURGE") or not entry.value
        if parts[0] == "server" and len(parts) == 2:
            if (entry.revision or 0) <= slot.share_rev:
                return
            slot.share_rev = entry.revision or 0
            if not deleted:
                try:
                    self.scheduler.apply(slot, _share.decode(entry.value or b""))
                except msgspec.DecodeError:
                    log.warning("model server %s: unreadable shared state ignored", slot.spec.url)
        elif parts[0] == "demand" and len(parts) == 3 and parts[2] != self.instance:
            if deleted:
                slot.remote.pop(parts[2], None)
            else:
                try:
                    slot.remote[parts[2]] = _demand.decode(entry.value or b"")
                except msgspec.DecodeError:
                    return
            self.scheduler.pump()

    async def _watch(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is not None:
                try:
                    self._take(entry)
                except Exception:  # one odd record must not end the watch
                    log.exception("model servers' shared state: record %s not taken", entry.key)

    async def _publish(self) -> None:
        """This instance's demand, when it changes (and while it has any, every REFRESH)."""
        assert self.kv is not None
        changed = self.scheduler.changed
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout=self.scheduler.grace)
            changed.clear()
            now = time.time()
            for key, slot in self.scheduler.slots.items():
                demand = self.scheduler.demand(slot)
                last, at = self._published.get(key, ({}, 0.0))
                if demand == last and (not demand or now - at < REFRESH):
                    continue
                record = ModelDemand(instance=self.instance, models=demand, at=now)
                try:
                    await self.kv.put(f"demand.{key}.{self.instance}", _encode.encode(record))
                    self._published[key] = (demand, now)
                except Exception as exc:  # the next change or refresh writes it again
                    log.debug("demand of %s not written: %s", key, exc)
            await asyncio.sleep(MIN_GAP)
