"""The task fold (events/fold.py): a task's state is the fold of its events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from victoria.events import contracts
from victoria.events.fold import TaskHistory, fold, stage_key, status_dict

T0 = datetime(2025, 1, 1, 9, 0, 0, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def submitted(goal: str = "do it", **kw: object) -> contracts.TaskSubmitted:
    return contracts.TaskSubmitted(task_id="t1", goal=goal, ts=at(0), **kw)  # type: ignore[arg-type]


def history(*events: contracts.AnyTaskEvent) -> TaskHistory:
    """The fold of task t1's events: its submission (``submitted()``), then these."""
    return fold("t1", [submitted(), *events])


def test_a_task_with_no_events_is_queued_and_empty() -> None:
    h = TaskHistory("t1")
    view = h.view()
    assert view.status == "queued"
    assert view.attempts == 0
    assert view.goal is None
    assert view.created_at is None
    assert not h.terminal


def test_a_model_request_that_opens_attempt_one_and_a_stage_makes_the_task_running_in_that_stage() -> None:
    request = contracts.LLMRequested(
        task_id="t1",
        request_id="step-2",
        purpose="step",
        messages=[],
        stage="step",
        step=2,
        attempt=1,
        instance="i1",
        ts=at(1),
    )
    h = fold("t1", [submitted(), request])
    view = h.view()
    assert (view.status, view.stage, view.step, view.attempts) == ("running", "step", 2, 1)
    assert "step:2" in h.stages_seen
    assert "step-2" in h.llm_requests


def test_a_model_request_that_carries_no_marker_leaves_the_stage_as_it_was() -> None:
    h = history(
        contracts.TaskStage(task_id="t1", stage="waiting_for_model", ts=at(1)),
        contracts.LLMRequested(task_id="t1", request_id="plan-retry1", purpose="plan", messages=[], ts=at(2)),
    )
    assert (h.status, h.stage, h.attempts) == ("running", "waiting_for_model", 0)


def test_a_submitted_task_is_queued() -> None:
    h = fold("t1", [submitted()])
    assert h.status == "queued"
    assert h.created_at == at(0)
    assert not h.terminal


def test_a_task_goes_from_queued_to_running_to_completed() -> None:
    h = TaskHistory("t1")
    h.apply(submitted())
    assert h.view().status == "queued"
    h.apply(contracts.TaskStarted(task_id="t1", attempt=1, instance="i1", ts=at(1)))
    assert h.view().status == "running"
    h.apply(contracts.TaskStage(task_id="t1", stage="plan", ts=at(2)))
    assert (h.view().status, h.view().stage) == ("running", "plan")
    h.apply(contracts.TaskCompleted(task_id="t1", output="42", attempts=1, ts=at(3)))
    assert h.view().status == "completed"
    assert h.stage == "done"
    assert h.output == "42"
    assert h.error is None
    assert h.terminal
    assert h.created_at == at(0)
    assert h.updated_at == at(3)


def test_a_stage_alone_moves_a_queued_task_to_running() -> None:
    h = fold("t1", [submitted(), contracts.TaskStage(task_id="t1", stage="understand", ts=at(1))])
    assert h.status == "running"


def test_a_failed_task_keeps_its_error_and_error_kind() -> None:
    h = history(
        contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)),
        contracts.TaskFailed(task_id="t1", error="model unavailable", error_kind="llm", attempts=1, ts=at(2)),
    )
    assert h.status == "failed"
    assert h.stage == "failed"
    assert h.error == "model unavailable"
    assert h.error_kind == "llm"
    assert h.output is None
    assert h.terminal


def test_a_cancelled_task_keeps_its_reason_as_the_error() -> None:
    h = history(
        contracts.TaskCancelRequested(task_id="t1", reason="user said stop", ts=at(1)),
        contracts.TaskCancelled(task_id="t1", reason="user said stop", ts=at(2)),
    )
    assert h.status == "cancelled"
    assert h.stage == "cancelled"
    assert h.error == "user said stop"
    assert h.cancel_reason == "user said stop"
    assert h.terminal


def test_a_cancel_request_decides_the_status_at_once_and_leaves_the_history_open() -> None:
    h = history(
        contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)),
        contracts.TaskCancelRequested(task_id="t1", reason="stop", ts=at(2)),
    )
    assert (h.status, h.stage, h.error) == ("cancelled", "cancelled", "stop")
    assert h.cancel_reason == "stop"
    assert h.terminal
    assert not h.closed  # the attempt holding the task still writes task_cancelled


def test_task_cancelled_after_the_request_closes_the_history_with_its_attempts() -> None:
    h = history(
        contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)),
        contracts.TaskCancelRequested(task_id="t1", reason="stop", ts=at(2)),
        contracts.TaskStarted(task_id="t1", attempt=2, instance="i", ts=at(3)),
        contracts.TaskCancelled(task_id="t1", reason="stop", attempts=2, ts=at(4)),
    )
    assert (h.status, h.attempts, h.closed) == ("cancelled", 2, True)


