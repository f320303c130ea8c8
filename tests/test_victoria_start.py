"""Victoria taking tasks that were queued while no Victoria ran, against a real nats-server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from nats.aio.client import Client as NATS

from victoria.actors.agent.actor import Victoria
from victoria.events.contracts import TaskCancelled, TaskCancelRequested, TaskSubmitted, utcnow
from victoria.runtime import publish, reads
from victoria.runtime.config import Config

pytestmark = pytest.mark.usefixtures("strict_loop")


async def kinds(nc: NATS, task_id: str) -> list[str]:
    events = await reads.task_events(nc.jetstream(), task_id)
    return [str(type(event).__struct_config__.tag) for _, event in events]


async def test_a_task_cancelled_while_no_victoria_ran_is_not_run_when_one_starts(nc: NATS) -> None:
    before = utcnow() - timedelta(seconds=60)
    reason = "cancelled by request"
    for task_id in ("queued-cancelled", "cancel-only", "untouched"):
        submitted = TaskSubmitted(task_id=task_id, goal="Write a haiku", task_type="agent", ts=before)
        await publish.append(nc, submitted, key="submitted")
    # What gateways before fencing wrote for a queued task: the request, and the end. Now they
    # write the request only ("cancel-only"); the first Victoria to take the task ends it.
    await publish.append(nc, TaskCancelRequested(task_id="queued-cancelled", reason=reason), key="cancel")
    ended = TaskCancelled(task_id="queued-cancelled", reason=reason, attempts=0)
    await publish.append(nc, ended, key="terminal")
    await publish.append(nc, TaskCancelRequested(task_id="cancel-only", reason=reason), key="cancel")

    victoria = Victoria(nc, Config.from_env({"VICTORIA_INSTANCE": "v-test", "VICTORIA_ACK_WAIT": "30"}))
    await victoria.start()
    try:
        for _ in range(100):  # the untouched task, run as usual, asks the model (no runner here)
            if "llm_requested" in await kinds(nc, "untouched"):
                break
            await asyncio.sleep(0.1)
        assert (await kinds(nc, "untouched"))[:2] == ["task_submitted", "llm_requested"]
        for _ in range(50):
            if (await kinds(nc, "cancel-only"))[-1] == "task_cancelled":
                break
            await asyncio.sleep(0.1)
        assert await kinds(nc, "cancel-only") == ["task_submitted", "task_cancel_requested", "task_cancelled"]
        assert await kinds(nc, "queued-cancelled") == [
            "task_submitted",
            "task_cancel_requested",
            "task_cancelled",
        ]
    finally:
        await victoria.stop()


async def test_markers_no_model_request_carried_are_stored_in_order_before_the_next_stage(nc: NATS) -> None:
    from victoria.actors.agent.actor import _Context
    from victoria.events.contracts import TaskStarted
    from victoria.events.fold import TaskHistory
    from victoria.runtime import tracing
    from victoria.runtime.fence import TaskWriter

    victoria = Victoria(nc, Config.from_env({"VICTORIA_INSTANCE": "v-test"}))
    task = TaskSubmitted(task_id="markers", goal="g")
    submitted = await publish.append(nc, task, key="submitted")
    history = TaskHistory(task.task_id)
    history.apply(task, submitted.seq)
    writer = TaskWriter(nc, task.task_id, attempt=1, expected=submitted.seq)
    ctx = _Context(victoria, task, history, tracing.tracer().start_span("task"), writer)
    ctx.pending_start = TaskStarted(task_id=task.task_id, attempt=1, instance="v-test")
    await ctx.stage("looking")
    assert await kinds(nc, "markers") == ["task_submitted"]  # held for a model request
    await ctx.stage("thinking")
    assert await kinds(nc, "markers") == ["task_submitted", "task_started", "task_stage"]
    await ctx.flush_markers()
    events = await reads.task_events(nc.jetstream(), "markers")
    assert [getattr(event, "stage", None) for _, event in events][-2:] == ["looking", "thinking"]
    ctx.end_stage()
