"""The old Victoria server's clients, unchanged, against ``victoria up``: each test sends and reads
what one of them does (a terminal chat, an MCP server for IDE agents, a Telegram bot, scripts)."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakellm import FakeLLM
from tests.system import System, free_port, stream_messages, victoria_up

pytestmark = pytest.mark.e2e

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # enough of a PNG for a server that sniffs its type
PNG_B64 = base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def fake(fake_llm: FakeLLM) -> FakeLLM:
    """The module's shared model server (conftest's ``fake`` is a test's own)."""
    return fake_llm


@pytest.fixture(scope="module")
def system(start_system: Callable[..., System]) -> System:
    return start_system("compat")


def nats_url(system: System) -> str:
    return system.bus_url()


def test_an_async_client_polling_every_2_5_s_with_max_steps_500_and_chat_history_gets_its_answer(
    system: System,
) -> None:
    history = [{"user": "Привет!", "assistant": "Здравствуйте! Чем помочь?"}]
    submitted = system.http.post(
        "/run",
        params={"async_mode": "true"},
        json={"goal": "Напиши хайку о NATS", "max_steps": 500, "chat_history": history, "mode": "chat"},
        headers={"X-Correlation-ID": "cli-42"},
    )
    assert submitted.status_code == 202, submitted.text
    accepted = submitted.json()
    assert set(accepted) >= {"task_id", "correlation_id", "status_url", "message", "status"}
    assert accepted["correlation_id"] == "cli-42"
    deadline = time.monotonic() + 60
    while True:
        status = system.http.get(accepted["status_url"]).json()
        if status["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            break
        time.sleep(2.5)
    assert status["status"] == "completed", status
    assert status["output"]
    assert status["correlation_id"] == "cli-42"
    assert isinstance(status["knowledge"], dict)
    assert (status["max_steps"], status["max_steps_requested"]) == (50, 500)  # lowered, and it says so
    assert status["knowledge"]["max_steps_requested"] == 500


def test_a_sync_client_with_a_600_s_timeout_reads_status_success_and_output(system: System) -> None:
    with httpx.Client(base_url=system.url, timeout=600.0) as client:
        response = client.post(
            "/run",
            json={
                "goal": "Write a haiku about NATS",
                "max_steps": 500,
                "project_context": {"repo": "victoria"},
            },
            headers={"X-Correlation-ID": "script-7"},
        )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["output"] == "Done: Write a haiku about NATS"
    assert (body["correlation_id"], len(body["task_id"])) == ("script-7", 32)
    knowledge = body["knowledge"]
    assert knowledge["metadata"] == {"model_used": "llama3.2", "source": "model"}
    assert knowledge["routed_to"] == knowledge["method"] == "agent_run"
    assert knowledge["project_context"] == {"repo": "victoria"}


def test_a_sync_answer_names_the_route_of_a_delegated_task(system: System) -> None:
    body = system.http.post("/run", json={"goal": "List the files in the project root."}).json()
    assert body["status"] == "success"
    assert body["knowledge"]["routed_to"] == "veronica"
    assert body["knowledge"]["delegated_to"] == "veronica"
    assert body["knowledge"]["metadata"]["source"] == "workspace"


def test_a_task_that_failed_is_a_200_with_status_failed_and_the_error(system: System, fake: FakeLLM) -> None:
    fake.mode = "error"
    try:
        response = system.http.post("/run", json={"goal": "Explode", "task_type": "agent"})
    finally:
        fake.mode = "normal"
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "failed"
    assert "HTTP 500" in body["error"]
    assert isinstance(body["knowledge"], dict)


def test_a_greeting_in_async_mode_is_still_a_202(system: System) -> None:
    response = system.http.post(
        "/run", params={"async_mode": "true"}, json={"prompt": "Привет! Что ты умеешь?"}
    )
    assert response.status_code == 202
    assert response.json()["status"] in ("queued", "running", "completed")


@pytest.mark.parametrize("max_steps", [0, -3])
def test_zero_or_negative_max_steps_is_a_422_naming_the_field(system: System, max_steps: int) -> None:
    response = system.http.post("/run", json={"goal": "g", "max_steps": max_steps})
    assert response.status_code == 422
    assert response.json()["field"] == "max_steps"


def test_a_follow_up_question_reaches_the_model_with_the_earlier_turn(system: System, fake: FakeLLM) -> None:
    history = [
        {
            "user": "Расскажи про брокер сообщений NATS-Jupiter",
            "assistant": "NATS-Jupiter хранит события на диске.",
        },
    ]
    body = system.http.post(
        "/run",
        json={"goal": "А как он переживает перезапуск?", "chat_history": history, "task_type": "agent"},
    ).json()
    assert body["status"] == "success"
    understand = next(
        r for r in fake.requests if "переживает перезапуск" in json.dumps(r["messages"], ensure_ascii=False)
    )
    roles = [(m["role"], m["content"]) for m in understand["messages"]]
    assert ("user", "Расскажи про брокер сообщений NATS-Jupiter") in roles
    assert ("assistant", "NATS-Jupiter хранит события на диске.") in roles
    assert roles[-1] == ("user", "А как он переживает перезапуск?")  # the goal comes last


def test_verbose_lists_each_steps_thought_tool_and_input(system: System, fake: FakeLLM) -> None:
    fake.mode = "tool"  # the first step lists the workspace, the second finishes
    try:
        body = system.http.post("/run", json={"goal": "Look around and report", "verbose": True}).json()
    finally:
        fake.mode = "normal"
    steps = body["knowledge"]["verbose_steps"]
    assert [s["tool"] for s in steps] == ["list_directory", "finish"]
    assert steps[0]["input"] == {"path": "."}
    assert set(steps[0]) == {"step", "thought", "tool", "input"}
    quiet = system.http.post("/run", json={"goal": "Look around and report"}).json()
    assert "verbose_steps" not in quiet["knowledge"]


def test_images_reach_an_ollama_server_in_its_images_field(system: System, fake: FakeLLM) -> None:
    before = len(fake.images)
    body = system.http.post(
        "/run", json={"goal": "What is in this picture?", "images_base64": [PNG_B64], "task_type": "agent"}
    ).json()
    assert body["status"] == "success"
    assert fake.images[before:] and set(fake.images[before:]) == {PNG_B64}


def test_too_many_images_are_a_422_naming_the_field(system: System) -> None:
    response = system.http.post("/run", json={"goal": "g", "images_base64": [PNG_B64] * 6})
    assert response.status_code == 422
    assert response.json()["field"] == "images_base64"


def test_an_unclear_goal_is_answered_with_questions(system: System) -> None:
    body = system.http.post("/run", json={"goal": "Сделай то самое ???", "task_type": "agent"}).json()
    assert body["status"] == "needs_clarification"
    assert body["clarification_questions"] == [
        "Which project do you mean?",
        "What should the result look like?",
    ]
    assert body["suggested_restatement"]
    assert "output" not in body
    status = system.status(body["task_id"])
    assert status["status"] == "completed"
    assert status["clarification_questions"] == body["clarification_questions"]
    assert "Which project do you mean?" in status["output"]


def test_plan_answers_with_the_plan_only(system: System, fake: FakeLLM) -> None:
    calls = fake.total_calls
    body = system.http.post("/plan", json={"goal": "Migrate the database"}).json()
    assert body["status"] == "success"
    assert body["plan"] == "1. Look at the goal.\n2. Answer it."
    assert fake.total_calls == calls + 2  # understand and plan, no step
    assert system.status(body["task_id"])["knowledge"]["routed_to"] == "plan"


def test_an_sse_reader_of_stream_gets_start_steps_chunks_and_a_last_end(system: System) -> None:
    lines: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=system.url, timeout=60.0) as client,
        client.stream(
            "POST", "/stream", json={"goal": "Write a haiku about NATS", "max_steps": 500}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                lines.append(json.loads(line[6:]))
    kinds = [line["type"] for line in lines]
    assert kinds[0] == "start" and lines[0]["task_id"]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    # The answer's words, as the model wrote them, without the JSON of its step reply around them.
    assert (
        "".join(line["content"] for line in lines if line["type"] == "chunk")
        == "Done: Write a haiku about NATS"
    )
    steps = [line for line in lines if line["type"] == "step"]
    assert [s["stepType"] for s in steps] == ["understanding", "understood", "planning", "plan", "step"]
    assert steps[1]["content"] == "The user wants: Write a haiku about NATS"
    assert steps[3]["content"] == "1. Look at the goal.\n2. Answer it."
    assert all(set(s) >= {"stepType", "title", "content"} for s in steps)
    end = lines[-1]
    assert (end["status"], end["output"]) == ("success", "Done: Write a haiku about NATS")
    assert system.status(lines[0]["task_id"])["status"] == "completed"  # a task like any other


def test_a_failing_stream_says_error_and_still_ends(system: System, fake: FakeLLM) -> None:
    fake.mode = "error"
    try:
        with httpx.Client(base_url=system.url, timeout=60.0) as client:
            response = client.post("/stream", json={"goal": "Explode", "task_type": "agent"})
    finally:
        fake.mode = "normal"
    lines = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert [line["type"] for line in lines][-2:] == ["error", "end"]
    assert lines[-1]["status"] == "failed"


def test_an_mcp_client_calls_a_tool_that_posts_to_run(system: System) -> None:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "tests.mcp_victoria"],
        env={"VICTORIA_URL": system.url, "PATH": "/usr/bin:/bin"},
        cwd=str(Path(__file__).resolve().parent.parent),
    )

    async def call() -> str:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            assert [t.name for t in tools.tools] == ["victoria_run"]
            result = await session.call_tool("victoria_run", {"goal": "Write a haiku about NATS"})
            assert not result.isError
            return "".join(getattr(part, "text", "") for part in result.content)

    assert asyncio.run(asyncio.wait_for(call(), 120)) == "Done: Write a haiku about NATS"