def test_a_completion_after_a_cancel_request_never_changes_the_status_once_read() -> None:
    # Only a server that cannot fence (run with VICTORIA_ALLOW_UNFENCED) lets this be stored.
    h = history(
        contracts.TaskCancelRequested(task_id="t1", reason="stop", ts=at(1)),
        contracts.TaskCompleted(task_id="t1", output="done anyway", ts=at(2)),
    )
    assert (h.status, h.output, h.closed) == ("cancelled", None, True)


def test_model_results_after_a_cancel_request_are_still_counted_for_the_terminal_event() -> None:
    h = TaskHistory("t1")
    h.apply(submitted(), 1)
    h.apply(contracts.LLMRequested(task_id="t1", request_id="plan", purpose="plan", messages=[], ts=at(1)), 2)
    h.apply(contracts.TaskCancelRequested(task_id="t1", reason="stop", ts=at(2)), 3)
    h.apply(contracts.LLMResult(task_id="t1", request_id="plan", ok=True, model="m", ts=at(3)), 4)
    assert [call.model for call in h.model_calls()] == ["m"]


def test_own_seq_is_the_last_event_of_the_tasks_own_history_not_a_model_result() -> None:
    h = TaskHistory("t1")
    h.apply(submitted(), 3)
    h.apply(contracts.LLMRequested(task_id="t1", request_id="plan", purpose="plan", messages=[], ts=at(1)), 5)
    h.apply(contracts.LLMResult(task_id="t1", request_id="plan", ok=True, ts=at(2)), 9)
    assert (h.own_seq, h.last_seq) == (5, 9)


def test_attempts_is_the_largest_attempt_seen() -> None:
    h = history(
        contracts.TaskStarted(task_id="t1", attempt=3, instance="i", ts=at(1)),
        contracts.TaskStarted(task_id="t1", attempt=2, instance="i", ts=at(2)),
    )
    assert h.attempts == 3
    h.apply(contracts.TaskCompleted(task_id="t1", output="x", attempts=1, ts=at(3)))
    assert h.attempts == 3


def test_attempts_of_a_terminal_event_raise_the_count() -> None:
    h = fold(
        "t1",
        [
            contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)),
            contracts.TaskFailed(task_id="t1", error="e", attempts=5, ts=at(2)),
        ],
    )
    assert h.attempts == 5


def test_a_cancel_with_default_attempts_keeps_the_attempts_already_counted() -> None:
    h = fold(
        "t1",
        [
            contracts.TaskStarted(task_id="t1", attempt=2, instance="i", ts=at(1)),
            contracts.TaskCancelled(task_id="t1", ts=at(2)),
        ],
    )
    assert h.attempts == 2


def test_a_late_event_after_completion_does_not_reopen_the_task() -> None:
    h = history(
        contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)),
        contracts.TaskCompleted(task_id="t1", output="final", ts=at(2)),
    )
    for late in (
        contracts.TaskStarted(task_id="t1", attempt=2, instance="i", ts=at(3)),
        contracts.TaskStage(task_id="t1", stage="step", step=4, ts=at(4)),
        contracts.TaskFailed(task_id="t1", error="too late", ts=at(5)),
        contracts.TaskCancelled(task_id="t1", reason="too late", ts=at(6)),
        contracts.LLMResult(task_id="t1", request_id="step-9", ok=True, content="late", ts=at(7)),
    ):
        assert h.apply(late) is True
    assert h.status == "completed"
    assert h.stage == "done"
    assert h.output == "final"
    assert h.error is None
    assert h.attempts == 1
    assert "step-9" not in h.llm_results


def test_a_late_event_after_failure_does_not_reopen_the_task() -> None:
    h = fold(
        "t1",
        [
            contracts.TaskFailed(task_id="t1", error="deadline", error_kind="deadline", ts=at(1)),
            contracts.TaskStarted(task_id="t1", attempt=7, instance="i", ts=at(2)),
            contracts.TaskCompleted(task_id="t1", output="x", ts=at(3)),
        ],
    )
    assert h.status == "failed"
    assert h.error == "deadline"
    assert h.output is None


def test_applying_the_same_stream_seq_twice_is_ignored() -> None:
    h = TaskHistory("t1")
    assert h.apply(submitted(), seq=1) is True
    assert h.apply(contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)), seq=2) is True
    assert h.apply(contracts.TaskCompleted(task_id="t1", output="x", ts=at(2)), seq=2) is False
    assert h.status == "running"
    assert h.last_seq == 2
    assert h.apply(contracts.TaskStage(task_id="t1", stage="old", ts=at(3)), seq=1) is False
    assert h.stage is None
    assert h.updated_at == at(1)


