"""The dashboard's server side: the page and its files, the live list of tasks (``GET /tasks``,
``/tasks/events``), one task's log records (``/run/{id}/logs``) and ``victoria watch TASK_ID``.
The page itself, in a browser: tests/test_dashboard_browser.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.system import System
from victoria.gateway import dashboard
from victoria.story import is_task_id

pytestmark = pytest.mark.e2e

PAGE_BUDGET = 100 * 1024  # bytes: the page, its script, styles and icon together


def test_the_page_and_its_files_are_small_and_load_nothing_from_elsewhere() -> None:
    files = {
        name: (dashboard.HERE / name).read_text(encoding="utf-8") for name, _ in dashboard.FILES.values()
    }
    assert sum(len(text.encode()) for text in files.values()) < PAGE_BUDGET
    for name, text in files.items():
        assert not re.search(r"""(src|href)=["'](https?:)?//""", text), name
        assert "@import" not in text, name
    script = files["app.js"]
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
    assert "new EventSource" not in script  # it cannot send the token in a header
    assert not re.search(r"""(fetch|request|getJSON|readEvents|keepReading)\(\s*[`"']/""", script)
    assert "<script>" not in files["index.html"] and " style=" not in files["index.html"]


def test_the_page_answers_without_a_token_with_a_strict_content_security_policy(system: System) -> None:
    for path, (_, media_type) in dashboard.FILES.items():
        response = httpx.get(f"{system.url}{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"] == media_type
        assert response.headers["x-content-type-options"] == "nosniff"
        policy = response.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy


def test_the_list_shows_a_new_task_and_filters_by_status_and_words(system: System) -> None:
    task_id = system.submit("Перечисли файлы проекта, только имена")
    system.wait_terminal(task_id)
    body = system.http.get("/tasks").json()
    line = next(one for one in body["tasks"] if one["task_id"] == task_id)
    assert line["goal"] == "Перечисли файлы проекта, только имена"
    assert line["status"] == "completed" and line["attempts"] >= 1 and line["duration_s"] is not None
    created = [one["created_at"] for one in body["tasks"]]
    assert created == sorted(created, reverse=True)
    assert [t["task_id"] for t in system.http.get("/tasks", params={"q": "ФАЙЛЫ имена"}).json()["tasks"]] == [
        task_id
    ]
    assert system.http.get("/tasks", params={"q": task_id[:10]}).json()["tasks"][0]["task_id"] == task_id
    assert all(
        t["status"] == "failed"
        for t in system.http.get("/tasks", params={"status": "failed"}).json()["tasks"]
    )
    assert system.http.get("/tasks", params={"project": "nobody-has-this"}).json()["tasks"] == []
    refused = system.http.get("/tasks", params={"status": "sleeping"})
    assert refused.status_code == 422 and refused.json()["field"] == "status"
    assert system.http.get("/tasks", params={"limit": "0"}).status_code == 422


def test_the_task_stream_pushes_each_status_change_once_per_moment_not_every_word(system: System) -> None:
    seen: list[dict[str, object]] = []
    with (
        httpx.Client(base_url=system.url, timeout=30.0) as http,
        http.stream("GET", "/tasks/events") as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        task_id = ""
        kind = ""
        for line in response.iter_lines():
            if line == ": connected" and not task_id:
                task_id = system.submit("Write a haiku about NATS")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "task":
                event = json.loads(line[6:])
                if event["task_id"] == task_id:
                    seen.append(event)
                    if event["status"] == "completed":
                        break
    statuses = [event["status"] for event in seen]
    assert statuses[-1] == "completed"
    assert len(seen) <= 8, seen  # a handful of stages at most (coalesced), never a line per model word
    assert seen[-1]["goal"] == "Write a haiku about NATS" and seen[-1]["duration_s"] is not None


def test_a_tasks_log_holds_its_records_and_reads_on_from_where_it_stopped(system: System) -> None:
    task_id = system.submit("Write a haiku about NATS, slowly")
    cancelled = system.http.post(f"/run/{task_id}/cancel")
    assert cancelled.status_code in (200, 202)
    system.wait_terminal(task_id)

    def records() -> list[dict[str, object]]:
        found: list[dict[str, object]] = system.http.get(f"/run/{task_id}/logs").json()["records"]
        return found

    found = system.wait_for(records, timeout=10.0, what="a log record of the cancelled task")
    assert any(task_id in str(record["message"]) or record["actor"] == "victoria" for record in found)
    page = system.http.get(f"/run/{task_id}/logs").json()
    assert page["truncated"] is False
    again = system.http.get(f"/run/{task_id}/logs", params={"after": page["next"]}).json()
    assert again["records"] == [] and again["next"] >= page["next"]
    assert system.http.get("/run/0123456789abcdef0123456789abcdef/logs").status_code == 404
    assert system.http.get(f"/run/{task_id}/logs", params={"after": "-1"}).status_code == 422


def test_victoria_watch_with_a_task_id_prints_its_story_and_follows_it_to_the_end(system: System) -> None:
    assert is_task_id("0123456789abcdef0123456789abcdef") and not is_task_id("victoria.task.>")
    task_id = system.submit("Write a haiku about NATS")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "victoria", "watch", task_id, "--url", system.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**system.env},
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith(f"task {task_id}  trace ")
    for expected in ("queued: Write a haiku about NATS", "attempt 1 on", "understanding", "planning"):
        assert expected in text, text
    assert re.search(r"model answered in [0-9.]+s \(llama3\.2", text), text
    assert "completed" in text and text.rstrip().endswith("Done: Write a haiku about NATS")
    assert time.monotonic() - started < 30


def test_the_list_after_a_gateway_restart_shows_the_tasks_submitted_before_it(system: System) -> None:
    task_id = system.submit("Write a haiku about NATS before the restart")
    system.wait_terminal(task_id)
    os.kill(system.pid_of("gateway"), signal.SIGKILL)

    def restarted() -> bool:
        return system.http.get("/ready", timeout=1.0).status_code == 200 and system.pid_of("gateway") > 0

    time.sleep(0.5)
    system.wait_for(restarted, timeout=30.0, what="the gateway back")
    listed = system.http.get("/tasks").json()["tasks"]
    line = next(one for one in listed if one["task_id"] == task_id)
    assert line["status"] == "completed" and line["goal"] == "Write a haiku about NATS before the restart"
