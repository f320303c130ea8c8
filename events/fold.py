"""A task's state is the fold of its events. Pure code: no I/O, no clock.

``TaskHistory`` serves two readers: the gateway (the public status object) and Victoria (which
replays the history to resume a task after a crash: model results, tool results and stages it
already recorded are taken from here instead of being produced again).

A cancel request decides the task: its status is ``cancelled`` from that event on, and never
changes again. That is safe to show at once because appends are fenced on the task's history
(``victoria.runtime.fence``): an attempt cannot store ``task_completed`` after a cancel request;
its append is refused and it stores ``task_cancelled`` instead. That event (with the attempts and
model calls) closes the history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, assert_never

import msgspec

from victoria.events import contracts

_NOTHING: Final[dict[str, Any]] = {}
_NO_STAGES: Final[set[str]] = set()


class PendingApproval(msgspec.Struct, kw_only=True):
    """A tool call that waits for a person's decision (``POST /run/{task_id}/approvals/{id}``)."""

    id: str
    tool: str
    arguments: dict[str, Any]
    effect: str
    requested_at: datetime
    timeout_s: float


class TaskStatus(msgspec.Struct, kw_only=True):
    """The public status object of ``GET /run/status/{task_id}``."""

    task_id: str
    status: contracts.TaskStatusName
    stage: str | None
    output: str | None
    error: str | None
    attempts: int
    created_at: datetime | None
    updated_at: datetime | None
    goal: str | None = None
    task_type: str | None = None
    step: int | None = None
    correlation_id: str | None = None
    session_id: str | None = None
    error_kind: str | None = None
    trace_id: str | None = None
    knowledge: dict[str, Any] = {}
    """What the task knows beyond its output, in the old server's shape (``knowledge_of``)."""
    clarification_questions: list[str] | None = None
    """Set when the task ended asking the user back instead of acting (its ``output`` states them)."""
    max_steps: int | None = None
    max_steps_requested: int | None = None
    """Set when the client asked for more steps than the ceiling: what it asked for."""
    project: str | None = None
    expert: str | None = None
    model_wait: dict[str, Any] | None = None
    """Set while the task's model call waits for its model (another is loaded): ``model``,
    ``place`` among the calls waiting for it, ``since``; ``stage`` is then ``waiting_for_model``.
    Not an event: the gateway takes it from ``victoria.progress.<task_id>``."""
    pending_approvals: list[PendingApproval] = []
    """The tool calls that wait for a person's decision; ``stage`` is then ``waiting_for_approval``."""


def knowledge_of(
    submitted: contracts.TaskSubmitted | None, knowledge: contracts.Knowledge | None
) -> dict[str, Any]:
    """The old server's ``knowledge`` object: always a dict, with what this task knows."""
    out: dict[str, Any] = {}
    if knowledge is not None:
        out["metadata"] = {"model_used": knowledge.model_used, "source": knowledge.source}
        out["method"] = out["routed_to"] = knowledge.routed_to
        out["delegated_to"] = knowledge.delegated_to
        if knowledge.verbose_steps:
            out["verbose_steps"] = msgspec.to_builtins(knowledge.verbose_steps)
        if knowledge.clarification_questions:
            out["clarification_questions"] = list(knowledge.clarification_questions)
            out["suggested_restatement"] = knowledge.suggested_restatement
    if submitted is not None:
        out["project_context"] = submitted.project_context
        if submitted.expert is not None:
            out["expert"] = submitted.expert
        if submitted.project is not None:
            out["project"] = submitted.project
        if submitted.max_steps_requested is not None:
            out["max_steps"] = submitted.max_steps
            out["max_steps_requested"] = submitted.max_steps_requested
    return out