def test_events_without_a_seq_are_always_applied() -> None:
    h = TaskHistory("t1")
    assert h.apply(contracts.TaskStage(task_id="t1", stage="a", ts=at(1))) is True
    assert h.apply(contracts.TaskStage(task_id="t1", stage="b", ts=at(2))) is True
    assert h.stage == "b"


def test_the_first_model_and_tool_result_win() -> None:
    h = fold(
        "t1",
        [
            contracts.LLMRequested(task_id="t1", request_id="plan", purpose="plan", messages=[], ts=at(1)),
            contracts.LLMResult(task_id="t1", request_id="plan", ok=True, content="first", ts=at(2)),
            contracts.LLMResult(task_id="t1", request_id="plan", ok=True, content="second", ts=at(3)),
            contracts.ToolResult(task_id="t1", call_id="c1", tool="read_file", output="one", ts=at(4)),
            contracts.ToolResult(task_id="t1", call_id="c1", tool="read_file", output="two", ts=at(5)),
        ],
    )
    assert set(h.llm_requests) == {"plan"}
    assert h.llm_results["plan"].content == "first"
    assert h.tool_results["c1"].output == "one"


def test_stages_seen_record_stage_and_step() -> None:
    h = fold(
        "t1",
        [
            contracts.TaskStage(task_id="t1", stage="understand", ts=at(1)),
            contracts.TaskStage(task_id="t1", stage="step", step=2, ts=at(2)),
        ],
    )
    assert h.stages_seen == {"understand", "step:2"}
    assert (h.stage, h.step) == ("step", 2)
    assert stage_key("step", None) == "step"
    assert stage_key("step", 0) == "step:0"


def test_view_carries_the_submission_fields_and_the_state() -> None:
    h = fold(
        "t1",
        [
            submitted(goal="g", task_type="agent", correlation_id="corr", session_id="sess"),
            contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)),
            contracts.TaskStage(task_id="t1", stage="step", step=3, ts=at(2)),
        ],
    )
    view = h.view()
    assert view.task_id == "t1"
    assert view.status == "running"
    assert view.stage == "step"
    assert view.step == 3
    assert view.goal == "g"
    assert view.task_type == "agent"
    assert view.correlation_id == "corr"
    assert view.session_id == "sess"
    assert view.attempts == 1
    assert view.output is None
    assert view.error is None
    assert view.error_kind is None
    assert view.created_at == at(0)
    assert view.updated_at == at(2)


def test_status_dict_is_plain_json_ready_data() -> None:
    h = fold("t1", [submitted(), contracts.TaskCompleted(task_id="t1", output="ok", ts=at(5))])
    d = status_dict(h)
    assert d["task_id"] == "t1"
    assert d["status"] == "completed"
    assert d["output"] == "ok"
    assert isinstance(d["created_at"], str)
    assert set(d) == {
        "task_id",
        "status",
        "stage",
        "output",
        "error",
        "attempts",
        "created_at",
        "updated_at",
        "goal",
        "task_type",
        "step",
        "correlation_id",
        "session_id",
        "error_kind",
        "trace_id",
        "knowledge",
        "clarification_questions",
        "max_steps",
        "max_steps_requested",
        "project",
        "expert",
        "model_wait",
        "pending_approvals",
    }
    assert isinstance(d["knowledge"], dict)


def test_russian_text_is_preserved_in_goal_output_and_error() -> None:
    goal = "Выведи список файлов в корне проекта. Только имена, до 8 штук."
    output = "Файлы: README.md, «проект».txt — всё."
    h = fold("t1", [submitted(goal=goal), contracts.TaskCompleted(task_id="t1", output=output, ts=at(1))])
    assert h.view().goal == goal
    assert h.view().output == output
    assert status_dict(h)["output"] == output
    failed = fold("t2", [contracts.TaskFailed(task_id="t2", error="Модель недоступна", ts=at(1))])
    assert failed.view().error == "Модель недоступна"


def test_fold_and_apply_agree() -> None:
    stream: list[contracts.AnyTaskEvent] = [
        submitted(),
        contracts.TaskStarted(task_id="t1", attempt=1, instance="i", ts=at(1)),
        contracts.TaskCompleted(task_id="t1", output="x", ts=at(2)),
    ]
    h = TaskHistory("t1")
    for seq, event in enumerate(stream, start=1):
        h.apply(event, seq=seq)
    assert h.view() == fold("t1", stream).view()


