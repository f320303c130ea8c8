"""``GET /tools`` and ``victoria tools``: the tool table as the gateway lists it, with what waits for
a person's yes under its configuration (``VICTORIA_APPROVAL``, ``VICTORIA_SANDBOX``)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import msgspec
import nats
import pytest

from tests.system import System, run_victoria
from victoria.events import subjects, tools
from victoria.events.contracts import McpServerState, McpToolInfo
from victoria.gateway import toolinfo
from victoria.runtime.config import Config

TOKEN = "tools-route-test-token-0123456789"


@pytest.fixture(scope="module")
def system(start_system: Callable[..., System]) -> System:
    return start_system("tools", token=TOKEN, VICTORIA_APPROVAL="write,external")


@pytest.mark.e2e
def test_get_tools_lists_every_tool_of_the_table_with_its_schema_and_what_needs_approval(
    system: System,
) -> None:
    assert httpx.get(f"{system.url}/tools").status_code == 401  # a token, as every data route
    response = system.http.get("/tools")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["approvals_needed"] == ["external", "write"]
    assert [one["name"] for one in body["tools"]] == [tool.name for tool in tools.TOOLS]
    for one, tool in zip(body["tools"], tools.TOOLS, strict=True):
        assert one["description"] == tool.description and one["effect"] == tool.effect
        assert one["rerun"] is tool.rerun and one["executor"] == tool.executor
        assert one["source"] == "builtin"
        assert one["needs_approval"] is (tool.effect in ("write", "external")), one
        assert one["schema"] == tool.schema()
        jsonschema.validate(tool.example, one["schema"])  # the schema describes real arguments
    [run_command] = [one for one in body["tools"] if one["name"] == tools.RUN_COMMAND.name]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"command": "ls", "timeout_s": "soon"}, run_command["schema"])


@pytest.mark.e2e
def test_victoria_tools_prints_a_table_and_with_json_the_routes_answer(system: System) -> None:
    env = {**os.environ, "VICTORIA_URL": system.url, "VICTORIA_API_TOKEN": TOKEN}
    printed = run_victoria("tools", env=env)
    assert printed.returncode == 0, printed.stderr
    header, *lines = printed.stdout.splitlines()
    assert header.split() == ["name", "effect", "approval", "description"]
    rows = {line.split()[0]: line for line in lines if line.strip()}
    for tool in tools.TOOLS:
        assert rows[tool.name].split()[1] == tool.effect
        assert rows[tool.name].split()[2] == ("needed" if tool.effect == "write" else "-")
        assert rows[tool.name].endswith(tool.description)
    assert "calls of effect external, write wait for a person's yes" in printed.stdout
    raw = run_victoria("tools", "--json", env=env)
    assert raw.returncode == 0 and json.loads(raw.stdout) == system.http.get("/tools").json()
    refused = run_victoria("tools", env={**env, "VICTORIA_API_TOKEN": "not-the-token-0123456789"})
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr


def test_commands_without_a_sandbox_need_approval_even_when_no_effect_is_configured() -> None:
    page = toolinfo.page(Config.from_env({"VICTORIA_SANDBOX": "none"}).approvals_needed)
    assert page.approvals_needed == ["execute"]
    assert {tool.name for tool in page.tools if tool.needs_approval} == {
        tool.name for tool in tools.TOOLS if tool.effect == "execute"
    }
    assert not any(tool.needs_approval for tool in toolinfo.page(Config.from_env({}).approvals_needed).tools)


def _record(system: System, state: McpServerState) -> None:
    """Veronica's record of an MCP server, written as she writes it (``victoria_mcp``)."""

    async def put() -> None:
        nc = await nats.connect(servers=system.bus_url().split(","))
        try:
            kv = await nc.jetstream().key_value(subjects.MCP_BUCKET)
            await kv.put(subjects.mcp_key(state.server, state.instance), msgspec.json.encode(state))
        finally:
            await nc.close()

    asyncio.run(put())


@pytest.mark.e2e
def test_the_tools_of_an_mcp_server_that_is_up_are_listed_with_their_source_and_it_is_a_dependency(
    system: System,
) -> None:
    listed = {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}
    now = time.time()
    clock = McpServerState(
        server="clock",
        instance="v1",
        transport="stdio",
        target="mcp-server-time --local-timezone UTC",
        status="up",
        tools=[
            McpToolInfo(
                name="get_current_time", description="The time now.", input_schema=listed, read_only=True
            ),
            McpToolInfo(name="set_alarm", input_schema={"type": "object"}),
        ],
        stderr=["serving on stdio"],
        at=now,
    )
    _record(system, clock)
    _record(
        system, msgspec.structs.replace(clock, server="broken", status="restarting", reason="exit code 1")
    )
    _record(system, msgspec.structs.replace(clock, server="gone", at=now - 3600))  # of an instance gone

    def listed_all() -> dict[str, Any] | None:
        body: dict[str, Any] = system.http.get("/tools").json()
        return body if len(body["tools"]) > len(tools.TOOLS) else None

    body = system.wait_for(listed_all, what="the MCP tools listed")
    mcp = {one["name"]: one for one in body["tools"][len(tools.TOOLS) :]}
    assert list(mcp) == ["mcp__clock__get_current_time", "mcp__clock__set_alarm"]
    read, alarm = mcp.values()
    assert (read["source"], read["effect"], read["rerun"], read["needs_approval"]) == (
        "mcp:clock",
        "read",
        True,
        False,
    )
    assert (
        read["schema"] == listed and read["description"] == "The time now." and read["executor"] == "veronica"
    )
    assert (alarm["effect"], alarm["rerun"], alarm["needs_approval"]) == ("external", False, True)
    printed = run_victoria(
        "tools", env={**os.environ, "VICTORIA_URL": system.url, "VICTORIA_API_TOKEN": TOKEN}
    )
    assert "mcp__clock__set_alarm (mcp:clock)" in printed.stdout
    deps = {d["name"]: d for d in system.http.get("/services").json()["dependencies"]}
    assert deps["mcp-clock"]["status"] == "up" and deps["mcp-clock"]["tools"] == 2
    assert deps["mcp-clock"]["stderr"] == ["serving on stdio"] and deps["mcp-clock"]["instance"] == "v1"
    assert (deps["mcp-broken"]["status"], deps["mcp-broken"]["reason"]) == ("restarting", "exit code 1")
    assert "mcp-gone" not in deps
