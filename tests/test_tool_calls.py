"""Tool calls, durably (actors/veronica/executor.py): an intent in the task's history, claimed once
by Veronica, its outcome stored; crashes of either side never run a command twice. Marker files in
the workspace count the real runs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakellm import FakeLLM
from tests.system import System, stream_messages, victoria_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"), reason="no bubblewrap"
    ),
]


def events(system: System, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>") if m["type"] == kind]


def command(text: str) -> dict[str, Any]:
    return {"tool": "run_command", "args": {"command": text}}


def runs(workspace: Path) -> list[str]:
    marker = workspace / "runs.txt"
    return marker.read_text().split() if marker.exists() else []


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


def test_a_command_the_model_calls_runs_in_the_sandbox_and_its_outcome_is_an_event(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode, fake.steps = "steps", [command("echo ran >> runs.txt; ls /; echo oops >&2")]
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        task_id = system.submit("Run it", task_type="agent")
        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        [intent] = events(system, task_id, "tool_intent")
        [outcome] = events(system, task_id, "tool_outcome")
        assert intent["tool"] == "run_command" and intent["effect"] == "execute" and intent["rerun"] is False
        assert outcome["ok"] is True and outcome["exit_code"] == 0 and "oops" in outcome["output"]
        assert "home" not in outcome["output"].split("stderr")[0]  # the sandbox's /, not the host's
        assert len(events(system, task_id, "tool_claim")) == 1
        assert runs(workspace) == ["ran"]
        assert "Result of run_command(echo ran" in fake.prompts_text()


def test_a_bad_call_is_a_tool_error_the_model_reads_and_the_task_goes_on(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "steps"
    fake.steps = [
        {"tool": "run_command", "args": {"command": "pwd", "timeout_s": "soon"}},
        {"tool": "run_command", "args": {"command": "pwd", "cwd": "../.."}},
        command("exit 3"),
    ]
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        task_id = system.submit("Run it", task_type="agent")
        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        prompts = fake.prompts_text()
        assert "error: bad arguments for run_command" in prompts and "timeout_s" in prompts
        outside, failed = events(system, task_id, "tool_outcome")  # the bad call never became an intent
        assert outside["ok"] is False and "outside" in outside["error"].lower(), outside
        assert failed["ok"] is False and failed["exit_code"] == 3


def test_killing_victoria_while_a_command_runs_runs_it_once_to_its_end(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode, fake.steps = "steps", [command("sleep 3; echo ran >> runs.txt")]
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_ACK_WAIT="4").start() as system:
        task_id = system.submit("Run it", task_type="agent")
        system.wait_for(lambda: events(system, task_id, "tool_claim"), what="the call claimed")
        os.kill(system.pid_of("victoria"), signal.SIGKILL)
        end = system.wait_terminal(task_id, timeout=90)
        assert end["status"] == "completed", end
        assert runs(workspace) == ["ran"]
        assert len(events(system, task_id, "tool_intent")) == 1  # the resumed attempt found it
        assert [o["ok"] for o in events(system, task_id, "tool_outcome")] == [True]


def test_killing_veronica_while_a_command_runs_kills_it_and_the_model_hears_interrupted(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode, fake.steps = "steps", [command("echo start >> runs.txt; sleep 6; echo end >> runs.txt")]
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_ACK_WAIT="3").start() as system:
        task_id = system.submit("Run it", task_type="agent")
        system.wait_for(lambda: runs(workspace) == ["start"], what="the command started")
        os.kill(system.pid_of("veronica"), signal.SIGKILL)
        end = system.wait_terminal(task_id, timeout=90)
        assert end["status"] == "completed", end
        time.sleep(7)  # past the command's end, had it lived on
        assert runs(workspace) == ["start"]  # it died with her, and nobody ran it again
        [outcome] = events(system, task_id, "tool_outcome")
        assert outcome["interrupted"] is True and "unknown whether it finished" in outcome["error"]
        assert "unknown whether it finished" in fake.prompts_text()


def test_cancelling_a_task_stops_its_running_command_within_two_seconds(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode, fake.steps = "steps", [command("echo start >> runs.txt; sleep 30; echo end >> runs.txt")]
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        task_id = system.submit("Run it", task_type="agent")
        system.wait_for(lambda: runs(workspace) == ["start"], what="the command started")
        began = time.monotonic()
        assert system.http.post(f"/run/{task_id}/cancel").status_code in (200, 202)
        system.wait_for(lambda: events(system, task_id, "tool_outcome"), what="the outcome", timeout=10)
        assert time.monotonic() - began < 2.5
        [outcome] = events(system, task_id, "tool_outcome")
        assert outcome["ok"] is False and "cancelled" in outcome["error"]
        assert system.wait_terminal(task_id, timeout=30)["status"] == "cancelled"
        assert runs(workspace) == ["start"]


def test_the_model_writes_patches_searches_and_reads_files_of_the_workspace(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    patch = "--- a/app.py\n+++ b/app.py\n@@ -1,2 +1,2 @@\n def main():\n-    return 1\n+    return 2\n"
    fake.mode = "steps"
    fake.steps = [
        {"tool": "write_file", "args": {"path": "app.py", "content": "def main():\n    return 1\n"}},
        {"tool": "apply_patch", "args": {"patch": patch}},
        {"tool": "grep_search", "args": {"pattern": "return \\d"}},
        {"tool": "find_files", "args": {"pattern": "**/*.py"}},
        {"tool": "read_file", "args": {"path": "app.py", "offset": 2, "limit": 1}},
        {"tool": "write_file", "args": {"path": "../outside.txt", "content": "no"}},
    ]
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        task_id = system.submit("Change the code", task_type="agent")
        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        wrote, patched, grepped, found, read, outside = events(system, task_id, "tool_outcome")
        assert (workspace / "app.py").read_text() == "def main():\n    return 2\n"
        assert wrote["changes"][0]["before"] is None and wrote["changes"][0]["after"]
        assert patched["changes"][0]["before"] == wrote["changes"][0]["after"]
        assert "app.py:2:" in grepped["output"] and "return 2" in grepped["output"]
        assert "app.py" in found["output"]
        assert "return 2" in read["output"] and "def main" not in read["output"]
        assert outside["ok"] is False and not (workspace.parent / "outside.txt").exists()
        assert [i["rerun"] for i in events(system, task_id, "tool_intent")] == [
            False,
            False,
            True,
            True,
            True,
            False,
        ]
