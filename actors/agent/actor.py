"""Victoria, the agent: takes tasks from a durable consumer and runs them, resuming from their events.

One delivery of a ``task_submitted`` message is one attempt. A first delivery starts from the
submission; a redelivery reads the task's history, and the workflow takes every recorded stage,
model result and tool result from it. Every append of an attempt is fenced on the task's history
(``victoria.runtime.fence``): an attempt that another one has overtaken (it was frozen, cut off, or
only slower than the ack wait) has its next append refused, and stops there, writing nothing more
and leaving the message alone. The message is acknowledged only after the terminal event is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from victoria.actors.agent import workflow
from victoria.errors import CancelRequested, TaskAborted, TaskLost
from victoria.events import contracts, subjects, tools
from victoria.events.codec import encode, files_reply_decoder, service_decoder
from victoria.events.fold import TaskHistory, stage_key
from victoria.runtime import fence, publish, reads, tracing
from victoria.runtime.base import Actor
from victoria.runtime.config import Config
from victoria.runtime.consumer import WorkConsumer
from victoria.runtime.context import current_task_id, current_trace_id
from victoria.runtime.fence import TaskWriter
from victoria.runtime.memory import Exchange, KvMemory
from victoria.runtime.tooltable import ToolTables

log = logging.getLogger(__name__)

CLAIM_TRIES: Final = 3  # reads of the history a redelivery may need before its claim goes through
RESULT_RECHECK: Final = 10.0  # seconds between looks in the stream for a model result we may have missed


class Victoria(Actor):
    name: ClassVar[str] = "victoria"

    def __init__(self, nc: NATS, config: Config, *, restarts: int = 0, fenced: bool = True) -> None:
        super().__init__(nc, config, restarts=restarts, fenced=fenced)
        self.consumers: list[WorkConsumer] = []
        self.running: dict[str, set[asyncio.Task[workflow.Outcome]]] = {}
        """Task id -> its workflows running here (two only while this instance overtook itself)."""
        self.cancel_reasons: dict[str, str] = {}
        self.waiters: dict[tuple[str, str], set[asyncio.Future[contracts.LLMResult]]] = {}
        """(task id, request id) -> the attempts waiting for that model result."""
        self.tool_waiters: dict[tuple[str, str], set[asyncio.Future[contracts.ToolOutcome]]] = {}
        """(task id, call id) -> the attempts waiting for that tool call's outcome."""
        self._subs: list[Subscription] = []
        self.veronica: dict[str, str | None] = {}
        """Veronica's instances as the monitor and supervisors report them: instance -> reason if down."""
        self.veronica_went_down = asyncio.Event()
        self.memory = KvMemory(self.js)
        self.tool_tables = ToolTables(self.js)

    async def on_start(self) -> None:
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
        return sum(len(runs) for runs in self.running.values())

    # --- bus callbacks ---------------------------------------------------------------------------
    async def on_result(self, msg: Msg) -> None:
        event = reads.decode_task_event(msg.data, msg.subject)
        if isinstance(event, contracts.LLMResult):
            for future in self.waiters.get((event.task_id, event.request_id), ()):
                if not future.done():
                    future.set_result(event)
        elif isinstance(event, contracts.ToolOutcome):
            for outcome in self.tool_waiters.get((event.task_id, event.call_id), ()):
                if not outcome.done():
                    outcome.set_result(event)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            task_id = subjects.task_id_of(msg.subject)
        except ValueError:
            return
        runs = self.running.get(task_id)
        if not runs:
            return  # not running here; the attempt that runs it or the next one to start ends it
        event = reads.decode_task_event(msg.data, msg.subject)
        reason = getattr(event, "reason", None) or "cancelled by request"
        self.cancel_reasons[task_id] = reason
        log.info("task %s cancel requested", task_id)
        for run in runs:
            run.cancel()

    async def _on_veronica(self, msg: Msg) -> None:
        try:
            event = service_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(event, contracts.ServiceDown):
            self.veronica[event.instance] = event.reason
            went_down, self.veronica_went_down = self.veronica_went_down, asyncio.Event()
            went_down.set()  # wakes the requests that were out to her
        elif isinstance(event, contracts.ServiceUp | contracts.ServiceStarted):
            self.veronica[event.instance] = None

    def veronica_down(self) -> str | None:
        """Why Veronica cannot answer, when every known instance of hers is down; else None."""
        if self.veronica and all(reason is not None for reason in self.veronica.values()):
            return "; ".join(f"{inst}: {reason}" for inst, reason in sorted(self.veronica.items()))
        return None

    # --- one delivery --------------------------------------------------------------------------
    async def _handle(self, msg: Msg) -> None:
        event = reads.decode_task_event(msg.data, msg.subject)
        if not isinstance(event, contracts.TaskSubmitted):
            await publish.dead_letter(self.js, "victoria", msg, "not a task_submitted event")
            await msg.term()
            return
        task = event
        attempt = reads.delivery_count(msg)
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

    async def _attempt(self, msg: Msg, task: contracts.TaskSubmitted, attempt: int, span: Span) -> str:
        """One delivery of one task; returns what became of it, for the span and the log."""
        writer = TaskWriter(
            self.nc, task.task_id, attempt=attempt, expected=reads.stream_sequence(msg), fenced=self.fenced
        )
        try:
            history = await self._history(task, attempt, writer)
            tries = 1
            while True:
                try:
                    ended = await self._settle(msg, task, attempt, history, writer)
                    if ended is not None:
                        return ended
                    if attempt > 1:
                        # A retry claims the task at once: from here on no older attempt can write.
                        started = contracts.TaskStarted(
                            task_id=task.task_id, attempt=attempt, instance=self.instance
                        )
                        await writer.append(started, key=f"started:{attempt}")
                        history.apply(started)
                        log.info("task %s attempt %d started", task.task_id, attempt)
                    break
                except CancelRequested as exc:
                    history.apply(contracts.TaskCancelRequested(task_id=task.task_id, reason=exc.reason))
                except TaskLost:
                    # Written between this attempt's read and its claim: by an older attempt that
                    # has not noticed yet (read again and claim on top), or by a newer one.
                    if attempt == 1 or tries >= CLAIM_TRIES:
                        raise
                    history = await self._read(task)
                    tries += 1
                    if history.attempts > attempt:
                        raise
                    writer.restart_from(history.own_seq)
            return await self._run(msg, task, attempt, history, writer, span)
        except TaskLost as exc:
            log.warning("%s; it stops here, writes nothing more and leaves the message alone", exc)
            span.set_attribute("victoria.lost", True)
            return "lost"

    async def _history(self, task: contracts.TaskSubmitted, attempt: int, writer: TaskWriter) -> TaskHistory:
        if attempt > 1:
            history = await self._read(task)
            writer.restart_from(history.own_seq)
            return history
        # First delivery: nothing but the submission and perhaps a cancel request can be stored
        # yet, and a cancel request fences off this attempt's first append (which then ends it
        # cancelled): no read needed. Without fencing, one direct get looks for a stored cancel.
        history = TaskHistory(task.task_id)
        history.apply(task, writer.expected)
        if not self.fenced:
            cancel = await reads.last_task_event(self.js, task.task_id, "cancel")
            if isinstance(cancel, contracts.TaskCancelRequested):
                history.apply(cancel)
        return history

    async def _read(self, task: contracts.TaskSubmitted) -> TaskHistory:
        history = TaskHistory(task.task_id)
        for seq, event in await reads.task_events(self.js, task.task_id):
            history.apply(event, seq)
        if history.submitted is None:
            history.apply(task)
        return history

    async def _settle(
        self, msg: Msg, task: contracts.TaskSubmitted, attempt: int, history: TaskHistory, writer: TaskWriter
    ) -> str | None:
        """End the task without running it when its history or its deliveries say so (and say
        how); None when it is to run."""
        if history.closed:
            await self._remember(history)  # in case the attempt that finished it died before it could
            await msg.ack()
            return "already finished"
        if history.cancel_reason is not None:
            cancelled = contracts.TaskCancelled(
                task_id=task.task_id, reason=history.cancel_reason, attempts=attempt
            )
            await self._finish(cancelled, history, writer)
            await msg.ack()
            return "cancelled"
        if attempt > self.config.max_attempts:
            error = f"gave up after {self.config.max_attempts} attempts (each a delivery to Victoria)"
            failed = contracts.TaskFailed(
                task_id=task.task_id, error=error, error_kind="max_attempts", attempts=attempt - 1
            )
            if isinstance(await self._finish(failed, history, writer), contracts.TaskCancelled):
                await msg.ack()
                return "cancelled"
            await publish.dead_letter(self.js, "victoria", msg, error, task_id=task.task_id)
            await msg.term()
            return "max_attempts"
        if self._remaining(task) <= 0:
            stored = await self._finish(self._deadline_failure(task, attempt), history, writer)
            await msg.ack()
            return "deadline" if isinstance(stored, contracts.TaskFailed) else "cancelled"
        return None

    @staticmethod
    def _remaining(task: contracts.TaskSubmitted) -> float:
        return task.deadline_s - (datetime.now(UTC) - task.ts).total_seconds()

    async def _run(
        self,
        msg: Msg,
        task: contracts.TaskSubmitted,
        attempt: int,
        history: TaskHistory,
        writer: TaskWriter,
        span: Span,
    ) -> str:
        ctx = _Context(self, task, history, span, writer)
        if attempt == 1:
            ctx.pending_start = contracts.TaskStarted(task_id=task.task_id, attempt=1, instance=self.instance)
            log.debug("task %s attempt 1 started", task.task_id)
        run = asyncio.create_task(workflow.run(ctx), name=f"task-{task.task_id}")
        runs = self.running.setdefault(task.task_id, set())
        runs.add(run)
        terminal: contracts.TaskCompleted | contracts.TaskFailed | contracts.TaskCancelled
        try:
            try:
                async with asyncio.timeout(self._remaining(task)) as deadline:
                    outcome = await run
                terminal = contracts.TaskCompleted(
                    task_id=task.task_id, output=outcome.output, attempts=attempt, knowledge=outcome.knowledge
                )
            except TimeoutError:
                if not deadline.expired():
                    raise
                terminal = self._deadline_failure(task, attempt, ctx.last_model_error)
            except TaskAborted as exc:
                terminal = contracts.TaskFailed(
                    task_id=task.task_id, error=exc.reason, error_kind=exc.kind, attempts=attempt
                )
            except CancelRequested as exc:  # an append of the workflow found the request
                terminal = contracts.TaskCancelled(task_id=task.task_id, reason=exc.reason, attempts=attempt)
            except asyncio.CancelledError:
                reason = self.cancel_reasons.get(task.task_id)
                current = asyncio.current_task()
                if reason is None or (current is not None and current.cancelling()):
                    raise
                terminal = contracts.TaskCancelled(task_id=task.task_id, reason=reason, attempts=attempt)
        finally:
            if not run.done():
                run.cancel()
            runs.discard(run)
            if not runs:
                self.running.pop(task.task_id, None)
                self.cancel_reasons.pop(task.task_id, None)
            ctx.end_stage()
        stored = await self._finish(terminal, history, writer, span)
        await msg.ack()
        routine = attempt == 1 and isinstance(stored, contracts.TaskCompleted)  # the events tell it all
        log.log(
            logging.DEBUG if routine else logging.INFO,
            "task %s %s after attempt %d",
            task.task_id,
            stored.kind,
            attempt,
        )
        return stored.kind

    def _deadline_failure(
        self, task: contracts.TaskSubmitted, attempt: int, cause: str | None = None
    ) -> contracts.TaskFailed:
        error = f"task deadline of {task.deadline_s:g}s passed"
        if cause:
            error += f"; last model error: {cause}"
        return contracts.TaskFailed(
            task_id=task.task_id, error=error, error_kind="deadline", attempts=attempt
        )

    async def _finish(
        self,
        event: contracts.TaskCompleted | contracts.TaskFailed | contracts.TaskCancelled,
        history: TaskHistory,
        writer: TaskWriter,
        span: Span | None = None,
    ) -> contracts.TaskCompleted | contracts.TaskFailed | contracts.TaskCancelled:
        """Store the terminal event, with the task's model calls summed up in it (for metrics), and
        return it. A cancel request stored since the attempt's last append turns it into
        ``task_cancelled``: the request decided the task."""
        calls = history.model_calls()
        if calls:
            event = msgspec.structs.replace(event, model_calls=calls)
        headers = tracing.headers_for(span) if span is not None else None
        try:
            await writer.append(event, key="terminal", headers=headers)
        except CancelRequested as exc:
            event = contracts.TaskCancelled(
                task_id=event.task_id, reason=exc.reason, attempts=event.attempts, model_calls=calls
            )
            await writer.append(event, key="terminal", headers=headers)
        history.apply(event)
        await self._remember(history)
        return event

    async def _remember(self, history: TaskHistory) -> None:
        """A completed task of a session joins that session's memory. With PostgreSQL the projector
        keeps it there; without, it goes into the key-value bucket here (once: it is keyed by the
        task). A failure costs the session this exchange, never the task."""
        submitted = history.submitted
        if self.config.postgres_dsn or submitted is None or not submitted.session_id:
            return
        if history.status != "completed" or history.output is None:
            return
        try:
            await self.memory.remember(
                submitted.session_id,
                Exchange(history.task_id, submitted.goal, history.output, history.updated_at or submitted.ts),
            )
        except Exception as exc:  # NATS trouble, a race lost ten times: the task is done all the same
            log.warning(
                "task %s: not added to the memory of session %s: %s",
                history.task_id,
                submitted.session_id,
                exc,
            )


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

    def __init__(
        self,
        actor: Victoria,
        task: contracts.TaskSubmitted,
        history: TaskHistory,
        span: Span,
        writer: TaskWriter,
    ) -> None:
        self.actor = actor
        self.task = task
        self.history = history
        self.span = span
        self.writer = writer
        self._stage_span: Span | None = None
        self.delegate_timeout = actor.config.delegate_timeout
        self.last_model_error: str | None = None
        self.pending_start: contracts.TaskStarted | None = None
        self.pending_stage: contracts.TaskStage | None = None
        self.pending_understood: str | None = None

    def understood(self, text: str) -> None:
        self.pending_understood = text

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
        event = contracts.TaskStage(task_id=self.task.task_id, stage=stage, step=step, detail=detail, key=key)
        self.history.apply(event)
        if not detail and key == default_key:
            self.pending_stage = event  # the model request that follows carries it
            return
        await self.flush_markers()
        await self.writer.append(event, key=f"stage:{key}", headers=self._headers())

    async def flush_markers(self) -> None:
        """Store the markers no model request has carried, oldest first."""
        start, self.pending_start = self.pending_start, None
        if start is not None:
            await self.writer.append(start, key=f"started:{start.attempt}")
        stage, self.pending_stage = self.pending_stage, None
        if stage is not None:
            await self.writer.append(stage, key=f"stage:{stage.key}", headers=self._headers())

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
        self,
        request_id: str,
        purpose: contracts.Purpose,
        messages: list[contracts.ChatMessage],
        *,
        json_mode: bool = False,
        tools: workflow.ToolSpecs = (),
    ) -> contracts.LLMResult:
        asked = workflow.fingerprint(messages, model=self.task.model, json_mode=json_mode, tools=tools)
        request_id = self._same_question(request_id, asked)
        known = self.history.llm_results.get(request_id)
        if known is not None:
            return known
        key = (self.task.task_id, request_id)
        future: asyncio.Future[contracts.LLMResult] = asyncio.get_running_loop().create_future()
        waiting = self.actor.waiters.setdefault(key, set())
        waiting.add(future)
        # Only the instance that waits hears the answer: one subscription per request, made before
        # the request is appended (one connection keeps the order), gone once it is answered.
        listening = await self.actor.nc.subscribe(
            subjects.result_stored(self.task.task_id, request_id), cb=self.actor.on_result
        )
        try:
            if request_id in self.history.llm_requests:
                await self.flush_markers()  # waiting for an answer asked for on an earlier attempt
            else:
                start, stage, understood = self.pending_start, self.pending_stage, self.pending_understood
                self.pending_start = self.pending_stage = self.pending_understood = None
                request = contracts.LLMRequested(
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
                    fingerprint=asked,
                    workflow=workflow.VERSION,
                    understood=understood,
                    tools=list(tools),
                )
                await self.writer.append(request, key=f"llm_req:{request_id}", headers=self._headers())
                self.history.apply(request)
            while True:
                try:
                    result = await asyncio.wait_for(asyncio.shield(future), RESULT_RECHECK)
                    break
                except TimeoutError:
                    # A result published while we were disconnected is in the stream all the same.
                    stored = await reads.last_llm_result(self.actor.js, self.task.task_id, request_id)
                    if stored is not None:
                        result = stored
                        break
        finally:
            waiting.discard(future)
            if not waiting:
                self.actor.waiters.pop(key, None)
            with contextlib.suppress(nats.errors.Error):
                await listening.unsubscribe()
        self.history.apply(result)
        if not result.ok:
            self.last_model_error = result.error
        return result

    def _same_question(self, request_id: str, asked: str) -> str:
        """The id under which the history holds this very question: ``request_id`` unless a stored
        request of that id asked something else (the code or the prompts changed between attempts);
        then the next of ``<id>-v2``, ``<id>-v3``, ... that is free or asked the same. The old answer
        is never taken for a different question."""
        rid, version = request_id, 1
        while True:
            stored = self.history.llm_requests.get(rid)
            if stored is None or not stored.fingerprint or stored.fingerprint == asked:
                return rid
            version += 1
            log.warning(
                "task %s: the stored request %s (workflow v%d) asked something else than workflow v%d "
                "asks now; asking again as %s-v%d",
                self.task.task_id,
                rid,
                stored.workflow,
                workflow.VERSION,
                request_id,
                version,
            )
            rid = f"{request_id}-v{version}"

    def _same_tool_call(self, call_id: str, tool: str, args: dict[str, object]) -> str:
        """As ``_same_question``, for a file request: a stored result of another call is not taken."""
        cid, version = call_id, 1
        while True:
            stored = self.history.tool_results.get(cid)
            if stored is None or (stored.tool == tool and stored.args == args):
                return cid
            version += 1
            log.warning(
                "task %s: the stored result of %s was for %s %s, not %s %s; asking again as %s-v%d",
                self.task.task_id,
                cid,
                stored.tool,
                stored.args,
                tool,
                args,
                call_id,
                version,
            )
            cid = f"{call_id}-v{version}"

    async def tool(self, call_id: str, tool: str, args: dict[str, Any]) -> contracts.ToolOutcome:
        """One tool call of Veronica's, durably: its intent stored in the history, its outcome
        waited for (``actors/veronica/executor.py``). Taken from the history when it holds it. A
        call nobody took within ``delegate_timeout`` is given up (claimed by Victoria, so that it
        never runs after), and its outcome says so."""
        spec = tools.BY_NAME.get(tool) or (await self.tool_table()).get(tool)
        asked = workflow.tool_fingerprint(tool, args)
        call_id = self._same_intent(call_id, asked)
        known = self.history.tool_outcomes.get(call_id)
        if known is not None:
            return known
        if spec is None and call_id not in self.history.tool_intents:
            # An MCP server's tool, its server gone since the step's table was read.
            return self._not_run(call_id, tool, f"there is no tool {tool!r} now: its MCP server is not up")
        approved_by = ""
        if (
            spec is not None
            and spec.effect in self.actor.config.approvals_needed
            and call_id not in self.history.tool_intents
        ):
            decided = await self._approval(call_id, tool, args, spec.effect)
            if decided.decision == "deny":
                by = decided.by or "someone"
                return self._not_run(call_id, tool, f"denied by {by}: {decided.reason or 'no reason given'}")
            approved_by = decided.by or "someone"
        key = (self.task.task_id, call_id)
        future: asyncio.Future[contracts.ToolOutcome] = asyncio.get_running_loop().create_future()
        waiting = self.actor.tool_waiters.setdefault(key, set())
        waiting.add(future)
        listening = await self.actor.nc.subscribe(
            subjects.result_stored(self.task.task_id, call_id), cb=self.actor.on_result
        )
        started = time.monotonic()
        try:
            await self.flush_markers()
            if spec is not None and call_id not in self.history.tool_intents:
                intent = contracts.ToolIntent(
                    task_id=self.task.task_id,
                    call_id=call_id,
                    tool=tool,
                    args=args,
                    effect=spec.effect,
                    rerun=spec.rerun,
                    workspace=self.task.workspace,
                    fingerprint=asked,
                    approved_by=approved_by,
                )
                await self.writer.append(intent, key=f"tool_intent:{call_id}", headers=self._headers())
                self.history.apply(intent)
            outcome = await self._outcome_of(call_id, tool, future)
        finally:
            waiting.discard(future)
            if not waiting:
                self.actor.tool_waiters.pop(key, None)
            with contextlib.suppress(nats.errors.Error):
                await listening.unsubscribe()
        log.log(
            logging.DEBUG if outcome.ok else logging.INFO,
            "task %s %s %s: %s in %.3fs",
            self.task.task_id,
            call_id,
            tool,
            "ok" if outcome.ok else outcome.error,
            time.monotonic() - started,
        )
        self.history.apply(outcome)
        return outcome

    def _not_run(self, call_id: str, tool: str, error: str) -> contracts.ToolOutcome:
        """The outcome of a call that was never sent to Veronica: what the model is told."""
        return contracts.ToolOutcome(
            task_id=self.task.task_id,
            call_id=call_id,
            tool=tool,
            ok=False,
            error=error,
            instance=self.actor.instance,
        )

    async def tool_table(self) -> tools.Table:
        return await self.actor.tool_tables.current()

    async def _approval(
        self, call_id: str, tool: str, args: dict[str, Any], effect: contracts.ToolEffect
    ) -> contracts.ApprovalDecided:
        """A person's decision on a call whose effect needs one: from the history when it holds it;
        else asked for (``approval_requested``, in the fenced history) and waited for, within
        ``VICTORIA_APPROVAL_TIMEOUT`` (default: the task's deadline), after which Victoria denies it
        ("timed out"). The first decision stored holds, whoever made it."""
        decided = self.history.decision(call_id)
        if decided is not None:
            return decided
        future: asyncio.Future[contracts.ApprovalDecided] = asyncio.get_running_loop().create_future()

        async def heard(msg: Msg) -> None:
            event = reads.decode_task_event(msg.data, msg.subject)
            if isinstance(event, contracts.ApprovalDecided) and not future.done():
                future.set_result(event)

        listening = await self.actor.nc.subscribe(
            subjects.approval_decided(self.task.task_id, call_id), cb=heard
        )
        try:
            asked = self.history.approvals.get(call_id) if self.history.approvals else None
            requested = asked.requested if asked is not None else None
            if requested is None:
                await self.flush_markers()
                timeout = self.actor.config.approval_timeout or max(0.0, Victoria._remaining(self.task))
                requested = contracts.ApprovalRequested(
                    task_id=self.task.task_id,
                    approval_id=call_id,
                    tool=tool,
                    args=args,
                    effect=effect,
                    timeout_s=round(timeout, 3),
                )
                await self.writer.append(requested, key=f"approval:{call_id}", headers=self._headers())
                self.history.apply(requested)
                log.info("task %s %s %s waits for a person's decision", self.task.task_id, call_id, tool)
            ends = requested.ts.timestamp() + requested.timeout_s
            while True:
                left = ends - time.time()
                try:
                    decided = await asyncio.wait_for(
                        asyncio.shield(future), max(0.0, min(RESULT_RECHECK, left))
                    )
                    break
                except TimeoutError:
                    pass
                stored = await reads.last_approval(self.actor.js, self.task.task_id, call_id)
                if stored is not None:
                    decided = stored
                    break
                if left > 0:
                    continue
                timed_out = contracts.ApprovalDecided(
                    task_id=self.task.task_id,
                    approval_id=call_id,
                    decision="deny",
                    reason="timed out",
                    by="victoria",
                )
                if await fence.append_once(
                    self.actor.nc, subjects.approval(self.task.task_id, call_id), timed_out
                ):
                    decided = timed_out
                    break
        finally:
            with contextlib.suppress(nats.errors.Error):
                await listening.unsubscribe()
        self.history.apply(decided)
        log.info("task %s %s %s: %s by %s", self.task.task_id, call_id, tool, decided.decision, decided.by)
        return decided

    async def _outcome_of(
        self, call_id: str, tool: str, future: asyncio.Future[contracts.ToolOutcome]
    ) -> contracts.ToolOutcome:
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.delegate_timeout
        claimed = False
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future), RESULT_RECHECK)
            except TimeoutError:
                pass
            stored = await reads.last_tool_outcome(self.actor.js, self.task.task_id, call_id)
            if stored is not None:
                return stored
            if claimed or loop.time() < give_up_at:
                continue
            if await reads.last_tool_claim(self.actor.js, self.task.task_id, call_id) is not None:
                claimed = True  # Veronica runs it: its outcome comes (the task's deadline bounds it)
                continue
            mine = contracts.ToolClaim(
                task_id=self.task.task_id, call_id=call_id, by="victoria", instance=self.actor.instance
            )
            if not await fence.append_once(
                self.actor.nc, subjects.tool_claim(self.task.task_id, call_id), mine
            ):
                claimed = True  # she took it just now
                continue
            error = f"not run: Veronica did not take it within {self.delegate_timeout:g}s"
            down = self.actor.veronica_down()
            if down is not None:
                error += f" (Veronica is down: {down})"
            given_up = contracts.ToolOutcome(
                task_id=self.task.task_id, call_id=call_id, tool=tool, ok=False, error=error,
                instance=self.actor.instance,
            )  # fmt: skip
            await fence.append_once(
                self.actor.nc, subjects.tool_outcome(self.task.task_id, call_id), given_up
            )
            return given_up

    def _same_intent(self, call_id: str, asked: str) -> str:
        """As ``_same_question``, for a tool call: a stored outcome of another call is not taken."""
        cid, version = call_id, 1
        while True:
            stored = self.history.tool_intents.get(cid)
            if stored is None or stored.fingerprint == asked:
                return cid
            version += 1
            log.warning(
                "task %s: the stored call %s was %s %s, not this one; calling again as %s-v%d",
                self.task.task_id,
                cid,
                stored.tool,
                stored.args,
                call_id,
                version,
            )
            cid = f"{call_id}-v{version}"

    async def files(
        self, call_id: str, request: contracts.FilesRequest, *, timeout: float
    ) -> contracts.ToolResult:
        tool = tools.by_op(request.op).name
        args: dict[str, object] = {"path": request.path}
        if request.limit is not None:
            args["limit"] = request.limit
        call_id = self._same_tool_call(call_id, tool, args)
        known = self.history.tool_results.get(call_id)
        if known is not None:
            return known
        await self.flush_markers()
        started = time.monotonic()
        try:
            reply_msg = await self._ask_veronica(request, timeout)
            reply = files_reply_decoder.decode(reply_msg.data)
            result = contracts.ToolResult(
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
        await self.writer.append(result, key=f"tool:{call_id}", headers=self._headers())
        self.history.apply(result)
        return result

    async def _ask_veronica(self, request: contracts.FilesRequest, timeout: float) -> Msg:
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

    def _tool_error(
        self, call_id: str, tool: str, args: dict[str, object], error: str
    ) -> contracts.ToolResult:
        return contracts.ToolResult(
            task_id=self.task.task_id, call_id=call_id, tool=tool, args=args, ok=False, error=error
        )
