"""Attempts, dead letters, cancelling queued work, supervision with its events, NATS restarts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.fakellm import FakeLLM
from tests.system import NatsServer, System, stream_messages, victoria_up

pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.fake_llm(delay=1.0)]


def make_system(tmp_path: Path, fake: FakeLLM, workspace: Path, **env: str) -> System:
    env.setdefault("VICTORIA_ACK_WAIT", "2")
    return victoria_up(tmp_path / "data", fake, workspace, **env)


def nats_url(system: System) -> str:
    return system.bus_url()


def test_a_task_past_its_attempts_fails_with_the_reason_and_goes_to_the_dead_letters(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with make_system(tmp_path, fake, workspace, VICTORIA_MAX_ATTEMPTS="1").start() as system:
        task_id = system.submit("Doomed to crash", task_type="agent")
        system.wait_for(lambda: system.status(task_id)["status"] == "running", what="running")
        os.kill(system.pid_of("victoria"), signal.SIGKILL)
        final = system.wait_terminal(task_id, timeout=30)
        assert final["status"] == "failed"
        assert final["error_kind"] == "max_attempts"
        assert "1 attempts" in final["error"]
        assert final["attempts"] == 1
        letters = stream_messages(nats_url(system), f"victoria.dlq.task.{task_id}")
        assert letters and letters[0]["type"] == "dead_letter" and letters[0]["task_id"] == task_id


def test_cancelling_a_queued_task_ends_it_at_once(tmp_path: Path, fake: FakeLLM, workspace: Path) -> None:
    fake.delay = 0.5  # each model call: the first task stays busy while the test looks at the second
    with make_system(tmp_path, fake, workspace, VICTORIA_CONCURRENCY="1").start() as system:
        first = system.submit("Keeps Victoria busy", task_type="agent")
        second = system.submit("Waits its turn", task_type="agent")
        # The two land on their shards' streams; either may be taken first, and the other waits.
        busy = system.wait_for(
            lambda: next((t for t in (first, second) if system.status(t)["status"] == "running"), None),
            what="one running",
        )
        waiting = second if busy == first else first
        assert system.status(waiting)["status"] == "queued"
        assert system.http.post(f"/run/{waiting}/cancel").status_code == 202
        assert system.wait_terminal(waiting, timeout=3)["status"] == "cancelled"
        assert system.wait_terminal(busy)["status"] == "completed"
        assert system.status(waiting)["status"] == "cancelled"


def test_a_killed_actor_is_restarted_and_its_death_is_an_event_with_the_reason(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with make_system(tmp_path, fake, workspace).start() as system:
        pid = system.pid_of("veronica")
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        downs = system.wait_for(
            lambda: [
                e
                for e in stream_messages(nats_url(system), "victoria.svc.veronica.*.down")
                if e["pid"] == pid
            ],
            what="service_down",
        )
        assert time.monotonic() - killed_at < 5
        down = downs[0]
        assert down["type"] == "service_down" and down["source"] == "supervisor"
        assert down["signal"] == "SIGKILL" and down["likely_oom"] is True
        assert "likely OOM" in down["reason"]
        entry = system.wait_for(
            lambda: next(
                e
                for e in system.services()
                if e["name"] == "veronica" and e["status"] == "up" and e["pid"] != pid
            ),
            what="veronica back up",
        )
        assert entry["restarts"] == 1
        ups = stream_messages(nats_url(system), "victoria.svc.veronica.*.up")
        assert ups and ups[-1]["type"] == "service_up" and ups[-1]["reason"]
        # The supervisor's own log is on the bus too, like every actor's.
        said = stream_messages(nats_url(system), "victoria.log.up.warning")
        assert any(f"veronica (pid {pid}) exited" in r["message"] for r in said), said


def test_an_actor_in_a_crash_loop_is_left_down_and_reported(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with make_system(
        tmp_path,
        fake,
        workspace,
        VICTORIA_RESTART_BACKOFF="0.1",
        VICTORIA_CRASH_LOOP_LIMIT="2",
        VICTORIA_CRASH_LOOP_WINDOW="60",
    ).start() as system:
        for _ in range(3):
            pid = system.wait_for(lambda: system.pid_of("veronica"), what="veronica up")
            os.kill(pid, signal.SIGKILL)
            system.wait_for(
                lambda pid=pid: all(e["pid"] != pid or e["status"] == "down" for e in system.services()),
                what="death noticed",
            )
        entry = system.wait_for(
            lambda: next(
                (e for e in system.services() if e["name"] == "veronica" and "crash loop" in e["reason"]),
                None,
            ),
            what="crash loop reported",
        )
        assert entry["status"] == "down"
        time.sleep(1.0)
        assert next(e for e in system.services() if e["name"] == "veronica")["status"] == "down"
        # The rest of the system keeps working; file requests fall back to Victoria's own run.
        body = system.run({"goal": "List the files in the project root."})
        assert body["status"] == "completed"


def test_a_nats_restart_under_load_loses_no_accepted_task(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    broker = NatsServer(tmp_path / "nats").start()
    system = victoria_up(
        tmp_path / "data", fake, workspace, nats_url=broker.url, VICTORIA_ACK_WAIT="3"
    ).start()
    try:
        ids = [system.submit(f"Before the restart {n}", task_type="agent") for n in range(10)]
        time.sleep(0.5)
        broker.stop()
        response = system.http.post("/run", json={"goal": "While NATS is away"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert system.http.get("/ready").status_code == 503
        assert system.http.get("/health").status_code == 200
        broker.start()  # same port, same store
        system.wait_ready()
        ids += [system.submit(f"After the restart {n}", task_type="agent") for n in range(5)]
        finals = [system.wait_terminal(t, timeout=60) for t in ids]
        assert [f["status"] for f in finals] == ["completed"] * len(ids)
    finally:
        system.close()
        broker.stop()


def test_the_gateway_answers_health_while_nats_is_down(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    broker = NatsServer(tmp_path / "nats").start()
    system = victoria_up(tmp_path / "data", fake, nats_url=broker.url).start()
    try:
        broker.stop()
        started = time.monotonic()
        assert httpx.get(f"{system.url}/health", timeout=2).status_code == 200
        assert time.monotonic() - started < 1.0
    finally:
        system.close()
        broker.stop()


def test_a_hung_veronica_is_declared_down_and_victoria_stops_waiting_for_her(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.delay = 0.0
    system = make_system(tmp_path, fake, workspace, DELEGATE_VERONICA_TIMEOUT="30").start()
    pid = system.pid_of("veronica")
    os.kill(pid, signal.SIGSTOP)  # alive, silent: no heartbeats, no answers
    try:
        system.wait_for(
            lambda: next(e for e in system.services() if e["name"] == "veronica")["status"] == "down",
            what="veronica down",
        )
        downs = stream_messages(nats_url(system), "victoria.svc.veronica.*.down")
        assert downs[-1]["source"] == "heartbeat" and "no heartbeat" in downs[-1]["reason"]
        started = time.monotonic()
        body = system.run({"goal": "List the files in the project root."})
        assert body["status"] == "completed"
        assert time.monotonic() - started < 10  # not the 30 s delegation deadline
    finally:
        os.kill(pid, signal.SIGCONT)
        system.close()
    fake.delay = 1.0


def test_the_model_server_probe_reports_down_and_up_with_the_url_and_the_error(
    tmp_path: Path, workspace: Path
) -> None:
    from tests.system import free_port

    port = free_port()
    system = victoria_up(
        tmp_path / "data",
        f"http://127.0.0.1:{port}",
        workspace,
        VICTORIA_PROBE_INTERVAL="0.2",
        VICTORIA_PROBE_FAILURES="2",
    ).start()
    late: FakeLLM | None = None
    try:
        dependency = system.wait_for(
            lambda: next(
                d for d in system.http.get("/services").json()["dependencies"] if d["status"] == "down"
            ),
            what="model server down",
        )
        assert dependency["name"] == "model-server" and str(port) in dependency["target"]
        down = stream_messages(nats_url(system), "victoria.svc.model-server.*.down")[-1]
        assert (
            down["source"] == "probe" and str(port) in down["url"] and "connection refused" in down["error"]
        )
        late = FakeLLM(port=port).start()
        system.wait_for(
            lambda: system.http.get("/services").json()["dependencies"][0]["status"] == "up",
            what="model server up",
        )
        up = stream_messages(nats_url(system), "victoria.svc.model-server.*.up")[-1]
        assert up["type"] == "service_up" and str(port) in up["url"]
    finally:
        system.close()
        if late is not None:
            late.stop()


def test_the_postgres_probe_reports_a_reachable_database(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    dsn = "postgresql://postgres@127.0.0.1:5432/test"  # this machine: trust auth
    with make_system(
        tmp_path, fake, workspace, VICTORIA_POSTGRES_DSN=dsn, VICTORIA_PROBE_INTERVAL="0.2"
    ).start() as system:
        entry = system.wait_for(
            lambda: next(
                d
                for d in system.http.get("/services").json()["dependencies"]
                if d["name"] == "postgres" and d["status"] != "unknown"
            ),
            what="postgres probed",
        )
        assert entry["status"] == "up", entry
        assert entry["target"] == "postgresql://postgres@127.0.0.1:5432/test"


def test_a_veronica_that_dies_holding_a_request_costs_no_delegation_timeout(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.delay = 0.0
    with make_system(tmp_path, fake, workspace, DELEGATE_VERONICA_TIMEOUT="60").start() as system:
        pid = system.pid_of("veronica")
        os.kill(pid, signal.SIGSTOP)  # she takes the request and never answers
        task_id = system.submit("List the files in the project root.")
        system.wait_for(lambda: system.status(task_id)["stage"] == "delegating", what="delegating")
        time.sleep(0.3)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        final = system.wait_terminal(task_id, timeout=20)
        assert final["status"] == "completed"
        assert time.monotonic() - killed_at < 10  # not the 60 s delegation deadline
    fake.delay = 1.0
