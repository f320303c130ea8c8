"""The real-model tier: the whole system against a real OpenAI-compatible model server.

Run by ``./scripts/test --real-model``, which starts llama-cpp-python's server with
SmolLM2-135M-Instruct (``scripts/real-model-server``) unless one answers at
``VICTORIA_REAL_MODEL_URL`` (default ``http://127.0.0.1:18181``) already. Not in the default run:
the first install compiles llama.cpp. A 135M model follows instructions loosely, so these tests
hold what the system does with any reply, never what the model says.

The server must be this tier's alone: llama-cpp-python ends a running generation whenever another
request reaches it.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.recording_proxy import RecordingProxy
from tests.system import System, stream_messages, victoria_up

pytestmark = [pytest.mark.real_model, pytest.mark.e2e, pytest.mark.timeout(240)]

LONG_STORY = "Write a very long story of at least 3000 words about a dragon. Do not stop early."
BIG_CAPS = "understand=3000,plan=3000,step=3000,answer=3000"


@pytest.fixture(scope="module")
def real_url() -> str:
    url = os.environ.get("VICTORIA_REAL_MODEL_URL", "http://127.0.0.1:18181").rstrip("/")
    try:
        listing = httpx.get(url + "/v1/models", timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        pytest.fail(f"no real model server answers at {url} ({exc}): run ./scripts/test --real-model")
    assert listing["data"], listing
    return url


@pytest.fixture(scope="module")
def real_model(real_url: str) -> str:
    return str(httpx.get(real_url + "/v1/models", timeout=10).json()["data"][0]["id"])


@pytest.fixture(autouse=True)
def idle_first(real_url: str) -> None:
    """Each test starts on an idle server: one that went silent in a test before (README: the
    server goes on after the client left) is waited for, up to its longest answer."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            httpx.get(real_url + "/v1/models", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.5)
    pytest.fail(f"the model server at {real_url} stayed busy for 300 s")


@pytest.fixture
def proxy(real_url: str) -> Iterator[RecordingProxy]:
    with RecordingProxy(real_url) as recording:
        yield recording


@pytest.fixture
def start(tmp_path: Path, workspace: Path, proxy: RecordingProxy) -> Iterator[Callable[..., System]]:
    """``victoria up`` against the real server through the recording proxy (one system a test)."""
    started: list[System] = []

    def up(**env: str) -> System:
        system = victoria_up(
            tmp_path / f"data{len(started)}", f"openai:{proxy.url}", workspace, **env
        ).start()
        started.append(system)
        return system

    yield up
    for system in started:
        system.close()


def results(system: System, task_id: str) -> list[dict[str, Any]]:
    """The task's model answers: not the step requests with tools that the runner refused without
    sending (llama-cpp-python is known not to take tools)."""
    found = stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>")
    return [m for m in found if m["type"] == "llm_result" and not m.get("tools_refused")]


def server_pid(url: str) -> int:
    port = urlsplit(url).port
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    pytest.fail(f"no process listens on {url}")


def cpu_busy(process: psutil.Process, window: float = 0.5) -> float:
    """Share of one core the process used over ``window`` seconds."""
    before = sum(process.cpu_times()[:2])
    time.sleep(window)
    return (sum(process.cpu_times()[:2]) - before) / window


@pytest.mark.parametrize(
    "goal",
    ["Explain in two sentences what a unit test is.", "Объясни в двух предложениях, что такое юнит-тест."],
)
def test_an_agent_task_completes_with_an_answer_within_a_minute(
    start: Callable[..., System], goal: str
) -> None:
    system = start()
    began = time.monotonic()
    task_id = system.submit(goal, task_type="agent")
    body = system.wait_terminal(task_id, timeout=60)
    assert body["status"] == "completed", body
    assert str(body["output"]).strip()
    assert time.monotonic() - began < 60
    assert not [r for r in results(system, task_id) if r.get("finish_reason") == "interrupted"]


def test_the_agent_asks_llama_cpp_python_in_text_without_sending_it_tools(
    start: Callable[..., System], proxy: RecordingProxy
) -> None:
    system = start()
    task_id = system.submit(
        "List the files of the workspace, then say how many there are.", task_type="agent"
    )
    assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
    found = stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>")
    refused = [m for m in found if m["type"] == "llm_result" and m.get("tools_refused")]
    assert [m["request_id"] for m in refused] == ["step-1"]  # then the task keeps to text
    assert any(m["type"] == "llm_requested" and m["request_id"] == "step-1-text" for m in found)
    assert proxy.calls() and not [c for c in proxy.calls() if b'"tools"' in c.body]


