"""Veronica's tool calls, durable: the LLM runner's pattern, for side effects.

Victoria stores a ``tool_intent`` in the task's fenced history before a call runs. Veronica takes
it from her durable consumer (``veronica``), and:

1. drops it when its outcome is stored already, or the task went on without it (ended, cancelled,
   superseded: ``reads.unwanted_after``);
2. claims it: a ``tool_claim`` on the call's own subject, which takes one message ever. A write
   (``write_file``, ``apply_patch``) is computed first, and its claim holds each file's SHA-256 as
   found just before and as the write leaves it. A claim already there means somebody took the
   call before: Victoria, giving it up (then nothing runs), or an instance of Veronica that died
   while it ran. A call that may run again (``rerun``, the read-only tools) then simply runs. A
   write compares the files now with its claim: all as the write leaves them, it is recorded done
   without writing; all as they were found, nothing of it happened and it is written now; a file
   that is neither is a conflict (somebody else changed it), not overwritten. Any other call is not
   run twice: its outcome says "interrupted: unknown whether it finished", and the model decides;
3. runs it (a command in the sandbox, which dies with her: ``sandbox``'s parent-death signal; a
   write checks right before its rename that the file still has the hash it was computed from);
4. stores its ``tool_outcome`` (one message ever) and says so on ``victoria.result.<task>.<call>``;
5. acknowledges the intent.

A call of an MCP server's tool (``mcp__<server>__<tool>``) takes the same path: its intent carries
the effect and ``rerun`` its annotations give (``tools.from_mcp``), so a call that is not
read-only or idempotent is never made twice; it runs on the server's session
(``actors/veronica/mcp.py``), within ``VICTORIA_MCP_CALL_TIMEOUT``.

A cancel request for the task stops its running calls (a command's tree within 2 s, an MCP call at
once, cancelled on its server too); their outcome says so. Each call Veronica takes is a span
``execute_tool <tool>`` in the task's trace (OpenTelemetry's GenAI conventions).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from victoria.actors.veronica import files
from victoria.actors.veronica.commands import Commands
from victoria.errors import ToolError
from victoria.events import contracts, subjects, tools
from victoria.runtime import fence, reads, tracing
from victoria.runtime.consumer import delivered_event
from victoria.runtime.protocol import parse_ack_subject

if TYPE_CHECKING:
    from victoria.actors.veronica.mcp import McpServers

log = logging.getLogger(__name__)

INTERRUPTED: Final = "interrupted: Veronica stopped while it ran; unknown whether it finished"
EXECUTE_TOOL: Final = "execute_tool"  # gen_ai.operation.name of a tool call's span


@dataclass(frozen=True, slots=True)
class _Write:
    """A write tool's call computed before its claim: the files it changes, and the writing."""

    changes: list[contracts.FileChange]
    """Each file's SHA-256 now and as the write leaves it."""
    write: Callable[[], str]
    """Writes them (blocking), checking each still has its hash; the tool's result."""


@dataclass(frozen=True, slots=True)
class _Call:
    intent: contracts.ToolIntent
    workspace: Path
    write: _Write | None = None


