"""Victoria: takes tasks from a durable consumer and runs them, resuming from their events.

One delivery of a ``task_submitted`` message is one attempt. Before running, Victoria folds the
task's stored events (on a redelivery) and the workflow takes every recorded stage, model result and
tool result from that history. The message is acknowledged only after the terminal event is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import ClassVar, Final

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from victoria.actors.agent import workflow
from victoria.errors import TaskAborted
from victoria.events import subjects
from victoria.events.codec import encode, files_reply_decoder, service_decoder
from victoria.events.contracts import (
    ChatMessage,
    FilesRequest,
    LLMRequested,
    LLMResult,
    ServiceDown,
    ServiceStarted,
    ServiceUp,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskStage,
    TaskStarted,
    TaskSubmitted,
    ToolResult,
)
from victoria.events.fold import TaskHistory, stage_key
from victoria.runtime import bus, tracing
from victoria.runtime.base import Actor
from victoria.runtime.consumer import WorkConsumer
from victoria.runtime.context import current_task_id, current_trace_id

log = logging.getLogger(__name__)

RECENT_CANCELS: Final = 10_000  # cancelled task ids remembered for their first delivery
RESULT_RECHECK: Final = 10.0  # seconds between looks in the stream for a model result we may have missed
CLOCK_SLACK: Final = 5.0  # seconds: a submission this close to our start may predate our subscriptions


class Victoria(Actor):
    name: ClassVar[str] = "victoria"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.consumers: list[WorkConsumer] = []
        self.running: dict[str, asyncio.Task[str]] = {}
        self.cancel_reasons: dict[str, str] = {}
        self.waiters: dict[tuple[str, str], asyncio.Future[LLMResult]] = {}
        self._subs: list[Subscription] = []
        self.veronica: dict[str, str | None] = {}
        self.veronica_went_down = asyncio.Event()
        self.recent_cancels: OrderedDict[str, str] = OrderedDict()
        """Tasks cancelled lately, as the live subscription saw them: task id -> reason."""
        """Veronica's instances as the monitor and supervisors report them: instance -> reason if down."""

    async def on_start(self) -> None:
        self._subs.append(
            await self.nc.subscribe(subjects.all_tasks_of_kind("llm_result"), cb=self._on_result)
        )
        self._subs.append(await self.nc.subscribe(subjects.all_tasks_of_kind("cancel"), cb=self._on_cancel))
        self._subs.append(await self.nc.subscribe(f"{subjects.PREFIX}.svc.veronica.>", cb=self._on_veronica))
        self.consumers = await self.consume_tasks(
            durable="victoria", kind="submitted", concurrency=self.config.concurrency, handler=self._handle
        )

    async def on_stop(self) -> None:
        await asyncio.gather(*(consumer.stop() for consumer in self.consumers))
        for sub in self._subs:
            await sub.unsubscribe()

    def in_flight(self) -> int:
        return len(self.running)

    # --- bus callbacks ---------------------------------------------------------------------------
    async def _on_result(self, msg: Msg) -> None:
        event = bus.decode_task_event(msg.data, msg.subject)
        if isinstance(event, LLMResult):
            future = self.waiters.get((event.task_id, event.request_id))
            if future is not None and not future.done():
                future.set_result(event)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            task_id = subjects.task_id_of(msg.subject)
        except ValueError:
            return
        event = bus.decode_task_event(msg.data, msg.subject)
        reason = getattr(event, "reason", None) or "cancelled by request"
        self.recent_cancels[task_id] = reason
        while len(self.recent_cancels) > RECENT_CANCELS:
            self.recent_cancels.popitem(last=False)
        running = self.running.get(task_id)
        if running is not None and not running.done():
            self.cancel_reasons[task_id] = reason
            log.info("task %s cancel requested", task_id)
            running.cancel()

    async def _on_veronica(self, msg: Msg) -> None:
        try:
            event = service_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(event, ServiceDown):
            self.veronica[event.instance] = event.reason
            went_down, self.veronica_went_down = self.veronica_went_down, asyncio.Event()
            went_down.set()  # wakes the requests that were out to her
        elif isinstance(event, ServiceUp | ServiceStarted):
            self.veronica[event.instance] = None

    def veronica_down(self) -> str | None:
        """Why Veronica cannot answer, when every known instance of hers is down; else None."""
        if self.veronica and all(reason is not None for reason in self.veronica.values()):
            return "; ".join(f"{inst}: {reason}" for inst, reason in sorted(self.veronica.items()))
        return None

    # --- one delivery --------------------------------------------------------------------------
    async def _handle(self, msg: Msg) -> None:
        event = bus.decode_task_event(msg.data, msg.subject)
        if not isinstance(event, TaskSubmitted):
            await bus.dead_letter(self.js, "victoria", msg, "not a task_submitted event")
            await msg.term()
            return
        task = event
        attempt = msg.metadata.num_delivered or 1
        parent = tracing.context_from(msg.headers, task.traceparent)
        span = tracing.tracer().start_span(
            "task",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={"victoria.task_id": task.task_id, "victoria.attempt": attempt},
        )
        task_token = current_task_id.set(task.task_id)
        trace_token = current_trace_id.set(task.trace_id or tracing.trace_id_of(span))
        try:
            outcome = await self._attempt(msg, task, attempt, span)
            span.set_attribute("victoria.outcome", outcome)
        finally:
            span.end()
            current_task_id.reset(task_token)
            current_trace_id.reset(trace_token)

    async def _attempt(self, msg: Msg, task: TaskSubmitted, attempt: int, span: Span) -> str:
        """One delivery of one task; returns what became of it, for the span and the log."""
        history = await self._history(task, attempt)
        if history.terminal:
            await msg.ack()
            return "already finished"
        if attempt > self.config.max_attempts:
            error = f"gave up after {self.config.max_attempts} attempts (each a delivery to Victoria)"
            await self._finish(
                TaskFailed(
                    task_id=task.task_id, error=error, error_kind="max_attempts", attempts=attempt - 1
                ),
                history,
            )
            await bus.dead_letter(self.js, "victoria", msg, error, task_id=task.task_id)
            await msg.term()
            return "max_attempts"
        if history.cancel_reason is not None:
            await self._finish(
                TaskCancelled(task_id=task.task_id, reason=history.cancel_reason, attempts=attempt), history
            )
            await msg.ack()
            return "cancelled"
        remaining = task.deadline_s - (datetime.now(UTC) - task.ts).total_seconds()
        if remaining <= 0:
            await self._finish(self._deadline_failure(task, attempt), history)
            await msg.ack()
            return "deadline"
        ctx = _Context(self, task, history, span)
        started = TaskStarted(task_id=task.task_id, attempt=attempt, instance=self.instance)
        if attempt == 1:
            ctx.pending_start = started  # stored with the attempt's first event (see _Context)
            log.debug("task %s attempt 1 started", task.task_id)
        else:
            # A retry is what an operator looks for: recorded at once.
            await bus.append(self.js, started, "started", key=f"started:{attempt}")
            log.info("task %s attempt %d started", task.task_id, attempt)
        run = asyncio.create_task(workflow.run(ctx), name=f"task-{task.task_id}")
        self.running[task.task_id] = run
        terminal: TaskCompleted | TaskFailed | TaskCancelled
        try:
            try:
                async with asyncio.timeout(remaining) as deadline:
                    output = await run
                terminal = TaskCompleted(task_id=task.task_id, output=output, attempts=attempt)
            except TimeoutError:
                if not deadline.expired():
                    raise
                terminal = self._deadline_failure(task, attempt, ctx.last_model_error)
            except TaskAborted as exc:
                terminal = TaskFailed(
                    task_id=task.task_id, error=exc.reason, error_kind=exc.kind, attempts=attempt
                )
            except asyncio.CancelledError:
                reason = self.cancel_reasons.get(task.task_id)
                current = asyncio.current_task()
                if reason is None or (current is not None and current.cancelling()):
                    raise
                terminal = TaskCancelled(task_id=task.task_id, reason=reason, attempts=attempt)
        finally:
            if not run.done():
                run.cancel()
            self.running.pop(task.task_id, None)
            self.cancel_reasons.pop(task.task_id, None)
            ctx.end_stage()
        await self._finish(terminal, history, span)
        await msg.ack()
        routine = attempt == 1 and isinstance(terminal, TaskCompleted)  # the events tell it all
        log.log(
            logging.DEBUG if routine else logging.INFO,
            "task %s %s after attempt %d",
            task.task_id,
            _status(terminal),
            attempt,
        )
        return _status(terminal)

    async def _history(self, task: TaskSubmitted, attempt: int) -> TaskHistory:
        if attempt == 1:
            # First delivery: nothing but the submission and perhaps a cancel can be stored yet.
            # A cancel of a task submitted while this instance runs reached its subscription; a
            # task submitted before it started (queued while Victoria was down) may have been
            # cancelled unseen, and the stream says so (one direct get; only for those tasks).
            history = TaskHistory(task.task_id)
            history.apply(task)
            reason = self.recent_cancels.get(task.task_id)
            if reason is not None:
                history.apply(TaskCancelRequested(task_id=task.task_id, reason=reason))
            elif (task.ts - self.started_at).total_seconds() < CLOCK_SLACK:
                await self._stored_cancel(history)
            return history
        history = TaskHistory(task.task_id)
        for seq, event in await bus.read_task_events(self.js, task.task_id):
            history.apply(event, seq)
        if history.submitted is None:
            history.apply(task)
        return history

    async def _stored_cancel(self, history: TaskHistory) -> None:
        """Apply a stored cancel of the task, and the terminal event the gateway wrote with it when
        the task was still queued (then the attempt ends as "already finished", writing nothing)."""
        cancel = await bus.last_task_event(self.js, history.task_id, "cancel")
        if isinstance(cancel, TaskCancelRequested):
            history.apply(cancel)
            ended = await bus.last_task_event(self.js, history.task_id, "cancelled")
            if isinstance(ended, TaskCancelled):
                history.apply(ended)

    def _deadline_failure(self, task: TaskSubmitted, attempt: int, cause: str | None = None) -> TaskFailed:
        error = f"task deadline of {task.deadline_s:g}s passed"
        if cause:
            error += f"; last model error: {cause}"
        return TaskFailed(task_id=task.task_id, error=error, error_kind="deadline", attempts=attempt)

    async def _finish(
        self,
        event: TaskCompleted | TaskFailed | TaskCancelled,
        history: TaskHistory,
        span: Span | None = None,
    ) -> None:
        """Store the terminal event, with the task's model calls summed up in it (for metrics)."""
        calls = history.model_calls()
        if calls:
            event = msgspec.structs.replace(event, model_calls=calls)
        kind: subjects.TaskKind = _status(event)
        headers = tracing.headers_for(span) if span is not None else None
        await bus.append(self.js, event, kind, key="terminal", headers=headers)