def test_the_model_calls_of_a_task_are_one_per_stored_result_with_outcome_and_tokens() -> None:
    results = [
        contracts.LLMResult(
            task_id="t1", request_id="understand", ok=True, model="m", duration_s=0.5, completion_tokens=7
        ),
        contracts.LLMResult(
            task_id="t1", request_id="plan", ok=False, model="m", error_kind="timeout", duration_s=30.0
        ),
        contracts.LLMResult(
            task_id="t1", request_id="plan", ok=True, model="m", duration_s=9.0
        ),  # a duplicate
    ]
    h = fold("t1", [submitted(), *results])
    assert [(c.model, c.outcome, c.duration_s, c.completion_tokens) for c in h.model_calls()] == [
        ("m", "ok", 0.5, 7),
        ("m", "timeout", 30.0, None),
    ]


def test_a_status_view_fold_keeps_only_what_a_status_shows_and_its_neighbours_stay_empty() -> None:
    events = [
        submitted(),
        contracts.LLMRequested(
            task_id="t1",
            request_id="understand",
            purpose="understand",
            messages=[],
            stage="understanding",
            ts=at(1),
        ),
        contracts.TaskStage(task_id="t1", stage="step", step=2, ts=at(2)),
    ]
    view, other = TaskHistory("t1", memo=False), TaskHistory("t2", memo=False)
    for event in events:
        view.apply(event)
    assert (view.status, view.stage, view.step) == ("running", "step", 2)
    for history in (view, other):
        assert not history.llm_requests and not history.stages_seen
    full = fold("t1", events)
    assert full.stages_seen == {"understanding", "step:2"} and "understand" in full.llm_requests


def test_a_completed_tasks_knowledge_is_in_the_old_servers_shape() -> None:
    from victoria.events.contracts import Knowledge, VerboseStep

    knowledge = Knowledge(
        routed_to="agent_run",
        source="model",
        model_used="qwen",
        verbose_steps=[VerboseStep(step=1, thought="look", tool="list_directory", input={"path": "."})],
    )
    start = contracts.TaskSubmitted(
        task_id="t1", goal="g", project_context={"repo": "x"}, max_steps=50, max_steps_requested=500, ts=at(0)
    )
    h = fold("t1", [start, contracts.TaskCompleted(task_id="t1", output="ok", knowledge=knowledge, ts=at(1))])
    view = h.view()
    assert view.knowledge == {
        "metadata": {"model_used": "qwen", "source": "model"},
        "method": "agent_run",
        "routed_to": "agent_run",
        "delegated_to": None,
        "verbose_steps": [{"step": 1, "thought": "look", "tool": "list_directory", "input": {"path": "."}}],
        "project_context": {"repo": "x"},
        "max_steps": 50,
        "max_steps_requested": 500,
    }
    assert (view.max_steps, view.max_steps_requested, view.clarification_questions) == (50, 500, None)


def test_a_task_that_asks_back_shows_its_questions() -> None:
    from victoria.events.contracts import Knowledge

    knowledge = Knowledge(
        routed_to="agent_run", clarification_questions=["Which one?"], suggested_restatement="r"
    )
    h = history(
        contracts.TaskCompleted(task_id="t1", output="Which one?", knowledge=knowledge, ts=at(1)),
    )
    assert h.view().clarification_questions == ["Which one?"]
    assert h.view().knowledge["suggested_restatement"] == "r"


def test_a_status_without_a_terminal_event_has_an_empty_knowledge_dict_but_its_context() -> None:
    assert fold("t1", [submitted()]).view().knowledge == {"project_context": None}


def test_a_call_waiting_for_a_person_shows_in_the_status_until_its_decision_even_without_memo() -> None:
    asked = contracts.ApprovalRequested(
        task_id="t1", approval_id="call-1", tool="run_command", args={"command": "ls"}, ts=at(1)
    )
    h = TaskHistory("t1", memo=False)
    for seq, event in enumerate([submitted(), asked], 1):
        h.apply(event, seq)
    view = h.view()
    assert view.stage == "waiting_for_approval" and view.status == "running"
    [pending] = view.pending_approvals
    assert (pending.id, pending.tool, pending.arguments, pending.requested_at) == (
        "call-1",
        "run_command",
        {"command": "ls"},
        at(1),
    )
    decided = contracts.ApprovalDecided(task_id="t1", approval_id="call-1", decision="deny", by="alice")
    h.apply(decided, 3)
    assert h.view().pending_approvals == [] and h.view().stage != "waiting_for_approval"
    assert h.decision("call-1") == decided
    later = contracts.ApprovalDecided(task_id="t1", approval_id="call-1", decision="approve", by="bob")
    h.apply(later, 4)
    assert h.decision("call-1") == decided  # the first decision holds


def test_a_decision_read_before_its_request_is_kept_and_nothing_waits() -> None:
    h = TaskHistory("t1")
    h.apply(submitted(), 1)
    h.apply(contracts.ApprovalDecided(task_id="t1", approval_id="call-1", decision="approve"), 2)
    h.apply(contracts.ApprovalRequested(task_id="t1", approval_id="call-1", tool="write_file"), 3)
    assert h.view().pending_approvals == [] and h.decision("call-1") is not None
