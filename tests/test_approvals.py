"""Approvals by a person, durable: a tool call whose effect is in ``VICTORIA_APPROVAL`` waits for a
decision (``POST /run/{task_id}/approvals/{id}``, ``victoria approve``/``deny``), which is an event;
a restart of everything keeps it waiting; a denial is a tool error the model reads. Marker files in
the workspace count the real runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakellm import FakeLLM
from tests.system import System, run_victoria, stream_messages, victoria_up

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"), reason="no bubblewrap"
    ),
]

TOKEN = "s3cret-token-of-alice"


def events(system: System, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>") if m["type"] == kind]


def runs(workspace: Path) -> list[str]:
    marker = workspace / "runs.txt"
    return marker.read_text().split() if marker.exists() else []


def waiting(system: System, task_id: str) -> dict[str, Any] | None:
    status = system.status(task_id)
    return status if status["pending_approvals"] else None


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


def alice_up(tmp_path: Path, fake: FakeLLM, workspace: Path, **env: str) -> System:
    """A system whose gateway knows one client, ``alice``, from a tokens file."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {TOKEN}\n")
    system = victoria_up(tmp_path / "data", fake, workspace, VICTORIA_API_TOKENS_FILE=str(tokens), **env)
    system.http.headers["Authorization"] = f"Bearer {TOKEN}"
    return system


