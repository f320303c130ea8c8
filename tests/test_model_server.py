"""Whatever the model server does (odd replies, errors, slowness, absence), a task ends clearly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fakellm import FakeLLM
from tests.system import System, free_port, victoria_up

pytestmark = pytest.mark.e2e

LLM_TIMEOUT = 1.5  # seconds


@pytest.fixture(scope="module")
def strict_system(start_system: Callable[..., System]) -> System:
    return start_system(VICTORIA_LLM_TIMEOUT=str(LLM_TIMEOUT))


@pytest.fixture
def mode(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    yield fake_llm
    fake_llm.mode = "normal"
    fake_llm.delay = 0.0


def run_agent(system: System, goal: str) -> dict[str, object]:
    return system.run({"goal": goal, "task_type": "agent"})


def test_a_non_json_reply_is_taken_as_the_answer(strict_system: System, mode: FakeLLM) -> None:
    mode.mode = "nonjson"
    body = run_agent(strict_system, "Tell me about queues")
    assert body["status"] == "completed"
    assert body["output"] == "Sure! Here is my answer about Tell me about queues, in plain words."


def test_a_partial_json_reply_still_gives_its_answer(strict_system: System, mode: FakeLLM) -> None:
    mode.mode = "partial"
    body = run_agent(strict_system, "Tell me about streams")
    assert body["status"] == "completed"
    assert body["output"] == "Partial answer about Tell me about streams"


def test_an_empty_reply_completes_with_a_best_effort_answer(strict_system: System, mode: FakeLLM) -> None:
    mode.mode = "empty"
    body = run_agent(strict_system, "Say nothing")
    assert body["status"] == "completed"
    assert body["output"] == "The model returned an empty answer."


def test_a_tool_call_reply_runs_the_tool_through_veronica_and_continues(
    strict_system: System, mode: FakeLLM
) -> None:
    mode.mode = "tool"
    before = mode.total_calls
    body = run_agent(strict_system, "Which files are there, roughly?")
    assert body["status"] == "completed"
    assert body["step"] == 2
    assert mode.total_calls - before == 4  # understand, plan, step 1 (tool), step 2 (finish)


def test_a_model_server_error_fails_the_task_with_the_status_in_the_error(
    strict_system: System, mode: FakeLLM
) -> None:
    mode.mode = "error"
    body = run_agent(strict_system, "Anything")
    assert body["status"] == "failed"
    assert "HTTP 500" in str(body["error"])
    assert body["error_kind"] == "llm_http_status"


def test_a_slow_model_fails_the_task_after_the_call_deadline(strict_system: System, mode: FakeLLM) -> None:
    mode.delay = LLM_TIMEOUT + 2
    started = time.monotonic()
    body = run_agent(strict_system, "Think slowly")
    assert body["status"] == "failed"
    assert body["error_kind"] == "llm_timeout"
    assert f"within {LLM_TIMEOUT:g}s" in str(body["error"])
    assert LLM_TIMEOUT <= time.monotonic() - started < LLM_TIMEOUT + 10


def test_while_the_model_server_is_down_a_task_waits_visibly_then_fails_at_its_deadline(
    tmp_path: Path, workspace: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with victoria_up(
        tmp_path / "data", dead, workspace, VICTORIA_LLM_TIMEOUT="1", VICTORIA_TASK_DEADLINE="4"
    ).start() as system:
        started = time.monotonic()
        task_id = system.submit("Is anyone there?", task_type="agent")
        waiting = system.wait_for(
            lambda: system.status(task_id)["stage"] == "waiting_for_model", what="waiting stage"
        )
        assert waiting
        body = system.wait_terminal(task_id, timeout=20)
        assert body["status"] == "failed"
        assert body["error_kind"] == "deadline"
        assert "deadline of 4s" in str(body["error"])
        assert f"no model server answers at {dead}" in str(body["error"])
        assert time.monotonic() - started >= 4


def test_the_openai_protocol_works_end_to_end(tmp_path: Path, fake_llm: FakeLLM, workspace: Path) -> None:
    with victoria_up(tmp_path / "data", fake_llm, workspace, VICTORIA_LLM_API="openai").start() as system:
        before = fake_llm.calls["/v1/chat/completions"]
        body = run_agent(system, "Use the other protocol")
        assert body["status"] == "completed"
        assert body["output"] == "Done: Use the other protocol"
        assert fake_llm.calls["/v1/chat/completions"] - before == 3
        task_id = system.submit("And asynchronously", task_type="agent")
        assert system.wait_terminal(task_id)["status"] == "completed"
