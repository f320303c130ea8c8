"""Veronica's tool calls, durable: the LLM runner's pattern, for side effects.

Victoria stores a ``tool_intent`` in the task's fenced history before a call runs. Veronica takes
it from her durable consumer (``veronica``), and:

1. drops it when its outcome is stored already, or the task went on without it (ended, cancelled,
   superseded: ``reads.unwanted_after``);
2. claims it: a ``tool_claim`` on the call's own subject, which takes one message ever. A claim
   already there means somebody took the call before: Victoria, giving it up (then nothing runs), or
   an instance of Veronica that died while it ran. A call that may run again (``rerun``, the
   read-only tools) then simply runs; any other is not run twice: its outcome says "interrupted:
   unknown whether it finished", and the model decides;
3. runs it (a command in the sandbox, which dies with her: ``sandbox``'s parent-death signal);
4. stores its ``tool_outcome`` (one message ever) and says so on ``victoria.result.<task>.<call>``;
5. acknowledges the intent.

A cancel request for the task stops its running calls (a command's tree within 2 s); their
outcome says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind

from victoria.actors.veronica import files
from victoria.actors.veronica.commands import Commands
from victoria.errors import ToolError
from victoria.events import contracts, subjects, tools
from victoria.runtime import fence, reads, tracing
from victoria.runtime.consumer import delivered_event
from victoria.runtime.protocol import parse_ack_subject

log = logging.getLogger(__name__)

INTERRUPTED: Final = "interrupted: Veronica stopped while it ran; unknown whether it finished"


class Executor:
    def __init__(self, nc: NATS, js: JetStreamContext, commands: Commands, *, instance: str) -> None:
        self.nc = nc
        self.js = js
        self.commands = commands
        self.instance = instance
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
        if await reads.last_tool_outcome(self.js, intent.task_id, intent.call_id) is not None:
            await msg.ack()
            return
        unwanted = await reads.unwanted_after(self.js, intent.task_id, seq)
        if unwanted is not None:
            log.info("task %s %s not run: %s", intent.task_id, intent.call_id, unwanted)
            await msg.ack()
            return
        claim = contracts.ToolClaim(task_id=intent.task_id, call_id=intent.call_id, instance=self.instance)
        if not await fence.append_once(self.nc, subjects.tool_claim(intent.task_id, intent.call_id), claim):
            earlier = await reads.last_tool_claim(self.js, intent.task_id, intent.call_id)
            if earlier is not None and earlier.by == "victoria":
                log.info("task %s %s not run: Victoria gave it up", intent.task_id, intent.call_id)
                await msg.ack()
                return
            if not intent.rerun:
                log.warning(
                    "task %s %s: taken before and unfinished; not run again", intent.task_id, intent.call_id
                )
                await self._store(self._outcome(intent, ok=False, error=INTERRUPTED, interrupted=True))
                await msg.ack()
                return
            log.info(
                "task %s %s: taken before and unfinished; running it again", intent.task_id, intent.call_id
            )
        span = tracing.tracer().start_span(
            f"tool {intent.tool}",
            context=tracing.context_from(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={"victoria.task_id": intent.task_id, "victoria.call_id": intent.call_id},
        )
        try:
            outcome = await self._run(intent)
            span.set_attribute("victoria.ok", outcome.ok)
        finally:
            span.end()
        await self._store(outcome)
        await msg.ack()

    async def _run(self, intent: contracts.ToolIntent) -> contracts.ToolOutcome:
        run = asyncio.ensure_future(self._execute(intent))
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

    async def _execute(self, intent: contracts.ToolIntent) -> contracts.ToolOutcome:
        workspace = Path(intent.workspace) if intent.workspace else self.commands.config.workspace
        began = time.monotonic()
        tool = tools.BY_NAME.get(intent.tool)
        try:
            if tool is None:
                raise ToolError(f"no tool {intent.tool!r}")
            runner = _RUN.get(tool.name)
            if runner is None:
                raise ToolError(f"{tool.name} is not Veronica's")
            return await runner(self, intent, workspace)
        except ToolError as exc:
            return self._outcome(intent, ok=False, error=str(exc), duration=time.monotonic() - began)
        except OSError as exc:
            return self._outcome(
                intent, ok=False, error=exc.strerror or str(exc), duration=time.monotonic() - began
            )

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


def _arg(intent: contracts.ToolIntent, name: str, default: object = None) -> object:
    return intent.args.get(name, default)


def _int(intent: contracts.ToolIntent, name: str) -> int | None:
    value = intent.args.get(name)
    return value if isinstance(value, int) else None


def _str(intent: contracts.ToolIntent, name: str, default: str = "") -> str:
    value = intent.args.get(name)
    return value if isinstance(value, str) else default


async def _read_file(self: Executor, intent: contracts.ToolIntent, workspace: Path) -> contracts.ToolOutcome:
    began = time.monotonic()
    text = await asyncio.to_thread(
        files.read_file,
        workspace,
        _str(intent, "path"),
        offset=_int(intent, "offset"),
        limit=_int(intent, "limit"),
    )
    return self._outcome(intent, ok=True, output=text, duration=time.monotonic() - began)


async def _find_files(self: Executor, intent: contracts.ToolIntent, workspace: Path) -> contracts.ToolOutcome:
    from victoria.actors.veronica import search  # pathspec: imported at the first search, not at start

    began = time.monotonic()
    found = await asyncio.to_thread(
        search.find_files, workspace, _str(intent, "pattern"), _str(intent, "path", ".")
    )
    return self._outcome(intent, ok=True, output=found.text(), duration=time.monotonic() - began)


async def _grep_search(
    self: Executor, intent: contracts.ToolIntent, workspace: Path
) -> contracts.ToolOutcome:
    from victoria.actors.veronica import search

    began = time.monotonic()
    glob = intent.args.get("glob")
    found = await asyncio.to_thread(
        search.grep_search,
        workspace,
        _str(intent, "pattern"),
        _str(intent, "path", "."),
        glob if isinstance(glob, str) else None,
        _int(intent, "max_results"),
    )
    return self._outcome(intent, ok=True, output=found.text(), duration=time.monotonic() - began)


async def _write_file(self: Executor, intent: contracts.ToolIntent, workspace: Path) -> contracts.ToolOutcome:
    from victoria.actors.veronica import edit

    began = time.monotonic()
    done = await asyncio.to_thread(edit.write_file, workspace, _str(intent, "path"), _str(intent, "content"))
    outcome = self._outcome(intent, ok=True, output=done.text(), duration=time.monotonic() - began)
    change = contracts.FileChange(path=done.path, before=done.before_sha256, after=done.after_sha256)
    return msgspec.structs.replace(outcome, changes=[change])


async def _apply_patch(
    self: Executor, intent: contracts.ToolIntent, workspace: Path
) -> contracts.ToolOutcome:
    from victoria.actors.veronica import patch

    began = time.monotonic()
    done = await asyncio.to_thread(patch.apply_patch, workspace, _str(intent, "patch"))
    outcome = self._outcome(intent, ok=True, output=done.text(), duration=time.monotonic() - began)
    changes = [
        contracts.FileChange(path=f.path, before=f.before_sha256, after=f.after_sha256) for f in done.files
    ]
    return msgspec.structs.replace(outcome, changes=changes)


async def _list_directory(
    self: Executor, intent: contracts.ToolIntent, workspace: Path
) -> contracts.ToolOutcome:
    began = time.monotonic()
    listing = await asyncio.to_thread(files.scan_directory, workspace, str(_arg(intent, "path", ".")))
    return self._outcome(intent, ok=True, output=listing.text(), duration=time.monotonic() - began)


async def _run_command(
    self: Executor, intent: contracts.ToolIntent, workspace: Path
) -> contracts.ToolOutcome:
    timeout = _arg(intent, "timeout_s")
    done = await self.commands.run(
        str(_arg(intent, "command", "")),
        cwd=str(_arg(intent, "cwd", ".")),
        timeout_s=float(timeout) if isinstance(timeout, int | float) else None,
        workspace=workspace,
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


_RUN: Final[dict[str, Callable[[Executor, contracts.ToolIntent, Path], Awaitable[contracts.ToolOutcome]]]] = {
    tools.READ_FILE.name: _read_file,
    tools.LIST_DIRECTORY.name: _list_directory,
    tools.FIND_FILES.name: _find_files,
    tools.GREP_SEARCH.name: _grep_search,
    tools.WRITE_FILE.name: _write_file,
    tools.APPLY_PATCH.name: _apply_patch,
    tools.RUN_COMMAND.name: _run_command,
}
"""Veronica's tools by name, as durable calls: a tool of hers that is not here fails the test of
the table."""
