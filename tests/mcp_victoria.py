"""An MCP server as IDE agents use one with the old Victoria server: a tool that posts the goal to
``POST /run`` and answers with the output. The tests start it over stdio, as an IDE would.

Run alone: ``VICTORIA_URL=http://127.0.0.1:8010 python -m tests.mcp_victoria``.
"""

from __future__ import annotations

import os

import httpx
from mcp.server.fastmcp import FastMCP

server = FastMCP("victoria")


@server.tool()
def victoria_run(goal: str, max_steps: int = 500) -> str:
    """Give Victoria a goal and wait for her answer."""
    base = os.environ.get("VICTORIA_URL", "http://127.0.0.1:8010")
    response = httpx.post(f"{base}/run", json={"goal": goal, "max_steps": max_steps}, timeout=600.0)
    response.raise_for_status()
    body = response.json()
    if body.get("status") == "success":
        return str(body.get("output", ""))
    return f"Victoria: {body.get('status')}: {body.get('error') or body.get('clarification_questions')}"


if __name__ == "__main__":
    server.run()
