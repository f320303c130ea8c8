"""The whole system (``victoria up``) on the users' PostgreSQL: their projects' workspaces, their
experts' prompts, memory across a session, the task history, and a database that never answers.
Each test has a database of its own on this machine's PostgreSQL, dropped after."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakellm import FakeLLM
from tests.pg import execute, fetch
from tests.system import System, victoria_up

pytestmark = pytest.mark.e2e


def start(tmp_path: Path, fake: FakeLLM, workspace: Path, dsn: str | None, **env: str) -> System:
    settings = {"VICTORIA_REGISTRY_REFRESH": "0.3", "VICTORIA_PROBE_INTERVAL": "0.5", **env}
    if dsn is not None:
        settings["VICTORIA_POSTGRES_DSN"] = dsn
    return victoria_up(tmp_path / "data", fake, workspace, **settings).start()


def migrated(dsn: str) -> None:
    from victoria.runtime import db

    async def go() -> None:
        pool = await db.create_pool(dsn, command_timeout=10, connect_timeout=5)
        try:
            await db.migrate(pool)
        finally:
            await pool.close()

    asyncio.run(go())


def sql(dsn: str, statement: str, *args: Any) -> None:
    asyncio.run(execute(dsn, statement, *args))


def rows(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    return asyncio.run(fetch(dsn, query, *args))


def test_a_projects_workspace_is_the_workspace_of_its_tasks(
    tmp_path: Path, fake: FakeLLM, workspace: Path, pg_dsn: str
) -> None:
    project_root = tmp_path / "alpha-repo"
    project_root.mkdir()
    for name in ("main.go", "go.mod", "README.alpha"):
        (project_root / name).write_text("x", encoding="utf-8")
    migrated(pg_dsn)
    sql(
        pg_dsn,
        "INSERT INTO projects (slug, name, workspace_path) VALUES ('alpha', 'Alpha', $1)",
        str(project_root),
    )
    with start(tmp_path, fake, workspace, pg_dsn) as system:
        system.wait_for(
            lambda: (
                system.http.post("/run", json={"goal": "x", "project_context": "nope"}).status_code == 422
            ),
            what="projects loaded",
        )
        system.pid_of("veronica")  # the files go to her: up, or the task falls back to the agent
        body = system.http.post(
            "/run", json={"goal": "List the files in the project root", "project_context": {"slug": "alpha"}}
        ).json()
        assert body["status"] == "success", body
        assert sorted(body["output"].splitlines()) == ["README.alpha", "go.mod", "main.go"]
        assert body["knowledge"]["project"] == "alpha"
        # A project added by another tool is used within seconds, without a restart.
        other = tmp_path / "beta-repo"
        other.mkdir()
        (other / "only.txt").write_text("x", encoding="utf-8")
        sql(pg_dsn, "INSERT INTO projects (slug, workspace_path) VALUES ('beta', $1)", str(other))
        beta = system.wait_for(
            lambda: (
                (
                    r := system.http.post("/run", json={"goal": "List the files", "project_context": "beta"})
                ).status_code
                == 200
                and r.json()
            ),
            what="beta used",
        )
        assert beta["output"] == "only.txt"


def test_an_unknown_or_inactive_project_is_refused_naming_the_field_and_the_known_ones(
    tmp_path: Path, fake: FakeLLM, workspace: Path, pg_dsn: str
) -> None:
    migrated(pg_dsn)
    sql(
        pg_dsn,
        "INSERT INTO projects (slug, workspace_path) VALUES ('alpha', '/tmp'), ('zeta', '/tmp');"
        "INSERT INTO projects (slug, workspace_path, is_active) VALUES ('old', '/tmp', false)",
    )
    with start(tmp_path, fake, workspace, pg_dsn) as system:
        refused = system.wait_for(
            lambda: (
                (r := system.http.post("/run", json={"goal": "g", "project_context": "omega"})).status_code
                == 422
                and r.json()
            ),
            what="projects loaded",
        )
        assert refused["field"] == "project_context"
        assert (
            "alpha, zeta" in refused["detail"] and "old" not in refused["detail"].split("known projects:")[1]
        )
        inactive = system.http.post("/run", json={"goal": "g", "project_context": "old"})
        assert inactive.status_code == 422 and "not active" in inactive.json()["detail"]


def test_an_experts_system_prompt_leads_the_model_calls_and_the_answer_names_the_expert(
    tmp_path: Path, fake: FakeLLM, workspace: Path, pg_dsn: str
) -> None:
    migrated(pg_dsn)
    sql(
        pg_dsn,
        "INSERT INTO experts (name, role, department, system_prompt) VALUES "
        "('Ada', 'database administrator', 'infrastructure', 'You are Ada, who tunes databases.'),"
        "('Basil', 'poet', 'culture', 'You are Basil, who writes verse.')",
    )
    with start(tmp_path, fake, workspace, pg_dsn) as system:
        loaded = system.wait_for(
            lambda: (
                system.http.post("/run", json={"goal": "x", "project_context": "none"}).status_code == 422
            ),
            what="experts and projects loaded",
        )
        assert loaded
        body = system.http.post(
            "/run", json={"goal": "Tune the database indexes", "task_type": "agent"}
        ).json()
        assert body["knowledge"]["expert"] == "Ada"
        assert body["status"] == "success"
        asked = [r for r in fake.requests if "Tune the database indexes" in json.dumps(r["messages"])]
        assert asked and all(
            r["messages"][0]["content"].startswith("You are Ada, who tunes databases.") for r in asked
        )
        assert system.status(body["task_id"])["expert"] == "Ada"


@pytest.mark.parametrize("with_database", [True, False], ids=["postgres", "key-value"])
def test_a_sessions_earlier_answer_reaches_the_next_tasks_prompt(
    tmp_path: Path, fake: FakeLLM, workspace: Path, pg_dsn: str, with_database: bool
) -> None:
    with start(tmp_path, fake, workspace, pg_dsn if with_database else None) as system:
        first = system.http.post(
            "/run",
            json={"goal": "Remember the codeword Pelican-17", "session_id": "s-1", "task_type": "agent"},
        ).json()
        assert first["status"] == "success"
        system.wait_for(
            lambda: remembered(system, pg_dsn if with_database else None, "s-1"), what="remembered"
        )
        second = system.http.post(
            "/run", json={"goal": "What was the codeword?", "session_id": "s-1", "task_type": "agent"}
        ).json()
        assert second["status"] == "success"
        asked = understood(fake, "What was the codeword?")
        roles = [(m["role"], m["content"]) for m in asked["messages"]]
        assert ("user", "Remember the codeword Pelican-17") in roles
        assert ("assistant", "Done: Remember the codeword Pelican-17") in roles
        assert roles[-1] == ("user", "What was the codeword?")
        # chat_history, when sent, wins over the session's memory.
        system.http.post(
            "/run",
            json={
                "goal": "And now?",
                "session_id": "s-1",
                "task_type": "agent",
                "chat_history": [{"user": "Only this turn", "assistant": "ok"}],
            },
        )
        texts = [m["content"] for m in understood(fake, "And now?")["messages"]]
        assert "Only this turn" in texts and "Remember the codeword Pelican-17" not in texts
        if with_database:
            kept = rows(pg_dsn, "SELECT goal, answer FROM victoria.session_memory WHERE session_id = 's-1'")
            assert {
                "goal": "Remember the codeword Pelican-17",
                "answer": "Done: Remember the codeword Pelican-17",
            } in kept


def remembered(system: System, dsn: str | None, session_id: str) -> bool:
    """Whether the session's memory holds an exchange yet (PostgreSQL, or the key-value bucket)."""
    if dsn is not None:
        return bool(rows(dsn, "SELECT 1 FROM victoria.session_memory WHERE session_id = $1", session_id))
    import nats

    from victoria.runtime.memory import KvMemory

    async def read() -> bool:
        nc = await nats.connect(system.bus_url())
        try:
            return bool(await KvMemory(nc.jetstream()).recent(session_id))
        finally:
            await nc.close()

    return asyncio.run(read())


