"""The whole path through `victoria up`: HTTP in, actors on NATS, a result out."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakellm import FakeLLM
from tests.system import System, stream_messages
from victoria.gateway.requests import MAX_RUN_BODY

pytestmark = pytest.mark.e2e


def test_a_goal_completes_in_sync_mode_through_the_agent_run(system: System, fake_llm: FakeLLM) -> None:
    before = fake_llm.total_calls
    response = system.http.post("/run", json={"goal": "Write a haiku about NATS", "task_type": "agent"})
    assert response.status_code == 200, response.text
    answer = response.json()  # the old server's TaskResponse
    assert (answer["status"], answer["output"]) == ("success", "Done: Write a haiku about NATS")
    body = system.status(answer["task_id"])
    assert body["status"] == "completed"
    assert body["output"] == "Done: Write a haiku about NATS"
    assert body["attempts"] == 1
    assert {"task_id", "status", "stage", "output", "error", "attempts", "created_at", "updated_at"} <= set(
        body
    )
    assert fake_llm.total_calls - before == 3  # understand, plan, one step
    assert fake_llm.calls["/api/chat"] >= 3  # the Ollama protocol


def test_a_goal_completes_in_async_mode_and_its_status_is_readable(system: System) -> None:
    response = system.http.post(
        "/run", params={"async_mode": "true"}, json={"goal": "Summarise the idea of NATS"}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status_url"] == f"/run/status/{body['task_id']}"
    final = system.wait_terminal(body["task_id"])
    assert final["status"] == "completed"
    assert final["output"].startswith("Done:")


def test_a_listing_request_is_delegated_to_veronica_without_a_model_call(
    system: System, fake_llm: FakeLLM
) -> None:
    before = fake_llm.total_calls
    response = system.http.post(
        "/run", json={"goal": "List the files in the project root. Only names, up to 8."}
    )
    body = response.json()
    assert body["status"] == "success", body
    names = body["output"].splitlines()
    assert names == [
        "alpha.txt",
        "beta.md",
        "delta.json",
        "docs/",
        "epsilon.cfg",
        "eta.txt",
        "gamma.py",
        "iota.txt",
    ]
    assert fake_llm.total_calls == before


def test_a_russian_listing_request_is_delegated_too(system: System, fake_llm: FakeLLM) -> None:
    before = fake_llm.total_calls
    body = system.run({"goal": "Выведи список файлов в корне проекта. Только имена, до 8 штук."})
    assert body["status"] == "completed"
    assert len(body["output"].splitlines()) == 8
    assert fake_llm.total_calls == before


def test_a_russian_question_about_capabilities_is_answered_in_russian_without_a_model(
    system: System, fake_llm: FakeLLM
) -> None:
    before = fake_llm.total_calls
    body = system.run({"goal": "Что ты умеешь? Ответь в двух коротких предложениях."})
    assert body["status"] == "completed"
    assert "Victoria" in body["output"] and "журнал" in body["output"]
    assert fake_llm.total_calls == before


def test_reading_a_file_outside_the_workspace_is_refused(system: System) -> None:
    body = system.run({"goal": "Read the file ../../etc/passwd", "task_type": "files"})
    # Veronica refuses; Victoria falls back to her own run, which completes with the model's answer.
    assert body["status"] == "completed"
    assert "root:" not in (body["output"] or "")


def test_the_correlation_id_is_kept_and_echoed(system: System) -> None:
    response = system.http.post(
        "/run", json={"goal": "What can you do?"}, headers={"X-Correlation-ID": "corr-42"}
    )
    assert response.json()["correlation_id"] == "corr-42"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b'{"goal": ', 400, None),
        (b"", 400, "goal"),
        (b"[1, 2]", 422, None),
        (b"{}", 422, "goal"),
        (b'{"goal": 42}', 422, "goal"),
        (b'{"goal": "   "}', 422, "goal"),
        (b'{"goal": "x", "max_steps": "many"}', 422, "max_steps"),
        (b'{"goal": "x", "max_steps": 0}', 422, "max_steps"),
        (b'{"goal": "x", "task_type": "nonsense"}', 422, "task_type"),
        (b'{"goal": "x", "session_id": 7}', 422, "session_id"),
        (b"\xff\xfe", 400, None),
    ],
)
def test_bad_input_gets_a_4xx_with_a_json_body_naming_the_problem(
    system: System, body: bytes, status: int, field: str | None
) -> None:
    response = system.http.post("/run", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] and payload["detail"]
    assert payload.get("field") == field


def test_bad_query_parameters_are_named(system: System) -> None:
    response = system.http.post("/run", params={"wait": "soon"}, json={"goal": "x"})
    assert response.status_code == 422 and response.json()["field"] == "wait"
    response = system.http.post("/run", params={"async_mode": "perhaps"}, json={"goal": "x"})
    assert response.status_code == 422 and response.json()["field"] == "async_mode"


def test_an_unknown_task_is_404_and_an_unsafe_id_is_404_too(system: System) -> None:
    assert system.http.get("/run/status/0123456789abcdef").status_code == 404
    assert system.http.get("/run/status/a.b.>").status_code == 404
    assert system.http.get("/nowhere").status_code == 404
    assert system.http.get("/nowhere").json()["error"] == "http_error"


def test_health_ready_and_services_answer(system: System) -> None:
    health = system.http.get("/health").json()
    assert (health["status"], health["agent"], health["nats"]) == ("ok", "Victoria", "connected")
    assert system.http.get("/ready").status_code == 200
    entries = system.wait_for(
        lambda: (
            [e for e in system.services() if e["status"] == "up"]
            if len([e for e in system.services() if e["status"] == "up"]) >= 5
            else None
        ),
        what="five services up",
    )
    assert {e["name"] for e in entries} >= {"gateway", "victoria", "veronica", "monitor", "llm-runner"}
    for entry in entries:
        assert {"name", "instance", "pid", "status", "reason", "restarts", "last_seen"} <= set(entry)


def test_the_event_stream_replays_a_task_and_ends_with_its_terminal_event(system: System) -> None:
    task_id = system.submit("Explain JetStream in one line")
    with system.http.stream("GET", f"/run/{task_id}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    types = [event["type"] for event in events]
    assert types[0] == "task_submitted"
    # Each stage of the agent run opens with its model request, which records it.
    stages = [event["stage"] for event in events if event["type"] == "llm_requested"]
    assert stages[:2] == ["understanding", "planning"]
    assert types[-1] == "task_completed"


def stored_events(system: System, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The id of the task ``body`` runs (synchronously), and the events its history stores."""
    task_id = system.http.post("/run", json=body).json()["task_id"]
    return task_id, stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>")


