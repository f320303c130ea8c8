"""Random SIGKILLs of actors every few seconds while 100 tasks run: all complete, none twice."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.fakellm import FakeLLM
from tests.system import stream_messages, victoria_up

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

TASKS = 100
CHAOS_SECONDS = 12.0
KILL_EVERY = 2.0  # seconds


def test_random_kills_during_a_hundred_tasks_lose_none_and_finish_none_twice(
    tmp_path: Path, workspace: Path
) -> None:
    fake = FakeLLM(delay=1.0).start()
    system = victoria_up(
        tmp_path / "data", fake, workspace, VICTORIA_ACK_WAIT="2", VICTORIA_RESTART_BACKOFF="0.2"
    ).start()
    rng = random.Random(20261128)
    killed: Counter[str] = Counter()
    try:
        goals = [
            ("List the files in the project root.", None) if n % 5 == 0 else (f"Chaos task {n}", "agent")
            for n in range(TASKS)
        ]
        ids = [system.submit(goal, **({"task_type": kind} if kind else {})) for goal, kind in goals]
        end = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < end:
            time.sleep(KILL_EVERY)
            victim = rng.choice(["victoria", "victoria", "llm-runner", "veronica", "gateway", "monitor"])
            try:
                os.kill(system.pid_of(victim), signal.SIGKILL)
                killed[victim] += 1
            except (ProcessLookupError, AssertionError, httpx.HTTPError):
                pass
        system.wait_ready()
        finals = {t: system.wait_terminal(t, timeout=120) for t in ids}
        statuses = Counter(f["status"] for f in finals.values())
        assert statuses == Counter({"completed": TASKS}), (statuses, killed)
        url = system.bus_url()
        terminal = Counter(
            e["task_id"] for e in stream_messages(url, "victoria.task.*.*.completed", timeout=10)
        )
        assert set(terminal) == set(ids)
        assert max(terminal.values()) == 1, "a task completed twice"
        assert sum(killed.values()) >= CHAOS_SECONDS / KILL_EVERY - 1
    finally:
        system.close()
        fake.stop()
