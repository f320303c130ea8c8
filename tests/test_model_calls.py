"""What real model servers do, played by the fake one: output caps, a stream that stalls or runs
past its deadline, a server that answers one request at a time, a context window, no server,
native tool calls and a server without them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakellm import FakeLLM
from tests.system import System, free_port, run_victoria, stream_messages, victoria_up
from victoria.events.contracts import ChatMessage, LLMRequested, LLMResult
from victoria.runtime import connection, publish, reads

pytestmark = pytest.mark.e2e


@pytest.fixture
def mode(fake_llm: FakeLLM) -> Iterator[FakeLLM]:
    yield fake_llm
    fake_llm.mode = "normal"
    fake_llm.delay = fake_llm.chunk_delay = fake_llm.stall = 0.0
    fake_llm.stall_after = None
    fake_llm.one_at_a_time = False


def results(system: System, task_id: str) -> list[dict[str, Any]]:
    return [
        m
        for m in stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>")
        if m["type"] == "llm_result"
    ]


def agent(system: System, goal: str, **fields: Any) -> dict[str, Any]:
    return system.run({"goal": goal, "task_type": "agent", **fields})


def test_each_call_carries_the_output_cap_of_its_purpose(
    start_system: Callable[..., System], mode: FakeLLM
) -> None:
    system = start_system()
    before = len(mode.requests)
    assert agent(system, "Name three rivers")["status"] == "completed"
    caps = [body["options"]["num_predict"] for body in mode.requests[before:]]
    assert caps == [200, 400, 1024]  # understand, plan, step: VICTORIA_LLM_CAPS's defaults


def test_a_models_file_sets_caps_per_server_and_per_model(
    tmp_path: Path, fake_llm: FakeLLM, workspace: Path, mode: FakeLLM
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        f'[[server]]\nurl = "{fake_llm.url}"\napi = "openai"\n'
        '[server.caps]\nplan = 100\n[server.caps."special"]\nstep = 50\n'
    )
    with victoria_up(
        tmp_path / "data", fake_llm, workspace, VICTORIA_MODELS_FILE=str(models)
    ).start() as system:
        before = len(mode.requests)
        assert agent(system, "Name a lake", model="special")["status"] == "completed"
        assert [body["max_tokens"] for body in mode.requests[before:]] == [200, 100, 50]


def test_an_answer_cut_by_its_cap_is_used_as_it_stands_and_marked(
    start_system: Callable[..., System], mode: FakeLLM
) -> None:
    system = start_system(VICTORIA_LLM_CAPS="understand=6,plan=6,step=6,answer=6")
    mode.mode = "long"
    body = agent(system, "Write a very long essay")
    assert body["status"] == "completed", body
    assert body["output"] == "word0 word1 word2 word3 word4 word5"
    found = results(system, body["task_id"])
    assert [(r["finish_reason"], r["max_tokens"]) for r in found] == [("length", 6)] * 3


def test_a_call_with_no_first_token_within_the_idle_timeout_says_so(
    start_system: Callable[..., System], mode: FakeLLM
) -> None:
    system = start_system(VICTORIA_LLM_IDLE_TIMEOUT="1", VICTORIA_LLM_TIMEOUT="30")
    mode.delay = 2.5
    body = agent(system, "Think before you speak")
    assert body["status"] == "failed"
    assert body["error_kind"] == "llm_timeout"
    assert "sent no first token within 1s" in body["error"]


def test_a_call_that_stops_streaming_fails_saying_after_how_many_tokens(
    start_system: Callable[..., System], mode: FakeLLM
) -> None:
    system = start_system(VICTORIA_LLM_IDLE_TIMEOUT="1", VICTORIA_LLM_TIMEOUT="30")
    mode.mode, mode.stall_after, mode.stall = "long", 4, 3.0
    body = agent(system, "Tell a long story")
    assert body["status"] == "failed"
    assert "stalled after 4 tokens (none for 1s)" in body["error"]
    assert "gave no answer" not in body["error"]


def test_a_call_that_streams_past_its_deadline_keeps_what_it_wrote(
    start_system: Callable[..., System], mode: FakeLLM
) -> None:
    system = start_system(VICTORIA_LLM_TIMEOUT="1.5", VICTORIA_LLM_IDLE_TIMEOUT="10")
    mode.mode, mode.chunk_delay = "long", 0.1
    started = time.monotonic()
    body = agent(system, "Write without end")
    assert body["status"] == "completed", body
    assert body["output"].startswith("word0 word1 word2 ")
    assert len(body["output"].split()) < 300
    assert [r["finish_reason"] for r in results(system, body["task_id"])] == ["length"] * 3
    assert time.monotonic() - started < 3 * 1.5 + 5


def test_a_server_that_answers_one_request_at_a_time_is_busy_not_down_while_it_generates(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    mode = fake  # its own: the module's other systems look at theirs
    mode.mode, mode.chunk_delay, mode.one_at_a_time = "long", 0.07, True  # 100 pieces: 7 s a call
    probes = {
        "VICTORIA_PROBE_INTERVAL": "0.3",
        "VICTORIA_PROBE_TIMEOUT": "0.3",
        "VICTORIA_PROBE_FAILURES": "2",
    }
    with victoria_up(tmp_path / "data", f"openai:{fake.url}", workspace, **probes).start() as system:
        time.sleep(1.0)  # the first looks at the server, while it is idle
        task_id = system.submit("Write at length", task_type="agent")
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline and system.status(task_id)["status"] not in ("completed", "failed"):
            view = system.http.get("/services").json()
            seen |= {("probe", d["status"]) for d in view["dependencies"] if d["name"] == "model-server"}
            seen |= {("runner", s["status"]) for s in view["model_servers"]}
            time.sleep(0.2)
        assert ("probe", "busy") in seen and ("runner", "busy") in seen, seen
        assert ("probe", "down") not in seen and ("runner", "down") not in seen, seen
        assert mode.gets_while_generating == []  # nobody asked while it generated
        events = stream_messages(system.bus_url(), "victoria.svc.model-server.>")
        assert not [e for e in events if e["type"] == "service_down" and e["name"] == "model-server"]


def test_a_request_is_fitted_to_the_context_the_models_file_gives(
    tmp_path: Path, fake_llm: FakeLLM, workspace: Path, mode: FakeLLM
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(f'[[server]]\nurl = "{fake_llm.url}"\ncontext = 1500\n')
    caps = "understand=100,plan=100,step=100,answer=100"
    env = {"VICTORIA_MODELS_FILE": str(models), "VICTORIA_LLM_CAPS": caps}
    with victoria_up(tmp_path / "data", fake_llm, workspace, **env).start() as system:
        history = [{"user": f"question {n} " + "x" * 900, "assistant": f"answer {n}"} for n in range(6)]
        before = len(mode.requests)
        body = agent(system, "And now?", chat_history=history)
        assert body["status"] == "completed", body
        first = mode.requests[before]
        assert first["options"]["num_ctx"] == 1500
        text = "\n".join(m["content"] for m in first["messages"])
        assert "And now?" in text and "earlier messages left out to fit the model's context" in text
        assert len(text) < 4500
        assert "to fit 1500 tokens" in str(results(system, body["task_id"])[0]["trimmed"])
        too_long = agent(system, "y" * 12000)
        assert too_long["status"] == "failed"
        assert too_long["error_kind"] == "llm_context"
        assert "the model's context holds 1500" in too_long["error"]


def test_the_servers_own_context_overflow_becomes_a_clear_task_error(
    start_system: Callable[..., System], mode: FakeLLM
) -> None:
    system = start_system()
    mode.mode = "overflow"
    body = agent(system, "A question")
    assert body["status"] == "failed"
    assert body["error_kind"] == "llm_context"
    assert "longer than the model's context" in body["error"] and "holds 8192 tokens" in body["error"]


def test_with_no_model_server_victoria_run_says_none_answers_and_how_to_point_at_one(
    tmp_path: Path, workspace: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with victoria_up(tmp_path / "data", dead, workspace, VICTORIA_TASK_DEADLINE="6").start() as system:
        time.sleep(1.0)  # the runner's first look finds nobody
        env = {**system.env, "VICTORIA_URL": system.url}
        done = run_victoria("run", "Write a haiku about NATS", env=env, timeout=60)
        # The client waits for the task: what it printed before its deadline is what a user sees.
        lines = [line.strip() for line in (done.stdout or "").splitlines()]
        waiting = [line for line in lines if "waiting_for_model" in line]
        assert waiting, done.stdout
        assert f"no model server answers at {dead}" in waiting[0]
        assert "VICTORIA_LLM_URL" in waiting[0]
        assert not [line for line in lines if "loaded:" in line]
        assert len(waiting) == 1, done.stdout  # said once, not at every try


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} in the workspace",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
    for name in ("read_file", "list_directory")
]


def ask_runner(system: System, request: LLMRequested, timeout: float = 30.0) -> LLMResult:
    """Store a model request as an agent would, and wait for the runner's stored answer."""

    async def ask() -> LLMResult:
        nc = await connection.connect(system.bus_url(), name="model-calls-test")
        try:
            await publish.append(nc, request, key=f"llm_req:{request.request_id}")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (
                answer := await reads.last_llm_result(nc.jetstream(), request.task_id, request.request_id)
            ) is None:
                assert loop.time() < deadline, (
                    f"no answer to {request.request_id} within {timeout}s\n{system.log()}"
                )
                await asyncio.sleep(0.1)
            return answer
        finally:
            await nc.close()

    return asyncio.run(ask())