class Executor:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        commands: Commands,
        *,
        instance: str,
        mcp: McpServers | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.commands = commands
        self.instance = instance
        self.mcp = mcp
        """The MCP servers whose tools she runs (None: ``VICTORIA_MCP_CONFIG`` names none)."""
        self.running: dict[str, set[asyncio.Task[contracts.ToolOutcome]]] = defaultdict(set)

    def cancel_task(self, task_id: str) -> None:
        for run in list(self.running.get(task_id, ())):
            log.info("task %s cancelled: stopping its tool call", task_id)
            run.cancel()

    async def handle(self, msg: Msg) -> None:
        intent = await delivered_event(
            self.js, msg, contracts.ToolIntent, consumer="veronica", reason="not a tool_intent event"
        )
        if intent is None:
            return
        ack = parse_ack_subject(msg.reply)
        seq = ack.stream_seq if ack is not None else reads.stream_sequence(msg)
        # A first delivery has no outcome yet: only a claimer stores one, and a claim already
        # there (Victoria's, giving the call up) refuses hers below. One direct get saved a call.
        redelivered = (ack.delivered if ack is not None else reads.delivery_count(msg)) > 1
        if redelivered and await reads.last_tool_outcome(self.js, intent.task_id, intent.call_id):
            await msg.ack()
            return
        unwanted = await reads.unwanted_after(self.js, intent.task_id, seq)
        if unwanted is not None:
            log.info("task %s %s not run: %s", intent.task_id, intent.call_id, unwanted)
            await msg.ack()
            return
        call = _Call(intent, Path(intent.workspace) if intent.workspace else self.commands.config.workspace)
        failed: contracts.ToolOutcome | None = None  # a write that cannot be computed: its error
        prepare = _PREPARE.get(intent.tool)
        if prepare is not None:
            try:
                call = _Call(intent, call.workspace, await asyncio.to_thread(prepare, intent, call.workspace))
            except (ToolError, OSError) as exc:
                failed = self._failed(intent, exc)
        claim = contracts.ToolClaim(
            task_id=intent.task_id,
            call_id=intent.call_id,
            instance=self.instance,
            changes=call.write.changes if call.write is not None else [],
        )
        earlier: contracts.ToolClaim | None = None
        taken_before = not await fence.append_once(
            self.nc, subjects.tool_claim(intent.task_id, intent.call_id), claim
        )
        if taken_before:
            earlier = await reads.last_tool_claim(self.js, intent.task_id, intent.call_id)
            if earlier is not None and earlier.by == "victoria":
                log.info("task %s %s not run: Victoria gave it up", intent.task_id, intent.call_id)
                await msg.ack()
                return
        span = tracing.tracer().start_span(
            f"{EXECUTE_TOOL} {intent.tool}",
            context=tracing.context_from(msg.headers),
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": EXECUTE_TOOL,
                "gen_ai.tool.name": intent.tool,
                "gen_ai.tool.call.id": intent.call_id,
                "gen_ai.tool.type": "function",
                "victoria.task_id": intent.task_id,
            },
        )
        try:
            outcome = await self._taken_before(call, earlier) if taken_before else failed
            if outcome is None:
                outcome = await self._run(call)
            _end(span, outcome)
        finally:
            span.end()
        await self._store(outcome)
        await msg.ack()

    async def _taken_before(
        self, call: _Call, earlier: contracts.ToolClaim | None
    ) -> contracts.ToolOutcome | None:
        """The outcome of a call another instance of Veronica claimed and left without one, or
        None when it is to run now."""
        intent = call.intent
        if earlier is not None and earlier.changes and intent.tool in _PREPARE:
            return await self._write_again(call, earlier.changes)
        if not intent.rerun:
            log.warning(
                "task %s %s: taken before and unfinished; not run again", intent.task_id, intent.call_id
            )
            return self._outcome(intent, ok=False, error=INTERRUPTED, interrupted=True)
        log.info("task %s %s: taken before and unfinished; running it again", intent.task_id, intent.call_id)
        return None

    async def _write_again(
        self, call: _Call, claimed: list[contracts.FileChange]
    ) -> contracts.ToolOutcome | None:
        """A write delivered again after the Veronica that claimed it died: its files compared with
        the claim. All as the write leaves them: done, not written again. All as they were found:
        nothing of it happened, so None (write it now). A file that is neither: a conflict."""
        from victoria.actors.veronica import edit

        intent = call.intent
        began = time.monotonic()
        try:
            now = await asyncio.to_thread(
                lambda: {change.path: edit.current_sha256(call.workspace, change.path) for change in claimed}
            )
        except (ToolError, OSError) as exc:
            return self._failed(intent, exc)
        done = [c.path for c in claimed if now[c.path] == c.after]
        undone = [c.path for c in claimed if now[c.path] == c.before and now[c.path] != c.after]
        changed = [c.path for c in claimed if now[c.path] not in (c.before, c.after)]
        took = time.monotonic() - began
        if changed:
            log.info("task %s %s: %s changed since it was claimed", intent.task_id, intent.call_id, changed)
            return self._outcome(intent, ok=False, error=_conflict(changed), duration=took)
        if not undone:
            log.info("task %s %s: found done; not written again", intent.task_id, intent.call_id)
            outcome = self._outcome(
                intent,
                ok=True,
                output=f"found done: {_names(done)} already as this call leaves "
                f"{'it' if len(done) == 1 else 'them'} (written before Veronica stopped); not written again",
                duration=took,
            )
            return msgspec.structs.replace(outcome, changes=claimed)
        if done:
            log.warning("task %s %s: found half done", intent.task_id, intent.call_id)
            return self._outcome(
                intent,
                ok=False,
                error=f"interrupted: Veronica stopped while it wrote: {_names(done)} written, "
                f"{_names(undone)} not; not finished",
                interrupted=True,
                duration=took,
            )
        if call.write is None or call.write.changes != claimed:
            # Changed between the computing of the write and the look just now.
            return self._outcome(intent, ok=False, error=_conflict(undone), duration=took)
        log.info(
            "task %s %s: not written before Veronica stopped; writing it now", intent.task_id, intent.call_id
        )
        return None

    async def _run(self, call: _Call) -> contracts.ToolOutcome:
        intent = call.intent
        run = asyncio.ensure_future(self._execute(call))
        self.running[intent.task_id].add(run)
        began = time.monotonic()
        try:
            return await run
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if run.cancelled() and current is not None and not current.cancelling():
                return self._outcome(
                    intent,
                    ok=False,
                    error="cancelled: the task was cancelled",
                    duration=time.monotonic() - began,
                )
            raise
        finally:
            self.running[intent.task_id].discard(run)
            if not self.running[intent.task_id]:
                self.running.pop(intent.task_id, None)

    async def _execute(self, call: _Call) -> contracts.ToolOutcome:
        intent = call.intent
        began = time.monotonic()
        tool = tools.BY_NAME.get(intent.tool)
        try:
            if tool is None and intent.tool.startswith(subjects.MCP_TOOL_PREFIX):
                return await self._mcp_call(call)
            if tool is None:
                raise ToolError(f"no tool {intent.tool!r}")
            runner = _RUN.get(tool.name)
            if runner is None:
                raise ToolError(f"{tool.name} is not Veronica's")
            return await runner(self, call)
        except (ToolError, OSError) as exc:
            return self._failed(intent, exc, duration=time.monotonic() - began)

    async def _mcp_call(self, call: _Call) -> contracts.ToolOutcome:
        intent = call.intent
        if self.mcp is None:
            raise ToolError(f"no tool {intent.tool!r}: Veronica runs no MCP servers (VICTORIA_MCP_CONFIG)")
        began = time.monotonic()
        result = await self.mcp.call(intent.tool, intent.args)
        return self._outcome(
            intent,
            ok=result.ok,
            output=result.output,
            error=result.error,
            interrupted=result.interrupted,
            duration=time.monotonic() - began,
        )

    def _failed(
        self, intent: contracts.ToolIntent, exc: ToolError | OSError, *, duration: float = 0.0
    ) -> contracts.ToolOutcome:
        error = str(exc) if isinstance(exc, ToolError) else exc.strerror or str(exc)
        return self._outcome(intent, ok=False, error=error, duration=duration)

    async def _store(self, outcome: contracts.ToolOutcome) -> None:
        stored = await fence.append_once(
            self.nc,
            subjects.tool_outcome(outcome.task_id, outcome.call_id),
            outcome,
            notice=subjects.result_stored(outcome.task_id, outcome.call_id),
        )
        log.log(
            logging.DEBUG if outcome.ok else logging.INFO,
            "task %s %s %s: %s%s",
            outcome.task_id,
            outcome.call_id,
            outcome.tool,
            "ok" if outcome.ok else outcome.error,
            "" if stored else " (an outcome was stored already; this one is dropped)",
        )

    def _outcome(
        self,
        intent: contracts.ToolIntent,
        *,
        ok: bool,
        output: str = "",
        error: str | None = None,
        interrupted: bool = False,
        exit_code: int | None = None,
        duration: float = 0.0,
    ) -> contracts.ToolOutcome:
        return contracts.ToolOutcome(
            task_id=intent.task_id,
            call_id=intent.call_id,
            tool=intent.tool,
            ok=ok,
            output=output,
            error=error,
            interrupted=interrupted,
            exit_code=exit_code,
            duration_s=round(duration, 3),
            digest=hashlib.sha256(output.encode()).hexdigest(),
            instance=self.instance,
        )