def understood(fake: FakeLLM, goal: str) -> dict[str, Any]:
    """The latest understand request of a goal: the one whose last message is the goal itself."""
    return next(r for r in reversed(fake.requests) if r["messages"][-1]["content"] == goal)


class SilentDatabase:
    """A socket that accepts connections and never says a word: a database that hangs."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.listener.close()
        for conn in self.held:
            conn.close()


def test_a_database_that_accepts_and_never_answers_delays_neither_start_nor_tasks(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    silent = SilentDatabase()
    began = time.monotonic()
    dsn = f"postgresql://postgres@127.0.0.1:{silent.port}/db"
    system = start(tmp_path, fake, workspace, dsn, VICTORIA_PROBE_TIMEOUT="1")
    try:
        # Ready: start-up waited for nothing of the database (a connection attempt alone would
        # take VICTORIA_DB_CONNECT_TIMEOUT, 5 s, on top of the start's own second or two).
        assert time.monotonic() - began < 5.0
        began = time.monotonic()
        body = system.http.post(
            "/run",
            json={
                "goal": "Write a haiku",
                "task_type": "agent",
                "session_id": "s-9",
                "project_context": "any",
            },
        ).json()
        assert body["status"] == "success"
        assert time.monotonic() - began < 5.0  # the session's memory was not waited for past its deadline
        assert body["knowledge"]["expert"] == "Victoria"  # the built-in default
        down = system.wait_for(
            lambda: next(
                d
                for d in system.http.get("/services").json()["dependencies"]
                if d["name"] == "postgres" and d["status"] == "down"
            ),
            what="postgres reported down",
        )
        assert down["reason"]
        system.wait_for(lambda: "not loaded from PostgreSQL" in system.log(), what="the gateway says so")
        assert system.http.get("/runs").status_code == 503
    finally:
        system.close()
        silent.close()


def test_the_projector_killed_while_tasks_run_catches_up_with_every_task_once(
    tmp_path: Path, fake: FakeLLM, workspace: Path, pg_dsn: str
) -> None:
    with start(tmp_path, fake, workspace, pg_dsn, VICTORIA_RESTART_BACKOFF="3") as system:
        first = [system.submit(f"Before {n}", task_type="agent") for n in range(3)]
        for task_id in first:
            system.wait_terminal(task_id)
        system.wait_for(
            lambda: len(rows(pg_dsn, "SELECT 1 FROM victoria.tasks WHERE ended_at IS NOT NULL")) == 3,
            what="the first three projected",
        )
        os.kill(system.pid_of("projector"), signal.SIGKILL)
        meanwhile = [system.submit(f"Meanwhile {n}", task_type="agent") for n in range(5)]
        for task_id in meanwhile:
            assert system.wait_terminal(task_id)["status"] == "completed"
        everything = first + meanwhile
        system.wait_for(
            lambda: (
                len(rows(pg_dsn, "SELECT 1 FROM victoria.tasks WHERE status = 'completed'"))
                == len(everything)
            ),
            timeout=30,
            what="the projector caught up",
        )
        tasks = rows(pg_dsn, "SELECT task_id, status, attempts, stage FROM victoria.tasks")
        assert sorted(t["task_id"] for t in tasks) == sorted(everything)
        assert {(t["status"], t["attempts"], t["stage"]) for t in tasks} == {("completed", 1, "done")}
        calls = rows(pg_dsn, "SELECT task_id, count(*) AS n FROM victoria.model_calls GROUP BY task_id")
        assert {c["n"] for c in calls} == {3} and len(calls) == len(everything)
        stages = rows(pg_dsn, "SELECT task_id, stage FROM victoria.task_stages ORDER BY task_id, seq")
        assert [s["stage"] for s in stages if s["task_id"] == everything[-1]] == [
            "understanding",
            "planning",
            "step",
        ]
        # The history as the gateway lists it: newest first, a page at a time.
        page = system.http.get("/runs", params={"limit": 5}).json()
        assert [r["task_id"] for r in page["runs"]] == list(reversed(everything))[:5]
        rest = system.http.get("/runs", params={"limit": 5, "cursor": page["next"]}).json()
        assert [r["task_id"] for r in rest["runs"]] == list(reversed(everything))[5:] and rest["next"] is None
        assert len(system.http.get("/runs", params={"status": "failed"}).json()["runs"]) == 0
        printed = subprocess.run(
            [sys.executable, "-m", "victoria", "runs", "--url", system.url, "--limit", "3"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.splitlines()
        assert len(printed) == 3 and everything[-1] in printed[0] and "completed" in printed[0]


def test_a_goal_with_a_nul_character_is_projected_and_the_projection_goes_on(
    tmp_path: Path, fake: FakeLLM, workspace: Path, pg_dsn: str
) -> None:
    with start(tmp_path, fake, workspace, pg_dsn) as system:
        odd = system.submit("Say\u0000 hello", task_type="agent", session_id="s\u00001")
        after = system.submit("Say hello after", task_type="agent")
        for task_id in (odd, after):
            assert system.wait_terminal(task_id)["status"] == "completed"
        system.wait_for(
            lambda: len(rows(pg_dsn, "SELECT 1 FROM victoria.tasks WHERE ended_at IS NOT NULL")) == 2,
            what="both projected",
        )
        goals = {r["task_id"]: r["goal"] for r in rows(pg_dsn, "SELECT task_id, goal FROM victoria.tasks")}
        assert goals[odd] == "Say\ufffd hello"
        assert not any(s["status"] == "degraded" for s in system.services() if s["name"] == "projector")


def test_the_command_line_adds_and_lists_experts_and_projects(pg_dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": pg_dsn}
    env.pop("VICTORIA_POSTGRES_DSN", None)

    def victoria(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "victoria", *args], capture_output=True, text=True, timeout=60, env=env
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "applied migrations [1]" in victoria("db", "migrate")
    assert "up to date" in victoria("db", "migrate")
    victoria("experts", "add", "Ada", "--role", "database administrator", "--prompt", "You are Ada.")
    victoria("experts", "set", "Ada", "--department", "infrastructure")
    experts = json.loads(victoria("experts", "list", "--json"))
    assert experts == [
        {
            "name": "Ada",
            "role": "database administrator",
            "department": "infrastructure",
            "system_prompt": "You are Ada.",
        }
    ]
    victoria("projects", "add", "alpha", "--path", "/srv/alpha", "--name", "Alpha")
    victoria("projects", "set", "alpha", "--no-active")
    projects = json.loads(victoria("projects", "--json"))
    assert [(p["slug"], p["workspace_path"], p["is_active"]) for p in projects] == [
        ("alpha", "/srv/alpha", False)
    ]
