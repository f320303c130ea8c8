"""MCP servers as Victoria's tools (``VICTORIA_MCP_CONFIG``, ``actors/veronica/mcp.py``): the
config file, real servers from the package index (``mcp-server-time``, ``mcp-server-git`` on a
repository the test makes) run by Veronica, and a small server of the tests' own
(``tests/mcp_toolbox.py``) that hangs, writes garbage, changes its tools, exits and is killed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
from nats.aio.client import Client as NATS

from tests.fakellm import FakeLLM
from tests.system import NatsServer, System, free_port, stream_messages, victoria_up
from victoria.actors.veronica.actor import Veronica
from victoria.actors.veronica.executor import INTERRUPTED
from victoria.actors.veronica.mcp import McpServers
from victoria.errors import ConfigError
from victoria.events import contracts, subjects, tools
from victoria.events.codec import encode
from victoria.runtime import connection, fence, mcpservers, reads, streams
from victoria.runtime.config import Config

BIN = Path(sys.executable).parent
TIME = {"command": str(BIN / "mcp-server-time")}
TOOLBOX_PATH = Path(__file__).with_name("mcp_toolbox.py")
NOW = subjects.mcp_tool("time", "get_current_time")


def toolbox(calls: Path | None = None, **env: str) -> dict[str, Any]:
    """The config entry of the tests' own server, writing its calls to ``calls``."""
    return {
        "command": sys.executable,
        "args": [str(TOOLBOX_PATH)],
        "env": {**({"TOOLBOX_CALLS": str(calls)} if calls else {}), **env},
    }


