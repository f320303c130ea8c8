"""Resuming a task from a history its workflow would no longer write, and the runner's refusal to
call the model for requests nobody waits for. Actors run in this process, against a real
nats-server and the fake model server."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client as NATS

from tests.fakellm import FakeLLM
from victoria.actors.agent import workflow
from victoria.actors.agent.actor import Victoria
from victoria.actors.llm_runner.actor import LLMRunner
from victoria.events import subjects
from victoria.events.contracts import (
    ChatMessage,
    LLMRequested,
    LLMResult,
    TaskCancelRequested,
    TaskCompleted,
    TaskStarted,
    TaskSubmitted,
)
from victoria.runtime import fence, publish, reads
from victoria.runtime.config import Config

pytestmark = pytest.mark.usefixtures("strict_loop")

GOAL = "Write a haiku about fencing"


def config(fake: FakeLLM) -> Config:
    return Config.from_env(
        {"VICTORIA_INSTANCE": "replay", "VICTORIA_LLM_URL": fake.url, "VICTORIA_ACK_WAIT": "1"}
    )


async def events_of(nc: NATS, task_id: str) -> list[object]:
    return [event for _, event in await reads.task_events(nc.jetstream(), task_id)]


async def wait_closed(nc: NATS, task_id: str, timeout: float = 20.0) -> list[object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        events = await events_of(nc, task_id)
        if any(isinstance(e, TaskCompleted) for e in events) or loop.time() > deadline:
            return events
        await asyncio.sleep(0.1)


def understand_messages() -> list[ChatMessage]:
    return [ChatMessage("system", workflow.SYSTEM["understand"]), ChatMessage("user", GOAL)]


async def history_of_an_earlier_attempt(nc: NATS, task_id: str, *, fingerprint: str) -> None:
    """What attempt 1 stored before it died: the submission, its first request and the answer."""
    await publish.append(nc, TaskSubmitted(task_id=task_id, goal=GOAL, task_type="agent"), key="submitted")
    request = LLMRequested(
        task_id=task_id,
        request_id="understand",
        purpose="understand",
        messages=understand_messages(),
        stage="understanding",
        attempt=1,
        instance="gone",
        fingerprint=fingerprint,
        workflow=1,
    )
    await publish.append(nc, request, key="llm_req:understand")
    answer = LLMResult(
        task_id=task_id, request_id="understand", ok=True, content="OLD UNDERSTANDING", model="m"
    )
    assert await fence.append_result(nc, answer)
    # The runner that answered took the request from its consumer and acknowledged it.
    shard = subjects.shard_of(task_id)
    taken = await nc.jetstream().pull_subscribe(
        subjects.shard_events_of_kind(shard, "llm_request"),
        durable="llm-runner",
        stream=subjects.task_stream(shard),
    )
    for msg in await taken.fetch(1, timeout=5):
        await msg.ack_sync()
    await taken.unsubscribe()


async def run_actors(nc: NATS, fake: FakeLLM, task_id: str) -> list[object]:
    victoria, runner = Victoria(nc, config(fake)), LLMRunner(nc, config(fake))
    await runner.start()
    await victoria.start()
    try:
        return await wait_closed(nc, task_id)
    finally:
        await victoria.stop()
        await runner.stop()


def prompts(fake: FakeLLM) -> str:
    return "\n".join(fake.prompts)


async def test_a_resumed_task_takes_a_stored_answer_to_the_same_question(nc: NATS, fake: FakeLLM) -> None:
    same = workflow.fingerprint(understand_messages(), model=None, json_mode=True)
    await history_of_an_earlier_attempt(nc, "same-question", fingerprint=same)
    events = await run_actors(nc, fake, "same-question")
    assert isinstance(events[-1], TaskCompleted)
    requests = [e.request_id for e in events if isinstance(e, LLMRequested)]
    assert requests == ["understand", "plan", "step-1"]
    assert "OLD UNDERSTANDING" in prompts(fake)  # the plan was asked with the stored answer
    assert fake.total_calls == 2  # plan and step-1; understand was not asked again


async def test_a_resumed_task_asks_again_when_the_stored_request_asked_something_else(
    nc: NATS, fake: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    await history_of_an_earlier_attempt(nc, "changed-question", fingerprint="0" * 32)
    with caplog.at_level(logging.WARNING):
        events = await run_actors(nc, fake, "changed-question")
    assert isinstance(events[-1], TaskCompleted)
    requests = [e.request_id for e in events if isinstance(e, LLMRequested)]
    assert requests == ["understand", "understand-v2", "plan", "step-1"]
    assert "OLD UNDERSTANDING" not in prompts(fake)  # the old answer was not used
    assert fake.total_calls == 3
    assert any("asking again as understand-v2" in r.getMessage() for r in caplog.records)
    # Its first delivery found a history it did not write, and lost the task: only the second wrote.
    started = [e for e in events if isinstance(e, TaskStarted)]
    assert [e.attempt for e in started] == [2]
    assert any("attempt 1 lost the task" in r.getMessage() for r in caplog.records)


async def store(nc: NATS, event: object, key: str) -> int:
    assert isinstance(event, (TaskSubmitted, LLMRequested, TaskStarted, TaskCancelRequested, TaskCompleted))
    return (await publish.append(nc, event, key=key)).seq


async def test_the_runner_calls_the_model_only_for_requests_somebody_waits_for(
    nc: NATS, fake: FakeLLM
) -> None:
    def ask(task_id: str, request_id: str) -> LLMRequested:
        return LLMRequested(
            task_id=task_id,
            request_id=request_id,
            purpose="plan",
            messages=[ChatMessage("user", f"{task_id} {request_id}")],
        )

    for task_id in ("ended", "cancelled", "superseded", "adopted", "waiting"):
        await store(nc, TaskSubmitted(task_id=task_id, goal="g"), "submitted")
    await store(nc, ask("ended", "plan"), "llm_req:plan")
    await store(nc, TaskCompleted(task_id="ended", output="x"), "terminal")
    await store(nc, ask("cancelled", "plan"), "llm_req:plan")
    await store(nc, TaskCancelRequested(task_id="cancelled"), "cancel")
    await store(nc, ask("superseded", "plan"), "llm_req:plan")
    await store(nc, TaskStarted(task_id="superseded", attempt=2, instance="b"), "started:2")
    await store(nc, ask("superseded", "plan-v2"), "llm_req:plan-v2")
    await store(nc, ask("adopted", "plan"), "llm_req:plan")
    await store(nc, TaskStarted(task_id="adopted", attempt=2, instance="b"), "started:2")
    await store(nc, ask("waiting", "plan"), "llm_req:plan")

    runner = LLMRunner(nc, config(fake))
    await runner.start()
    try:
        for _ in range(100):
            answered = {
                (task_id, rid)
                for task_id in ("ended", "cancelled", "superseded", "adopted", "waiting")
                for rid in ("plan", "plan-v2")
                if await reads.last_llm_result(nc.jetstream(), task_id, rid) is not None
            }
            if len(answered) >= 3:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # time for a wrong call to show
    finally:
        await runner.stop()
    assert answered == {("superseded", "plan-v2"), ("adopted", "plan"), ("waiting", "plan")}
    assert fake.total_calls == 3


async def test_a_fresh_request_of_a_task_cancelled_meanwhile_is_not_sent_to_the_model(
    nc: NATS, fake: FakeLLM
) -> None:
    # One model call at a time, and the first one slow: the second request waits its turn while
    # its task is cancelled, and is delivered young enough that no read of the stream is made.
    fake.delay = 1.0
    runner = LLMRunner(
        nc,
        Config.from_env(
            {"VICTORIA_LLM_URL": fake.url, "VICTORIA_ACK_WAIT": "12", "VICTORIA_LLM_CONCURRENCY": "1"}
        ),
    )
    await runner.start()
    try:
        await asyncio.sleep(3.5)  # the runner has listened for longer than a quarter of the ack wait
        for task_id in ("slow", "doomed"):
            await store(nc, TaskSubmitted(task_id=task_id, goal="g"), "submitted")
            request = LLMRequested(
                task_id=task_id,
                request_id="plan",
                purpose="plan",
                messages=[ChatMessage("user", task_id)],
            )
            await store(nc, request, "llm_req:plan")
        await store(nc, TaskCancelRequested(task_id="doomed"), "cancel")
        for _ in range(100):
            if await reads.last_llm_result(nc.jetstream(), "slow", "plan") is not None:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the doomed request is delivered now, and must not be called
    finally:
        await runner.stop()
    assert fake.total_calls == 1
    assert await reads.last_llm_result(nc.jetstream(), "doomed", "plan") is None