def _end(span: Span, outcome: contracts.ToolOutcome) -> None:
    span.set_attribute("victoria.ok", outcome.ok)
    if not outcome.ok:
        span.set_attribute("error.type", "interrupted" if outcome.interrupted else "tool_error")
        span.set_status(Status(StatusCode.ERROR, outcome.error or ""))


def _names(paths: list[str]) -> str:
    return ", ".join(repr(path) for path in paths)


def _conflict(paths: list[str]) -> str:
    from victoria.actors.veronica import edit

    return f"{_names(paths)} {'was' if len(paths) == 1 else 'were'} {edit.CONFLICT}"


def _arg(intent: contracts.ToolIntent, name: str, default: object = None) -> object:
    return intent.args.get(name, default)


def _int(intent: contracts.ToolIntent, name: str) -> int | None:
    value = intent.args.get(name)
    return value if isinstance(value, int) else None


def _str(intent: contracts.ToolIntent, name: str, default: str = "") -> str:
    value = intent.args.get(name)
    return value if isinstance(value, str) else default


async def _read_file(self: Executor, call: _Call) -> contracts.ToolOutcome:
    intent = call.intent
    began = time.monotonic()
    text = await asyncio.to_thread(
        files.read_file,
        call.workspace,
        _str(intent, "path"),
        offset=_int(intent, "offset"),
        limit=_int(intent, "limit"),
    )
    return self._outcome(intent, ok=True, output=text, duration=time.monotonic() - began)


