"""``victoria mcp``: the gateway's MCP tools over stdio, for the clients that only start a command.

A stdio MCP server (the SDK's) in front of the gateway's ``/mcp``, reached with the SDK's Streamable
HTTP client and the token of ``VICTORIA_API_TOKEN``: ``tools/list`` is the gateway's list, each
``tools/call`` is made there and its progress notifications come back to the client, and a client's
``notifications/cancelled`` is sent on (which cancels the task of a ``run_task``). The tools are
the gateway's alone (``gateway/mcpserver.py``); nothing here knows one of them.

A gateway that restarted has forgotten the session: its ``404`` makes this command open a new one
and make the call again there (the gateway did not take it). A gateway that cannot be reached at
the start is an error (exit status 1); later, this command tries again every ``RETRY_EVERY``
seconds, and a call made meanwhile waits ``OPEN_WAIT`` seconds at most.

stdout is the protocol's: what this command has to say goes to stderr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import anyio
import httpx
from mcp import ClientSession, McpError, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from victoria import __version__
from victoria.client import CONNECT_TIMEOUT, Gateway
from victoria.gateway.mcpserver import CANCEL_SEND, NAME, cancelled_by_client

READ_TIMEOUT: Final = 120.0  # seconds of silence on a stream from the gateway (it pings every 15 s)
OPEN_WAIT: Final = 30.0  # seconds a call waits for a session with the gateway
RETRY_EVERY: Final = 1.0  # seconds between two tries to open a session with the gateway again
SESSION_GONE: Final = "Session terminated"
"""What the SDK's client says of a request the gateway answered 404: it knows no such session."""

T = TypeVar("T")


def _cause(exc: BaseException) -> BaseException:
    """The first error inside the task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _say(text: str) -> None:
    print(f"victoria: {text}", file=sys.stderr, flush=True)


class Upstream:
    """The gateway's ``/mcp``: one session at a time, opened again once the gateway has forgotten
    it. The connection belongs to ``run()``'s task: the SDK's client runs task groups, which must
    end in the task that began them."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.http = http
        self.instructions: str | None = None
        self._session: ClientSession | None = None
        self._up = asyncio.Event()
        self._lost = asyncio.Event()

    async def run(self) -> None:
        """Keep a session open until cancelled. The first failure to open one is raised."""
        opened_once = False
        while True:
            try:
                async with (
                    streamable_http_client(self.url, http_client=self.http) as (read, write, _),
                    ClientSession(read, write) as session,
                ):
                    with anyio.fail_after(OPEN_WAIT):
                        opened = await session.initialize()
                    self.instructions, self._session, opened_once = opened.instructions, session, True
                    self._lost.clear()
                    self._up.set()
                    await self._lost.wait()
            except Exception as exc:
                if not opened_once:
                    raise
                cause = _cause(exc)
                _say(f"the gateway's MCP server at {self.url}: {type(cause).__name__}: {cause}; trying again")
            self._up.clear()
            self._session = None
            await asyncio.sleep(RETRY_EVERY)

    async def session(self) -> ClientSession:
        with anyio.fail_after(OPEN_WAIT):
            await self._up.wait()
        assert self._session is not None
        return self._session

    async def call(self, what: Callable[[ClientSession], Awaitable[T]]) -> T:
        """``what`` on the session; once more on a new session if the gateway forgot the first one
        (it answered 404: it did not take the request)."""
        session = await self.session()
        try:
            return await what(session)
        except McpError as exc:
            if exc.error.message != SESSION_GONE:
                raise
            if session is self._session:
                self._lost.set()
                self._up.clear()
            return await what(await self.session())


async def serve(gateway: Gateway) -> int:
    """Serve the gateway's tools on stdin and stdout until the client closes them."""
    url = f"{gateway.base}/mcp"
    headers = {"Authorization": f"Bearer {gateway.token}"} if gateway.token else None
    timeout = httpx.Timeout(CONNECT_TIMEOUT, read=READ_TIMEOUT)
    async with httpx.AsyncClient(headers=headers, timeout=timeout) as http:
        upstream = Upstream(url, http)
        keeper = asyncio.create_task(upstream.run(), name="upstream")
        try:
            opened = asyncio.create_task(upstream.session())
            await asyncio.wait({keeper, opened}, return_when=asyncio.FIRST_COMPLETED)
            if not opened.done() or opened.exception() is not None:
                opened.cancel()
                failure = keeper.exception() if keeper.done() else opened.exception()
                cause = _cause(failure) if failure is not None else TimeoutError()
                _say(f"the gateway's MCP server at {url}: {type(cause).__name__}: {cause}")
                return 1
            server = _forwarding(upstream)
            async with stdio_server() as (stdin, stdout):
                await server.run(stdin, stdout, server.create_initialization_options())
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
    return 0


def _forwarding(upstream: Upstream) -> Server[Any, Any]:
    """A server whose every tool is the gateway's, called there."""
    server: Server[Any, Any] = Server(NAME, version=__version__, instructions=upstream.instructions)

    async def list_tools() -> list[types.Tool]:
        return (await upstream.call(lambda session: session.list_tools())).tools

    async def call_tool(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        ctx = server.request_context
        token = ctx.meta.progressToken if ctx.meta is not None else None

        async def report(progress: float, total: float | None, message: str | None) -> None:
            assert token is not None
            await ctx.session.send_progress_notification(
                token, progress, total, message, related_request_id=str(ctx.request_id)
            )

        async def call(session: ClientSession) -> types.CallToolResult:
            # The id the call's request is about to get: call_tool takes it before its first await.
            request_id = session._request_id
            try:
                return await session.call_tool(
                    name, arguments, progress_callback=report if token is not None else None
                )
            except asyncio.CancelledError:
                if cancelled_by_client(ctx):
                    cancelled = types.CancelledNotification(
                        params=types.CancelledNotificationParams(
                            requestId=request_id, reason="cancelled by the client"
                        )
                    )
                    with anyio.move_on_after(CANCEL_SEND, shield=True):
                        await session.send_notification(types.ClientNotification(cancelled))
                raise

        return await upstream.call(call)

    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]  # the SDK's decorator
    server.call_tool(validate_input=False)(call_tool)  # the gateway checks the arguments
    return server
