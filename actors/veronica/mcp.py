"""Veronica's MCP servers: each server of ``VICTORIA_MCP_CONFIG`` run, watched, and called.

Each server has a supervisor task of its own (``_Server.run``), started off the actor's start:

1. it starts the server: a stdio server as a child process (the MCP SDK's ``stdio_client``, which
   puts it in a session of its own; on Linux it also gets SIGKILL when Veronica dies, so a
   ``kill -9`` of her leaves no server behind), with nothing of her environment but the SDK's safe
   variables and the server's ``env``, its stderr kept (the last ``STDERR_LINES`` lines); an HTTP
   server is connected to (``streamable_http_client``, with its ``headers``);
2. initializes the session and lists its tools (every page) within ``START_TIMEOUT``;
3. records it in the bucket ``victoria_mcp`` (an ``McpServerState`` under ``<server>.<instance>``)
   at every change and every ``MCP_REFRESH`` seconds: the agent offers the tools of the servers
   that are up, ``/tools`` lists them, ``/services`` shows each server as a dependency;
4. lists its tools again when the server says they changed (``notifications/tools/list_changed``),
   and pings it every ``MCP_REFRESH`` seconds while no call is in flight;
5. when the session ends (the process exits, its stdout closes, the connection fails, a ping is not
   answered within ``PING_TIMEOUT``) or a start fails: the calls in flight end "interrupted", the
   record says ``restarting`` and why, and after a backoff (``BACKOFF_FIRST`` doubling to
   ``BACKOFF_MAX``; back to the first after ``STABLE`` seconds up) the server is started again. A
   server whose entry names a variable that is not set is ``down``, and not tried again.

A line on a stdio server's stdout that is not JSON-RPC is dropped (logged once per session, kept
in the stderr lines) and the session goes on: a server that prints to stdout still works.

``McpServers.call`` runs one call of a tool on its server's session, within
``VICTORIA_MCP_CALL_TIMEOUT``; a call cancelled (the task was) or timed out is cancelled on the
server too (``notifications/cancelled``). Its result is the tool result's text (its
``structuredContent`` as JSON when it has no text); a result with ``isError`` is a failed call.
Each server has its own session and task, so a server that hangs or writes garbage delays only the
calls of its own tools. Whether a call may run again after Veronica dies is the tool's ``rerun``
(``tools.from_mcp``), kept by the executor's claim: this module runs what it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import httpx
import mcp.types as types
import nats.errors
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, McpError, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from victoria import __version__
from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import McpServerState, McpToolInfo
from victoria.runtime import mcpservers
from victoria.runtime.config import Config
from victoria.runtime.mcpservers import McpServer
from victoria.runtime.reads import MCP_REFRESH
from victoria.runtime.sandbox import PR_SET_PDEATHSIG

log = logging.getLogger(__name__)

STDERR_LINES: Final = 20
"""Lines of a server's stderr kept for ``/services``."""
LINE_CHARS: Final = 300  # characters of one kept line
START_TIMEOUT: Final = 30.0  # seconds: initialize and the first tools/list
PING_TIMEOUT: Final = 10.0  # seconds an idle server has to answer a ping
BACKOFF_FIRST: Final = 0.5  # seconds before the first restart
BACKOFF_MAX: Final = 30.0  # seconds, the longest wait between two starts
STABLE: Final = 60.0  # seconds up after which the backoff starts again from the first
STOP_TIMEOUT: Final = 5.0  # seconds the servers have to end at Veronica's stop
MAX_PAGES: Final = 100  # pages of tools/list read at most
OUTPUT_CHARS: Final = 65536  # characters of a result kept for the model
HTTP_TIMEOUT: Final = httpx.Timeout(30.0, read=300.0)  # the SDK's: its GET stream stays open
_LAUNCH: Final = (
    # Linux: the server gets SIGKILL when Veronica dies; then it becomes the command (execvp).
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    sys.stderr.write(f'{sys.argv[2]}: {exc.strerror}\\n')\n"
    "    sys.exit(127)\n"
)
Status = Literal["starting", "up", "restarting", "down"]


@dataclass(frozen=True, slots=True)
class McpResult:
    """What one call gave: the output for the model, or why it failed."""

    ok: bool
    output: str = ""
    error: str | None = None
    interrupted: bool = False
    """The server ended while the call was in flight: unknown whether it finished."""


class _Ended(Exception):
    """A session ends: the reason is the text."""


