"""Veronica: the helper agent. Answers file requests from her workspace, with no model call, and
runs the tasks' tool calls, durably (``executor``), her MCP servers' among them (``mcp``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from victoria.actors.veronica import files
from victoria.actors.veronica.commands import Commands
from victoria.actors.veronica.executor import Executor
from victoria.errors import SandboxUnavailable, ToolError
from victoria.events import subjects, tools
from victoria.events.codec import encode, files_request_decoder
from victoria.events.contracts import FilesReply, FilesRequest
from victoria.runtime import tracing
from victoria.runtime.base import Actor
from victoria.runtime.config import Config
from victoria.runtime.consumer import WorkConsumer
from victoria.runtime.context import current_task_id, current_trace_id

if TYPE_CHECKING:
    from victoria.actors.veronica.mcp import McpServers

log = logging.getLogger(__name__)


class Veronica(Actor):
    name: ClassVar[str] = "veronica"

    def __init__(self, nc: NATS, config: Config, *, restarts: int = 0, fenced: bool = True) -> None:
        super().__init__(nc, config, restarts=restarts, fenced=fenced)
        self._sub: Subscription | None = None
        self._busy = 0
        self.commands = Commands(config)
        self.mcp = _mcp_servers(self.js, config)
        self.executor = Executor(nc, self.js, self.commands, instance=self.instance, mcp=self.mcp)
        self._finding: asyncio.Task[None] | None = None
        self.consumers: list[WorkConsumer] = []
        self._cancels: Subscription | None = None

    async def on_start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.VERONICA_FILES, queue="veronica", cb=self._on_request)
        if self.mcp is not None:
            self.mcp.start()  # each server started and watched in the background
        self._finding = asyncio.create_task(self._find_sandbox())  # a trial command, off the start
        self._cancels = await self.nc.subscribe(subjects.all_tasks_of_kind("cancel"), cb=self._on_cancel)
        self.consumers = await self.consume_tasks(
            durable="veronica",
            kind="tool_intent",
            concurrency=self.config.concurrency,
            handler=self.executor.handle,
        )

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            task_id = subjects.task_id_of(msg.subject)
        except ValueError:
            return
        self.executor.cancel_task(task_id)

    async def _find_sandbox(self) -> None:
        with contextlib.suppress(SandboxUnavailable):  # logged, and in the heartbeat
            await self.commands.ready()

    def health(self) -> tuple[str, str]:
        return self.commands.health()

    async def on_stop(self) -> None:
        await asyncio.gather(*(consumer.stop() for consumer in self.consumers))
        if self._cancels is not None:
            await self._cancels.unsubscribe()
        if self._finding is not None:
            self._finding.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self.mcp is not None:
            await self.mcp.stop()

    def in_flight(self) -> int:
        return self._busy + sum(len(runs) for runs in self.executor.running.values())

    async def _on_request(self, msg: Msg) -> None:
        self._busy += 1
        try:
            try:
                request = files_request_decoder.decode(msg.data)
            except msgspec.DecodeError as exc:
                log.warning("bad files request on %s: %s", msg.subject, exc)
                reply = FilesReply(ok=False, error=f"bad request: {exc}")
            else:
                span = tracing.tracer().start_span(
                    f"files {request.op}",
                    context=tracing.context_from(msg.headers),
                    kind=SpanKind.SERVER,
                    attributes={"victoria.task_id": request.task_id or "", "victoria.path": request.path},
                )
                task_token = current_task_id.set(request.task_id)
                trace_token = current_trace_id.set(
                    tracing.trace_id_in((msg.headers or {}).get("traceparent"))
                )
                try:
                    # File I/O is blocking: keep it off the event loop.
                    reply = await asyncio.to_thread(self.handle, request)
                    span.set_attribute("victoria.ok", reply.ok)
                    log.log(
                        logging.DEBUG if reply.ok else logging.INFO,
                        "files %s %r for task %s: %s",
                        request.op,
                        request.path,
                        request.task_id,
                        "ok" if reply.ok else reply.error,
                    )
                finally:
                    span.end()
                    current_task_id.reset(task_token)
                    current_trace_id.reset(trace_token)
            if msg.reply:
                await msg.respond(encode(reply))
        finally:
            self._busy -= 1

    def handle(self, request: FilesRequest) -> FilesReply:
        """The reply to one request; a refusal or a failure is a reply too (``ok=False``), never an
        exception: the error's text is the note the model gets (rules in ``files.py``)."""
        # A task of one of the users' projects works in that project's workspace.
        workspace = Path(request.workspace) if request.workspace else self.config.workspace
        try:
            return _RUN[tools.by_op(request.op).name](workspace, request)
        except ToolError as exc:
            return FilesReply(ok=False, error=str(exc))
        except OSError as exc:
            return FilesReply(ok=False, error=f"{request.path!r}: {exc.strerror or exc}")
        except Exception as exc:  # a bug here must not leave the task waiting for a reply
            log.exception("files %s %r failed", request.op, request.path)
            return FilesReply(ok=False, error=f"{request.path!r}: Veronica failed: {type(exc).__name__}")


def _mcp_servers(js: JetStreamContext, config: Config) -> McpServers | None:
    """The MCP servers of ``VICTORIA_MCP_CONFIG``; the SDK is loaded only when there are some."""
    if not config.mcp_servers:
        return None
    from victoria.actors.veronica.mcp import McpServers

    return McpServers(js, config)


def _read(workspace: Path, request: FilesRequest) -> FilesReply:
    return FilesReply(ok=True, output=files.read_file(workspace, request.path))


def _list(workspace: Path, request: FilesRequest) -> FilesReply:
    listing = files.scan_directory(workspace, request.path, request.limit)
    return FilesReply(ok=True, output=listing.text(), entries=listing.names)


_RUN: Final[dict[str, Callable[[Path, FilesRequest], FilesReply]]] = {
    tools.READ_FILE.name: _read,
    tools.LIST_DIRECTORY.name: _list,
}
"""Veronica's tools, by name: a tool of hers that is not here fails the test of the table."""
