"""Past one machine: `victoria up --nodes 3 --instances 2`, a NATS cluster of three servers from the
wheel on loopback, every stream and bucket with three replicas, two instances of every actor."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from tests.fakellm import FakeLLM
from tests.system import NatsServer, System, free_port, stream_messages, victoria_up
from victoria.events import subjects

pytestmark = [pytest.mark.e2e, pytest.mark.fake_llm(delay=0.3)]

TASKS = 24


def start_cluster(tmp_path: Path, fake: FakeLLM, workspace: Path) -> System:
    return victoria_up(
        tmp_path / "data",
        fake,
        workspace,
        extra_args=["--nodes", "3", "--instances", "2"],
        VICTORIA_ACK_WAIT="5",
    ).start()


def node_pid(system: System, node: str) -> int:
    return int((system.data_dir / "cluster" / node / "nats-server.pid").read_text().strip())


def replicas(system: System) -> dict[str, tuple[int, list[tuple[str, bool]]]]:
    """Every stream: (replicas asked for, [(peer, current) ...] of the leader's followers)."""

    async def read() -> dict[str, tuple[int, list[tuple[str, bool]]]]:
        nc = await nats.connect(servers=system.bus_url().split(","))
        try:
            js = nc.jetstream()
            out: dict[str, tuple[int, list[tuple[str, bool]]]] = {}
            for name in await js.streams_info():
                cluster = name.cluster
                peers = [(r.name, bool(r.current)) for r in (cluster.replicas or [])] if cluster else []
                out[name.config.name or ""] = (name.config.num_replicas or 1, peers)
            return out
        finally:
            await nc.close()

    return asyncio.run(read())


def all_current(system: System) -> bool:
    found = replicas(system)
    return bool(found) and all(
        asked == 3 and len(peers) == 2 and all(current for _, current in peers)
        for asked, peers in found.values()
    )


def submit_as_a_client_would(system: System, goal: str) -> str:
    """Submit, and again after ``Retry-After`` while the gateway answers 503 (its own connection
    was to the server that died, and it is moving to another)."""
    deadline = time.monotonic() + 20.0
    while True:
        response = system.http.post(
            "/run", params={"async_mode": "true"}, json={"goal": goal, "task_type": "agent"}
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 202, response.text
            return str(response.json()["task_id"])
        time.sleep(float(response.headers.get("retry-after", "1")))


def test_every_stream_and_bucket_has_three_replicas_on_a_three_node_cluster(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with start_cluster(tmp_path, fake, workspace) as system:
        found = replicas(system)
        expected = {
            *subjects.TASK_STREAMS,
            subjects.SERVICE_STREAM,
            subjects.HEARTBEAT_STREAM,
            subjects.LOG_STREAM,
            subjects.DLQ_STREAM,
            *(subjects.bucket_stream(bucket) for bucket in subjects.BUCKETS),
            subjects.IMAGES_STREAM,
        }
        assert expected <= set(found)
        assert {asked for asked, _ in found.values()} == {3}

        def two_of_each() -> bool:
            up = Counter(entry["name"] for entry in system.services() if entry["status"] == "up")
            return all(up[name] == 2 for name in ("victoria", "llm-runner", "veronica"))

        system.wait_for(two_of_each, what="two instances of each actor up")


def test_a_node_and_a_victoria_killed_under_load_lose_no_task_and_repeat_no_model_call(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with start_cluster(tmp_path, fake, workspace) as system:
        tasks = [system.submit(f"Cluster task {n}", task_type="agent") for n in range(TASKS)]
        time.sleep(0.8)  # under way: understanding and planning on both instances
        victim = next(e for e in system.services() if e["name"] == "victoria" and e["status"] == "up")
        os.kill(node_pid(system, "n2"), signal.SIGKILL)
        os.kill(int(victim["pid"]), signal.SIGKILL)
        final = {task_id: system.wait_terminal(task_id, timeout=120.0) for task_id in tasks}
        assert {status["status"] for status in final.values()} == {"completed"}, final
        url = system.bus_url()
        ends = Counter(m["task_id"] for m in stream_messages(url, "victoria.task.*.*.completed"))
        assert ends == Counter(tasks), "each task ends exactly once"
        results = Counter(
            (m["task_id"], m["request_id"]) for m in stream_messages(url, "victoria.task.*.*.llm_result.*")
        )
        assert set(results.values()) == {1}, "one result per request, ever"
        asked = Counter(
            (m["task_id"], m["request_id"]) for m in stream_messages(url, "victoria.task.*.*.llm_request")
        )
        assert set(asked.values()) == {1} and set(asked) == set(results), (asked, results)
        assert fake.repeated_prompts() == 0, ("no model call was paid twice", fake.repeated())
        assert sum(fake.calls.values()) >= 3 * TASKS
        down = [
            m
            for m in stream_messages(url, "victoria.svc.>")
            if m.get("type") == "service_down" and m["name"] in ("victoria", "nats-server")
        ]
        assert {m["name"] for m in down} == {"victoria", "nats-server"}


def test_a_killed_node_comes_back_and_every_stream_has_three_current_replicas_again(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with start_cluster(tmp_path, fake, workspace) as system:
        system.wait_for(lambda: all_current(system), timeout=30.0, what="three current replicas")
        old = node_pid(system, "n3")
        os.kill(old, signal.SIGKILL)
        # While it is away, the other two hold a quorum: tasks go on.
        meanwhile = [submit_as_a_client_would(system, f"While n3 is away {n}") for n in range(6)]
        for task_id in meanwhile:
            assert system.wait_terminal(task_id, timeout=60.0)["status"] == "completed"
        system.wait_for(lambda: node_pid(system, "n3") != old, timeout=30.0, what="n3 started again")
        system.wait_for(lambda: all_current(system), timeout=60.0, what="n3 caught up")

        def told() -> list[str]:
            return [
                m["type"]
                for m in stream_messages(system.bus_url(), "victoria.svc.nats-server.>")
                if m["instance"].endswith("-n3")
            ]

        # The supervisor reports in the background, retrying while the cluster settles.
        system.wait_for(lambda: len(told()) >= 2, timeout=30.0, what="n3's down and up recorded")
        assert told() == ["service_down", "service_up"], told()


def test_more_replicas_than_servers_is_refused_at_start_with_a_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_"))}
    env["VICTORIA_REPLICAS"] = "3"
    argv = [sys.executable, "-m", "victoria", "up", "--port", "0", "--data-dir", str(tmp_path / "data")]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0
    assert "3 replicas" in said and "VICTORIA_REPLICAS=1" in said, said


def test_a_comma_separated_nats_url_reaches_the_cluster(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with start_cluster(tmp_path, fake, workspace) as system:
        url = (system.data_dir / "nats.url").read_text().strip()
        assert url.count(",") == 2
        env: dict[str, Any] = {
            k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_"))
        }
        env.update(NATS_URL=url, VICTORIA_DATA_DIR=str(system.data_dir))
        watch = subprocess.Popen(
            [sys.executable, "-m", "victoria", "watch", "victoria.task.>"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            time.sleep(2.0)
            task_id = system.submit("Watched across the cluster", task_type="agent")
            system.wait_terminal(task_id)
            time.sleep(0.5)
        finally:
            watch.send_signal(signal.SIGINT)
            printed, _ = watch.communicate(timeout=20)
        assert task_id in printed and "task_completed" in printed, printed


def test_two_gateways_on_one_nats_give_the_same_status_events_and_idempotent_answers(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    system = victoria_up(tmp_path / "data", fake, workspace).start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_"))}
    env.update(VICTORIA_DATA_DIR=str(system.data_dir), VICTORIA_INSTANCE="second")
    second = subprocess.Popen(
        [sys.executable, "-m", "victoria", "gateway", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    other = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0)
    try:
        system.wait_for(lambda: other.get("/ready").status_code == 200, what="the second gateway ready")
        key = {"Idempotency-Key": "two-gateways-1"}
        body = {"goal": "Say hello to both gateways", "task_type": "agent"}
        first = system.http.post("/run", params={"async_mode": "true"}, json=body, headers=key)
        again = other.post("/run", params={"async_mode": "true"}, json=body, headers=key)
        assert first.status_code == again.status_code == 202
        assert first.content == again.content  # the first answer, byte for byte, from the other gateway
        task_id = first.json()["task_id"]
        done = system.wait_terminal(task_id)
        seen = other.get(f"/run/status/{task_id}").json()
        assert {k: seen[k] for k in ("status", "output", "attempts")} == {
            k: done[k] for k in ("status", "output", "attempts")
        }
        with other.stream("GET", f"/run/{task_id}/events") as events:
            lines = [line for line in events.iter_lines() if line.startswith("data: ")]
        assert '"task_completed"' in lines[-1]
    finally:
        other.close()
        second.send_signal(signal.SIGTERM)
        second.wait(20)
        system.close()


def test_victoria_setup_makes_the_streams_and_refuses_more_replicas_than_servers(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_"))}
        env["VICTORIA_DATA_DIR"] = str(tmp_path / "data")
        argv = [sys.executable, "-m", "victoria", "setup", "--nats-url", server.url]
        made = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert made.returncode == 0, made.stderr
        assert "1 replica each" in made.stdout

        async def names() -> set[str]:
            nc = await nats.connect(server.url)
            try:
                return {info.config.name or "" for info in await nc.jetstream().streams_info()}
            finally:
                await nc.close()

        assert set(subjects.TASK_STREAMS) | {subjects.SERVICE_STREAM} <= asyncio.run(names())
        three = subprocess.run(
            argv,
            env={**env, "VICTORIA_REPLICAS": "3"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert three.returncode != 0
        assert "VICTORIA_REPLICAS=1" in three.stderr + three.stdout
    finally:
        server.stop()
