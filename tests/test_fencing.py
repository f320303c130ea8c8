"""Only the attempt that holds a task writes its history: a Victoria frozen past the duplicate
window, a cancel racing a completion, and a server too old to fence. The whole system runs as a
user runs it (``victoria up``), with a second Victoria started by hand."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakellm import FakeLLM
from tests.system import NatsServer, System, stream_messages

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

TERMINAL = ("task_completed", "task_failed", "task_cancelled")
DEBIAN_NATS = Path("/usr/sbin/nats-server")  # Debian's package: nats-server 2.9.10


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


def events_by_task(nats_url: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event in stream_messages(nats_url, "victoria.task.>"):
        out.setdefault(event["task_id"], []).append(event)
    return out


def start_second_victoria(nats_url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "victoria", "actor", "victoria", "--nats-url", nats_url],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def test_a_victoria_frozen_past_the_duplicate_window_writes_nothing_and_pays_for_nothing_when_thawed(
    tmp_path: Path, workspace: Path, broker: NatsServer
) -> None:
    fake = FakeLLM(delay=1.0).start()
    settings = {
        "VICTORIA_LLM_URL": fake.url,
        "VICTORIA_WORKSPACE": str(workspace),
        "VICTORIA_ACK_WAIT": "2",
        "VICTORIA_DEDUP_WINDOW": "3",
        "VICTORIA_MAX_ATTEMPTS": "10",
    }
    system = System(tmp_path / "data", env={**settings, "VICTORIA_INSTANCE": "first"}, nats_url=broker.url)
    system.start()
    second: subprocess.Popen[bytes] | None = None
    first_pid = 0
    try:
        ids = [system.submit(f"Frozen task {n}", task_type="agent") for n in range(4)]
        system.wait_for(
            lambda: all(system.status(t)["stage"] in ("planning", "step") for t in ids),
            what="first calls made",
        )
        first_pid = system.pid_of("victoria")
        os.kill(first_pid, signal.SIGSTOP)  # a paused VM, a long pause, a partition
        second = start_second_victoria(
            broker.url, {**system.env, **settings, "VICTORIA_INSTANCE": "second"}, tmp_path / "second.log"
        )
        finals = [system.wait_terminal(t, timeout=60) for t in ids]
        assert [f["status"] for f in finals] == ["completed"] * len(ids)
        time.sleep(4.0)  # the duplicate window (3 s) forgets every message id the second stored
        os.kill(first_pid, signal.SIGCONT)

        def lost_lines() -> set[str]:
            records = stream_messages(broker.url, "victoria.log.victoria.warning", timeout=1.0)
            return {
                task_id
                for r in records
                if r["instance"] == "first" and "lost the task" in r["message"]
                for task_id in ids
                if task_id in r["message"]
            }

        assert system.wait_for(
            lambda: lost_lines() == set(ids), timeout=30, what="the first says it lost them"
        )
        time.sleep(1.0)  # anything the thawed instance still did would be stored by now
        history = events_by_task(broker.url)
        for task_id in ids:
            kinds = [e["type"] for e in history[task_id]]
            assert sum(kind in TERMINAL for kind in kinds) == 1, kinds
            requests = Counter(e["request_id"] for e in history[task_id] if e["type"] == "llm_requested")
            assert set(requests.values()) == {1}, requests
            assert system.status(task_id)["status"] == "completed"
        assert fake.repeated_prompts() == 0
        assert fake.total_calls == 3 * len(ids)  # understand, plan, one step: each paid once
    finally:
        if first_pid:
            os.kill(first_pid, signal.SIGCONT)
        if second is not None:
            second.terminate()
            second.wait(10)
        system.close()
        fake.stop()


def test_a_cancel_racing_a_completion_leaves_one_terminal_event_that_agrees_with_the_status(
    tmp_path: Path, workspace: Path, broker: NatsServer
) -> None:
    fake = FakeLLM(delay=0.4).start()
    system = System(
        tmp_path / "data",
        env={"VICTORIA_LLM_URL": fake.url, "VICTORIA_WORKSPACE": str(workspace)},
        nats_url=broker.url,
    ).start()
    seen: dict[str, tuple[int, str]] = {}

    def race(task_id: str) -> None:
        system.wait_for(lambda: system.status(task_id)["stage"] == "step", timeout=30, what="last call")
        time.sleep(random.uniform(0.0, 0.8))  # the last model call takes 0.4 s
        response = system.http.post(f"/run/{task_id}/cancel")
        seen[task_id] = (response.status_code, system.status(task_id)["status"])

    try:
        ids = [system.submit(f"Race {n}", task_type="agent") for n in range(16)]
        threads = [threading.Thread(target=race, args=(t,)) for t in ids]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        finals = {t: system.wait_terminal(t, timeout=30)["status"] for t in ids}
        time.sleep(0.5)
        history = events_by_task(broker.url)
        for task_id in ids:
            events = history[task_id]
            kinds = [e["type"] for e in events]
            terminals = [k for k in kinds if k in TERMINAL]
            assert len(terminals) == 1, kinds
            if "task_cancel_requested" in kinds[: kinds.index(terminals[0])]:
                assert terminals[0] == "task_cancelled", kinds  # the request decided it
            assert finals[task_id] == terminals[0].removeprefix("task_"), (finals[task_id], kinds)
            code, read_at_once = seen[task_id]
            assert read_at_once in ("completed", "cancelled")
            assert read_at_once == finals[task_id]  # a terminal status never changes once read
            assert (code == 202) == (finals[task_id] == "cancelled")
        assert set(finals.values()) == {"completed", "cancelled"}  # both sides of the race were run
    finally:
        system.close()
        fake.stop()


@pytest.mark.skipif(not DEBIAN_NATS.is_file(), reason="needs Debian's nats-server package (2.9.10)")
def test_a_server_older_than_2_11_is_refused_at_start_naming_its_version_unless_told_to_run_unfenced(
    tmp_path: Path, workspace: Path
) -> None:
    old = NatsServer(tmp_path / "old-nats", binary=DEBIAN_NATS).start()
    fake = FakeLLM().start()
    env = {"VICTORIA_LLM_URL": fake.url, "VICTORIA_WORKSPACE": str(workspace)}
    try:
        refused = System(tmp_path / "refused", env=env, nats_url=old.url)
        with pytest.raises(RuntimeError, match="exited with 1"):
            refused.start()
        said = refused.log()
        assert "nats-server 2.9.10" in said and "VICTORIA_ALLOW_UNFENCED=1" in said, said
        refused.close()
        unfenced = System(
            tmp_path / "unfenced", env={**env, "VICTORIA_ALLOW_UNFENCED": "1"}, nats_url=old.url
        )
        unfenced.start()
        try:
            assert "running unfenced" in unfenced.log()
            body = unfenced.run({"goal": "Write a haiku", "task_type": "agent"})
            assert body["status"] == "completed", body
        finally:
            unfenced.close()
    finally:
        fake.stop()
        old.stop()
        shutil.rmtree(tmp_path / "old-nats", ignore_errors=True)