def test_status_says_what_is_true_of_the_system(system: System) -> None:
    body = system.http.get("/status").json()
    assert (body["status"], body["agent"]) == ("online", "Victoria")
    assert body["victoria_enhanced"] == {"enabled": False}
    assert body["models"]["default"] == "llama3.2"
    names = {s["name"] for s in body["services"]}
    assert {"victoria", "veronica", "llm-runner", "monitor", "gateway"} <= names
    assert set(body["tasks"]) == {"queued", "running"}


def test_health_says_ok_and_who_answers(system: System) -> None:
    body = system.http.get("/health").json()
    assert (body["status"], body["agent"], body["nats"]) == ("ok", "Victoria", "connected")


def test_available_models_lists_the_model_servers_models(system: System) -> None:
    assert system.http.get("/api/available-models").json() == {"ollama": ["fake"], "mlx": []}


def test_a_telegram_bot_registers_beats_shows_in_services_and_is_reported_down_when_it_stops(
    system: System,
) -> None:
    assert system.http.get("/health/telegram").json()["status"] == "unknown"
    registered = system.http.post(
        "/api/telegram/register",
        json={"bot_username": "@victoria_bot", "heartbeat_interval": 0.5, "chat_id": 1},
    ).json()
    assert registered["status"] == "registered" and registered["instance"] == "victoria_bot"
    assert (
        system.http.post("/api/telegram/heartbeat", json={"bot_username": "@victoria_bot"}).status_code == 200
    )
    health = system.http.get("/health/telegram").json()
    assert list(health)[:2] == ["status", "heartbeat_age_seconds"]
    assert health["status"] == "ok" and health["heartbeat_age_seconds"] < 5
    system.wait_for(
        lambda: any(s["name"] == "telegram" and s["status"] == "up" for s in system.services()),
        what="the bot in /services",
    )
    # It beats no more: after three missed intervals the monitor says so, as for any service.
    downs = system.wait_for(
        lambda: stream_messages(nats_url(system), "victoria.svc.telegram.victoria_bot.down", timeout=1.0),
        what="service_down of the bot",
    )
    assert downs[-1]["source"] == "heartbeat"
    assert system.http.get("/health/telegram").json()["status"] == "stale"


