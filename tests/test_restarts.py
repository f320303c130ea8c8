"""Status is a fold of the event log: it survives restarts, and several gateways agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from tests.fakellm import FakeLLM
from tests.system import System, free_port, run_victoria

pytestmark = pytest.mark.e2e


def test_status_survives_a_gateway_killed_with_sigkill(system: System) -> None:
    body = system.run({"goal": "Remember me", "task_type": "agent"})
    assert body["status"] == "completed"
    old_pid = system.pid_of("gateway")
    os.kill(old_pid, signal.SIGKILL)
    system.wait_ready()
    system.wait_for(
        lambda: system.status(body["task_id"])["output"] == body["output"], what="status after restart"
    )
    entry = system.wait_for(
        lambda: next(
            (
                e
                for e in system.services()
                if e["name"] == "gateway" and e["pid"] != old_pid and e["status"] == "up"
            ),
            None,
        ),
        what="restarted gateway in /services",
    )
    assert entry["restarts"] >= 1


def test_status_survives_a_restart_of_the_whole_system(
    tmp_path: Path, fake_llm: FakeLLM, workspace: Path
) -> None:
    env = {"VICTORIA_LLM_URL": fake_llm.url, "VICTORIA_WORKSPACE": str(workspace)}
    headers = {"Idempotency-Key": "survivor"}
    first = System(tmp_path / "data", env=env).start()
    try:
        answer = first.http.post("/run", json={"goal": "Survive", "task_type": "agent"}, headers=headers)
        assert answer.json()["status"] == "success"
        done = first.status(answer.json()["task_id"])
        assert done["status"] == "completed"
        children = psutil.Process(first.process.pid).children(recursive=True) if first.process else []
        assert len(children) == 6  # nats-server, gateway and four actors (no projector: no database)
        assert first.stop() == 0  # SIGTERM: a clean stop
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left running after a clean stop: {alive}"
        stop_lines = first.log().split(" victoria.runtime.supervisor: stopping", 1)[1]
        assert "nats disconnected" not in stop_lines  # closing our own connection is no alarm
    finally:
        first.close()
    second = System(tmp_path / "data", env=env).start()
    try:
        again = second.status(done["task_id"])
        assert again == done
        repeat = second.http.post("/run", json={"goal": "Survive", "task_type": "agent"}, headers=headers)
        assert (repeat.status_code, repeat.content) == (answer.status_code, answer.content)
    finally:
        second.close()


def test_two_gateways_on_one_log_agree(system: System) -> None:
    nats_url = system.bus_url("gateway")
    port = free_port()
    env = dict(system.env, VICTORIA_INSTANCE="second")
    gateway = subprocess.Popen(
        [sys.executable, "-m", "victoria", "gateway", "--port", str(port), "--nats-url", nats_url],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        other = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        system.wait_for(lambda: other.get("/ready").status_code == 200, what="second gateway ready")
        task_id = system.submit("Agree on this", task_type="agent")
        first = system.wait_terminal(task_id)
        second = system.wait_for(lambda: other.get(f"/run/status/{task_id}").json(), what="status")
        assert second == first
        other.close()
    finally:
        gateway.terminate()
        gateway.wait(10)


def test_a_second_victoria_up_on_the_same_data_dir_is_refused(system: System) -> None:
    out = run_victoria(
        "up", "--port", str(free_port()), "--data-dir", str(system.data_dir), env=system.env, timeout=30
    )
    assert out.returncode == 1
    assert "another `victoria up`" in out.stderr
    assert system.http.get("/ready").status_code == 200  # the first one is untouched


def test_victoria_up_on_a_taken_port_stops_at_once_and_says_why(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_victoria("up", "--port", str(port), "--data-dir", str(tmp_path / "data"), timeout=30)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