def with_tools(request_id: str, messages: list[ChatMessage], *, model: str = "fake") -> LLMRequested:
    return LLMRequested(
        task_id=uuid.uuid4().hex,
        request_id=request_id,
        purpose="step",
        messages=messages,
        model=model,
        tools=TOOLS,
    )


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_native_tool_calls_arrive_in_the_result_and_a_server_without_tools_says_so_once(
    tmp_path: Path, fake: FakeLLM, workspace: Path, api: str
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(f'[[server]]\nurl = "{fake.url}"\napi = "{api}"\n[server.tools]\n"plain" = false\n')
    with victoria_up(tmp_path / "data", fake, workspace, VICTORIA_MODELS_FILE=str(models)).start() as system:
        fake.mode = "tool_calls"
        fake.script = [
            [
                {"name": "read_file", "arguments": {"path": "alpha.txt"}},
                {"name": "list_directory", "arguments": {"path": "docs"}},
            ],
            "Two files, read.",
        ]
        goal = [ChatMessage("user", "Read alpha.txt and list docs")]
        first = ask_runner(system, with_tools("step-1", goal))
        assert first.ok, first.error
        assert [(call.name, call.arguments) for call in first.tool_calls] == [
            ("read_file", {"path": "alpha.txt"}),
            ("list_directory", {"path": "docs"}),
        ]
        ids = [call.id for call in first.tool_calls]
        # OpenAI's ids are the server's; the fake, as Ollama before 0.12.10, gives none
        assert ids == (
            ["call-fake-0", "call-fake-1"] if api == "openai" else ["step-1-call_0", "step-1-call_1"]
        )
        assert fake.requests[-1]["tools"] == TOOLS and fake.requests[-1]["stream"] is True
        # Each result goes back as a tool message for its call; a reply with no call is the answer.
        results = [
            ChatMessage("tool", "alpha.txt contents", tool_call_id=ids[0], name="read_file"),
            ChatMessage("tool", "guide.md", tool_call_id=ids[1], name="list_directory"),
        ]
        called = ChatMessage("assistant", first.content, tool_calls=first.tool_calls)
        second = ask_runner(system, with_tools("step-2", [*goal, called, *results]))
        assert (second.ok, second.content, second.tool_calls) == (True, "Two files, read.", [])
        sent = fake.requests[-1]["messages"]
        arguments = sent[1]["tool_calls"][0]["function"]["arguments"]
        assert arguments == ('{"path":"alpha.txt"}' if api == "openai" else {"path": "alpha.txt"})
        assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == ids[0]
        assert sent[2].get("tool_name") == (None if api == "openai" else "read_file")

        fake.mode = "no_tools"
        before = len(fake.requests)
        refused = ask_runner(system, with_tools("step-1", goal))
        assert (refused.ok, refused.tools_refused, refused.error_kind) == (False, True, "http_status")
        assert "does not support tools" in str(refused.error)
        assert len(fake.requests) - before == 1  # refused once, not asked again
        plain = ask_runner(system, with_tools("step-1", goal, model="plain"))
        assert (plain.ok, plain.tools_refused) == (False, True)
        assert "tools = false" in str(plain.error)
        assert len(fake.requests) - before == 1  # the models file said so: not sent at all