def test_an_agent_task_stores_eight_events_its_start_and_stages_carried_by_its_model_requests(
    system: System,
) -> None:
    task_id, events = stored_events(system, {"goal": "Write a haiku about NATS", "task_type": "agent"})
    assert [e["type"] for e in events] == [
        "task_submitted",
        *["llm_requested", "llm_result"] * 3,
        "task_completed",
    ]
    requests = [e for e in events if e["type"] == "llm_requested"]
    assert [(r["stage"], r["step"], r["attempt"]) for r in requests] == [
        ("understanding", None, 1),
        ("planning", None, None),
        ("step", 1, None),
    ]
    assert requests[0]["instance"]
    calls = events[-1]["model_calls"]  # summed up for /metrics: gateways follow no llm_result
    assert [(c["outcome"], c["completion_tokens"]) for c in calls] == [("ok", 5)] * 3
    status = system.status(task_id)
    assert (status["status"], status["attempts"]) == ("completed", 1)


def test_a_delegated_task_stores_its_start_and_stage_as_events_of_their_own(system: System) -> None:
    _, events = stored_events(system, {"goal": "List the files in the project root"})
    assert [e["type"] for e in events] == [
        "task_submitted",
        "task_started",
        "task_stage",
        "tool_result",
        "task_completed",
    ]
    assert (events[1]["attempt"], events[2]["stage"]) == (1, "delegating")


