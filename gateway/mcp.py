"""``/mcp``: the route of the gateway's MCP server, which answers ``POST``, ``GET`` and ``DELETE``
there (``gateway/mcpserver.py``: the tools, on the official SDK's Streamable HTTP transport).

The server is made, and the SDK loaded, on the first request to ``/mcp``: a gateway that nobody
asks over MCP never imports it. Its sessions run in a task of their own until the gateway stops
(``McpEndpoint.stop``, before uvicorn waits for the open streams to end). The route sits behind
``RequireToken`` like every other: with a token configured, no request reaches it without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from victoria.gateway.http import unavailable

if TYPE_CHECKING:
    from victoria.gateway.backend import GatewayState
    from victoria.gateway.mcpserver import McpServer

log = logging.getLogger(__name__)

START_WAIT: Final = 10.0  # seconds a first request waits for the MCP server to start


class McpHeaders(msgspec.Struct, kw_only=True):
    """The headers of the Streamable HTTP transport that ``/mcp`` reads."""

    session: (
        Annotated[
            str,
            msgspec.Meta(
                description="The session, as the answer to `initialize` named it; absent on `initialize`"
            ),
        ]
        | None
    ) = msgspec.field(default=None, name="Mcp-Session-Id")
    version: (
        Annotated[str, msgspec.Meta(description="The protocol version agreed at `initialize`")] | None
    ) = msgspec.field(default=None, name="MCP-Protocol-Version")


class JsonRpcError(msgspec.Struct, kw_only=True):
    """A JSON-RPC error object, as the transport answers a request it refuses."""

    code: int
    message: str
    data: Any = None


class JsonRpcMessage(msgspec.Struct, kw_only=True):
    """A JSON-RPC 2.0 message: a request, a notification, a result or an error (MCP's schema says
    which ``method`` takes which ``params``)."""

    jsonrpc: str
    id: str | int | None = None
    method: str | None = None
    params: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: JsonRpcError | None = None


class McpEndpoint:
    """The gateway's MCP server, started on the first request and stopped with the gateway."""

    def __init__(self, state: GatewayState, *, host: str) -> None:
        self.state = state
        self.host = host
        self._server: McpServer | None = None
        self._ready: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def _started(self) -> McpServer | None:
        if self._stopped:
            return None
        if self._server is None:
            from victoria.gateway.mcpserver import McpServer  # the SDK, loaded when first asked for

            server = McpServer(self.state, host=self.host)
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(server.serve(self._ready), name="mcp")
            self._task.add_done_callback(_ended)
            self._server = server
            log.info("MCP server started on /mcp")
        assert self._ready is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), START_WAIT)
        except TimeoutError:
            return None
        if self._task is None or self._task.done():
            return None
        return self._server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = await self._started()
        if server is None:
            await unavailable("the MCP server is not running")(scope, receive, send)
            return
        await server.sessions.handle_request(scope, receive, send)

    async def stop(self) -> None:
        """End every session (their calls are cancelled; the tasks go on), once."""
        self._stopped = True
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the MCP server stopped: %s", error, exc_info=error)


class _Handover(Response):
    """Hands the request, unread, to an ASGI app: the SDK answers it (JSON, or a stream)."""

    def __init__(self, app: McpEndpoint) -> None:  # no body, status or headers of its own
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def endpoint(request: Request, state: GatewayState) -> Response:
    """``/mcp``: Victoria as an MCP server, on the Streamable HTTP transport of the current MCP
    specification. ``POST`` one JSON-RPC message (`initialize` first; then with its
    `Mcp-Session-Id`), answered with server-sent events that carry the call's progress
    notifications before its result (a refusal is JSON); ``GET`` opens the server's own stream of the session;
    ``DELETE`` ends the session. The tools: `run_task`, `start_task`, `task_status`,
    `cancel_task`, `decide_approval`, `list_models`."""
    return _Handover(state.mcp)