class _QuietParseErrors(logging.Filter):
    """The SDK logs each line of stdout that is not JSON-RPC with its traceback; ``_Server`` says so
    itself, once per session, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to parse JSONRPC message")


class McpServers:
    """The MCP servers of one instance of Veronica: ``start()`` (it returns at once), ``call()``,
    ``stop()``. ``environ`` is where ``${VAR}`` of the config is read from (the process's)."""

    def __init__(
        self, js: JetStreamContext, config: Config, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self.js = js
        self.config = config
        self.instance = config.instance
        self.environ = os.environ if environ is None else environ
        self.servers = {spec.name: _Server(spec, self) for spec in config.mcp_servers}
        self._tasks: list[asyncio.Task[None]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._kv: KeyValue | None = None
        self._started = False

    def start(self) -> None:
        """Start each server's supervisor and the recorder, in the background."""
        if self._started:
            return
        self._started = True
        quiet = logging.getLogger("mcp.client.stdio")
        if not any(isinstance(f, _QuietParseErrors) for f in quiet.filters):
            quiet.addFilter(_QuietParseErrors())
        self._recorder = asyncio.create_task(self._record_loop(), name="mcp-records")
        self.changed()  # recorded "starting" at once
        for server in self.servers.values():
            self._tasks.append(asyncio.create_task(server.run(), name=f"mcp-{server.spec.name}"))

    async def stop(self) -> None:
        """End every session (a stdio server's stdin is closed, then it is terminated if it does not
        exit: the SDK's sequence), record the servers down, stop recording."""
        if not self._started:
            return
        self._started = False
        for server in self.servers.values():
            server.stop()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._recorder is not None:
            self._recorder.cancel()
            await asyncio.gather(self._recorder, return_exceptions=True)
        for server in self.servers.values():
            server.set("down", "Veronica stopped")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self._record_all()

    def server_of(self, tool: str) -> _Server | None:
        """The server whose tool ``tool`` (``mcp__<server>__<tool>``) is: of the servers whose
        names fit (a name may hold ``__``), the one that lists it, else the longest name."""
        fitting = [s for name, s in self.servers.items() if tool.startswith(subjects.mcp_tool(name, ""))]
        listing = [s for s in fitting if s.info(tool) is not None]
        return max(listing or fitting, key=lambda s: len(s.spec.name), default=None)

    async def call(self, tool: str, args: Mapping[str, Any]) -> McpResult:
        """One call of ``tool`` with ``args``, within the config's call timeout."""
        server = self.server_of(tool)
        if server is None:
            configured = ", ".join(self.servers) or "none"
            return McpResult(
                ok=False, error=f"no MCP server of Veronica has {tool!r} (servers: {configured})"
            )
        return await server.call(tool, dict(args), timeout=self.config.mcp_call_timeout)

    def changed(self) -> None:
        self._changed.set()

    async def _record_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MCP_REFRESH):
                    await self._changed.wait()
            self._changed.clear()
            await self._record_all()

    async def _record_all(self) -> None:
        try:
            if self._kv is None:
                self._kv = await self.js.key_value(subjects.MCP_BUCKET)
            for server in list(self.servers.values()):
                await self._kv.put(subjects.mcp_key(server.spec.name, self.instance), encode(server.state()))
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("MCP servers not recorded in %s: %s", subjects.MCP_BUCKET, exc)


class _Server:
    """One server: its supervisor (``run``), its session while it is up, and its record."""

    def __init__(self, spec: McpServer, owner: McpServers) -> None:
        self.spec = spec
        self.owner = owner
        self.status: Status = "starting"
        self.reason = ""
        self.tools: list[McpToolInfo] = []
        """As last listed; kept while it restarts, for the errors' names."""
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self.restarts = 0
        self.session: ClientSession | None = None
        self.calls: set[asyncio.Task[types.CallToolResult]] = set()
        self._cancels: set[asyncio.Task[None]] = set()
        self._poke = asyncio.Event()
        self._stopping = False
        self._ended: str | None = None
        self._relist = False
        self._garbage = 0
        self._counted = False

    def state(self) -> McpServerState:
        return McpServerState(
            server=self.spec.name,
            instance=self.owner.instance,
            transport=self.spec.transport,
            target=self.spec.target,
            status=self.status,
            reason=self.reason,
            tools=list(self.tools),
            stderr=list(self.stderr),
            restarts=self.restarts,
            at=time.time(),
        )

    def set(self, status: Status, reason: str = "") -> None:
        if (status, reason) != (self.status, self.reason):
            self.status, self.reason = status, reason
            self.owner.changed()

    def _restarting(self, reason: str) -> None:
        self._counted = True
        self.restarts += 1
        self.set("restarting", reason)

    def stop(self) -> None:
        self._stopping = True
        self._poke.set()

    # --- the supervisor ------------------------------------------------------------------------
    async def run(self) -> None:
        name = self.spec.name
        delay = BACKOFF_FIRST
        while not self._stopping:
            began = time.monotonic()
            try:
                expanded = mcpservers.expand(self.spec, self.owner.environ)
            except mcpservers.UnsetVariable as exc:
                log.warning("MCP server %s not started: %s", name, exc)
                self.set("down", str(exc))
                return
            try:
                reason = await self._session(expanded)
            except Exception as exc:  # an HTTP server's error says more than the end of its stream
                stdio = self.spec.transport == "stdio"
                reason = (self._ended if stdio else None) or _describe(exc)
            self.session = None
            if self._stopping:
                return
            if time.monotonic() - began >= STABLE:
                delay = BACKOFF_FIRST
            if not self._counted:
                self._restarting(reason)
            log.warning("MCP server %s ended: %s; starting it again in %gs", name, reason, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    while not self._stopping:
                        self._poke.clear()
                        await self._poke.wait()
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, expanded: mcpservers.Expanded) -> str:
        """Start the server and serve it until its session ends: why it ended."""
        self._ended, self._relist, self._garbage, self._counted = None, False, 0, False
        async with contextlib.AsyncExitStack() as stack:
            if self.spec.transport == "stdio":
                source, write = await stack.enter_async_context(self._stdio(expanded))
            else:
                source, write = await stack.enter_async_context(self._http(expanded))
            relayed, read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
            for stream in (source, write, relayed, read):  # the relay's and the session's to close,
                stack.push_async_callback(stream.aclose)  # but a failed start may end them first
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)
            group.start_soon(self._relay, source, relayed)
            session = await stack.enter_async_context(
                ClientSession(
                    read,
                    write,
                    message_handler=self._on_message,
                    logging_callback=self._on_log,
                    client_info=types.Implementation(name="victoria", version=__version__),
                )
            )
            try:
                with anyio.fail_after(START_TIMEOUT):
                    started = await session.initialize()
                    # A server without tools (only resources, prompts) has none to list.
                    has_tools = started.capabilities.tools is not None
                    self.tools = await _list_tools(session) if has_tools else []
            except TimeoutError:
                raise _Ended(self._ended or f"no answer to initialize within {START_TIMEOUT:g}s") from None
            except McpError as exc:
                raise _Ended(self._ended or f"initialize failed: {exc.error.message}") from None
            self.session = session
            log.info("MCP server %s up: %d tools", self.spec.name, len(self.tools))
            self.set("up")
            self.owner.changed()
            try:
                reason = await self._serve(session)
                if not self._stopping:
                    self._restarting(reason)  # before the calls in flight say why they ended
            finally:
                self.session = None
                self._end_calls()  # also when the transport failed: its error comes out of the stack
            return reason

    async def _serve(self, session: ClientSession) -> str:
        while True:
            timed_out = False
            try:
                with anyio.fail_after(MCP_REFRESH):
                    await self._poke.wait()
            except TimeoutError:
                timed_out = True
            self._poke.clear()
            if self._stopping:
                return "Veronica stopped"
            if self._ended is not None:
                return self._ended
            if self._relist:
                self._relist = False
                try:
                    with anyio.fail_after(PING_TIMEOUT):
                        self.tools = await _list_tools(session)
                except (TimeoutError, McpError) as exc:
                    return f"tools/list failed: {_describe(exc)}"
                log.info("MCP server %s: tools changed, %d now", self.spec.name, len(self.tools))
                self.owner.changed()
            elif timed_out and not self.calls:
                try:
                    with anyio.fail_after(PING_TIMEOUT):
                        await session.send_ping()
                except TimeoutError:
                    return f"no answer to a ping within {PING_TIMEOUT:g}s"
                except McpError as exc:
                    return self._ended or f"ping failed: {exc.error.message}"

    def _end_calls(self) -> None:
        for inner in list(self.calls):
            inner.cancel()

    @contextlib.asynccontextmanager
    async def _stdio(
        self, expanded: mcpservers.Expanded
    ) -> AsyncIterator[
        tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
    ]:
        path = expanded.env.get("PATH", os.environ.get("PATH", os.defpath))
        found = shutil.which(expanded.command, path=path)
        if found is None:
            raise _Ended(f"command not found: {expanded.command}")
        command, args = found, list(expanded.args)
        if sys.platform.startswith("linux"):
            command, args = sys.executable, ["-I", "-S", "-c", _LAUNCH, str(os.getpid()), found, *args]
        params = StdioServerParameters(command=command, args=args, env=expanded.env, cwd=expanded.cwd)
        read_fd, write_fd = os.pipe()
        errlog = os.fdopen(write_fd, "w")
        tail = asyncio.create_task(self._read_stderr(read_fd))
        try:
            async with stdio_client(params, errlog=errlog) as streams:
                errlog.close()  # the server has its own copy: its end is the pipe's end
                yield streams
        finally:
            if not errlog.closed:
                errlog.close()
            try:
                await asyncio.wait({tail}, timeout=1.0)  # its last lines
            finally:
                tail.cancel()  # a child of the server may still hold its stderr

    @contextlib.asynccontextmanager
    async def _http(
        self, expanded: mcpservers.Expanded
    ) -> AsyncIterator[
        tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
    ]:
        async with (
            httpx.AsyncClient(headers=expanded.headers, timeout=HTTP_TIMEOUT) as client,
            streamable_http_client(expanded.url, http_client=client) as (read, write, _),
        ):
            # One turn of the loop, so that the SDK's writer task starts, and holds (and at its end
            # closes) its end of the write stream: cancelled before its first step, it would leave
            # that end to the garbage collector, unclosed (a session that fails at once).
            await asyncio.sleep(0)
            yield read, write

    async def _read_stderr(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        rest = b""
        try:
            while chunk := await reader.read(65536):
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    self._keep(line.decode(errors="replace"))
                rest = rest[-LINE_CHARS * 4 :]
            if rest:
                self._keep(rest.decode(errors="replace"))
        finally:
            transport.close()

    def _keep(self, line: str) -> None:
        line = line.rstrip()
        if line:
            log.debug("MCP server %s: %s", self.spec.name, line)
            self.stderr.append(line[:LINE_CHARS])

    async def _relay(
        self,
        source: MemoryObjectReceiveStream[SessionMessage | Exception],
        sink: MemoryObjectSendStream[SessionMessage | Exception],
    ) -> None:
        """Pass the transport's messages on to the session, dropping what is not JSON-RPC; its end
        is the session's end."""
        try:
            async with sink:
                async for message in source:
                    if isinstance(message, Exception):
                        self._not_json_rpc(message)
                        continue
                    await sink.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        finally:
            if self._ended is None:
                self._ended = (
                    "its process ended" if self.spec.transport == "stdio" else "the connection ended"
                )
            self._poke.set()

    def _not_json_rpc(self, exc: Exception) -> None:
        self._garbage += 1
        errors = getattr(exc, "errors", None)
        found = errors()[0].get("input") if callable(errors) and errors() else None
        text = found if isinstance(found, str) else str(exc).splitlines()[0]
        self.stderr.append(f"[stdout, not JSON-RPC] {text}"[:LINE_CHARS])
        self.owner.changed()
        log.log(
            logging.WARNING if self._garbage == 1 else logging.DEBUG,
            "MCP server %s wrote a line that is not JSON-RPC (dropped): %.200s",
            self.spec.name,
            text,
        )

    async def _on_message(
        self,
        message: Any,
    ) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ToolListChangedNotification
        ):
            self._relist = True
            self._poke.set()

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        log.debug("MCP server %s logs (%s): %.300s", self.spec.name, params.level, params.data)

    # --- calls ---------------------------------------------------------------------------------
    async def call(self, tool: str, args: dict[str, Any], *, timeout: float) -> McpResult:
        name = self.spec.name
        session = self.session
        if self.status != "up" or session is None:
            return McpResult(ok=False, error=self._not_up())
        info = self.info(tool)
        if info is None:
            return McpResult(ok=False, error=f"MCP server {name} has no tool {tool!r} now")
        sent: list[int] = []
        inner = asyncio.ensure_future(_call_tool(session, info.name, args, sent))
        self.calls.add(inner)
        try:
            async with asyncio.timeout(timeout):
                result = await inner
        except TimeoutError:
            self._cancel_on_server(session, sent, "timed out")
            log.info("MCP server %s: %s timed out after %gs", name, info.name, timeout)
            return McpResult(
                ok=False,
                error=f"timed out: MCP server {name} did not answer {info.name} within {timeout:g}s; "
                "the call was cancelled (unknown whether it did anything)",
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if inner.cancelled() and current is not None and not current.cancelling():
                return self._interrupted(info.name)
            self._cancel_on_server(session, sent, "the task was cancelled")
            raise
        except McpError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                return self._interrupted(info.name)
            return McpResult(ok=False, error=f"MCP server {name}: {exc.error.message}")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return self._interrupted(info.name)
        except Exception as exc:  # a result the SDK refuses (its output schema), and the like
            return McpResult(ok=False, error=f"MCP server {name}: {type(exc).__name__}: {exc}")
        finally:
            self.calls.discard(inner)
        return _result(result)

    def _cancel_on_server(self, session: ClientSession, sent: list[int], reason: str) -> None:
        if not sent:
            return
        params = types.CancelledNotificationParams(requestId=sent[0], reason=reason)

        async def send() -> None:
            with contextlib.suppress(Exception), anyio.fail_after(2.0):
                await session.send_notification(
                    types.ClientNotification(types.CancelledNotification(params=params))
                )

        task = asyncio.ensure_future(send())
        self._cancels.add(task)  # held until sent
        task.add_done_callback(self._cancels.discard)

    def info(self, tool: str) -> McpToolInfo | None:
        """Its tool the model calls ``tool``, as last listed."""
        return next((t for t in self.tools if subjects.mcp_tool(self.spec.name, t.name) == tool), None)

    def _not_up(self) -> str:
        said = f"MCP server {self.spec.name} is {self.status}"
        return f"{said}: {self.reason}" if self.reason else said

    def _interrupted(self, tool: str) -> McpResult:
        why = self._ended or "its session ended"
        return McpResult(
            ok=False,
            error=f"interrupted: MCP server {self.spec.name} ended during the call of {tool} ({why}); "
            "unknown whether it finished. The server is being started again",
            interrupted=True,
        )


async def _list_tools(session: ClientSession) -> list[McpToolInfo]:
    found: list[McpToolInfo] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await session.list_tools(
            params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
        )
        found.extend(_info(tool) for tool in page.tools)
        cursor = page.nextCursor
        if not cursor:
            break
    return found


def _info(tool: types.Tool) -> McpToolInfo:
    hints = tool.annotations or types.ToolAnnotations()
    return McpToolInfo(
        name=tool.name,
        description=tool.description or "",
        input_schema=dict(tool.inputSchema),
        read_only=bool(hints.readOnlyHint),
        destructive=hints.destructiveHint is not False,
        idempotent=bool(hints.idempotentHint),
        open_world=hints.openWorldHint is not False,
    )


async def _call_tool(
    session: ClientSession, tool: str, args: dict[str, Any], sent: list[int]
) -> types.CallToolResult:
    # The id the request goes with, for notifications/cancelled: send_request takes it from here
    # before its first await, and nothing runs in between (the SDK sends no cancel of its own).
    sent.append(session._request_id)
    return await session.call_tool(tool, args)


def _result(result: types.CallToolResult) -> McpResult:
    parts: list[str] = []
    for block in result.content:
        match block:
            case types.TextContent(text=text):
                parts.append(text)
            case types.ImageContent(mimeType=mime) | types.AudioContent(mimeType=mime):
                parts.append(f"[{block.type} {mime}, not shown]")
            case types.ResourceLink(uri=uri):
                parts.append(f"[resource {uri}]")
            case types.EmbeddedResource(resource=types.TextResourceContents(text=text)):
                parts.append(text)
            case types.EmbeddedResource(resource=resource):
                parts.append(f"[resource {resource.uri}, {resource.mimeType or 'binary'}, not shown]")
    text = "\n".join(parts)
    if not text.strip() and result.structuredContent is not None:
        text = json.dumps(result.structuredContent, ensure_ascii=False)
    if len(text) > OUTPUT_CHARS:
        text = (
            text[:OUTPUT_CHARS] + f"\n[cut: only the first {OUTPUT_CHARS} of {len(text)} characters are kept]"
        )
    if result.isError:
        return McpResult(ok=False, error=text or "the tool said it failed")
    return McpResult(ok=True, output=text)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    if isinstance(exc, _Ended):
        return str(exc)
    if isinstance(exc, McpError):
        return exc.error.message
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, OSError | TimeoutError) else f"{type(exc).__name__}: {text}"
