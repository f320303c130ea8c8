"""Traces across processes, and the answer streamed as it is written."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakellm import FakeLLM
from tests.otlp import OTLPReceiver
from tests.system import System, stream_messages, victoria_up

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    otlp = OTLPReceiver()
    yield otlp
    otlp.stop()


@pytest.fixture(scope="module")
def traced(start_system: Callable[..., System], receiver: OTLPReceiver) -> System:
    return start_system(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, VICTORIA_LOG_LEVEL="DEBUG")


def test_one_task_is_one_trace_across_every_process(
    traced: System, fake_llm: FakeLLM, receiver: OTLPReceiver
) -> None:
    fake_llm.mode = "tool"  # step 1 lists files through Veronica, step 2 finishes
    try:
        body = traced.run({"goal": "Look around", "task_type": "agent"})
    finally:
        fake_llm.mode = "normal"
    assert body["status"] == "completed"
    trace_id = body["trace_id"]
    assert len(trace_id) == 32 and int(trace_id, 16)

    def complete() -> list[object] | None:
        spans = receiver.trace(trace_id)
        services = {s.service for s in spans}
        return spans if {"gateway", "victoria", "veronica", "llm-runner"} <= services else None

    spans = traced.wait_for(complete, timeout=15, what="spans from every process")
    roots = [s for s in receiver.trace(trace_id) if not s.parent_id]
    assert [(r.service, r.name) for r in roots] == [("gateway", "POST /run")]
    by_id = {s.span_id: s for s in receiver.trace(trace_id)}
    for span in by_id.values():
        if span.parent_id:
            assert span.parent_id in by_id, f"{span.service}/{span.name} has a parent outside the trace"
    assert spans
    names = {(s.service, s.name) for s in by_id.values()}
    assert {("victoria", "task"), ("victoria", "understanding"), ("victoria", "planning")} <= names
    assert ("victoria", "step 1") in names and ("veronica", "execute_tool list_directory") in names
    chats = [s for s in by_id.values() if s.service == "llm-runner"]
    assert len(chats) == 4
    for chat in chats:
        assert chat.name.startswith("chat ")
        assert chat.attributes["gen_ai.usage.input_tokens"] == 10
        assert chat.attributes["gen_ai.usage.output_tokens"] == 5
        assert chat.attributes["victoria.time_to_first_token_s"] >= 0
        assert by_id[chat.parent_id].service == "victoria"


def test_a_tool_calls_span_follows_the_genai_conventions_and_belongs_to_the_tasks_trace(
    traced: System, fake_llm: FakeLLM, receiver: OTLPReceiver
) -> None:
    fake_llm.mode = "tool"  # step 1 lists files through Veronica, step 2 finishes
    try:
        body = traced.run({"goal": "Look around once more", "task_type": "agent"})
    finally:
        fake_llm.mode = "normal"
    assert body["status"] == "completed"
    task_id, trace_id = body["task_id"], body["trace_id"]
    [intent] = [
        e
        for e in stream_messages(traced.bus_url(), f"victoria.task.*.{task_id}.>")
        if e["type"] == "tool_intent"
    ]

    def tool_spans() -> list[object] | None:
        found = [s for s in receiver.trace(trace_id) if s.name.startswith("execute_tool ")]
        return found or None

    [span] = traced.wait_for(tool_spans, timeout=15, what="the tool call's span")
    assert span.service == "veronica" and span.name == "execute_tool list_directory"
    assert span.attributes["gen_ai.operation.name"] == "execute_tool"
    assert span.attributes["gen_ai.tool.name"] == "list_directory"
    assert span.attributes["gen_ai.tool.call.id"] == intent["call_id"]
    assert span.attributes["victoria.task_id"] == task_id
    assert span.attributes["victoria.ok"] is True and "error.type" not in span.attributes

    def parent() -> object | None:  # Victoria's spans are exported in batches, later than hers
        return next((s for s in receiver.trace(trace_id) if s.span_id == span.parent_id), None)

    assert traced.wait_for(parent, timeout=15, what="the span's parent").service == "victoria"


def test_tokens_stream_over_sse_before_the_task_completes(system: System, fake_llm: FakeLLM) -> None:
    fake_llm.chunk_delay = 0.3
    try:
        task_id = system.submit("Write a sentence with quite a few words in it please", task_type="agent")
        seen: list[tuple[str, float, dict[str, object]]] = []
        with system.http.stream("GET", f"/run/{task_id}/events") as response:
            kind = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    seen.append((kind, time.monotonic(), json.loads(line[6:])))
    finally:
        fake_llm.chunk_delay = 0.0
    kinds = [kind for kind, _, _ in seen]
    assert kinds[-1] == "task_completed"
    chunks = [(at, data) for kind, at, data in seen if kind == "token_chunk"]
    assert len(chunks) >= 6
    completed_at = seen[-1][1]
    assert chunks[0][0] < completed_at - 0.5
    text = "".join(str(data["text"]) for _, data in chunks if data["request_id"] == "step-1")
    assert "Done: Write a sentence" in text


def test_every_actor_logs_its_start_and_each_task_step_at_debug_with_the_task_and_trace_ids(
    traced: System, fake_llm: FakeLLM
) -> None:
    fake_llm.mode = "normal"
    body = traced.run({"goal": "Log this one", "task_type": "agent"})
    assert body["status"] == "completed"
    url = traced.bus_url()

    def records() -> list[dict[str, object]] | None:
        found = stream_messages(url, "victoria.log.>")
        mine = [r for r in found if r.get("task_id") == body["task_id"]]
        actors = {r["actor"] for r in mine}
        return found if {"gateway", "victoria", "llm-runner"} <= actors else None

    found = traced.wait_for(records, what="log records of the task")
    started = {r["actor"] for r in found if "started, pid" in str(r["message"]) and r["level"] == "INFO"}
    assert {"victoria", "veronica", "monitor", "llm-runner", "gateway"} <= started
    mine = [r for r in found if r.get("task_id") == body["task_id"]]
    assert all(r["trace_id"] == body["trace_id"] for r in mine)
    # Work that went as it should is logged at DEBUG: its events are its record.
    assert all(r["type"] == "log_record" and r["level"] == "DEBUG" for r in mine)
    assert all(str(r["_subject"]).startswith(f"victoria.log.{r['actor']}.debug") for r in mine)


def test_a_task_that_went_well_adds_nothing_to_the_info_log_and_a_failed_one_does(
    system: System, fake_llm: FakeLLM
) -> None:
    quiet = system.run({"goal": "Quiet one", "task_type": "agent"})
    assert quiet["status"] == "completed"
    fake_llm.mode = "error"
    try:
        failed = system.run({"goal": "Noisy one", "task_type": "agent"})
    finally:
        fake_llm.mode = "normal"
    assert failed["status"] == "failed"
    url = system.bus_url()

    def failure_logged() -> list[dict[str, object]] | None:
        found = stream_messages(url, "victoria.log.>")
        actors = {r["actor"] for r in found if r.get("task_id") == failed["task_id"]}
        return found if {"victoria", "llm-runner"} <= actors else None

    found = system.wait_for(failure_logged, what="the failed task's log records")
    assert {r["level"] for r in found if r.get("task_id") == failed["task_id"]} == {"INFO", "WARNING"}
    assert not [r for r in found if r.get("task_id") == quiet["task_id"]]


def test_a_task_resumed_after_a_crash_stays_in_its_trace(
    tmp_path: Path, fake_llm: FakeLLM, workspace: Path, receiver: OTLPReceiver
) -> None:
    import os
    import signal

    system = victoria_up(
        tmp_path / "data",
        fake_llm,
        workspace,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        VICTORIA_ACK_WAIT="2",
    ).start()
    fake_llm.delay = 1.5
    try:
        task_id = system.submit("Survive in one trace", task_type="agent")
        system.wait_for(lambda: system.status(task_id)["stage"] == "understanding", what="running")
        os.kill(system.pid_of("victoria"), signal.SIGKILL)
        final = system.wait_terminal(task_id, timeout=30)
        assert final["status"] == "completed" and final["attempts"] == 2

        def attempts() -> set[object] | None:
            found = {
                s.attributes.get("victoria.attempt")
                for s in receiver.trace(final["trace_id"])
                if s.service == "victoria" and s.name == "task"
            }
            return found if 2 in found else None

        assert system.wait_for(attempts, timeout=15, what="the second attempt's span") >= {2}
    finally:
        fake_llm.delay = 0.0
        system.close()