def test_a_command_waits_for_a_persons_yes_then_runs_once_and_records_who_said_it(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "steps"
    fake.steps = [{"tool": "run_command", "args": {"command": "echo ran >> runs.txt"}}]
    with alice_up(tmp_path, fake, workspace, VICTORIA_APPROVAL="execute").start() as system:
        task_id = system.submit("Run it", task_type="agent")
        status = system.wait_for(lambda: waiting(system, task_id), what="the call waiting")
        assert status["status"] == "running" and status["stage"] == "waiting_for_approval"
        [pending] = status["pending_approvals"]
        assert pending["tool"] == "run_command" and pending["effect"] == "execute"
        assert pending["arguments"]["command"] == "echo ran >> runs.txt" and pending["requested_at"]
        assert runs(workspace) == [] and events(system, task_id, "tool_intent") == []
        listed = {t["task_id"]: t for t in system.http.get("/tasks").json()["tasks"]}
        assert listed[task_id]["stage"] == "waiting_for_approval"

        route = f"/run/{task_id}/approvals/{pending['id']}"
        assert system.http.post(route, content=b"{").status_code == 400
        bad = system.http.post(route, json={"decision": "maybe"})
        assert bad.status_code == 422 and bad.json()["field"] == "decision"
        missing = system.http.post(f"/run/{task_id}/approvals/call-99", json={"decision": "approve"})
        assert missing.status_code == 404 and missing.json()["field"] == "approval_id"
        assert system.http.post("/run/nope/approvals/call-1", json={"decision": "approve"}).status_code == 404

        yes = system.http.post(route, json={"decision": "approve"})
        assert yes.status_code == 200, yes.text
        assert yes.json()["decision"] == "approve" and yes.json()["by"] == "alice"
        again = system.http.post(route, json={"decision": "deny", "reason": "too late"})
        assert again.status_code == 409 and again.json()["decision"] == "approve"

        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        assert runs(workspace) == ["ran"]
        [intent] = events(system, task_id, "tool_intent")
        assert intent["approved_by"] == "alice"
        [decided] = events(system, task_id, "approval_decided")
        assert decided["by"] == "alice" and decided["decision"] == "approve"
        assert system.status(task_id)["pending_approvals"] == []


def test_a_denied_call_is_a_tool_error_the_model_reads_and_nothing_runs(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "steps"
    fake.steps = [{"tool": "write_file", "args": {"path": "x.txt", "content": "hi"}}]
    with alice_up(tmp_path, fake, workspace, VICTORIA_APPROVAL="write").start() as system:
        task_id = system.submit("Write it", task_type="agent")
        [pending] = system.wait_for(lambda: waiting(system, task_id), what="the call waiting")[
            "pending_approvals"
        ]
        no = system.http.post(
            f"/run/{task_id}/approvals/{pending['id']}", json={"decision": "deny", "reason": "not now"}
        )
        assert no.status_code == 200 and no.json()["decision"] == "deny"
        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        assert "denied by alice: not now" in fake.prompts_text()
        assert not (workspace / "x.txt").exists()
        assert events(system, task_id, "tool_intent") == []


def test_a_call_waiting_for_approval_survives_a_restart_of_everything_and_runs_once_after(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "steps"
    fake.steps = [{"tool": "run_command", "args": {"command": "echo ran >> runs.txt"}}]
    system = alice_up(tmp_path, fake, workspace, VICTORIA_APPROVAL="execute").start()
    try:
        task_id = system.submit("Run it", task_type="agent")
        [pending] = system.wait_for(lambda: waiting(system, task_id), what="the call waiting")[
            "pending_approvals"
        ]
        system.stop()  # every process: the broker, the gateway, Victoria, Veronica, the runner
        system.start()
        status = system.wait_for(lambda: waiting(system, task_id), what="still waiting after the restart")
        assert [p["id"] for p in status["pending_approvals"]] == [pending["id"]]
        assert runs(workspace) == []
        env = {**system.env, "VICTORIA_URL": system.url, "VICTORIA_API_TOKEN": TOKEN}
        done = run_victoria("approve", task_id, env=env)
        assert done.returncode == 0, done.stderr
        assert "approve" in done.stdout
        assert system.wait_terminal(task_id, timeout=90)["status"] == "completed"
        assert runs(workspace) == ["ran"]
        assert len(events(system, task_id, "tool_intent")) == 1
        assert len(events(system, task_id, "approval_requested")) == 1
    finally:
        system.close()


def test_an_approval_nobody_answers_is_denied_when_its_time_is_up(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "steps"
    fake.steps = [{"tool": "run_command", "args": {"command": "echo ran >> runs.txt"}}]
    with alice_up(
        tmp_path, fake, workspace, VICTORIA_APPROVAL="execute", VICTORIA_APPROVAL_TIMEOUT="1.5"
    ).start() as system:
        task_id = system.submit("Run it", task_type="agent")
        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        [decided] = events(system, task_id, "approval_decided")
        assert (
            decided["decision"] == "deny" and decided["by"] == "victoria" and decided["reason"] == "timed out"
        )
        assert "denied by victoria: timed out" in fake.prompts_text()
        assert runs(workspace) == []


def test_without_a_sandbox_on_purpose_every_command_needs_a_yes_and_deny_says_why(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    fake.mode = "steps"
    fake.steps = [
        {"tool": "run_command", "args": {"command": "echo one >> runs.txt"}},
        {"tool": "run_command", "args": {"command": "echo two >> runs.txt"}},
    ]
    with alice_up(tmp_path, fake, workspace, VICTORIA_SANDBOX="none").start() as system:
        task_id = system.submit("Run them", task_type="agent")
        env = {**system.env, "VICTORIA_URL": system.url, "VICTORIA_API_TOKEN": TOKEN}
        system.wait_for(lambda: waiting(system, task_id), what="the first call waiting")
        assert run_victoria("approve", task_id, env=env).returncode == 0
        system.wait_for(lambda: runs(workspace) == ["one"], what="the first command run")
        second = system.wait_for(lambda: waiting(system, task_id), what="the second call waiting")
        [pending] = second["pending_approvals"]
        denied = run_victoria("deny", task_id, pending["id"], "--reason", "enough", env=env)
        assert denied.returncode == 0, denied.stderr
        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        assert runs(workspace) == ["one"]
        assert "denied by alice: enough" in fake.prompts_text()
        again = run_victoria("approve", task_id, pending["id"], env=env)
        assert again.returncode != 0 and "decided" in (again.stderr + again.stdout)


def test_the_stream_says_what_waits_for_whom(tmp_path: Path, fake: FakeLLM, workspace: Path) -> None:
    fake.mode = "steps"
    fake.steps = [{"tool": "run_command", "args": {"command": "echo ran >> runs.txt"}}]
    with alice_up(tmp_path, fake, workspace, VICTORIA_APPROVAL="execute").start() as system:
        lines: list[str] = []
        with system.http.stream("POST", "/stream", json={"goal": "Run it", "task_type": "agent"}) as answer:
            for line in answer.iter_lines():
                lines.append(line)
                if "Waiting for approval" in line:
                    task_id = next(
                        httpx.Response(200, content=entry[6:]).json()["task_id"]
                        for entry in lines
                        if entry.startswith("data: ") and '"start"' in entry
                    )
                    [pending] = system.status(task_id)["pending_approvals"]
                    route = f"/run/{task_id}/approvals/{pending['id']}"
                    assert system.http.post(route, json={"decision": "approve"}).status_code == 200
        text = "\n".join(lines)
        assert "Waiting for approval" in text and "victoria approve" in text
        assert "Approved by alice" in text
        assert '"type": "end"' in text or '"type":"end"' in text
        assert runs(workspace) == ["ran"]
