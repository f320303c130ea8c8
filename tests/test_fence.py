"""Fenced appends to a task's history (runtime/fence.py), against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from victoria.errors import CancelRequested, TaskLost
from victoria.events.contracts import (
    LLMRequested,
    LLMResult,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskStage,
    TaskStarted,
    TaskSubmitted,
)
from victoria.runtime import fence, publish, reads
from victoria.runtime.fence import TaskWriter

pytestmark = pytest.mark.usefixtures("strict_loop")


async def submit(nc: NATS, task_id: str) -> int:
    ack = await publish.append(nc, TaskSubmitted(task_id=task_id, goal="g"), key="submitted")
    return ack.seq


def request(task_id: str, request_id: str) -> LLMRequested:
    return LLMRequested(task_id=task_id, request_id=request_id, purpose="plan", messages=[])


async def kinds(nc: NATS, task_id: str) -> list[str]:
    events = await reads.task_events(nc.jetstream(), task_id)
    return [str(type(event).__struct_config__.tag) for _, event in events]


async def test_an_attempt_writes_on_while_the_runner_stores_results_and_nobody_else_writes(nc: NATS) -> None:
    seq = await submit(nc, "f-1")
    writer = TaskWriter(nc, "f-1", attempt=1, expected=seq)
    first = await writer.append(request("f-1", "plan"), key="llm_req:plan")
    assert await fence.append_result(nc, LLMResult(task_id="f-1", request_id="plan", ok=True))
    second = await writer.append(TaskStage(task_id="f-1", stage="step", step=1), key="stage:step:1")
    assert seq < first < second
    assert writer.expected == second


async def test_a_newer_attempts_claim_fences_off_the_older_one_for_good(nc: NATS) -> None:
    seq = await submit(nc, "f-2")
    older = TaskWriter(nc, "f-2", attempt=1, expected=seq)
    await older.append(request("f-2", "plan"), key="llm_req:plan")
    newer = TaskWriter(nc, "f-2", attempt=2, expected=older.expected)
    await newer.append(TaskStarted(task_id="f-2", attempt=2, instance="b"), key="started:2")
    with pytest.raises(TaskLost) as lost:
        await older.append(request("f-2", "understand"), key="llm_req:understand")
    assert "task_started of attempt 2" in lost.value.found
    with pytest.raises(TaskLost):  # and it writes nothing more, not even its terminal event
        await older.append(TaskCompleted(task_id="f-2", output="x"), key="terminal")
    await newer.append(TaskCompleted(task_id="f-2", output="y"), key="terminal")
    assert await kinds(nc, "f-2") == ["task_submitted", "llm_requested", "task_started", "task_completed"]


async def test_an_attempt_that_lost_cannot_store_an_event_another_attempt_stored_under_its_id(
    nc: NATS,
) -> None:
    seq = await submit(nc, "f-3")
    older = TaskWriter(nc, "f-3", attempt=1, expected=seq)
    newer = TaskWriter(nc, "f-3", attempt=2, expected=seq)
    await newer.append(TaskStarted(task_id="f-3", attempt=2, instance="b"), key="started:2")
    await newer.append(request("f-3", "plan"), key="llm_req:plan")
    # Same message id as the newer attempt's request, inside the duplicate window: a 2.11 server
    # answers "duplicate" before it checks the fence; either way the older attempt has lost.
    with pytest.raises(TaskLost):
        await older.append(request("f-3", "plan"), key="llm_req:plan")
    assert (await kinds(nc, "f-3")).count("llm_requested") == 1


async def test_a_cancel_request_stops_the_holder_and_its_task_cancelled_goes_on_top(nc: NATS) -> None:
    seq = await submit(nc, "f-4")
    writer = TaskWriter(nc, "f-4", attempt=1, expected=seq)
    await writer.append(request("f-4", "plan"), key="llm_req:plan")
    cancel = await publish.append(nc, TaskCancelRequested(task_id="f-4", reason="stop"), key="cancel")
    with pytest.raises(CancelRequested) as caught:
        await writer.append(TaskCompleted(task_id="f-4", output="done"), key="terminal")
    assert (caught.value.reason, caught.value.seq) == ("stop", cancel.seq)
    await writer.append(TaskCancelled(task_id="f-4", reason="stop"), key="terminal")
    assert await kinds(nc, "f-4") == [
        "task_submitted",
        "llm_requested",
        "task_cancel_requested",
        "task_cancelled",
    ]


async def test_task_cancelled_is_stored_on_top_of_a_cancel_request_it_has_not_seen(nc: NATS) -> None:
    seq = await submit(nc, "f-5")
    writer = TaskWriter(nc, "f-5", attempt=1, expected=seq)
    await publish.append(nc, TaskCancelRequested(task_id="f-5", reason="stop"), key="cancel")
    seq = await writer.append(TaskCancelled(task_id="f-5", reason="stop"), key="terminal")
    assert await kinds(nc, "f-5") == ["task_submitted", "task_cancel_requested", "task_cancelled"]
    assert writer.expected == seq


async def test_an_append_whose_caller_is_cancelled_still_counts_for_the_next_one(nc: NATS) -> None:
    seq = await submit(nc, "f-6")
    writer = TaskWriter(nc, "f-6", attempt=1, expected=seq)
    caller = asyncio.ensure_future(writer.append(request("f-6", "plan"), key="llm_req:plan"))
    await asyncio.sleep(0)  # the request is on its way
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    # Fenced on the request that was stored after all, not on the submission.
    await writer.append(TaskCompleted(task_id="f-6", output="x"), key="terminal")
    assert await kinds(nc, "f-6") == ["task_submitted", "llm_requested", "task_completed"]


async def test_an_unfenced_writer_sends_no_expectation(nc: NATS) -> None:
    seq = await submit(nc, "f-7")
    first = TaskWriter(nc, "f-7", attempt=1, expected=seq, fenced=False)
    second = TaskWriter(nc, "f-7", attempt=2, expected=seq, fenced=False)
    await second.append(TaskStarted(task_id="f-7", attempt=2, instance="b"), key="started:2")
    await first.append(TaskStage(task_id="f-7", stage="x", detail="d"), key="stage:x")
    assert await kinds(nc, "f-7") == ["task_submitted", "task_started", "task_stage"]


async def test_a_requests_result_is_stored_once_ever(nc: NATS) -> None:
    await submit(nc, "f-8")
    result = LLMResult(task_id="f-8", request_id="step-1", ok=True, content="first")
    assert await fence.append_result(nc, result)
    again = LLMResult(task_id="f-8", request_id="step-1", ok=True, content="second")
    assert not await fence.append_result(nc, again, headers={"Nats-Msg-Id": "another-id"})
    stored = await reads.last_llm_result(nc.jetstream(), "f-8", "step-1")
    assert stored is not None and stored.content == "first"
    assert await reads.last_llm_result(nc.jetstream(), "f-8", "step-2") is None


async def test_the_last_history_event_leaves_the_model_results_out(nc: NATS) -> None:
    await submit(nc, "f-9")
    writer = TaskWriter(
        nc, "f-9", attempt=1, expected=(await reads.last_history_event(nc.jetstream(), "f-9") or (0,))[0]
    )
    seq = await writer.append(request("f-9", "plan"), key="llm_req:plan")
    await fence.append_result(nc, LLMResult(task_id="f-9", request_id="plan", ok=True))
    last = await reads.last_history_event(nc.jetstream(), "f-9")
    assert last is not None and last[0] == seq and isinstance(last[1], LLMRequested)
