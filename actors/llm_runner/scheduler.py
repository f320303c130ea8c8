"""Model-aware scheduling: which model call goes to which model server, and when.

A model server holds one model (or ``max_loaded``) in memory; a call for another one makes it
unload and load, 10 to 60 seconds for a big model. So:

1. A call for a model that is active on a server (and under that model's limit) goes at once,
   to a server where it is active.
2. A call for another model waits while the active one still has work (calls running, or one
   ended less than ``grace`` ago: an agent's next call comes a few milliseconds after the answer
   to its last). When the active model has none, the server switches, once.
3. When the oldest waiting call has waited ``max_wait``, the active model is *drained*: it takes no
   new calls; when its running calls have ended, the server switches. Nothing starves.

Waiting calls are served oldest first. A server that is down takes no calls while another that
serves the model is up. With several runner instances, the switch of a server is agreed through
the key-value bucket ``victoria_models`` (``actors/llm_runner/share.py``): each instance says
what work it has for each server, and the active set changes only by compare-and-set, so two
instances never swap a server back and forth against each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from victoria.events.contracts import ModelDemand, ModelServerShare
from victoria.runtime.modelservers import ModelServer

DRAIN_GRACE: Final = 0.5  # seconds a model keeps its server after its last call ended
TICK: Final = 0.1  # seconds between looks at waiting calls (grace and max wait running out)
NOTICE_EVERY: Final = 5.0  # seconds between repeated notices of one waiting call
STALE: Final = 15.0  # seconds after which another instance's demand record is ignored


@dataclass(eq=False)
class Lease:
    """One call's right to use ``slot`` for ``model`` until released."""

    slot: Slot
    model: str
    released: bool = False


@dataclass(eq=False)
class Waiter:
    model: str
    task_id: str
    request_id: str
    since: float
    exclude: frozenset[str]
    future: asyncio.Future[Lease]
    noticed: float = 0.0
    """When ``on_wait`` last told about it (loop time)."""


@dataclass(eq=False)
class Slot:
    """One model server as the scheduler sees it."""

    spec: ModelServer
    up: bool = True
    models: set[str] | None = None
    """Models it serves (the models file, /api/tags, /v1/models); None while unknown: any."""
    loaded: list[str] = field(default_factory=list)
    """Loaded now: what the server says (/api/ps), or the last model it served."""
    loaded_source: Literal["server", "last_served"] = "last_served"
    active: list[str] = field(default_factory=list)
    draining: set[str] = field(default_factory=set)
    running: Counter[str] = field(default_factory=Counter)
    last_end: dict[str, float] = field(default_factory=dict)
    remote: dict[str, ModelDemand] = field(default_factory=dict)
    """Other runner instances' work for this server, by instance."""
    share_rev: int = 0
    """Revision of ``server.<key>`` in the bucket (0: none yet)."""
    proposing: bool = False
    proposed: frozenset[str] = frozenset()
    """Models the pending proposal would make active."""
    swaps: int = 0
    last_served: str | None = None
    resident: list[str] = field(default_factory=list)
    server_slots: int | None = None
    """Generations the server runs at once, as it says (``traits.py``): calls at once per model
    when the models file sets no ``parallel``."""

    @property
    def key(self) -> str:
        return self.spec.key

    def serves(self, model: str) -> bool:
        """Known to serve ``model``, or may: an OpenAI-compatible server (MLX) may load a model it
        does not list; Ollama's list is all it has (another model needs a pull)."""
        return self.models is None or model in self.models or self.spec.api == "openai"

    def busy(self, model: str, now: float, grace: float) -> bool:
        """This instance has work for ``model`` here: calls running, or one ended just now."""
        return self.running[model] > 0 or now - self.last_end.get(model, -1e9) < grace

    def remote_work(self, model: str, *, running_only: bool) -> bool:
        horizon = time.time() - STALE
        for demand in self.remote.values():
            if demand.at < horizon:
                continue
            flags = demand.models.get(model)
            if flags and (flags[0] or (not running_only and len(flags) > 1 and flags[1])):
                return True
        return False

    def served(self, model: str) -> None:
        """The server answered a call for ``model``: for servers that cannot tell, it is loaded.
        A model that was not among the last ``max_loaded`` served counts as a swap."""
        if model not in self.resident and len(self.resident) >= self.spec.max_loaded:
            self.swaps += 1
        self.resident = [model, *[m for m in self.resident if m != model]][: self.spec.max_loaded]
        self.last_served = model
        if self.loaded_source == "last_served":
            self.loaded = list(self.resident)


Propose = Callable[[Slot, ModelServerShare], Awaitable[bool]]
"""Write a new share of a server (compare-and-set); True when it was stored."""


