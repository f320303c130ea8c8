"""``GET /tools``: every tool the model may call, from the tool table (``events/tools.py``) and
the MCP servers that are up (``runtime/tooltable.py``), and which of them wait for a person's yes
under this gateway's configuration (``Config.approvals_needed``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from victoria.events.tools import BUILTINS, Table, Tool
from victoria.gateway.backend import GatewayState
from victoria.gateway.http import json_response
from victoria.gateway.schemas import ToolInfo, ToolsPage


def info(tool: Tool, approvals_needed: frozenset[str]) -> ToolInfo:
    return ToolInfo(
        name=tool.name,
        description=tool.description,
        effect=tool.effect,
        rerun=tool.rerun,
        executor=tool.executor,
        source=tool.source,
        needs_approval=tool.effect in approvals_needed,
        schema=tool.schema(),
    )


def page(approvals_needed: frozenset[str], table: Table = BUILTINS) -> ToolsPage:
    """The tools, in the table's order, with what needs approval under ``approvals_needed``."""
    return ToolsPage(
        tools=[info(tool, approvals_needed) for tool in table.tools],
        approvals_needed=sorted(approvals_needed),
    )


async def tools(request: Request, state: GatewayState) -> Response:
    """``GET /tools``: every tool the model may call: its name, description, effect, whether it may
    run again after a crash, who runs it, where it comes from (``builtin``, ``mcp:NAME``), whether
    its calls wait for a person's yes (``VICTORIA_APPROVAL``), and the JSON Schema of its arguments.
    Answers while NATS is away, with the table's own tools: those and the configuration are this
    gateway's own."""
    backend = state.backend
    table = (
        await backend.tool_tables.current() if backend is not None and backend.nc.is_connected else BUILTINS
    )
    return json_response(page(state.config.approvals_needed, table))