def _status(event: TaskCompleted | TaskFailed | TaskCancelled) -> subjects.TaskKind:
    if isinstance(event, TaskCompleted):
        return "completed"
    if isinstance(event, TaskFailed):
        return "failed"
    return "cancelled"


class _VeronicaDown(Exception):
    pass


class _Context:
    """The workflow's view of the world, backed by the task's history and the bus.

    Markers (the start of attempt 1, a stage entered) are not stored on their own when a model
    request follows them: the request carries them (``LLMRequested.attempt``, ``.stage``), which
    saves an fsynced append each. Before anything else that is stored or waited for (a file
    request, a pause) the pending markers are stored as ``task_started`` and ``task_stage``
    events, in order. A marker lost in a crash was never acted on, and the next attempt records its
    own.
    """

    def __init__(self, actor: Victoria, task: TaskSubmitted, history: TaskHistory, span: Span) -> None:
        self.actor = actor
        self.task = task
        self.history = history
        self.span = span
        self._stage_span: Span | None = None
        self.delegate_timeout = actor.config.delegate_timeout
        self.last_model_error: str | None = None
        self.pending_start: TaskStarted | None = None
        self.pending_stage: TaskStage | None = None

    async def stage(
        self, stage: str, *, step: int | None = None, detail: str = "", key: str | None = None
    ) -> None:
        default_key = stage_key(stage, step)
        key = key or default_key
        if self.pending_stage is not None and key not in self.history.stages_seen:
            await self.flush_markers()  # a stage no model request carried, under its own span
        self.end_stage()
        name = f"step {step}" if step is not None else stage
        self._stage_span = tracing.tracer().start_span(
            name,
            context=trace.set_span_in_context(self.span),
            attributes={"victoria.task_id": self.task.task_id, "victoria.stage": stage},
        )
        if key in self.history.stages_seen:
            self._stage_span.set_attribute("victoria.replayed", True)
            return
        event = TaskStage(task_id=self.task.task_id, stage=stage, step=step, detail=detail, key=key)
        self.history.apply(event)
        if not detail and key == default_key:
            self.pending_stage = event  # the model request that follows carries it
            return
        await self.flush_markers()
        await bus.append(self.actor.js, event, "stage", key=f"stage:{key}", headers=self._headers())

    async def flush_markers(self) -> None:
        """Store the markers no model request has carried, oldest first."""
        start, self.pending_start = self.pending_start, None
        if start is not None:
            await bus.append(self.actor.js, start, "started", key=f"started:{start.attempt}")
        stage, self.pending_stage = self.pending_stage, None
        if stage is not None:
            await bus.append(self.actor.js, stage, "stage", key=f"stage:{stage.key}", headers=self._headers())

    def end_stage(self) -> None:
        if self._stage_span is not None:
            self._stage_span.end()
            self._stage_span = None

    def _headers(self) -> dict[str, str]:
        return tracing.headers_for(self._stage_span or self.span)

    async def pause(self, seconds: float, *, before: str) -> None:
        if before not in self.history.llm_requests:
            await self.flush_markers()
            await asyncio.sleep(seconds)

    async def llm(
        self, request_id: str, purpose: str, messages: list[ChatMessage], *, json_mode: bool = False
    ) -> LLMResult:
        known = self.history.llm_results.get(request_id)
        if known is not None:
            return known
        key = (self.task.task_id, request_id)
        future: asyncio.Future[LLMResult] = asyncio.get_running_loop().create_future()
        self.actor.waiters[key] = future
        try:
            if request_id in self.history.llm_requests:
                await self.flush_markers()  # waiting for an answer asked for on an earlier attempt
            else:
                start, stage = self.pending_start, self.pending_stage
                self.pending_start = self.pending_stage = None
                request = LLMRequested(
                    task_id=self.task.task_id,
                    request_id=request_id,
                    purpose=purpose,
                    messages=messages,
                    model=self.task.model,
                    timeout_s=self.actor.config.llm_timeout,
                    json_mode=json_mode,
                    stage=stage.stage if stage is not None else None,
                    step=stage.step if stage is not None else None,
                    attempt=start.attempt if start is not None else None,
                    instance=start.instance if start is not None else "",
                )
                await bus.append(
                    self.actor.js,
                    request,
                    "llm_request",
                    key=f"llm_req:{request_id}",
                    headers=self._headers(),
                )
                self.history.apply(request)
            while True:
                try:
                    result = await asyncio.wait_for(asyncio.shield(future), RESULT_RECHECK)
                    break
                except TimeoutError:
                    # A result published while we were disconnected is in the stream all the same.
                    last = await bus.last_task_event(self.actor.js, self.task.task_id, "llm_result")
                    if isinstance(last, LLMResult) and last.request_id == request_id:
                        result = last
                        break
        finally:
            self.actor.waiters.pop(key, None)
        self.history.apply(result)
        if not result.ok:
            self.last_model_error = result.error
        return result

    async def files(self, call_id: str, request: FilesRequest, *, timeout: float) -> ToolResult:
        known = self.history.tool_results.get(call_id)
        if known is not None:
            return known
        await self.flush_markers()
        tool = "read_file" if request.op == "read" else "list_directory"
        args: dict[str, object] = {"path": request.path}
        if request.limit is not None:
            args["limit"] = request.limit
        started = time.monotonic()
        try:
            reply_msg = await self._ask_veronica(request, timeout)
            reply = files_reply_decoder.decode(reply_msg.data)
            result = ToolResult(
                task_id=self.task.task_id,
                call_id=call_id,
                tool=tool,
                args=args,
                ok=reply.ok,
                output=reply.output,
                error=reply.error,
            )
        except _VeronicaDown as exc:
            result = self._tool_error(call_id, tool, args, f"Veronica is down ({exc}); not waiting for her")
        except nats.errors.NoRespondersError:
            result = self._tool_error(call_id, tool, args, "Veronica is not running (no responders)")
        except TimeoutError:
            result = self._tool_error(call_id, tool, args, f"Veronica did not answer within {timeout:g}s")
        except msgspec.DecodeError as exc:
            result = self._tool_error(call_id, tool, args, f"Veronica's reply was unreadable: {exc}")
        log.log(
            logging.DEBUG if result.ok else logging.INFO,
            "task %s %s %s: %s in %.3fs",
            self.task.task_id,
            call_id,
            tool,
            "ok" if result.ok else result.error,
            time.monotonic() - started,
        )
        await bus.append(self.actor.js, result, "tool_result", key=f"tool:{call_id}", headers=self._headers())
        self.history.apply(result)
        return result

    async def _ask_veronica(self, request: FilesRequest, timeout: float) -> Msg:
        """Veronica's reply. Her file work is read-only, so when an instance of hers goes down while
        a request is out, the request is sent again to those still up; with none up, it fails at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            down = self.actor.veronica_down()
            if down is not None:
                raise _VeronicaDown(down)
            went_down = self.actor.veronica_went_down
            ask = asyncio.ensure_future(
                self.actor.nc.request(
                    subjects.VERONICA_FILES,
                    encode(request),
                    timeout=max(0.001, deadline - loop.time()),
                    headers=self._headers(),
                )
            )
            watch = asyncio.ensure_future(went_down.wait())
            try:
                await asyncio.wait({ask, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
            if ask.done():
                return ask.result()
            ask.cancel()
            log.info("task %s: a Veronica went down while she had its request", self.task.task_id)

    def _tool_error(self, call_id: str, tool: str, args: dict[str, object], error: str) -> ToolResult:
        return ToolResult(
            task_id=self.task.task_id, call_id=call_id, tool=tool, args=args, ok=False, error=error
        )