def test_a_goal_asking_for_a_very_long_text_ends_within_its_caps_with_a_partial_answer(
    start: Callable[..., System],
) -> None:
    system = start()
    began = time.monotonic()
    task_id = system.submit(LONG_STORY, task_type="agent")
    body = system.wait_terminal(task_id, timeout=120)
    assert body["status"] == "completed", body
    assert str(body["output"]).strip()
    found = results(system, task_id)
    assert found and all(r["ok"] for r in found)
    assert all(r["completion_tokens"] <= r["max_tokens"] for r in found if r.get("completion_tokens")), found
    assert "length" in [r["finish_reason"] for r in found], found  # cut by its cap, and used
    assert time.monotonic() - began < 120


def test_cancel_during_a_generation_stops_the_server_generating_within_2s(
    start: Callable[..., System], real_url: str, proxy: RecordingProxy
) -> None:
    system = start(VICTORIA_LLM_CAPS=BIG_CAPS)
    server = psutil.Process(server_pid(real_url))
    task_id = system.submit(LONG_STORY, task_type="agent")
    system.wait_for(lambda: cpu_busy(server) > 0.5, timeout=30, what="the server generating")
    response = system.http.post(f"/run/{task_id}/cancel")
    assert response.status_code in (200, 202), response.text
    cancelled = time.monotonic()
    system.wait_for(lambda: cpu_busy(server, 0.25) < 0.2, timeout=5, what="the server idle")
    assert time.monotonic() - cancelled < 2.0
    assert system.wait_terminal(task_id, timeout=10)["status"] == "cancelled"
    assert len(proxy.calls()) == 1  # and nothing asked again


def test_a_busy_server_stays_busy_not_down_through_a_20s_generation(
    start: Callable[..., System], proxy: RecordingProxy
) -> None:
    proxy.extra = {"min_tokens": 2500}  # llama-cpp-python's: no early end, whatever the model thinks
    system = start(
        VICTORIA_LLM_CAPS=BIG_CAPS,
        VICTORIA_PROBE_INTERVAL="1",
        VICTORIA_PROBE_TIMEOUT="1",
        VICTORIA_PROBE_FAILURES="2",
    )
    time.sleep(2)  # the first looks, while the server is idle
    task_id = system.submit(LONG_STORY, task_type="agent")
    seen: list[tuple[str, str]] = []
    began = time.monotonic()
    while time.monotonic() - began < 22:
        view = system.http.get("/services").json()
        seen += [("probe", d["status"]) for d in view["dependencies"] if d["name"] == "model-server"]
        seen += [("runner", s["status"]) for s in view["model_servers"]]
        time.sleep(0.5)
    assert ("probe", "busy") in seen and ("runner", "busy") in seen, seen
    assert not [s for s in seen if s[1] == "down"], seen
    events = stream_messages(system.bus_url(), "victoria.svc.model-server.>")
    assert not [e for e in events if e["type"] == "service_down"], events
    first = proxy.calls()[0]
    assert first.ended is None or first.ended - first.arrived > 20  # one generation, not cut short
    during = [s for s in proxy.seen if s is not first and s.arrived > first.arrived + 0.5]
    assert not [s for s in during if first.ended is None or s.arrived < first.ended], during
    system.http.post(f"/run/{task_id}/cancel")


def test_a_call_cut_at_its_deadline_keeps_its_words_and_is_not_sent_again(
    start: Callable[..., System], proxy: RecordingProxy
) -> None:
    proxy.extra = {"min_tokens": 3000}  # every call outlasts its deadline
    system = start(VICTORIA_LLM_CAPS=BIG_CAPS, VICTORIA_LLM_TIMEOUT="10")
    task_id = system.submit(LONG_STORY, task_type="agent")
    body = system.wait_terminal(task_id, timeout=60)
    assert body["status"] == "completed", (body["error"], body["error_kind"])
    found = results(system, task_id)
    assert [r["finish_reason"] for r in found] == ["length"] * len(found)
    assert all(r["content"] for r in found)
    assert len(proxy.calls()) == len(found)  # one request to the server per model call
    assert all(call.client_left or call.ended for call in proxy.calls())