def test_the_cli_runs_a_goal_and_prints_stages_and_the_result(system: System) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "victoria", "run", "Write a haiku about NATS", "--url", system.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "planning" in out.stdout and "step 1" in out.stdout and "completed" in out.stdout
    assert out.stdout.rstrip().endswith("Done: Write a haiku about NATS")
    task_id = out.stdout.split()[1]
    status = subprocess.run(
        [sys.executable, "-m", "victoria", "status", task_id, "--url", system.url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert json.loads(status.stdout)["status"] == "completed"


def test_victoria_run_sync_prints_the_answer_of_one_synchronous_request(system: System) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "victoria", "run", "Write a haiku about NATS", "--sync", "--url", system.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "Done: Write a haiku about NATS"), out.stderr


def test_watch_prints_task_events_using_the_url_recorded_in_the_data_dir(system: System) -> None:
    env = {k: v for k, v in system.env.items() if k != "NATS_URL"}
    watch = subprocess.Popen(
        [sys.executable, "-m", "victoria", "watch", "victoria.task.>", "--data-dir", str(system.data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert watch.stdout is not None
        assert "watching" in watch.stdout.readline()
        task_id = system.submit("What can you do?")
        deadline = time.monotonic() + 20
        seen = ""
        while time.monotonic() < deadline and "task_completed" not in seen:
            seen += watch.stdout.readline()
        assert "task_completed" in seen and task_id in seen
    finally:
        watch.terminate()
        watch.wait(10)
        if watch.stdout is not None:
            watch.stdout.close()


def test_a_cancelled_task_ends_cancelled(system: System, fake_llm: FakeLLM) -> None:
    fake_llm.delay = 3.0
    try:
        task_id = system.submit("Take your time with this one", task_type="agent")
        system.wait_for(lambda: system.status(task_id)["status"] == "running", what="running")
        response = system.http.post(f"/run/{task_id}/cancel")
        assert response.status_code == 202
        final = system.wait_terminal(task_id, timeout=10)
        assert final["status"] == "cancelled"
        assert system.http.post(f"/run/{task_id}/cancel").status_code == 200
    finally:
        fake_llm.delay = 0.0


def test_sync_mode_answers_202_with_the_task_id_when_the_wait_runs_out(
    system: System, fake_llm: FakeLLM
) -> None:
    fake_llm.delay = 1.0
    try:
        response = system.http.post(
            "/run", params={"wait": "0.2"}, json={"goal": "Slow one", "task_type": "agent"}
        )
        assert response.status_code == 202
        task_id = response.json()["task_id"]
        assert system.wait_terminal(task_id)["status"] == "completed"
    finally:
        fake_llm.delay = 0.0


def test_the_gateway_never_holds_a_connection_past_the_wait(system: System, fake_llm: FakeLLM) -> None:
    fake_llm.delay = 2.0
    try:
        started = time.monotonic()
        response = system.http.post(
            "/run", params={"wait": "0.5"}, json={"goal": "Slow", "task_type": "agent"}
        )
        assert response.status_code == 202
        assert time.monotonic() - started < 5.0
    finally:
        fake_llm.delay = 0.0


def test_a_repeated_idempotency_key_gets_the_first_answer(system: System) -> None:
    headers = {"Idempotency-Key": "order-7-confirm"}
    first = system.http.post("/run", json={"goal": "What can you do?"}, headers=headers)
    again = system.http.post("/run", json={"goal": "What can you do?"}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.content == again.content
    queued = system.http.post(
        "/run", params={"async_mode": "true"}, json={"goal": "x"}, headers={"Idempotency-Key": "async-1"}
    )
    repeat = system.http.post(
        "/run", params={"async_mode": "true"}, json={"goal": "x"}, headers={"Idempotency-Key": "async-1"}
    )
    assert queued.status_code == repeat.status_code == 202
    assert queued.json()["task_id"] == repeat.json()["task_id"]
    other = system.http.post("/run", json={"goal": "x"}, headers={"Idempotency-Key": "async-2"})
    assert other.json()["task_id"] != queued.json()["task_id"]


def test_an_overlong_idempotency_key_is_rejected_by_name(system: System) -> None:
    response = system.http.post("/run", json={"goal": "x"}, headers={"Idempotency-Key": "k" * 300})
    assert response.status_code == 422
    assert response.json()["field"] == "Idempotency-Key"


def test_metrics_are_served_in_prometheus_text(system: System) -> None:
    assert system.run({"goal": "Count me", "task_type": "agent"})["status"] == "completed"
    response = system.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['victoria_tasks_finished_total{status="completed"}'] >= 1
    assert any(k.startswith("victoria_model_call_duration_seconds_count{") for k in samples)
    assert any(k.startswith('victoria_stage_duration_seconds_count{stage="planning"}') for k in samples)
    assert any(k.startswith("victoria_model_tokens_total{") and 'kind="completion"' in k for k in samples)
    assert any(k.startswith("victoria_actor_up{") and 'name="victoria"' in k for k in samples)
    assert any(k.startswith("victoria_actor_restarts{") for k in samples)


def metric_samples(system: System) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in system.http.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_the_task_gauges_count_the_tasks_running_now_and_fall_back_when_they_end(
    system: System, fake_llm: FakeLLM
) -> None:
    fake_llm.delay = 1.5
    try:
        task_id = system.submit("Hold the model a while", task_type="agent")
        system.wait_for(lambda: system.status(task_id)["stage"] == "understanding", what="first model call")
        during = metric_samples(system)
        assert during['victoria_tasks{state="running"}'] >= 1
        assert during['victoria_model_requests{state="in_flight"}'] >= 1
    finally:
        fake_llm.delay = 0.0
    assert system.wait_terminal(task_id)["status"] == "completed"
    after = system.wait_for(
        lambda: (s := metric_samples(system))['victoria_tasks{state="running"}'] == 0 and s,
        what="nothing running",
    )
    assert after['victoria_tasks{state="queued"}'] == 0
    assert after['victoria_model_requests{state="in_flight"}'] == 0


def test_cancel_aborts_the_model_call_in_flight(system: System, fake_llm: FakeLLM) -> None:
    fake_llm.chunk_delay = 0.5
    aborted = fake_llm.aborted
    try:
        goal = "Please think about all of these many words one by one and slowly " * 3
        task_id = system.submit(goal, task_type="agent")
        system.wait_for(lambda: system.status(task_id)["stage"] == "understanding", what="understanding")
        time.sleep(0.6)  # the answer is streaming now
        started = time.monotonic()
        assert system.http.post(f"/run/{task_id}/cancel").status_code == 202
        assert system.wait_terminal(task_id, timeout=5)["status"] == "cancelled"
        assert time.monotonic() - started < 2.0
        system.wait_for(lambda: fake_llm.aborted > aborted, timeout=3, what="the model server saw the abort")
    finally:
        fake_llm.chunk_delay = 0.0


def test_a_body_over_its_limit_is_refused_without_being_read_whole(system: System) -> None:
    # A goal may carry images: 64 MB. Declared bigger, it is refused before a byte is read.
    with socket.create_connection(("127.0.0.1", system.port), timeout=10) as raw:
        raw.sendall(
            b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n{" % (MAX_RUN_BODY + 1)
        )
        answer = b""
        while b"}" not in answer:  # the head, then the JSON body
            piece = raw.recv(65536)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 413") and b"body_too_large" in answer, answer

    def chunks(megabytes: int) -> Iterator[bytes]:
        yield b'{"goal": "'
        for _ in range(megabytes * 16):
            yield b"y" * 65536
        yield b'"}'

    streamed = system.http.post("/run", content=chunks(65), headers={"content-type": "application/json"})
    assert streamed.status_code == 413
    # Elsewhere (the Telegram bot's beats, ...) the limit is 1 MB.
    beat = system.http.post(
        "/api/telegram/heartbeat", content=chunks(2), headers={"content-type": "application/json"}
    )
    assert beat.status_code == 413