class Scheduler:
    def __init__(
        self,
        servers: Iterable[ModelServer],
        *,
        max_wait: float,
        concurrency: int,
        instance: str = "",
        grace: float = DRAIN_GRACE,
        on_wait: Callable[[Waiter, int], None] | None = None,
        on_admit: Callable[[Waiter, Slot], None] | None = None,
    ) -> None:
        self.slots: dict[str, Slot] = {spec.key: Slot(spec) for spec in servers}
        self._single = next(iter(self.slots.values())) if len(self.slots) == 1 else None
        self.max_wait = max_wait
        self.concurrency = concurrency
        self.instance = instance
        self.grace = grace
        self.on_wait = on_wait
        self.on_admit = on_admit
        self.waiting: list[Waiter] = []
        self.propose: Propose | None = None
        """Set by the share: switches go through the bucket. None: decided here alone."""
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._proposals: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()
        """Set whenever this instance's demand may have changed (the share publishes it)."""

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._ticker(), name="model-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._proposals) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        for waiter in self.waiting:
            if not waiter.future.done():
                waiter.future.cancel()
        self.waiting.clear()

    async def _ticker(self) -> None:
        while True:
            self._wake.clear()
            timeout = TICK if self.waiting else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self.pump()

    # --- calls -------------------------------------------------------------------------------
    async def acquire(
        self, model: str, *, task_id: str = "", request_id: str = "", exclude: frozenset[str] = frozenset()
    ) -> Lease:
        """A server for one call of ``model``; waits (oldest first) while it must."""
        if not self.waiting and self._single is not None and not exclude:
            slot = self._single  # the usual case, one server: no lists, no sorting
            if model in slot.active and not slot.draining and slot.running[model] < self._limit(slot, model):
                return self._admit(slot, model)
        now = time.monotonic()
        if not any(w.model == model for w in self.waiting):
            lease = self._place(model, now, now, exclude)
            if lease is not None:
                return lease
        waiter = Waiter(model, task_id, request_id, now, exclude, asyncio.get_running_loop().create_future())
        self.waiting.append(waiter)
        self.changed.set()
        self.pump()
        if not waiter.future.done():
            self.notice(waiter)
        self._wake.set()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter in self.waiting:
                self.waiting.remove(waiter)
            elif waiter.future.done() and not waiter.future.cancelled():
                self.release(waiter.future.result())
            self.changed.set()
            raise

    def notice(self, waiter: Waiter) -> None:
        waiter.noticed = time.monotonic()
        if self.on_wait is not None:
            self.on_wait(waiter, self.place_of(waiter))

    def place_of(self, waiter: Waiter) -> int:
        same = [w for w in self.waiting if w.model == waiter.model]
        return same.index(waiter) + 1 if waiter in same else 0

    def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        slot = lease.slot
        slot.running[lease.model] -= 1
        if slot.running[lease.model] <= 0:
            del slot.running[lease.model]  # its demand ends after the grace: the share looks then
        slot.last_end[lease.model] = time.monotonic()
        if self.waiting or slot.draining:
            self.pump()

    async def move(self, lease: Lease, *, exclude: frozenset[str]) -> None:
        """Give up ``lease``'s server and take another that serves its model (waiting if need be)."""
        self.release(lease)
        new = await self.acquire(lease.model, exclude=exclude)
        lease.slot, lease.released = new.slot, False

    def server_down(self, slot: Slot) -> None:
        if slot.up:
            slot.up = False
            self.changed.set()
            self.pump()

    def server_up(self, slot: Slot) -> None:
        if not slot.up:
            slot.up = True
            self.pump()

    def has_alternative(self, model: str, exclude: frozenset[str]) -> bool:
        """Some server that is up, and not excluded, serves ``model``."""
        return any(s.up and s.serves(model) and s.key not in exclude for s in self.slots.values())

    def demand(self, slot: Slot) -> dict[str, list[bool]]:
        """This instance's work for one server: model -> [running (or just ended), waiting]."""
        now = time.monotonic()
        out: dict[str, list[bool]] = {}
        for model in {*slot.running, *slot.last_end}:
            if slot.busy(model, now, self.grace):
                out[model] = [True, False]
        for waiter in self.waiting:
            if slot.serves(waiter.model) and waiter.model not in slot.active:
                out.setdefault(waiter.model, [False, False])[1] = True
        return out

    # --- the rules ---------------------------------------------------------------------------
    def pump(self) -> None:
        """Place every waiting call that may go now, oldest first."""
        if not self.waiting:
            self._settle_drains(time.monotonic())
            return
        now = time.monotonic()
        for waiter in list(self.waiting):
            if waiter.future.done():
                self.waiting.remove(waiter)
                continue
            if now - waiter.noticed > NOTICE_EVERY:
                self.notice(waiter)
            lease = self._place(waiter.model, now, waiter.since, waiter.exclude)
            if lease is not None:
                self.waiting.remove(waiter)
                self.changed.set()
                if self.on_admit is not None:
                    self.on_admit(waiter, lease.slot)
                waiter.future.set_result(lease)
        self._settle_drains(now)

    def _candidates(self, model: str, exclude: frozenset[str]) -> list[Slot]:
        slots = [s for s in self.slots.values() if s.serves(model) and s.key not in exclude]
        up = [s for s in slots if s.up]
        # With every server of the model down, the call goes to one all the same: it finds out,
        # and reports "unavailable" as a single server always did.
        return up or slots

    def _limit(self, slot: Slot, model: str) -> int:
        return slot.spec.limit_for(model) or slot.server_slots or self.concurrency

    def _place(self, model: str, now: float, since: float, exclude: frozenset[str]) -> Lease | None:
        candidates = self._candidates(model, exclude)
        if not candidates:
            # No server has it: nothing to load and nothing to wait for. The call goes at once
            # (to a server that is up) and gets that server's answer, "model not found" or a pull.
            others = [s for s in self.slots.values() if s.key not in exclude] or list(self.slots.values())
            return self._admit(next((s for s in others if s.up), others[0]), model)
        # 1. Active there, not draining, under its limit: the least busy such server.
        ready = [
            s
            for s in candidates
            if model in s.active and model not in s.draining and s.running[model] < self._limit(s, model)
        ]
        if ready:
            slot = min(ready, key=lambda s: (sum(s.running.values()), model not in s.loaded))
            return self._admit(slot, model)
        if any(model in s.active and model not in s.draining for s in candidates):
            return None  # active somewhere, only at its limit: wait for a free place there
        if any(s.proposing and model in s.proposed for s in candidates):
            return None  # a server is being switched to it already
        # 2. A server with a free place, or whose active model has no work: switch it, once.
        for slot in sorted(candidates, key=lambda s: (model not in s.loaded, sum(s.running.values()))):
            if slot.proposing or model in slot.active:
                continue
            victim = self._free_place(slot, now)
            if victim is not False:
                if self._switch(slot, model, victim):
                    return self._admit(slot, model)
                return None
        # 3. Waited too long: drain the active model of one server, then switch.
        if now - since >= self.max_wait:
            target = min(candidates, key=lambda s: sum(s.running.values()), default=None)
            if target is not None:
                self._drain(target, model)
        return None

    def _drain(self, slot: Slot, model: str) -> None:
        """Stop new calls of one active model of ``slot`` (the least recently used), for ``model``."""
        if slot.proposing or model in slot.active:
            return
        victims = [m for m in slot.active if m not in slot.draining]
        if not victims or len(slot.active) - len(victims) >= slot.spec.max_loaded:
            return
        victim = min(victims, key=lambda m: slot.last_end.get(m, 0.0))
        share = ModelServerShare(
            active=list(slot.active),
            draining=sorted({*slot.draining, victim}),
            by=self.instance,
            at=time.time(),
        )
        self._propose(slot, share)

    def _free_place(self, slot: Slot, now: float) -> str | Literal[False] | None:
        """None: a place is free; a model name: that active model may leave; False: neither."""
        if len(slot.active) < slot.spec.max_loaded:
            return None
        idle = [
            m
            for m in slot.active
            if not slot.busy(m, now, self.grace)
            and not slot.remote_work(m, running_only=m in slot.draining)
            and (m in slot.draining or not any(w.model == m and slot.serves(m) for w in self.waiting))
        ]
        if not idle:
            return False
        return min(idle, key=lambda m: (m not in slot.draining, slot.last_end.get(m, 0.0)))

    def _settle_drains(self, now: float) -> None:
        """A drained model whose calls have all ended gives its place to the oldest waiting call."""
        for slot in self.slots.values():
            if not slot.draining or slot.proposing:
                continue
            for waiter in self.waiting:
                if slot.serves(waiter.model) and waiter.model not in slot.active:
                    victim = self._free_place(slot, now)
                    if victim is not False:
                        self._switch(slot, waiter.model, victim)
                    break

    def _switch(self, slot: Slot, model: str, victim: str | None) -> bool:
        """Make ``model`` active on ``slot`` in place of ``victim``; True when done at once."""
        active = [m for m in slot.active if m != victim] + [model]
        draining = sorted(m for m in slot.draining if m in active)
        return self._propose(
            slot, ModelServerShare(active=active, draining=draining, by=self.instance, at=time.time())
        )

    def _propose(self, slot: Slot, share: ModelServerShare) -> bool:
        if self.propose is None:
            self.apply(slot, share)
            return True
        slot.proposing = True
        slot.proposed = frozenset(share.active) - frozenset(share.draining)
        propose = self.propose

        async def run() -> None:
            try:
                await propose(slot, share)
            finally:
                slot.proposing, slot.proposed = False, frozenset()
                self.pump()

        task = asyncio.create_task(run(), name=f"propose-{slot.key}")
        self._proposals.add(task)
        task.add_done_callback(self._proposals.discard)
        return False

    def apply(self, slot: Slot, share: ModelServerShare) -> None:
        """Take a share of a server as agreed (made here, or read from the bucket)."""
        slot.active = list(share.active)[: max(slot.spec.max_loaded, 1)]
        slot.draining = {m for m in share.draining if m in slot.active}
        self.changed.set()
        self._admit_waiting_later()

    def _admit_waiting_later(self) -> None:
        self._wake.set()

    def _admit(self, slot: Slot, model: str) -> Lease:
        if slot.running[model] == 0 and not slot.busy(model, time.monotonic(), self.grace):
            self.changed.set()  # work for a model that had none: the other instances should know
        slot.running[model] += 1
        return Lease(slot, model)