def test_the_old_clients_sync_run_and_stream_work(start: Callable[..., System]) -> None:
    system = start()
    answer = system.http.post("/run", json={"goal": "Say hello to the team in one sentence."}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "success", answer.json()
    lines: list[dict[str, Any]] = []
    with system.http.stream("POST", "/stream", json={"goal": "Name one planet."}, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                lines.append(json.loads(line[6:]))
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds
    assert "chunk" in kinds and lines[-1]["status"] == "success", lines[-3:]


def test_the_servers_own_refusals_become_clear_task_errors(
    start: Callable[..., System], real_model: str
) -> None:
    system = start()
    unknown = system.wait_terminal(
        system.submit("Hello", task_type="agent", model="no-such-model"), timeout=60
    )
    assert unknown["status"] == "failed"
    assert "'no-such-model' is not served by" in unknown["error"] and real_model in unknown["error"]
    huge = system.wait_terminal(system.submit("word " * 12_000, task_type="agent"), timeout=60)
    assert huge["status"] == "failed"
    assert huge["error_kind"] == "llm_context", huge["error"]
    assert "8192" in huge["error"], huge["error"]


def test_two_tasks_at_once_on_a_one_slot_server_do_not_cut_each_other_short(
    start: Callable[..., System], proxy: RecordingProxy
) -> None:
    system = start()
    time.sleep(1.5)  # the runner learns the server has one slot
    ids: list[str] = []
    threads = [
        threading.Thread(target=lambda g=g: ids.append(system.submit(g, task_type="agent")))
        for g in ("Name two colours.", "Назови два цвета.")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ends = [system.wait_terminal(task_id, timeout=120) for task_id in ids]
    calls = sorted(proxy.calls(), key=lambda s: s.arrived)
    overlapping = [b for a, b in itertools.pairwise(calls) if a.ended and b.arrived < a.ended - 0.05]
    timeline = [
        (
            round(c.arrived - calls[0].arrived, 1),
            c.first_byte and round(c.first_byte - c.arrived, 1),
            c.last_byte and round(c.last_byte - c.arrived, 1),
            c.ended and round(c.ended - c.arrived, 1),
            c.chunks,
            c.client_left,
        )
        for c in calls
    ]
    assert not overlapping, timeline  # one generation at a time: the server's one slot
    for task_id, end in zip(ids, ends, strict=True):
        assert not [r for r in results(system, task_id) if r.get("finish_reason") == "interrupted"]
        assert end["status"] == "completed", (end.get("error_kind"), end.get("error"), timeline)


def test_the_agent_offers_a_real_mcp_servers_tools_in_text_and_any_call_of_one_is_durable(
    start: Callable[..., System], proxy: RecordingProxy, tmp_path: Path
) -> None:
    config = tmp_path / "mcp.json"
    clock = str(Path(sys.executable).parent / "mcp-server-time")
    config.write_text(json.dumps({"mcpServers": {"time": {"command": clock}}}))
    system = start(VICTORIA_MCP_CONFIG=str(config))
    now = "mcp__time__get_current_time"
    system.wait_for(
        lambda: now in [tool["name"] for tool in system.http.get("/tools").json()["tools"]],
        what="the time server's tools",
    )
    task_id = system.submit(
        "What time is it now in Tokyo? Call the tool mcp__time__get_current_time with the timezone "
        "Asia/Tokyo, then answer.",
        task_type="agent",
    )
    assert system.wait_terminal(task_id, timeout=120)["status"] == "completed"
    steps = [c for c in proxy.calls() if b"Victoria, carrying out a plan" in c.body]
    assert steps and all(now.encode() in c.body and b'"tools"' not in c.body for c in steps)
    found = stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>")
    intents = {m["call_id"]: m for m in found if m["type"] == "tool_intent"}
    outcomes = {m["call_id"]: m for m in found if m["type"] == "tool_outcome"}
    assert set(outcomes) == set(intents)  # whatever the model called, each call has its one outcome
    for call_id, intent in intents.items():
        if intent["tool"] == now:
            assert intent["effect"] == "read" and intent["rerun"] is True
            assert outcomes[call_id]["ok"] or outcomes[call_id]["error"], outcomes[call_id]