async def _find_files(self: Executor, call: _Call) -> contracts.ToolOutcome:
    from victoria.actors.veronica import search  # pathspec: imported at the first search, not at start

    intent = call.intent
    began = time.monotonic()
    found = await asyncio.to_thread(
        search.find_files, call.workspace, _str(intent, "pattern"), _str(intent, "path", ".")
    )
    return self._outcome(intent, ok=True, output=found.text(), duration=time.monotonic() - began)


async def _grep_search(self: Executor, call: _Call) -> contracts.ToolOutcome:
    from victoria.actors.veronica import search

    intent = call.intent
    began = time.monotonic()
    glob = intent.args.get("glob")
    found = await asyncio.to_thread(
        search.grep_search,
        call.workspace,
        _str(intent, "pattern"),
        _str(intent, "path", "."),
        glob if isinstance(glob, str) else None,
        _int(intent, "max_results"),
    )
    return self._outcome(intent, ok=True, output=found.text(), duration=time.monotonic() - began)


def _prepare_write_file(intent: contracts.ToolIntent, workspace: Path) -> _Write:
    from victoria.actors.veronica import edit

    prepared = edit.prepare_write(workspace, _str(intent, "path"), _str(intent, "content"))
    change = contracts.FileChange(
        path=prepared.target.path, before=prepared.before_sha256, after=prepared.after_sha256
    )
    return _Write([change], lambda: prepared.write().text())


def _prepare_apply_patch(intent: contracts.ToolIntent, workspace: Path) -> _Write:
    from victoria.actors.veronica import patch  # unidiff: imported at the first patch, not at start

    prepared = patch.prepare_patch(workspace, _str(intent, "patch"))
    changes = [
        contracts.FileChange(path=f.path, before=f.before_sha256, after=f.after_sha256)
        for f in prepared.files
    ]
    return _Write(changes, lambda: prepared.write().text())


async def _written(self: Executor, call: _Call) -> contracts.ToolOutcome:
    """A write tool's call: as computed before its claim (computed now when it was not)."""
    began = time.monotonic()
    write = call.write
    if write is None:
        write = await asyncio.to_thread(_PREPARE[call.intent.tool], call.intent, call.workspace)
    text = await asyncio.to_thread(write.write)
    outcome = self._outcome(call.intent, ok=True, output=text, duration=time.monotonic() - began)
    return msgspec.structs.replace(outcome, changes=write.changes)


async def _list_directory(self: Executor, call: _Call) -> contracts.ToolOutcome:
    began = time.monotonic()
    listing = await asyncio.to_thread(
        files.scan_directory, call.workspace, str(_arg(call.intent, "path", "."))
    )
    return self._outcome(call.intent, ok=True, output=listing.text(), duration=time.monotonic() - began)


async def _run_command(self: Executor, call: _Call) -> contracts.ToolOutcome:
    intent = call.intent
    timeout = _arg(intent, "timeout_s")
    done = await self.commands.run(
        str(_arg(intent, "command", "")),
        cwd=str(_arg(intent, "cwd", ".")),
        timeout_s=float(timeout) if isinstance(timeout, int | float) else None,
        workspace=call.workspace,
        approved=bool(intent.approved_by),
    )
    lines = [f"exit code: {done.exit_code}" if done.exit_code is not None else f"ended: {done.reason}"]
    if done.stdout:
        lines.append("stdout:\n" + done.stdout)
    if done.stderr:
        lines.append("stderr:\n" + done.stderr)
    return self._outcome(
        intent,
        ok=done.exit_code == 0,
        output="\n".join(lines),
        error=None if done.exit_code == 0 else (done.reason or f"exit code {done.exit_code}"),
        exit_code=done.exit_code,
        duration=done.duration_s,
    )


_RUN: Final[dict[str, Callable[[Executor, _Call], Awaitable[contracts.ToolOutcome]]]] = {
    tools.READ_FILE.name: _read_file,
    tools.LIST_DIRECTORY.name: _list_directory,
    tools.FIND_FILES.name: _find_files,
    tools.GREP_SEARCH.name: _grep_search,
    tools.WRITE_FILE.name: _written,
    tools.APPLY_PATCH.name: _written,
    tools.RUN_COMMAND.name: _run_command,
}
"""Veronica's tools by name, as durable calls: a tool of hers that is not here fails the test of
the table."""

_PREPARE: Final[dict[str, Callable[[contracts.ToolIntent, Path], _Write]]] = {
    tools.WRITE_FILE.name: _prepare_write_file,
    tools.APPLY_PATCH.name: _prepare_apply_patch,
}
"""The write tools: each call computed before its claim (blocking; run in a thread), so that the
claim holds its files' hashes."""