class TaskHistory:
    """Everything known about one task, built by applying its events in stream order."""

    __slots__ = (
        "approvals",
        "attempts",
        "cancel_reason",
        "closed",
        "created_at",
        "error",
        "error_kind",
        "knowledge",
        "last_seq",
        "llm_requests",
        "llm_results",
        "memo",
        "output",
        "own_seq",
        "stage",
        "stages_seen",
        "status",
        "step",
        "submitted",
        "task_id",
        "tool_intents",
        "tool_outcomes",
        "tool_results",
        "updated_at",
    )

    def __init__(self, task_id: str, *, memo: bool = True) -> None:
        self.task_id = task_id
        self.memo = memo
        """Keep model requests, results, tool results and the stages seen (Victoria needs them to
        resume a task; a status view does not). Without memo the four collections are shared empty
        ones that ``apply`` never writes to: a cache of thousands of folds holds no containers."""
        self.submitted: contracts.TaskSubmitted | None = None
        self.status: contracts.TaskStatusName = "queued"
        self.stage: str | None = None
        self.step: int | None = None
        self.output: str | None = None
        self.error: str | None = None
        self.error_kind: str | None = None
        self.attempts = 0
        self.created_at: datetime | None = None
        self.updated_at: datetime | None = None
        self.cancel_reason: str | None = None
        self.closed = False
        """A terminal event is stored: nothing more is written for the task."""
        self.knowledge: contracts.Knowledge | None = None
        self.llm_requests: dict[str, contracts.LLMRequested] = {} if memo else _NOTHING
        self.llm_results: dict[str, contracts.LLMResult] = {} if memo else _NOTHING
        self.tool_results: dict[str, contracts.ToolResult] = {} if memo else _NOTHING
        self.tool_intents: dict[str, contracts.ToolIntent] = {} if memo else _NOTHING
        self.tool_outcomes: dict[str, contracts.ToolOutcome] = {} if memo else _NOTHING
        self.stages_seen: set[str] = set() if memo else _NO_STAGES
        self.approvals: dict[str, Approval] | None = None
        """The task's approvals, by id (made at its first: most tasks have none)."""
        self.last_seq = 0
        self.own_seq = 0
        """Stream sequence of the last event of the task's own history (all but model results):
        what an attempt that resumes the task fences its first append on."""

    @property
    def terminal(self) -> bool:
        """The status is final: a terminal event is stored, or a cancel request decided it."""
        return self.status in ("completed", "failed", "cancelled")

    def apply(self, event: contracts.AnyTaskEvent, seq: int = 0) -> bool:
        """Apply one event. Returns False (and changes nothing) for an event already applied."""
        if seq:
            if seq <= self.last_seq:
                return False
            self.last_seq = seq
            if not isinstance(event, contracts.RESULT_EVENTS):
                self.own_seq = seq
        if self.created_at is None:
            self.created_at = event.ts
        self.updated_at = event.ts
        if self.closed and not isinstance(event, contracts.TaskSubmitted):
            # A late event (an in-flight model result, a duplicate) never reopens a finished task.
            return True
        self._remember(event)
        if not self.terminal:
            self._advance(event)
        return True

    def _remember(self, event: contracts.AnyTaskEvent) -> None:
        """What holds whatever the status says: the submission, the attempts, the terminal event
        that closes the history and (with ``memo``) what an attempt needs to resume the task."""
        match event:
            case contracts.TaskSubmitted():
                self.submitted = event
                self.created_at = event.ts
            case contracts.TaskStarted(attempt=attempt):
                self.attempts = max(self.attempts, attempt)
            case contracts.TaskStage(stage=stage, step=step, key=key):
                if self.memo:
                    self.stages_seen.add(key or stage_key(stage, step))
            case contracts.LLMRequested(stage=stage, step=step, attempt=attempt):
                if attempt is not None:
                    self.attempts = max(self.attempts, attempt)
                if self.memo:
                    if stage is not None:
                        self.stages_seen.add(stage_key(stage, step))
                    self.llm_requests[event.request_id] = event
            case contracts.LLMResult():
                if self.memo:
                    self.llm_results.setdefault(event.request_id, event)
            case contracts.ToolResult():
                if self.memo:
                    self.tool_results.setdefault(event.call_id, event)
            case contracts.ToolIntent():
                if self.memo:
                    self.tool_intents.setdefault(event.call_id, event)
            case contracts.ToolOutcome():
                if self.memo:
                    self.tool_outcomes.setdefault(event.call_id, event)
            case contracts.ToolClaim():
                pass  # the executor's; the outcome is what the task acts on
            case contracts.TaskCompleted() | contracts.TaskFailed() | contracts.TaskCancelled():
                # After a cancel request only task_cancelled can be stored on a fenced history;
                # another terminal event (an unfenced server) closes it without changing the status.
                self.closed = True
                self.attempts = max(self.attempts, event.attempts)
            case contracts.ApprovalRequested():
                asked = self._approval(event.approval_id)
                if asked.requested is None:
                    asked.requested = event
            case contracts.ApprovalDecided():
                decided = self._approval(event.approval_id)
                if decided.decided is None:
                    decided.decided = event
            case contracts.TaskCancelRequested():
                pass  # it decides the status (``_advance``), and holds nothing more
            case _:
                assert_never(event)

    def _approval(self, approval_id: str) -> Approval:
        """The task's approval of this id, made empty at its first event (most tasks have none)."""
        if self.approvals is None:
            self.approvals = {}
        return self.approvals.setdefault(approval_id, Approval(None))

    def pending_approvals(self) -> list[PendingApproval]:
        """The approvals asked for and not decided yet, oldest first."""
        if not self.approvals or self.terminal:
            return []
        return [
            PendingApproval(
                id=asked.approval_id,
                tool=asked.tool,
                arguments=asked.args,
                effect=asked.effect,
                requested_at=asked.ts,
                timeout_s=asked.timeout_s,
            )
            for approval in self.approvals.values()
            if (asked := approval.requested) is not None and approval.decided is None
        ]

    @property
    def shown_stage(self) -> str | None:
        """The stage as readers are shown it: ``waiting_for_approval`` while a call waits for a
        person (no event of Victoria's says so: the request does, until its decision)."""
        if self.approvals and not self.terminal and any(a.decided is None for a in self.approvals.values()):
            return "waiting_for_approval"
        return self.stage

    def decision(self, approval_id: str) -> contracts.ApprovalDecided | None:
        approval = (self.approvals or {}).get(approval_id)
        return approval.decided if approval is not None else None

    def _advance(self, event: contracts.AnyTaskEvent) -> None:
        """The status fields, while no terminal event or cancel request has decided them."""
        match event:
            case contracts.TaskStarted():
                self.status = "running"
            case contracts.TaskStage(stage=stage, step=step):
                self.stage, self.step = stage, step
                if self.status == "queued":
                    self.status = "running"
            case contracts.LLMRequested(stage=stage, step=step):
                if stage is not None:
                    self.stage, self.step = stage, step
                if self.status == "queued":
                    self.status = "running"
            case contracts.ToolIntent() | contracts.ApprovalRequested():
                if self.status == "queued":
                    self.status = "running"
            case contracts.TaskCancelRequested(reason=reason):
                self.cancel_reason = reason
                self.status, self.stage, self.error = "cancelled", "cancelled", reason
            case contracts.TaskCompleted(output=output, knowledge=knowledge):
                self.status, self.stage, self.output = "completed", "done", output
                self.knowledge = knowledge
            case contracts.TaskFailed(error=error, error_kind=kind):
                self.status, self.stage, self.error, self.error_kind = "failed", "failed", error, kind
            case contracts.TaskCancelled(reason=reason):
                self.status, self.stage, self.error = "cancelled", "cancelled", reason
            case (
                contracts.TaskSubmitted()
                | contracts.LLMResult()
                | contracts.ToolResult()
                | contracts.ToolClaim()
                | contracts.ToolOutcome()
                | contracts.ApprovalDecided()
            ):
                pass  # what they hold is remembered (``_remember``); the status stays as it is
            case _:
                assert_never(event)

    def model_calls(self) -> list[contracts.ModelCall]:
        """The task's model calls, one per stored result (kept with ``memo`` only)."""
        return [
            contracts.ModelCall(
                model=result.model or "unknown",
                outcome="ok" if result.ok else result.error_kind or "error",
                duration_s=result.duration_s,
                time_to_first_token_s=result.time_to_first_token_s,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
            )
            for result in self.llm_results.values()
        ]

    def view(self) -> TaskStatus:
        sub = self.submitted
        pending = self.pending_approvals()
        return TaskStatus(
            task_id=self.task_id,
            status=self.status,
            stage=self.shown_stage,
            output=self.output,
            error=self.error,
            attempts=self.attempts,
            created_at=self.created_at,
            updated_at=self.updated_at,
            goal=sub.goal if sub else None,
            task_type=sub.task_type if sub else None,
            step=self.step,
            correlation_id=sub.correlation_id if sub else None,
            session_id=sub.session_id if sub else None,
            error_kind=self.error_kind,
            trace_id=sub.trace_id if sub else None,
            knowledge=knowledge_of(sub, self.knowledge),
            clarification_questions=list(self.knowledge.clarification_questions)
            if self.knowledge is not None and self.knowledge.clarification_questions
            else None,
            max_steps=sub.max_steps if sub else None,
            max_steps_requested=sub.max_steps_requested if sub else None,
            project=sub.project if sub else None,
            expert=sub.expert if sub else None,
            pending_approvals=pending,
        )


class Approval:
    """One approval of a task: what was asked (None: only its decision was read yet) and the
    decision."""

    __slots__ = ("decided", "requested")

    def __init__(
        self, requested: contracts.ApprovalRequested | None, decided: contracts.ApprovalDecided | None = None
    ) -> None:
        self.requested = requested
        self.decided = decided


def stage_key(stage: str, step: int | None) -> str:
    return stage if step is None else f"{stage}:{step}"


def fold(task_id: str, events: list[contracts.AnyTaskEvent]) -> TaskHistory:
    history = TaskHistory(task_id)
    for event in events:
        history.apply(event)
    return history


def status_dict(history: TaskHistory) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(history.view())
    return result