def git_repository(path: Path) -> Path:
    """A git repository with one commit and one file not added yet."""
    path.mkdir()

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    (path / "README.md").write_text("hello\n", encoding="utf-8")
    git("add", "README.md")
    git("-c", "user.name=Test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "First commit")
    (path / "notes.txt").write_text("not added\n", encoding="utf-8")
    return path


def write_config(path: Path, servers: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return path


def calls_made(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


# --- the config file -------------------------------------------------------------------------------


def test_the_config_file_takes_the_shape_the_other_clients_write(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "mcp.json",
        {
            "time": {"command": "uvx", "args": ["mcp-server-time"], "type": "stdio"},
            "search": {"url": "https://user:pw@mcp.example.com/mcp", "headers": {"X-Key": "${KEY}"}},
            "old": {"command": "x", "disabled": True},
        },
    )
    config = Config.from_env({"VICTORIA_MCP_CONFIG": str(path)})
    assert config.mcp_config == path
    time_server, search = config.mcp_servers
    assert (time_server.name, time_server.transport, time_server.target) == (
        "time",
        "stdio",
        "uvx mcp-server-time",
    )
    assert (search.transport, search.target) == ("http", "https://user:***@mcp.example.com/mcp")
    loopback = mcpservers.McpServer("v6", "http", url="http://user:pw@[::1]:8931/mcp")
    assert loopback.target == "http://user:***@[::1]:8931/mcp"  # as NATS URLs are shown
    assert "X-Key" not in repr(config) and "pw@" not in repr(config)
    assert Config.from_env({}).mcp_servers == ()


@pytest.mark.parametrize(
    ("servers", "said"),
    [
        ({"my.server": TIME}, "server name 'my.server' must be 1 to 40 letters"),
        ({"both": {"command": "x", "url": "http://h/mcp"}}, "server both: give either command"),
        ({"web": {"url": "ftp://h"}}, "server web: url must be an http(s) URL"),
        ({"old": {"url": "http://h/sse", "type": "sse"}}, "SSE transport is not supported"),
        ({"bad": {"command": "x", "args": "--flag"}}, "server bad: args: expected a list of strings"),
    ],
)
def test_a_bad_entry_stops_the_start_naming_the_variable_and_the_server(
    tmp_path: Path, servers: dict[str, Any], said: str
) -> None:
    path = write_config(tmp_path / "mcp.json", servers)
    with pytest.raises(ConfigError, match="VICTORIA_MCP_CONFIG") as refused:
        Config.from_env({"VICTORIA_MCP_CONFIG": str(path)})
    assert said in str(refused.value)


def test_variables_are_read_when_a_server_starts_and_victorias_own_are_never_given() -> None:
    [server] = mcpservers.parse(
        {
            "mcpServers": {
                "s": {
                    "command": "${TOOL_HOME}/bin/s",
                    "args": ["--level=${LEVEL:-info}"],
                    "env": {"T": "${TOKEN}"},
                }
            }
        }
    )
    expanded = mcpservers.expand(server, {"TOOL_HOME": "/opt/s", "TOKEN": "secret"})
    assert (expanded.command, expanded.args, expanded.env) == (
        "/opt/s/bin/s",
        ["--level=info"],
        {"T": "secret"},
    )
    assert server.target == "'${TOOL_HOME}/bin/s' '--level=${LEVEL:-info}'"  # as written: no secret shown
    with pytest.raises(mcpservers.UnsetVariable, match=r"\$\{TOKEN\} is not set"):
        mcpservers.expand(server, {"TOOL_HOME": "/opt/s"})
    [nats] = mcpservers.parse(
        {"mcpServers": {"s": {"command": "s", "env": {"P": "${VICTORIA_NATS_PASSWORD}"}}}}
    )
    with pytest.raises(mcpservers.UnsetVariable):
        mcpservers.expand(nats, {"VICTORIA_NATS_PASSWORD": "hunter2"})


# --- Veronica's servers, on a real nats-server -----------------------------------------------------


@pytest.fixture
async def bus(nats_server: NatsServer) -> AsyncIterator[NATS]:
    nc = await connection.connect(nats_server.url, name="mcp-tools-test")
    await streams.ensure_streams(nc.jetstream())
    yield nc
    await nc.close()


@asynccontextmanager
async def running(
    nc: NATS, tmp_path: Path, servers: dict[str, Any], *, ready: bool = True, **env: str
) -> AsyncIterator[McpServers]:
    """``servers`` run by one instance of Veronica's MCP servers, all up (or given up on) first
    when ``ready``."""
    path = write_config(tmp_path / "mcp.json", servers)
    config = Config.from_env({"VICTORIA_MCP_CONFIG": str(path), "VICTORIA_INSTANCE": "v1", **env})
    mcp = McpServers(nc.jetstream(), config)
    mcp.start()
    try:
        if ready:
            await until(
                lambda: all(s.status in ("up", "down") for s in mcp.servers.values()), "the servers up"
            )
        yield mcp
    finally:
        await mcp.stop()


async def until(predicate: Callable[[], object], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.05)
    return found


async def records(nc: NATS) -> dict[str, contracts.McpServerState]:
    return {state.server: state for state in await reads.mcp_servers(nc.jetstream())}


async def recorded(
    nc: NATS, check: Callable[[dict[str, contracts.McpServerState]], bool], what: str
) -> dict[str, contracts.McpServerState]:
    """The records in the bucket once ``check`` holds of them."""
    deadline = time.monotonic() + 20
    while not check(found := await records(nc)):
        assert time.monotonic() < deadline, f"{what}: not recorded within 20s (last: {found})"
        await asyncio.sleep(0.05)
    return found


def names(infos: list[contracts.McpToolInfo]) -> list[str]:
    return [info.name for info in infos]


def children_running(command: str) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if child.is_running()
        and child.status() != psutil.STATUS_ZOMBIE
        and command in " ".join(child.cmdline())
    ]


@pytest.mark.usefixtures("strict_loop")
async def test_the_real_time_and_git_servers_are_recorded_up_with_their_tools_and_answer(
    bus: NATS, tmp_path: Path
) -> None:
    repo = git_repository(tmp_path / "repo")
    git = {"command": str(BIN / "mcp-server-git"), "args": ["--repository", str(repo)]}
    async with running(bus, tmp_path, {"time": TIME, "git": git}) as mcp:
        states = await recorded(bus, lambda r: len(r) == 2, "both servers")
        assert {name: state.status for name, state in states.items()} == {"time": "up", "git": "up"}
        assert states["git"].target == f"{BIN / 'mcp-server-git'} --repository {repo}"
        table = tools.Table.of(states.values())
        now, status, commit = (
            table.get(subjects.mcp_tool(*n))
            for n in [("time", "get_current_time"), ("git", "git_status"), ("git", "git_commit")]
        )
        assert now is not None and (now.effect, now.rerun, now.source) == ("read", True, "mcp:time")
        assert status is not None and status.schema()["required"] == ["repo_path"]
        assert commit is not None and (commit.effect, commit.rerun) == ("external", False)

        answer = await mcp.call(NOW, {"timezone": "Europe/Moscow"})
        assert answer.ok and json.loads(answer.output)["timezone"] == "Europe/Moscow", answer
        said = await mcp.call(subjects.mcp_tool("git", "git_status"), {"repo_path": str(repo)})
        assert said.ok and "notes.txt" in said.output, said
        logged = await mcp.call(subjects.mcp_tool("git", "git_log"), {"repo_path": str(repo)})
        assert logged.ok and "First commit" in logged.output, logged
        wrong = await mcp.call(NOW, {"timezone": "Mars/Olympus_Mons"})
        assert not wrong.ok and "Mars/Olympus_Mons" in (wrong.error or ""), wrong
    assert not children_running("mcp-server-")  # stopped with Veronica
    assert {state.status for state in (await records(bus)).values()} == {"down"}


@pytest.mark.usefixtures("strict_loop")
async def test_a_hung_server_times_out_its_own_call_and_never_blocks_another_servers_tools(
    bus: NATS, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    servers = {"time": TIME, "box": toolbox(calls)}
    async with running(bus, tmp_path, servers, VICTORIA_MCP_CALL_TIMEOUT="1.5") as mcp:
        began = time.monotonic()
        hung = asyncio.ensure_future(mcp.call(subjects.mcp_tool("box", "hang"), {}))
        await until(lambda: calls_made(calls), "the hang begun")
        answer = await mcp.call(NOW, {"timezone": "Etc/UTC"})
        assert answer.ok and time.monotonic() - began < 1.5
        result = await hung
        assert 1.5 <= time.monotonic() - began < 5
        assert not result.ok and (result.error or "").startswith(
            "timed out: MCP server box did not answer hang within 1.5s; the call was cancelled"
        ), result


@pytest.mark.usefixtures("strict_loop")
async def test_a_server_that_writes_garbage_to_stdout_still_answers_and_shows_the_line(
    bus: NATS, tmp_path: Path
) -> None:
    async with running(bus, tmp_path, {"box": toolbox()}) as mcp:
        result = await mcp.call(subjects.mcp_tool("box", "garbage"), {})
        assert (result.ok, result.output) == (True, "answered after the garbage"), result
        assert "[stdout, not JSON-RPC] this is not JSON-RPC" in mcp.servers["box"].stderr


@pytest.mark.usefixtures("strict_loop")
async def test_a_server_that_exits_is_started_again_with_its_stderr_and_its_call_is_interrupted(
    bus: NATS, tmp_path: Path
) -> None:
    async with running(bus, tmp_path, {"box": toolbox()}) as mcp:
        box = mcp.servers["box"]
        result = await mcp.call(subjects.mcp_tool("box", "exit_now"), {"code": 3})
        assert result.interrupted and not result.ok
        assert (result.error or "").startswith(
            "interrupted: MCP server box ended during the call of exit_now (its process ended); "
            "unknown whether it finished"
        ), result
        meanwhile = await mcp.call(subjects.mcp_tool("box", "environment"), {})
        assert meanwhile.error == "MCP server box is restarting: its process ended", meanwhile
        state = (await recorded(bus, lambda r: r["box"].status == "restarting", "restarting"))["box"]
        assert (state.status, state.restarts) == ("restarting", 1)
        assert any(line.endswith("exits with 3") for line in state.stderr), state.stderr
        await until(lambda: box.status == "up", "up again")
        again = await mcp.call(subjects.mcp_tool("box", "environment"), {})
        assert again.ok, again


@pytest.mark.usefixtures("strict_loop")
async def test_a_change_of_the_servers_tool_list_is_picked_up(bus: NATS, tmp_path: Path) -> None:
    async with running(bus, tmp_path, {"box": toolbox()}) as mcp:
        assert (await mcp.call(subjects.mcp_tool("box", "add_tool"), {})).ok
        await until(lambda: "extra" in names(mcp.servers["box"].tools), "the new tool listed")
        assert (await mcp.call(subjects.mcp_tool("box", "extra"), {})).output == "extra"
        await recorded(bus, lambda r: "extra" in names(r["box"].tools), "the new tool")


@pytest.mark.usefixtures("strict_loop")
async def test_a_server_gets_none_of_veronicas_secrets_and_the_variables_its_entry_names(
    bus: NATS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VICTORIA_NATS_PASSWORD", "nats-secret")
    monkeypatch.setenv("VICTORIA_API_TOKEN", "api-secret-token-1234")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("GREETING_SOURCE", "hello")
    servers = {
        "box": toolbox(TOOLBOX_GREETING="${GREETING_SOURCE}"),
        "gone": toolbox(X="${NOT_SET_ANYWHERE}"),
    }
    async with running(bus, tmp_path, servers) as mcp:
        seen = json.loads((await mcp.call(subjects.mcp_tool("box", "environment"), {})).output)
        assert seen["greeting"] == "hello"
        assert not {
            "VICTORIA_NATS_PASSWORD",
            "VICTORIA_API_TOKEN",
            "OPENAI_API_KEY",
            "GREETING_SOURCE",
        } & set(seen["names"])
        gone = mcp.servers["gone"]
        assert (gone.status, gone.reason) == (
            "down",
            "${NOT_SET_ANYWHERE} is not set in Veronica's environment",
        )


@pytest.mark.usefixtures("strict_loop")
async def test_a_cancelled_call_is_cancelled_on_the_server_too(bus: NATS, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    async with running(bus, tmp_path, {"box": toolbox(calls)}) as mcp:
        slow = asyncio.ensure_future(mcp.call(subjects.mcp_tool("box", "sleep"), {"seconds": 30}))
        await until(lambda: calls_made(calls), "the call begun")
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        await until(lambda: "cancelled sleep" in calls_made(calls), "the server's cancel")


@contextmanager
def http_toolbox(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The tests' own server over streamable HTTP on ``port``, accepting connections."""
    process = subprocess.Popen(
        [sys.executable, str(TOOLBOX_PATH), "--http", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, (
                    "the HTTP toolbox did not start"
                )
                time.sleep(0.05)
        yield process
    finally:
        process.kill()
        process.wait(5)


@pytest.mark.usefixtures("strict_loop")
async def test_an_http_server_gets_its_headers_and_is_connected_to_again_when_it_comes_back(
    bus: NATS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("BOX_TOKEN", "box-secret")
    url = f"http://127.0.0.1:{port}/mcp"
    servers = {"web": {"url": url, "headers": {"Authorization": "Bearer ${BOX_TOKEN}"}}}
    whoami = subjects.mcp_tool("web", "authorization")
    with http_toolbox(port):
        async with running(bus, tmp_path, servers) as mcp:
            said = await mcp.call(whoami, {})
            assert (said.ok, said.output) == (True, "Bearer box-secret"), said
            state = (await recorded(bus, lambda r: "web" in r, "web"))["web"]
            assert (state.transport, state.target, state.status) == ("http", url, "up")
    async with running(bus, tmp_path, servers, ready=False) as mcp:
        web = mcp.servers["web"]
        await until(lambda: web.status == "restarting", "restarting")  # nobody listens
        assert web.reason == "ConnectError: All connection attempts failed", web.reason
        with http_toolbox(port):
            await until(lambda: web.status == "up", "up again", timeout=30)
            assert (await mcp.call(whoami, {})).output == "Bearer box-secret"


# --- through Veronica's durable path ---------------------------------------------------------------


@pytest.mark.usefixtures("strict_loop")
async def test_an_mcp_tool_intent_is_claimed_once_run_on_its_server_and_its_outcome_stored(
    bus: NATS, tmp_path: Path
) -> None:
    calls = tmp_path / "calls"
    path = write_config(tmp_path / "mcp.json", {"time": TIME, "box": toolbox(calls)})
    veronica = Veronica(
        bus,
        Config.from_env(
            {
                "VICTORIA_MCP_CONFIG": str(path),
                "VICTORIA_INSTANCE": "v-mcp",
                "VICTORIA_WORKSPACE": str(tmp_path),
            }
        ),
    )
    await veronica.start()
    try:
        mcp = veronica.mcp
        assert mcp is not None
        await until(lambda: all(s.status == "up" for s in mcp.servers.values()), "up")
        js = bus.jetstream()
        for call_id, tool, args in [
            ("c1", NOW, {"timezone": "Asia/Tokyo"}),
            ("c2", subjects.mcp_tool("time", "no_such_tool"), {}),
        ]:
            intent = contracts.ToolIntent(
                task_id="mcp-task-" + call_id, call_id=call_id, tool=tool, args=args
            )
            await js.publish(subjects.task_event(intent.task_id, "tool_intent"), encode(intent))
        outcome = await until_stored(js, "mcp-task-c1", "c1")
        assert outcome.ok and json.loads(outcome.output)["timezone"] == "Asia/Tokyo", outcome
        claim = await reads.last_tool_claim(js, "mcp-task-c1", "c1")
        assert claim is not None and claim.instance == "v-mcp"
        missing = await until_stored(js, "mcp-task-c2", "c2")
        assert missing.error == "MCP server time has no tool 'mcp__time__no_such_tool' now", missing

        # A cancel of the task cancels its call, on the server too.
        sleep = subjects.mcp_tool("box", "sleep")
        slow = contracts.ToolIntent(
            task_id="mcp-task-c3",
            call_id="c3",
            tool=sleep,
            args={"seconds": 30},
            effect="external",
            rerun=False,
        )
        await js.publish(subjects.task_event(slow.task_id, "tool_intent"), encode(slow))
        await until(lambda: calls_made(calls), "the call begun")
        await js.publish(
            subjects.task_event(slow.task_id, "cancel"),
            encode(contracts.TaskCancelRequested(task_id=slow.task_id)),
        )
        cancelled = await until_stored(js, "mcp-task-c3", "c3")
        assert cancelled.error == "cancelled: the task was cancelled", cancelled
        await until(lambda: "cancelled sleep" in calls_made(calls), "the server's cancel")

        # A call a dead Veronica claimed is never made again: the model is told it was interrupted.
        again = msgspec.structs.replace(slow, task_id="mcp-task-c4", call_id="c4")
        gone = contracts.ToolClaim(task_id=again.task_id, call_id=again.call_id, instance="gone")
        assert await fence.append_once(bus, subjects.tool_claim(again.task_id, again.call_id), gone)
        await js.publish(subjects.task_event(again.task_id, "tool_intent"), encode(again))
        interrupted = await until_stored(js, "mcp-task-c4", "c4")
        assert (interrupted.interrupted, interrupted.error) == (True, INTERRUPTED), interrupted
        assert [line for line in calls_made(calls) if line.startswith("sleep")] == calls_made(calls)[:1]
    finally:
        await veronica.stop()


async def until_stored(js: Any, task_id: str, call_id: str) -> contracts.ToolOutcome:
    deadline = time.monotonic() + 20
    while (outcome := await reads.last_tool_outcome(js, task_id, call_id)) is None:
        assert time.monotonic() < deadline, f"no outcome of {task_id} {call_id}"
        await asyncio.sleep(0.05)
    return outcome


# --- the whole system, a scripted model calling MCP tools natively ---------------------------------


def events(system: System, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>") if m["type"] == kind]


@pytest.fixture
def mcp_system(tmp_path: Path, fake: FakeLLM) -> Iterator[Callable[..., System]]:
    started: list[System] = []

    def start(servers: dict[str, Any]) -> System:
        path = write_config(tmp_path / "mcp.json", servers)
        workspace = tmp_path / "workspace"
        workspace.mkdir(exist_ok=True)
        system = victoria_up(tmp_path / "data", fake, workspace, VICTORIA_MCP_CONFIG=str(path)).start()
        started.append(system)
        return system

    yield start
    for system in started:
        system.close()


def mcp_state(system: System, server: str) -> dict[str, Any] | None:
    return next(
        (d for d in system.http.get("/services").json()["dependencies"] if d["name"] == f"mcp-{server}"), None
    )


@pytest.mark.e2e
def test_the_model_calls_the_real_time_and_git_servers_natively(
    tmp_path: Path, fake: FakeLLM, mcp_system: Callable[..., System]
) -> None:
    repo = git_repository(tmp_path / "repo")
    git = {"command": str(BIN / "mcp-server-git"), "args": ["--repository", str(repo)]}
    system = mcp_system({"time": TIME, "git": git})
    system.wait_for(lambda: (mcp_state(system, "git") or {}).get("status") == "up", what="git up")
    fake.mode = "tool_calls"
    fake.script = [
        [
            {"name": NOW, "arguments": {"timezone": "Europe/Moscow"}},
            {"name": subjects.mcp_tool("git", "git_status"), "arguments": {"repo_path": str(repo)}},
            {"name": subjects.mcp_tool("git", "git_log"), "arguments": {"repo_path": str(repo)}},
        ],
        "It is evening in Moscow and the repository has one commit.",
    ]
    task_id = system.submit("What time is it in Moscow, and what is in the repository?", task_type="agent")
    end = system.wait_terminal(task_id, timeout=60)
    assert end["status"] == "completed", end
    offered = [spec["function"]["name"] for spec in fake.requests[-1]["tools"]]
    assert {NOW, subjects.mcp_tool("git", "git_status")} <= set(offered)
    outcomes = {o["tool"]: o for o in events(system, task_id, "tool_outcome")}
    assert json.loads(outcomes[NOW]["output"])["timezone"] == "Europe/Moscow"
    assert "notes.txt" in outcomes[subjects.mcp_tool("git", "git_status")]["output"]
    assert "First commit" in outcomes[subjects.mcp_tool("git", "git_log")]["output"]
    told = [m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "tool"]
    assert any("First commit" in text for text in told), told
    listed = {t["name"]: t for t in system.http.get("/tools").json()["tools"]}
    assert listed[NOW]["source"] == "mcp:time"


@pytest.mark.e2e
def test_killing_the_mcp_server_during_a_call_is_a_tool_error_never_a_second_call_and_it_comes_back(
    tmp_path: Path, fake: FakeLLM, mcp_system: Callable[..., System]
) -> None:
    calls = tmp_path / "calls"
    system = mcp_system({"box": toolbox(calls)})
    system.wait_for(lambda: (mcp_state(system, "box") or {}).get("status") == "up", what="box up")
    sleep = subjects.mcp_tool("box", "sleep")
    fake.mode = "tool_calls"
    fake.script = [[{"name": sleep, "arguments": {"seconds": 60}}], "The server died."]
    task_id = system.submit("Sleep a minute", task_type="agent")
    [line] = system.wait_for(lambda: calls_made(calls), what="the call begun")
    pid = int(line.split()[1])
    os.kill(pid, signal.SIGKILL)
    end = system.wait_terminal(task_id, timeout=60)
    assert end["status"] == "completed", end
    [outcome] = events(system, task_id, "tool_outcome")
    assert outcome["ok"] is False and outcome["interrupted"] is True, outcome["error"]
    assert outcome["error"].startswith("interrupted: MCP server box ended during the call of sleep"), outcome[
        "error"
    ]
    assert len(events(system, task_id, "tool_claim")) == 1
    assert [c for c in calls_made(calls) if c.startswith("sleep")] == [line]  # never a second call

    def restarted() -> dict[str, Any] | None:
        state = mcp_state(system, "box")
        started = [line for line in (state or {}).get("stderr", []) if line.endswith(" started")]
        return (
            state
            if state and state["status"] == "up" and started[-1:] != [f"toolbox {pid} started"]
            else None
        )

    state = system.wait_for(restarted, what="a new box up")
    assert f"toolbox {pid} started" in state["stderr"], state  # the lines of the one killed, too

    fake.script = [[{"name": sleep, "arguments": {"seconds": 0.1}}], "Slept."]
    again = system.submit("Sleep a little", task_type="agent")
    assert system.wait_terminal(again, timeout=60)["status"] == "completed"
    [outcome] = events(system, again, "tool_outcome")
    assert (outcome["ok"], outcome["output"]) == (True, "slept 0.1s"), outcome["error"]

    # A kill -9 of Veronica takes her server with her (the parent-death signal), even one too busy
    # to see its stdin close.
    fake.script = [[{"name": subjects.mcp_tool("box", "hang"), "arguments": {}}]]
    system.submit("Hang", task_type="agent")
    hung = int(
        system.wait_for(lambda: [c for c in calls_made(calls) if c.startswith("hang")], what="hung")[
            0
        ].split()[1]
    )
    os.kill(system.pid_of("veronica"), signal.SIGKILL)
    system.wait_for(lambda: not alive(hung), what="the hung server gone", timeout=5)


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
