"""Victoria as an MCP server: the SDK's own client against ``victoria up`` (with the fake model
server) over HTTP at ``/mcp`` and over stdio through ``victoria mcp``; and the MCP Inspector's CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import TaskGroup
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.fakellm import FakeLLM
from tests.system import System, free_port, victoria_up

pytestmark = pytest.mark.e2e

TOKEN = "mcp-token-0123456789abcdef"
TOOLS = {"run_task", "start_task", "task_status", "cancel_task", "decide_approval", "list_models"}
CALL_TIMEOUT = 60.0  # seconds any one call of these tests may take
INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"  # runs on Node 20 (2.x asks for Node 22.19)
INSPECTOR_TIMEOUT = 240.0  # seconds: npx may download the Inspector first


@pytest.fixture(scope="module")
def system(start_system: Callable[..., System]) -> System:
    return start_system("mcp")


@contextlib.asynccontextmanager
async def mcp_session(url: str, token: str | None = None) -> AsyncIterator[ClientSession]:
    """A session of the SDK's client with the gateway's ``/mcp``, initialized."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(10.0, read=CALL_TIMEOUT)) as http,
        streamable_http_client(f"{url}/mcp", http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


class Progress:
    """What a call's progress notifications said, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []
        self.task_id = asyncio.get_running_loop().create_future()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, message or ""))
        if message and message.startswith("task ") and not self.task_id.done():
            self.task_id.set_result(message.split()[1])

    @property
    def messages(self) -> list[str]:
        return [message for _, message in self.seen]


async def run_task_under_way(group: TaskGroup, session: ClientSession, goal: str) -> str:
    """``run_task`` of ``goal`` started in ``group``, its answer not awaited (an error once the
    call is cancelled or its gateway goes away); the task's id, from its first progress."""
    progress = Progress()

    async def call() -> None:
        with contextlib.suppress(Exception):
            await session.call_tool("run_task", {"goal": goal}, progress_callback=progress)

    group.start_soon(call)
    with anyio.fail_after(CALL_TIMEOUT):
        task_id: str = await progress.task_id
    return task_id


async def cancel_call(session: ClientSession, request_id: int, reason: str | None = None) -> None:
    """The client's ``notifications/cancelled`` of its request ``request_id``."""
    params = types.CancelledNotificationParams(requestId=request_id, reason=reason)
    await session.send_notification(types.ClientNotification(types.CancelledNotification(params=params)))


async def cancelled(system: System, task_id: str) -> dict[str, Any]:
    """The task's status once it is cancelled (waited for off the event loop, which the client needs)."""
    found: dict[str, Any] = await asyncio.to_thread(
        system.wait_for,
        lambda: system.status(task_id)["status"] == "cancelled" and system.status(task_id),
        what=f"task {task_id} cancelled",
    )
    return found


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def test_the_progress_of_a_task_says_its_start_stages_steps_tool_calls_and_end() -> None:
    from types import SimpleNamespace

    from victoria.events import contracts as c
    from victoria.gateway.mcpserver import Progress as Said

    said = Said(SimpleNamespace(meta=None))  # type: ignore[arg-type]  # no client: lines only
    t = "t1"
    events = [
        c.TaskSubmitted(task_id=t, goal="g"),
        c.LLMRequested(
            task_id=t, request_id="u", purpose="understand", messages=[], stage="understanding", attempt=1
        ),
        c.LLMRequested(task_id=t, request_id="s1", purpose="step", messages=[], stage="step", step=1),
        c.ToolIntent(task_id=t, call_id="k", tool="read_file", args={"path": "README.md"}),
        c.ToolOutcome(task_id=t, call_id="k", tool="read_file", ok=True),
        c.ApprovalRequested(task_id=t, approval_id="a1", tool="run_command", args={"command": "ls -la"}),
        c.ApprovalDecided(task_id=t, approval_id="a1", decision="deny", by="alice"),
        c.TaskStage(task_id=t, stage="step", step=2, detail="thinking"),
        c.TaskFailed(task_id=t, error="boom"),
    ]
    assert [line for event in events for line in said.lines(event)] == [
        "running (attempt 1)",
        "understanding",
        "step 1",
        "step 1: read_file README.md",
        "waiting for approval a1 of run_command ls -la (decide_approval)",
        "a1 denied by alice",
        "step 2: thinking",
        "failed: boom",
    ]


async def test_the_tools_are_listed_with_schemas_and_annotations(system: System) -> None:
    async with mcp_session(system.url) as session:
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.inputSchema["type"] == "object" and tool.outputSchema is not None, tool.name
        assert tool.annotations is not None and tool.description, tool.name
    run = tools["run_task"]
    assert run.inputSchema["required"] == ["goal"]
    assert set(run.inputSchema["properties"]) == {"goal", "project", "max_steps", "model"}
    assert set(run.outputSchema["properties"]) >= {"task_id", "status", "output"}  # type: ignore[index]
    assert run.annotations is not None and run.annotations.readOnlyHint is False
    assert run.annotations.destructiveHint is True
    for name in ("task_status", "list_models"):
        annotations = tools[name].annotations
        assert annotations is not None and annotations.readOnlyHint is True, name
    assert tools["decide_approval"].inputSchema["properties"]["decision"]["enum"] == ["approve", "deny"]


async def test_run_task_answers_with_text_and_structured_content_after_its_progress(
    system: System, fake_llm: FakeLLM
) -> None:
    progress = Progress()
    fake_llm.mode = "tool"  # the first step lists the files
    try:
        async with mcp_session(system.url) as session:
            result = await session.call_tool(
                "run_task", {"goal": "Write a haiku about these files"}, progress_callback=progress
            )
    finally:
        fake_llm.mode = "normal"
    assert not result.isError, text_of(result)
    structured = result.structuredContent
    assert structured is not None
    assert structured["status"] == "completed"
    assert structured["output"] and text_of(result) == structured["output"]
    assert system.status(structured["task_id"])["output"] == structured["output"]
    counters = [n for n, _ in progress.seen]
    assert counters == sorted(set(counters)) and counters[0] == 1  # one each, going up
    messages = progress.messages
    assert messages[0] == f"task {structured['task_id']} submitted"
    assert messages[-1] == "completed"
    assert "step 1: list_directory ." in messages, messages  # the step, and its tool call
    assert any(m.startswith("step 2") for m in messages), messages


async def test_run_task_without_progress_waits_for_the_end_as_post_run_does(system: System) -> None:
    async with mcp_session(system.url) as session:
        result = await session.call_tool("run_task", {"goal": "Write a haiku about NATS", "max_steps": 3})
    assert result.structuredContent is not None
    assert result.structuredContent["status"] == "completed"
    assert text_of(result) == "Done: Write a haiku about NATS"
    assert system.status(result.structuredContent["task_id"])["max_steps"] == 3


async def test_a_task_that_fails_is_the_calls_error_with_its_outcome(
    system: System, fake_llm: FakeLLM
) -> None:
    fake_llm.mode = "error"
    try:
        async with mcp_session(system.url) as session:
            result = await session.call_tool("run_task", {"goal": "Explode"})
    finally:
        fake_llm.mode = "normal"
    assert result.isError and result.structuredContent is not None
    assert result.structuredContent["status"] == "failed"
    assert "HTTP 500" in result.structuredContent["error"] and "failed: " in text_of(result)


async def test_start_task_answers_at_once_and_task_status_follows_the_task(system: System) -> None:
    async with mcp_session(system.url) as session:
        started = await session.call_tool("start_task", {"goal": "Write a haiku about JetStream"})
        assert not started.isError and started.structuredContent is not None
        task_id = started.structuredContent["task_id"]
        assert started.structuredContent["status"] in ("queued", "running")
        with anyio.fail_after(CALL_TIMEOUT):
            while True:
                status = await session.call_tool("task_status", {"task_id": task_id})
                assert not status.isError and status.structuredContent is not None
                if status.structuredContent["status"] == "completed":
                    break
                await anyio.sleep(0.1)
    assert status.structuredContent["output"] == "Done: Write a haiku about JetStream"
    assert status.structuredContent == system.status(task_id) | {"model_wait": None}


async def test_a_clients_cancellation_of_run_task_cancels_the_task(system: System, fake_llm: FakeLLM) -> None:
    fake_llm.delay = 5.0
    try:
        async with mcp_session(system.url) as session:
            request_id = session._request_id  # the id of the call made next
            async with anyio.create_task_group() as group:
                task_id = await run_task_under_way(group, session, "Write a long poem")
                await cancel_call(session, request_id, "changed my mind")
                status = await cancelled(system, task_id)
                group.cancel_scope.cancel()
            assert "MCP client" in status["error"]
            assert (await session.list_tools()).tools  # the session goes on
    finally:
        fake_llm.delay = 0.0


async def test_decide_approval_lets_a_waiting_tool_call_run_and_the_first_decision_holds(
    start_system: Callable[..., System], fake_llm: FakeLLM
) -> None:
    approving = start_system("mcp-approval", VICTORIA_APPROVAL="read")
    fake_llm.mode = "tool"  # the first step lists the files: a read, which now waits for a yes
    try:
        async with mcp_session(approving.url) as session:
            started = await session.call_tool("start_task", {"goal": "Write a haiku about these files"})
            assert started.structuredContent is not None
            task_id = started.structuredContent["task_id"]
            with anyio.fail_after(CALL_TIMEOUT):
                while not (status := await session.call_tool("task_status", {"task_id": task_id})).isError:
                    assert status.structuredContent is not None
                    if status.structuredContent["pending_approvals"]:
                        break
                    await anyio.sleep(0.1)
            [pending] = status.structuredContent["pending_approvals"]
            assert pending["tool"] == "list_directory" and "waiting for approval" in text_of(status)
            decision = {"task_id": task_id, "approval_id": pending["id"], "decision": "approve"}
            decided = await session.call_tool("decide_approval", {**decision, "reason": "a look is fine"})
            assert not decided.isError, text_of(decided)
            assert decided.structuredContent is not None
            assert (decided.structuredContent["decision"], decided.structuredContent["by"]) == (
                "approve",
                "local",
            )
            again = await session.call_tool("decide_approval", {**decision, "decision": "deny"})
            assert again.isError and "decided before: approve" in text_of(again)
    finally:
        fake_llm.mode = "normal"
    assert approving.wait_terminal(task_id)["status"] == "completed"


async def test_a_gateway_that_stops_under_a_waiting_run_task_leaves_its_task_to_run(
    tmp_path: Path, fake_llm: FakeLLM, workspace: Path
) -> None:
    """Only the client's cancellation cancels the task: the end of the call's session or of the
    gateway (which cancel the call too) do not."""
    fake_llm.delay = 1.0
    first = victoria_up(tmp_path / "data", fake_llm, workspace).start()
    try:
        async with mcp_session(first.url) as session, anyio.create_task_group() as group:
            task_id = await run_task_under_way(group, session, "Write a sonnet")
            assert await asyncio.to_thread(first.stop) == 0
            group.cancel_scope.cancel()
    finally:
        first.close()
        fake_llm.delay = 0.0
    with victoria_up(tmp_path / "data", fake_llm, workspace).start() as second:
        assert (await asyncio.to_thread(second.wait_terminal, task_id, CALL_TIMEOUT))["status"] == "completed"


@pytest.mark.parametrize(
    ("tool", "arguments", "said"),
    [
        ("run_task", {}, "goal"),
        ("run_task", {"goal": 42}, "goal"),
        ("run_task", {"goal": "   "}, "goal must not be empty"),
        ("run_task", {"goal": "g", "max_steps": 0}, "max_steps"),
        ("start_task", {"goal": "g", "colour": "red"}, "colour"),
        ("task_status", {"task_id": "0123456789abcdef0123456789abcdef"}, "no task"),
        ("cancel_task", {"task_id": "no.such.task"}, "no task"),
        ("decide_approval", {"task_id": "t", "approval_id": "a", "decision": "maybe"}, "decision"),
        ("no_such_tool", {}, "no tool"),
    ],
)
async def test_bad_arguments_are_tool_errors_and_the_session_goes_on(
    system: System, tool: str, arguments: dict[str, Any], said: str
) -> None:
    async with mcp_session(system.url) as session:
        result = await session.call_tool(tool, arguments)
        assert result.isError, result
        assert said in text_of(result)
        assert (await session.call_tool("list_models", {})).structuredContent is not None


async def test_list_models_says_what_get_api_available_models_says(system: System) -> None:
    async with mcp_session(system.url) as session:
        result = await session.call_tool("list_models", {})
    assert not result.isError
    answer = system.http.get("/api/available-models").json()
    assert {k: v for k, v in (result.structuredContent or {}).items() if v is not None} == answer


def test_mcp_answers_401_without_the_token_and_serves_with_it(
    start_system: Callable[..., System],
) -> None:
    secured = start_system("mcp-token", token=TOKEN)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    for method in ("POST", "GET", "DELETE"):
        refused = httpx.request(method, f"{secured.url}/mcp", json=initialize, headers=accept)
        assert refused.status_code == 401, (method, refused.text)
    wrong = httpx.post(
        f"{secured.url}/mcp", json=initialize, headers={**accept, "Authorization": "Bearer x" * 3}
    )
    assert wrong.status_code == 401

    async def with_token() -> set[str]:
        async with mcp_session(secured.url, TOKEN) as session:
            return {tool.name for tool in (await session.list_tools()).tools}

    assert asyncio.run(with_token()) == TOOLS


def test_with_no_token_mcp_takes_only_this_machines_names_as_host(system: System) -> None:
    """No token is asked for on loopback: a page a browser was led to by DNS rebinding must not get in."""
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    foreign = httpx.post(f"{system.url}/mcp", json=initialize, headers={**accept, "Host": "evil.example"})
    assert foreign.status_code == 421, foreign.text
    origin = {**accept, "Origin": "http://evil.example"}
    assert httpx.post(f"{system.url}/mcp", json=initialize, headers=origin).status_code == 403


def _stdio(system: System, token: str | None = None) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICTORIA_")}
    env["VICTORIA_URL"] = system.url
    if token is not None:
        env["VICTORIA_API_TOKEN"] = token
    return StdioServerParameters(command=sys.executable, args=["-m", "victoria", "mcp"], env=env)


async def test_victoria_mcp_over_stdio_lists_the_tools_and_runs_a_task_with_progress(system: System) -> None:
    progress = Progress()
    with anyio.fail_after(CALL_TIMEOUT):
        async with stdio_client(_stdio(system)) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            assert {tool.name for tool in (await session.list_tools()).tools} == TOOLS
            result = await session.call_tool(
                "run_task", {"goal": "Write a haiku about stdio"}, progress_callback=progress
            )
            bad = await session.call_tool("run_task", {"goal": ""})
    assert not result.isError, text_of(result)
    assert text_of(result) == "Done: Write a haiku about stdio"
    assert result.structuredContent is not None and result.structuredContent["status"] == "completed"
    assert progress.messages[0].startswith("task ") and progress.messages[-1] == "completed"
    assert bad.isError


async def test_victoria_mcp_over_stdio_passes_a_cancellation_on(system: System, fake_llm: FakeLLM) -> None:
    fake_llm.delay = 5.0
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            async with stdio_client(_stdio(system)) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                request_id = session._request_id
                async with anyio.create_task_group() as group:
                    task_id = await run_task_under_way(group, session, "Write an epic")
                    await cancel_call(session, request_id)
                    status = await cancelled(system, task_id)
                    group.cancel_scope.cancel()
        assert "MCP client" in status["error"]
    finally:
        fake_llm.delay = 0.0


async def test_victoria_mcp_opens_a_new_session_when_the_gateway_restarts(
    tmp_path: Path, fake_llm: FakeLLM, workspace: Path
) -> None:
    first = victoria_up(tmp_path / "data", fake_llm, workspace).start()
    second = victoria_up(tmp_path / "data", fake_llm, workspace)
    second.port, second.url = first.port, first.url  # the same address: what the client was told
    second.http = httpx.Client(base_url=first.url, timeout=60.0)
    try:
        with anyio.fail_after(CALL_TIMEOUT):
            async with stdio_client(_stdio(first)) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                before = await session.call_tool("run_task", {"goal": "Write a haiku before"})
                assert await asyncio.to_thread(first.stop) == 0
                await asyncio.to_thread(second.start)
                after = await session.call_tool("run_task", {"goal": "Write a haiku after"})
    finally:
        first.close()
        second.close()
    assert [text_of(before), text_of(after)] == ["Done: Write a haiku before", "Done: Write a haiku after"]


def test_victoria_mcp_without_a_gateway_says_so_and_exits_1() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VICTORIA_")}
    env["VICTORIA_URL"] = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "victoria", "mcp"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "the gateway's MCP server at" in done.stderr and done.stdout == ""


def _inspector(system: System, *args: str) -> Any:
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip("npx is not installed: the MCP Inspector is a Node package")
    done = subprocess.run(
        [
            npx,
            "-y",
            INSPECTOR,
            "--cli",
            f"{system.url}/mcp",
            "--transport",
            "http",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=INSPECTOR_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


@pytest.mark.timeout(2 * INSPECTOR_TIMEOUT + 60)
def test_the_mcp_inspectors_cli_lists_the_tools_and_starts_a_task(system: System) -> None:
    listed = _inspector(system, "--method", "tools/list")
    assert {tool["name"] for tool in listed["tools"]} == TOOLS
    started = _inspector(
        system, "--method", "tools/call", "--tool-name", "start_task", "--tool-arg", "goal=Write a haiku"
    )
    assert not started.get("isError"), started
    task_id = started["structuredContent"]["task_id"]
    assert system.wait_terminal(task_id)["output"] == "Done: Write a haiku"
