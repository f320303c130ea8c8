"""The service monitor: liveness from heartbeats, transitions as events, the /services view.

An instance is ``up`` while its heartbeats arrive, ``down`` after ``MISSED_BEATS`` intervals of
silence or when the supervisor reports its process dead, and ``up`` again at its next beat.
``service_down`` and ``service_up`` are published only on transitions. ``service_started`` is
published by the monitor too, at the first heartbeat of a new process (an instance not seen before,
or a new pid), since only the monitor and the supervisor may publish service events (nats.conf).
The monitor never acts on itself: it has no way to restart anything, supervisors do that. Its
clock for silence is its own heartbeats as they come back through the heartbeat stream
(``Monitor.clock``): an instance is down once that clock is ``MISSED_BEATS`` of its intervals past
its last beat. While the monitor's own beats do not come back (NATS failing over) the clock stands
still, for that silence is no service's death; when they come back after a gap, every instance has
its full intervals from then to be heard. A slow pipe delays the judgement, never stops it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, Literal, assert_never

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from victoria.actors.monitor.probes import ProbeSpec, ProbeState, check_http, check_postgres, redact
from victoria.events import subjects
from victoria.events.codec import encode, service_decoder
from victoria.events.contracts import (
    DependencyEntry,
    Heartbeat,
    ModelServerInfo,
    ServiceDown,
    ServiceEntry,
    ServicesReply,
    ServiceStarted,
    ServiceUp,
    utcnow,
)
from victoria.runtime import reads
from victoria.runtime.base import Actor
from victoria.runtime.config import Config
from victoria.runtime.tooltable import ToolTables

log = logging.getLogger(__name__)

MISSED_BEATS: Final = 3  # intervals of silence before an instance counts as down
FIRST_MODEL_PROBE: Final = 5.0  # seconds after start before a model server's first probe
RUNNER_VIEW_FRESH: Final = 45.0  # seconds a runner's record of a model server stands for a probe
# (a runner rewrites it every 5 s when it changes, every 30 s when it does not)
BLIND_AFTER: Final = 2  # intervals between two of the monitor's own beats that make a gap


@dataclass(slots=True)
class _Entry:
    name: str
    instance: str
    pid: int | None = None
    status: Literal["up", "down", "degraded"] = "up"
    reason: str = ""
    restarts: int = 0
    last_seen: datetime | None = None
    interval: float = 2.0
    rss_bytes: int | None = None
    in_flight: int | None = None
    version: str | None = None

    def view(self) -> ServiceEntry:
        """The entry as ``/services`` shows it: its fields of the same names."""
        return msgspec.convert(self, ServiceEntry, from_attributes=True)


class Monitor(Actor):
    name: ClassVar[str] = "monitor"

    def __init__(self, nc: NATS, config: Config, *, restarts: int = 0, fenced: bool = True) -> None:
        super().__init__(nc, config, restarts=restarts, fenced=fenced)
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.probes: dict[str, ProbeState] = {}
        self.model_servers: dict[str, str] = {}
        """Probe name -> the model server's base URL (what the runners' records name)."""
        self._subs: list[Subscription] = []
        self._own_beat: datetime | None = None
        """When the last of this process's own heartbeats that came back to it was sent."""
        self._own_heard_at = 0.0
        """When (``time.monotonic()``) it came back."""
        self._hearing_since: datetime | None = None
        """When the first of its own beats since the last gap in them was sent."""
        self._deaf_said = False
        self._runner_records: list[ModelServerInfo] = []
        """The runners' records of the model servers as last read (``_runner_view``)."""
        self.mcp = ToolTables(self.js, every=2.0)
        """Veronica's records of her MCP servers, read at most every 2 s (``dependencies``)."""

    def probe_specs(self) -> list[ProbeSpec]:
        cfg = self.config
        common = {
            "initial_delay": min(1.0, cfg.probe_interval),
            "interval": cfg.probe_interval,
            "timeout": cfg.probe_timeout,
            "failure_threshold": cfg.probe_failures,
            "success_threshold": cfg.probe_successes,
        }
        specs = []
        for n, server in enumerate(cfg.servers):  # the first keeps the name it always had
            health = "/api/tags" if server.api == "ollama" else "/v1/models"
            name = "model-server" if n == 0 else f"model-server-{n + 1}"
            self.model_servers[name] = server.url
            # Its first look waits for the runner's first record: a probe of ours during a first
            # call (a task submitted at start) could queue behind it, or cut it short.
            first = {**common, "initial_delay": max(common["initial_delay"], FIRST_MODEL_PROBE)}
            specs.append(ProbeSpec(name=name, target=server.url + health, kind="http", **first))  # type: ignore[arg-type]
        if cfg.postgres_dsn:
            specs.append(ProbeSpec(name="postgres", target=cfg.postgres_dsn, kind="postgres", **common))  # type: ignore[arg-type]
        return specs

    async def on_start(self) -> None:
        # The last beat of every instance first (the stream keeps one per subject), then live ones.
        self._subs.append(
            await self.js.subscribe(
                subjects.ALL_HEARTBEATS,
                stream=subjects.HEARTBEAT_STREAM,  # named: no look-up of the stream by subject
                ordered_consumer=True,
                deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT,
                cb=self._on_service_message,
            )
        )
        self._subs.append(await self.nc.subscribe(subjects.ALL_SERVICE_EVENTS, cb=self._on_service_message))
        self._subs.append(
            await self.nc.subscribe(subjects.MONITOR_SERVICES, queue="monitor", cb=self._on_services_request)
        )
        self.spawn(self._check_loop(), critical=True)
        for spec in self.probe_specs():
            state = self.probes[spec.name] = ProbeState(spec)
            self.spawn(self._probe_loop(state), critical=True)

    async def on_stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    def snapshot(self) -> list[ServiceEntry]:
        return [entry.view() for _, entry in sorted(self.entries.items())]

    def dependencies(self) -> list[DependencyEntry]:
        """The probed dependencies, then each MCP server of each instance of Veronica as she last
        recorded it (``victoria_mcp``)."""
        return [
            DependencyEntry(
                name=state.spec.name,
                target=redact(state.spec.target),
                status=state.status,
                reason=(state.busy_reason if state.status == "busy" else state.last_error)
                or ("" if state.status != "unknown" else "not checked yet"),
                last_checked=state.last_checked,
            )
            for state in self.probes.values()
        ] + [
            DependencyEntry(
                name=f"mcp-{state.server}",
                target=state.target,
                status="unknown" if state.status == "starting" else state.status,
                reason=state.reason or ("starting" if state.status == "starting" else ""),
                last_checked=datetime.fromtimestamp(state.at, UTC),
                instance=state.instance,
                tools=len(state.tools),
                stderr=state.stderr,
            )
            for state in self.mcp.servers
        ]

    async def _on_services_request(self, msg: Msg) -> None:
        if msg.reply:
            await self.mcp.current()
            reply = ServicesReply(services=self.snapshot(), dependencies=self.dependencies())
            await msg.respond(encode(reply))

    async def _probe_loop(self, state: ProbeState) -> None:
        import httpx  # loaded when the first probe runs

        spec = state.spec
        target = redact(spec.target)
        await asyncio.sleep(spec.initial_delay)
        async with httpx.AsyncClient() as client:
            while True:
                view = await self._runner_view(spec.name)
                flipped: Literal["up", "down"] | None
                if view is not None:
                    # A runner looks at this server, in step with its own calls: its word is the
                    # probe (a probe of ours could queue behind a generation, or cut it short).
                    status, reason = view
                    if status == "busy":
                        if state.status != "busy":
                            log.info("%s is busy: %s", spec.name, reason)
                        flipped = state.serving(reason)
                    else:
                        flipped = state.record(None if status == "up" else reason)
                elif spec.kind == "http":
                    flipped = state.record(await check_http(client, spec.target, spec.timeout))
                else:
                    flipped = state.record(await check_postgres(spec.target, spec.timeout))
                state.last_checked = utcnow()
                if flipped is not None:
                    await self._publish_probe(state, flipped, target)
                await asyncio.sleep(spec.interval)

    async def _runner_view(self, probe: str) -> tuple[str, str] | None:
        """The model server of ``probe`` as a live runner instance last saw it (its record in
        ``victoria_models``, written within ``RUNNER_VIEW_FRESH`` seconds): its status and why;
        None when no runner looks at it (or for other probes). Busy wins over another
        instance's up."""
        url = self.model_servers.get(probe)
        if url is None:
            return None
        now = time.time()
        # A read that found nothing (the bucket slow to answer under load) keeps the records read
        # before: each still counts only while it is fresh, so no probe of ours goes out meanwhile.
        infos = await reads.model_server_infos(self.js) or self._runner_records
        self._runner_records = infos
        fresh = [
            info
            for info in infos
            if info.url == url and now - info.at < RUNNER_VIEW_FRESH and info.status != "unknown"
        ]
        for info in fresh:
            if info.status == "busy":
                return "busy", f"{info.streaming or 'a'} call(s) of llm-runner/{info.instance} on it"
        for info in sorted(fresh, key=lambda i: i.at, reverse=True):
            return info.status, info.error or f"llm-runner/{info.instance} finds it {info.status}"
        return None

    async def _publish_probe(self, state: ProbeState, status: Literal["up", "down"], target: str) -> None:
        spec = state.spec
        event: ServiceDown | ServiceUp
        if status == "down":
            reason = f"{spec.failure_threshold} failed probes of {target}: {state.last_error}"
            event = ServiceDown(
                name=spec.name,
                instance=self.instance,
                reason=reason,
                source="probe",
                url=target,
                error=state.last_error,
            )
            log.warning("%s is down: %s", spec.name, reason)
        else:
            reason = state.busy_reason if state.status == "busy" else "probe succeeded"
            event = ServiceUp(
                name=spec.name, instance=self.instance, reason=reason, source="probe", url=target
            )
            log.info("%s is up (%s)", spec.name, target)
        try:
            await self.js.publish(subjects.service_event(spec.name, self.instance, status), encode(event))
        except Exception as exc:  # NATS away: the state is right, the event is lost; log it
            log.warning("could not publish %s for %s: %s", status, spec.name, exc)

    async def _on_service_message(self, msg: Msg) -> None:
        try:
            event = service_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("undecodable service message on %s: %s", msg.subject, exc)
            return
        if isinstance(event, ServiceDown | ServiceUp) and event.source != "supervisor":
            return  # transitions the monitor itself published (heartbeats, probes): no news
        key = (event.name, event.instance)
        entry = self.entries.get(key)
        new = entry is None
        if entry is None:
            entry = self.entries[key] = _Entry(event.name, event.instance)
        match event:
            case Heartbeat():
                if key == (self.name, self.instance) and event.pid == os.getpid():
                    self.own_beat(event.ts)
                started = event.pid > 0 and entry.pid != event.pid
                entry.pid = event.pid
                entry.interval = event.interval_s
                entry.rss_bytes = event.rss_bytes
                entry.in_flight = event.in_flight
                entry.version = event.version
                entry.restarts = max(entry.restarts, event.restarts)
                if entry.last_seen is None or event.ts >= entry.last_seen:
                    entry.last_seen = event.ts
                if self._stale(entry):
                    # An old beat replayed from the stream: the instance is gone, and that is no news.
                    if new:
                        entry.status, entry.reason = "down", "no heartbeat since the monitor started"
                    return
                if started:
                    await self._publish_started(event)
                if event.status == "degraded":
                    await self._transition(entry, "degraded", event.detail or "reported degraded")
                elif entry.status != "up":
                    await self._transition(entry, "up", "heartbeat received")
            case ServiceStarted():
                entry.pid = event.pid
                entry.restarts = max(entry.restarts, event.restarts)
                entry.version = event.version
            case ServiceDown():  # the supervisor's (the others returned above)
                entry.restarts = max(entry.restarts, event.restarts)
                entry.status = "down"
                entry.reason = event.reason
            case ServiceUp():
                if entry.last_seen is None:
                    # A process that does not beat (an embedded nats-server): the supervisor's word.
                    entry.status = "up"
                    entry.reason = event.reason
                    entry.pid = event.pid or entry.pid
            case _:
                assert_never(event)

    async def _publish_started(self, beat: Heartbeat) -> None:
        """``service_started`` for the process that sent ``beat``, unless it is stored already (a
        restarted monitor sees every live process anew). Several monitors publish it once: the
        message id is the process's."""
        subject = subjects.service_event(beat.name, beat.instance, "started")
        try:
            raw = await self.js.get_last_msg(subjects.SERVICE_STREAM, subject, direct=True)
            last = service_decoder.decode(raw.data or b"")
            if isinstance(last, ServiceStarted) and last.pid == beat.pid and last.ts == beat.started_at:
                return
        except (NotFoundError, msgspec.DecodeError):
            pass
        except Exception as exc:  # NATS away: publish it all the same
            log.debug("last service_started of %s/%s not read: %s", beat.name, beat.instance, exc)
        # The beat's own fields, and the start of its process as the event's time.
        said = {name: getattr(beat, name) for name in ("name", "instance", "pid", "version", "restarts")}
        event = ServiceStarted(ts=beat.started_at, **said)
        msg_id = f"started:{beat.name}:{beat.instance}:{beat.pid}:{beat.started_at.timestamp():.6f}"
        try:
            await self.js.publish(subject, encode(event), headers={"Nats-Msg-Id": msg_id})
        except Exception as exc:  # NATS away: the state is right, the event is lost; log it
            log.warning("could not publish started for %s/%s: %s", beat.name, beat.instance, exc)

    def _stale(self, entry: _Entry, beats: int = MISSED_BEATS) -> bool:
        """Silent for more than ``beats`` intervals (or never heard)."""
        if entry.last_seen is None:
            return True
        return (utcnow() - entry.last_seen).total_seconds() > entry.interval * beats

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.25, self.config.heartbeat_interval / 2))
            await self.check()

    def own_beat(self, sent: datetime) -> None:
        """One of this process's own heartbeats, sent at ``sent``, came back through the stream.
        After a gap of more than ``BLIND_AFTER`` intervals between two of them (beats lost: the
        monitor's connection, or the stream electing a leader; or the monitor frozen), the others'
        beats may have been lost too: their silence counts from this one."""
        gap = self.config.heartbeat_interval * BLIND_AFTER
        if self._own_beat is not None and sent <= self._own_beat:
            return
        if self._own_beat is None or (sent - self._own_beat).total_seconds() > gap:
            if self._own_beat is not None:
                log.info(
                    "own heartbeats came back after a gap of %.1fs: every instance has %d "
                    "intervals from now to be heard",
                    (sent - self._own_beat).total_seconds(),
                    MISSED_BEATS,
                )
            self._hearing_since = sent
        self._own_beat = sent
        self._own_heard_at = time.monotonic()
        self._deaf_said = False

    def clock(self, interval: float) -> datetime | None:
        """The monitor's time for the silence of an instance beating every ``interval`` seconds:
        when its own last beat that came back was sent, plus the time since it came back, up to
        one interval, the monitor's or the instance's if shorter. While the monitor's beats do not
        come back (the pipe broken) the clock stands still one interval past the last, and one
        interval is less than the ``MISSED_BEATS`` that make an instance down."""
        if self._own_beat is None:
            return None
        ahead = min(time.monotonic() - self._own_heard_at, self.config.heartbeat_interval, interval)
        return self._own_beat + timedelta(seconds=max(0.0, ahead))

    def blind(self) -> bool:
        """True while none of the monitor's own beats has come back for more than ``BLIND_AFTER``
        intervals (its ``clock`` stands still meanwhile)."""
        late = self.config.heartbeat_interval * BLIND_AFTER
        return self._own_beat is None or time.monotonic() - self._own_heard_at > late

    async def check(self) -> None:
        """One look at every instance: ``down`` for those silent for ``MISSED_BEATS`` intervals
        as the monitor's own beats tell the time (``clock``): a slow pipe delays the judgement but
        never stops it. The monitor never judges itself."""
        since = self._hearing_since
        if self.blind() and self._own_beat is not None and not self._deaf_said:
            self._deaf_said = True
            log.warning(
                "none of its own heartbeats came back for %.1fs: nobody is judged until they do",
                time.monotonic() - self._own_heard_at,
            )
        if since is None:
            return
        for entry in list(self.entries.values()):
            if entry.last_seen is None:
                continue  # never beat: its state is what the supervisor says (nats-server)
            if entry.status == "down" or (entry.name, entry.instance) == (self.name, self.instance):
                continue
            heard = max(entry.last_seen, since)
            clock = self.clock(entry.interval)
            if clock is not None and (clock - heard).total_seconds() > entry.interval * MISSED_BEATS:
                silence = (utcnow() - entry.last_seen).total_seconds()
                await self._transition(
                    entry,
                    "down",
                    f"no heartbeat for {silence:.1f}s (expected every {entry.interval:g}s)",
                )

    async def _transition(
        self, entry: _Entry, status: Literal["up", "down", "degraded"], reason: str
    ) -> None:
        if entry.status == status and entry.reason == reason:
            return
        previous = entry.status
        entry.status = status
        entry.reason = reason
        if previous == status:
            return
        log.info("%s/%s is %s: %s", entry.name, entry.instance, status, reason)
        event: ServiceDown | ServiceUp
        if status == "down":
            event = ServiceDown(
                name=entry.name,
                instance=entry.instance,
                reason=reason,
                pid=entry.pid,
                restarts=entry.restarts,
            )
            kind: Literal["down", "up"] = "down"
        else:
            event = ServiceUp(name=entry.name, instance=entry.instance, reason=reason, pid=entry.pid)
            kind = "up"
        try:
            await self.js.publish(subjects.service_event(entry.name, entry.instance, kind), encode(event))
        except Exception as exc:  # NATS away: the state is right, the event is lost; log it
            log.warning("could not publish %s for %s/%s: %s", kind, entry.name, entry.instance, exc)
