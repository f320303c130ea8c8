"""``GET /metrics``: Prometheus text, from the task events the gateway sees and a few live reads.

Counters and histograms are fed by the gateway's live consumer of every task event, so they count
from this gateway's start (Prometheus handles the reset after a restart). Queue depth and tasks
running are read from the JetStream consumers at scrape time; actors' liveness and restarts from the
monitor.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from datetime import datetime
from typing import Any, Final, assert_never

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from victoria.events import contracts, subjects
from victoria.events.codec import encode

log = logging.getLogger(__name__)

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
TRACKED_TASKS: Final = 50_000  # tasks whose current stage start is remembered
STAGE_BUCKETS: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
MODEL_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_services = msgspec.json.Decoder(contracts.ServicesReply)


async def consumer_counts(js: JetStreamContext, durable: str) -> tuple[int, int]:
    """(waiting, held) messages of one durable consumer over the task streams."""
    waiting = held = 0
    for stream in subjects.TASK_STREAMS:
        try:
            info = await js.consumer_info(stream, durable, timeout=1.0)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("consumer %s on %s: %s", durable, stream, exc)
            continue
        waiting += info.num_pending or 0
        held += info.num_ack_pending or 0
    return waiting, held


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter = functools.partial(Counter, registry=self.registry)
        gauge = functools.partial(Gauge, registry=self.registry)
        stage_histogram = functools.partial(Histogram, registry=self.registry, buckets=STAGE_BUCKETS)
        model_histogram = functools.partial(Histogram, registry=self.registry, buckets=MODEL_BUCKETS)
        self.events = counter("victoria_task_events", "Task events seen, by type.", ["type"])
        self.submitted = counter("victoria_tasks_submitted", "Tasks submitted.")
        self.finished = counter(
            "victoria_tasks_finished", "Tasks that reached a terminal state, by state.", ["status"]
        )
        self.attempts = counter("victoria_task_attempts", "Deliveries of tasks to Victoria.")
        self.tasks = gauge(
            "victoria_tasks", "Tasks now queued (not yet taken) or running (taken, not finished).", ["state"]
        )
        self.model_requests = gauge(
            "victoria_model_requests", "Model requests now queued or in flight at the runners.", ["state"]
        )
        self.stage_seconds = stage_histogram(
            "victoria_stage_duration_seconds", "Time spent in each stage.", ["stage"]
        )
        self.model_seconds = model_histogram(
            "victoria_model_call_duration_seconds",
            "Model call latency, by model and outcome.",
            ["model", "outcome"],
        )
        self.first_token = model_histogram(
            "victoria_model_time_to_first_token_seconds", "Time to the first streamed token.", ["model"]
        )
        self.tokens = counter("victoria_model_tokens", "Tokens, by model and kind.", ["model", "kind"])
        self.actor_up = gauge("victoria_actor_up", "1 if the actor instance is up.", ["name", "instance"])
        self.restarts = gauge(
            "victoria_actor_restarts",
            "Restarts of an actor instance by its supervisor.",
            ["name", "instance"],
        )
        self.resident = gauge(
            "victoria_actor_resident_bytes", "Resident memory of an actor instance.", ["name", "instance"]
        )
        self.refused = counter(
            "victoria_gateway_refused",
            "Requests the gateway refused: no valid token (unauthorized), too many tasks (overloaded).",
            ["reason"],
        )
        self._stage: OrderedDict[str, tuple[str, datetime]] = OrderedDict()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once: ``labels`` checks and locks on every call, and
        ``observe`` runs for every event the gateway follows."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def refusal(self, reason: str) -> None:
        self._child(self.refused, reason).inc()

    def observe(self, event: contracts.AnyTaskEvent) -> None:
        """Count one live task event (called for every event the gateway's consumer sees)."""
        tag = str(type(event).__struct_config__.tag)
        self._child(self.events, tag).inc()
        match event:
            case contracts.TaskSubmitted():
                self.submitted.inc()
                self._enter(event.task_id, "queued", event.ts)
            case contracts.TaskStarted():
                self.attempts.inc()
                self._enter(event.task_id, "started", event.ts)
            case contracts.TaskStage():
                self._enter(event.task_id, event.stage, event.ts)
            case contracts.LLMRequested(attempt=attempt, stage=stage):  # may carry a start and a stage
                if attempt is not None:
                    self.attempts.inc()
                    self._enter(event.task_id, "started", event.ts)
                if stage is not None:
                    self._enter(event.task_id, stage, event.ts)
            case contracts.TaskCompleted() | contracts.TaskFailed() | contracts.TaskCancelled():
                self._enter(event.task_id, None, event.ts)
                for call in event.model_calls:  # counted when the task ends, each call once
                    self._model_call(call)
                self._child(self.finished, event.kind).inc()
            case (
                contracts.TaskCancelRequested()
                | contracts.LLMResult()
                | contracts.ToolResult()
                | contracts.ToolIntent()
                | contracts.ToolClaim()
                | contracts.ToolOutcome()
                | contracts.ApprovalRequested()
                | contracts.ApprovalDecided()
            ):
                pass
            case _:
                assert_never(event)

    def _model_call(self, call: contracts.ModelCall) -> None:
        self._child(self.model_seconds, call.model, call.outcome).observe(call.duration_s)
        if call.time_to_first_token_s is not None:
            self._child(self.first_token, call.model).observe(call.time_to_first_token_s)
        if call.prompt_tokens:
            self._child(self.tokens, call.model, "prompt").inc(call.prompt_tokens)
        if call.completion_tokens:
            self._child(self.tokens, call.model, "completion").inc(call.completion_tokens)

    def _enter(self, task_id: str, stage: str | None, at: datetime) -> None:
        previous = self._stage.pop(task_id, None)
        if previous is not None:
            name, since = previous
            self._child(self.stage_seconds, name).observe(max(0.0, (at - since).total_seconds()))
        if stage is not None:
            self._stage[task_id] = (stage, at)
            while len(self._stage) > TRACKED_TASKS:
                self._stage.popitem(last=False)

    async def render(self, nc: NATS, js: JetStreamContext) -> bytes:
        await self._read_consumers(js)
        await self._read_services(nc)
        return generate_latest(self.registry)

    async def _read_consumers(self, js: JetStreamContext) -> None:
        for durable, gauge, running in (
            ("victoria", self.tasks, "running"),
            ("llm-runner", self.model_requests, "in_flight"),
        ):
            queued, in_flight = await consumer_counts(js, durable)
            gauge.labels("queued").set(queued)
            gauge.labels(running).set(in_flight)

    async def _read_services(self, nc: NATS) -> None:
        try:
            reply = await nc.request(
                subjects.MONITOR_SERVICES, encode(contracts.ServicesRequest()), timeout=0.5
            )
            services = _services.decode(reply.data).services
        except (nats.errors.Error, TimeoutError, msgspec.DecodeError) as exc:
            log.debug("services for metrics: %s", exc)
            return
        for gauge in (self.actor_up, self.restarts, self.resident):
            gauge.clear()
        for entry in services:
            self.actor_up.labels(entry.name, entry.instance).set(1 if entry.status == "up" else 0)
            self.restarts.labels(entry.name, entry.instance).set(entry.restarts)
            if entry.rss_bytes is not None:
                self.resident.labels(entry.name, entry.instance).set(entry.rss_bytes)
