"""Kill actors with SIGKILL in the middle of tasks: every task finishes, nothing is paid for twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakellm import FakeLLM
from tests.system import System, stream_messages, victoria_up

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


@pytest.fixture
def slow_system(tmp_path: Path, workspace: Path) -> Iterator[tuple[System, FakeLLM]]:
    with (
        FakeLLM(delay=1.5) as fake,
        victoria_up(tmp_path / "data", fake, workspace, VICTORIA_ACK_WAIT="3").start() as system,
    ):
        yield system, fake


def test_killing_victoria_mid_task_loses_nothing_and_repeats_no_model_call(
    slow_system: tuple[System, FakeLLM],
) -> None:
    system, fake = slow_system
    ids = [system.submit(f"Durable task {n}", task_type="agent") for n in range(6)]
    system.wait_for(
        lambda: all(system.status(t)["stage"] in ("understanding", "planning", "step") for t in ids),
        what="all tasks running",
    )
    time.sleep(0.5)  # model calls are in flight now
    os.kill(system.pid_of("victoria"), signal.SIGKILL)
    finals = [system.wait_terminal(t, timeout=40) for t in ids]
    assert [f["status"] for f in finals] == ["completed"] * len(ids)
    assert all(f["attempts"] == 2 for f in finals)
    assert fake.repeated_prompts() == 0
    assert fake.total_calls == 3 * len(ids)
    down = system.wait_for(
        lambda: next(e for e in system.services() if e["name"] == "victoria")["restarts"] >= 1, what="restart"
    )
    assert down


def test_killing_the_llm_runner_mid_call_still_finishes_every_task(
    slow_system: tuple[System, FakeLLM],
) -> None:
    system, fake = slow_system
    ids = [system.submit(f"Runner task {n}", task_type="agent") for n in range(4)]
    system.wait_for(lambda: fake.total_calls >= 2, what="model calls in flight")
    os.kill(system.pid_of("llm-runner"), signal.SIGKILL)
    finals = [system.wait_terminal(t, timeout=40) for t in ids]
    assert [f["status"] for f in finals] == ["completed"] * len(ids)


def test_killing_veronica_falls_back_to_victorias_own_run(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    # Veronica stays down for a minute after her death, so the request surely finds her gone.
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_RESTART_BACKOFF="60").start() as system:
        pid = system.pid_of("veronica")
        os.kill(pid, signal.SIGKILL)
        system.wait_for(
            lambda: next(e for e in system.services() if e["name"] == "veronica")["status"] == "down",
            what="veronica down",
        )
        body = system.run({"goal": "List the files in the project root."})
        assert body["status"] == "completed"
        nats_url = system.bus_url()
        kinds = [e["type"] for e in stream_messages(nats_url, f"victoria.task.*.{body['task_id']}.>")]
        stages = [e.get("stage") for e in stream_messages(nats_url, f"victoria.task.*.{body['task_id']}.*")]
        assert "fallback" in stages  # Victoria's own run, not Veronica's answer
        assert "llm_requested" in kinds