def test_a_bots_beat_right_after_its_registration_keeps_the_registrations_interval(system: System) -> None:
    # Each beat is stored before the answer: the next one, at once, reads the interval given.
    for n in range(10):
        bot = f"@quick_{n}_bot"
        body = {"bot_username": bot, "heartbeat_interval": 7.5}
        assert system.http.post("/api/telegram/register", json=body).status_code == 200
        assert system.http.post("/api/telegram/heartbeat", json={"bot_username": bot}).status_code == 200
        health = system.http.get("/health/telegram").json()
        assert (health["instance"], health["heartbeat_interval_s"]) == (f"quick_{n}_bot", 7.5), n


def test_images_reach_an_openai_compatible_server_as_image_parts(
    tmp_path: Path, workspace: Path, fake: FakeLLM
) -> None:
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_LLM_API="openai").start() as mlx:
        before = len(fake.images)
        body = mlx.http.post(
            "/run", json={"goal": "Describe the image", "images_base64": [PNG_B64], "task_type": "agent"}
        ).json()
        assert body["status"] == "success"
        assert set(fake.images[before:]) == {f"data:image/png;base64,{PNG_B64}"}
        assert mlx.http.get("/api/available-models").json() == {"ollama": [], "mlx": ["fake"]}


def test_available_models_says_when_the_model_server_is_down(tmp_path: Path, workspace: Path) -> None:
    with victoria_up(tmp_path / "data", f"http://127.0.0.1:{free_port()}", workspace).start() as down:
        response = down.http.get("/api/available-models")
        assert response.status_code == 200
        body = response.json()
        assert (body["ollama"], body["mlx"]) == ([], [])
        assert "ConnectError" in body["error"]
