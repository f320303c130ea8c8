"""``GET /tools`` and ``victoria tools``: the tool table as the gateway lists it, with what waits for
a person's yes under its configuration (``VICTORIA_APPROVAL``, ``VICTORIA_SANDBOX``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import httpx
import jsonschema
import pytest

from tests.system import System, run_victoria
from victoria.events import tools
from victoria.gateway import toolinfo
from victoria.runtime.config import Config

TOKEN = "tools-route-test-token-0123456789"


@pytest.fixture(scope="module")
def system(start_system: Callable[..., System]) -> System:
    return start_system("tools", token=TOKEN, VICTORIA_APPROVAL="write")


@pytest.mark.e2e
def test_get_tools_lists_every_tool_of_the_table_with_its_schema_and_what_needs_approval(
    system: System,
) -> None:
    assert httpx.get(f"{system.url}/tools").status_code == 401  # a token, as every data route
    response = system.http.get("/tools")
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["approvals_needed"] == ["write"]
    assert [one["name"] for one in body["tools"]] == [tool.name for tool in tools.TOOLS]
    for one, tool in zip(body["tools"], tools.TOOLS, strict=True):
        assert one["description"] == tool.description and one["effect"] == tool.effect
        assert one["rerun"] is tool.rerun and one["executor"] == tool.executor
        assert one["source"] == "builtin"
        assert one["needs_approval"] is (tool.effect == "write"), one
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
    assert "calls of effect write wait for a person's yes" in printed.stdout
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
