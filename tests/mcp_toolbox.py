"""A small MCP server (stdio) for the tests of MCP servers as Victoria's tools: a slow tool to kill
the server during, one that hangs the whole server, one that writes garbage to stdout, one that
changes the tool list, one that exits, one that shows the environment it got, one that shows the
Authorization header it got (``--http PORT``: over streamable HTTP at ``http://127.0.0.1:PORT/mcp``).

Each call is written, one line, to the file ``TOOLBOX_CALLS`` names (when set): ``<tool> <pid>``,
and ``cancelled <tool>`` when a call is cancelled. Run: ``python -m tests.mcp_toolbox``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from mcp.server.fastmcp import Context, FastMCP
from mcp.types import ToolAnnotations

server = FastMCP("toolbox", log_level="WARNING")
EXTERNAL = ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=False)
READ_ONLY = ToolAnnotations(readOnlyHint=True)


def note(line: str) -> None:
    path = os.environ.get("TOOLBOX_CALLS")
    if path:
        with open(path, "a", encoding="utf-8") as calls:
            calls.write(line + "\n")


@server.tool(annotations=EXTERNAL)
async def sleep(seconds: float) -> str:
    """Sleep, then say so: an external tool that is not safe to run twice."""
    note(f"sleep {os.getpid()}")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        note("cancelled sleep")
        raise
    return f"slept {seconds:g}s"


@server.tool(annotations=READ_ONLY)
def hang() -> str:
    """Block the whole server (a synchronous sleep on its event loop)."""
    note(f"hang {os.getpid()}")
    time.sleep(3600)
    return "never"


@server.tool(annotations=READ_ONLY)
def garbage() -> str:
    """Write a line that is not JSON-RPC to stdout, then answer."""
    note(f"garbage {os.getpid()}")
    print("this is not JSON-RPC", flush=True)
    return "answered after the garbage"


@server.tool(annotations=EXTERNAL)
async def add_tool(ctx: Context) -> str:  # type: ignore[type-arg]
    """Add the tool ``extra`` and tell the client the list changed."""

    def extra() -> str:
        """A tool added while the server runs."""
        return "extra"

    server.add_tool(extra, annotations=READ_ONLY)
    await ctx.session.send_tool_list_changed()
    return "added extra"


@server.tool(annotations=EXTERNAL)
def exit_now(code: int = 3) -> str:
    """Write a line to stderr and exit at once."""
    note(f"exit_now {os.getpid()}")
    sys.stderr.write(f"toolbox {os.getpid()} exits with {code}\n")
    sys.stderr.flush()
    os._exit(code)


@server.tool(annotations=READ_ONLY)
def authorization(ctx: Context) -> str:  # type: ignore[type-arg]
    """The Authorization header of the request (over HTTP)."""
    request = ctx.request_context.request
    return str(request.headers.get("authorization")) if request is not None else "no request"


@server.tool(annotations=READ_ONLY)
def environment() -> str:
    """The names of the environment's variables, and TOOLBOX_GREETING's value."""
    return json.dumps({"names": sorted(os.environ), "greeting": os.environ.get("TOOLBOX_GREETING")})


if __name__ == "__main__":
    sys.stderr.write(f"toolbox {os.getpid()} started\n")
    sys.stderr.flush()
    if sys.argv[1:2] == ["--http"]:  # streamable HTTP on 127.0.0.1:PORT, path /mcp
        server.settings.port = int(sys.argv[2])
        server.run("streamable-http")
    else:
        server.run()
