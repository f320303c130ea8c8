"""T1, the overhead of one durable tool call: ``read_file`` through the system against in-process.

A ``victoria up`` of its own (``VICTORIA_WORKSPACE`` a workspace made here, the instant fake model,
every other setting as shipped) runs agent tasks whose model (``bench.fakemodel`` with ``reads``)
answers the understand and plan requests, then asks for ``CALLS`` ``read_file`` calls, one per
step, each of a file of its own (a few KB), then gives its final answer. The fake answers in JSON
text, or with the protocol's native ``tool_calls`` when the request carries ``tools``, so the
figures hold for either step protocol of the agent. Three phases: a few tasks to warm up (not
counted), ``tasks`` tasks submitted at once (sync ``POST /run``; they run as concurrently as the
system's defaults let them), then a few tasks one at a time (the latency of a call alone).

Per call, from what the system stored (read back from the task streams after the run) and what
the fake model server saw:

- intent to outcome: the ``tool_intent`` event's ``ts`` to its ``tool_outcome``'s ``ts``;
- intent to the next model request: the ``tool_intent``'s ``ts`` to the moment the fake model server
  received that task's next request (``time.monotonic()`` there, matched by the task's key in the
  goal and its steps done; converted to wall-clock time here: same machine, same clocks);
- where that time goes, from the events' ``ts`` (when each was made) and the times nats-server
  stored them (its own clock, in every delivered message's reply subject).

In-process: ``victoria.actors.veronica.files.read_file(workspace, path)`` called in a loop on the
same files. The overhead of a call is the intent-to-next-request figure less the in-process one,
at p50 and at p99.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import nats

from bench import fakemodel
from bench.loadgen import percentile
from bench.procs import HOST
from victoria.actors.veronica import files
from victoria.events import contracts, subjects, tools
from victoria.runtime import reads
from victoria.runtime.protocol import parse_ack_subject

TASKS: Final = 200
CALLS: Final = 5  # read_file calls of one task
WARMUP: Final = 8  # tasks, not counted
ALONE: Final = 10  # tasks one at a time, after the concurrent ones
IN_PROCESS_ROUNDS: Final = 3  # passes of the in-process loop over every file, after one to warm
FILE_BYTES: Final = (2_000, 6_000)  # the size of a file, at least and at most
TASK_LIMIT: Final = 300  # seconds a sync POST /run waits (``?wait=``)
READ_KEY: Final = r"\[t1 ([a-z]+-\d+)\]"
"""How the fake model server finds a task's key in its goal."""
READ_PATH: Final = "t1/{key}/file-{n}.txt"
AIM_MS: Final = 10.0  # the aim: the overhead's p50 under this
STAGES: Final = (
    ("intent_stored", "the intent made to stored (Victoria's fenced append)"),
    ("claimed", "stored to claimed (Veronica's delivery, her two reads, the claim's append)"),
    ("run", "claimed to the outcome made (the read, on a thread)"),
    ("outcome_stored", "the outcome made to stored (its append)"),
    ("resumed", "the outcome stored to the next model request made (Victoria hears it, her turn)"),
    ("request_stored", "the request made to stored (its fenced append)"),
    ("at_model", "the request stored to the model server (the runner's delivery, the HTTP call)"),
)
"""The legs of intent to next model request, in order: they add up to it."""


def goal(key: str) -> str:
    return f"[t1 {key}] Read the {CALLS} files in t1/{key} and say what they hold."


def file_path(key: str, n: int) -> str:
    return READ_PATH.format(key=key, n=n)


def make_workspace(root: Path, keys: list[str], seed: int = 1) -> dict[str, tuple[str, int]]:
    """``CALLS`` text files for each key, each of its own size and content; path -> (key, n)."""
    rng = random.Random(seed)
    made: dict[str, tuple[str, int]] = {}
    for key in keys:
        for n in range(CALLS):
            relative = file_path(key, n)
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            size = rng.randint(*FILE_BYTES)
            lines: list[str] = []
            length = 0
            while length < size:
                line = f"{key} file {n} line {len(lines) + 1}: {rng.getrandbits(96):024x}"
                lines.append(line)
                length += len(line) + 1
            target.write_text("\n".join(lines) + "\n", encoding="utf-8")
            made[relative] = (key, n)
    return made


@dataclass
class Task:
    key: str
    started: float = 0.0  # time.monotonic()
    ended: float = 0.0
    task_id: str = ""
    status: str = "?"
    error: str | None = None


async def _run(http: aiohttp.ClientSession, port: int, task: Task) -> None:
    body = {"goal": goal(task.key), "task_type": "agent"}
    task.started = time.monotonic()
    try:
        async with http.post(f"http://{HOST}:{port}/run?wait={TASK_LIMIT}", json=body) as response:
            data: dict[str, Any] = await response.json(content_type=None)
            task.status = str(data.get("status")) if response.status == 200 else f"HTTP {response.status}"
            task.task_id = str(data.get("task_id") or "")
            if response.status != 200 or task.status != "success":
                task.error = str(data)[:300]
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        task.error = f"{type(exc).__name__}: {exc}"
    task.ended = time.monotonic()


async def run_tasks(port: int, keys: list[str], *, at_once: bool) -> list[Task]:
    """Each key's task through sync ``POST /run``: all at once (a connection each) or one by one."""
    tasks = [Task(key) for key in keys]
    timeout = aiohttp.ClientTimeout(total=TASK_LIMIT + 30)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=False)
    ) as http:
        if at_once:
            await asyncio.gather(*(_run(http, port, task) for task in tasks))
        else:
            for task in tasks:
                await _run(http, port, task)
    return tasks


def in_process(workspace: Path, paths: list[str]) -> list[float]:
    """Seconds of each direct ``files.read_file`` call: one pass to warm, then ``IN_PROCESS_ROUNDS``."""
    for path in paths:
        files.read_file(workspace, path)
    out: list[float] = []
    for _ in range(IN_PROCESS_ROUNDS):
        for path in paths:
            began = time.perf_counter()
            files.read_file(workspace, path)
            out.append(time.perf_counter() - began)
    return out


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int
    stored: float
    """Wall-clock seconds when nats-server stored it (its clock)."""
    event: contracts.AnyTaskEvent

    @property
    def made(self) -> float:
        """Wall-clock seconds of the event's ``ts``: when its writer made it."""
        return self.event.ts.timestamp()


async def stored_events(nats_url: str) -> dict[str, list[Stored]]:
    """Every stored event of every task, by task id, in stream order (a read-only scan)."""
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    by_task: dict[str, list[Stored]] = defaultdict(list)
    try:
        js = nc.jetstream()
        for shard in range(subjects.TASK_SHARDS):
            scan = reads.Scan(js, subjects.task_stream(shard), subjects.shard_events(shard))
            async with scan as messages:
                async for msg in messages:
                    ack = parse_ack_subject(msg.reply)
                    event = reads.decode_task_event(msg.data, msg.subject)
                    if ack is None or event is None:
                        continue
                    by_task[event.task_id].append(Stored(ack.stream_seq, ack.timestamp_ns / 1e9, event))
    finally:
        await nc.close()
    for events in by_task.values():
        events.sort(key=lambda s: s.seq)
    return by_task


@dataclass
class Calls:
    """Seconds per measured call, by measure."""

    intent_to_outcome: list[float] = field(default_factory=list)
    intent_to_request: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name, _ in STAGES})
    run_s: list[float] = field(default_factory=list)
    """The outcome's own ``duration_s``: Veronica's timing of the read."""
    unmatched: int = 0


def _first(events: list[Stored], kind: type[Any], call_id: str) -> Stored | None:
    return next(
        (s for s in events if isinstance(s.event, kind) and getattr(s.event, "call_id", None) == call_id),
        None,
    )


def measure(
    events: dict[str, list[Stored]],
    arrivals: list[list[Any]],
    paths: dict[str, tuple[str, int]],
    keys: set[str],
    offset: float,
) -> Calls:
    """The figures of every ``read_file`` call of the tasks with these keys. ``arrivals`` are the
    fake model server's (key, purpose, steps done, monotonic, native); ``offset`` is wall-clock
    time less monotonic time."""
    at_model: dict[tuple[str, int], list[float]] = defaultdict(list)
    for key, purpose, done, when, _native in arrivals:
        if purpose == "step" and key in keys:
            at_model[(str(key), int(done))].append(float(when) + offset)
    out = Calls()
    for history in events.values():
        submitted = next((s.event for s in history if isinstance(s.event, contracts.TaskSubmitted)), None)
        found = re.search(READ_KEY, submitted.goal) if submitted is not None else None
        if found is None or found.group(1) not in keys:
            continue
        for intent in history:
            if (
                not isinstance(intent.event, contracts.ToolIntent)
                or intent.event.tool != tools.READ_FILE.name
            ):
                continue
            where = paths.get(str(intent.event.args.get("path")))
            claim = _first(history, contracts.ToolClaim, intent.event.call_id)
            outcome = _first(history, contracts.ToolOutcome, intent.event.call_id)
            request = next(
                (
                    s
                    for s in history
                    if outcome is not None
                    and s.seq > outcome.seq
                    and isinstance(s.event, contracts.LLMRequested)
                ),
                None,
            )
            arrived = None
            if where is not None:
                later = [t for t in at_model.get((where[0], where[1] + 1), []) if t >= intent.made]
                arrived = min(later) if later else None
            if claim is None or outcome is None or request is None or arrived is None:
                out.unmatched += 1
                continue
            assert isinstance(outcome.event, contracts.ToolOutcome)
            out.intent_to_outcome.append(outcome.made - intent.made)
            out.intent_to_request.append(arrived - intent.made)
            out.run_s.append(outcome.event.duration_s)
            legs = (
                intent.stored - intent.made,
                claim.stored - intent.stored,
                outcome.made - claim.stored,
                outcome.stored - outcome.made,
                request.made - outcome.stored,
                request.stored - request.made,
                arrived - request.stored,
            )
            for (name, _), seconds in zip(STAGES, legs, strict=True):
                out.stages[name].append(seconds)
    return out


def summary(seconds: list[float]) -> dict[str, Any]:
    """p50, p90, p99 and max in milliseconds (three decimals: an in-process read takes microseconds)."""
    values = sorted(seconds)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 3),
        "p90_ms": round(percentile(values, 90) * 1000, 3),
        "p99_ms": round(percentile(values, 99) * 1000, 3),
        "max_ms": round(values[-1] * 1000, 3),
    }


def _minus(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    if key in a and key in b:
        return round(float(a[key]) - float(b[key]), 3)
    return None


def phase_figures(calls: Calls, tasks: list[Task], direct: dict[str, Any]) -> dict[str, Any]:
    wall = max(t.ended for t in tasks) - min(t.started for t in tasks) if tasks else 0.0
    to_request = summary(calls.intent_to_request)
    return {
        "tasks": len(tasks),
        "completed": sum(1 for t in tasks if t.status == "success"),
        "errors": [t.error for t in tasks if t.error][:5],
        "calls_measured": len(calls.intent_to_request),
        "calls_unmatched": calls.unmatched,
        "wall_s": round(wall, 3),
        "task_s": summary([t.ended - t.started for t in tasks]),
        "intent_to_outcome": summary(calls.intent_to_outcome),
        "intent_to_next_request": to_request,
        "overhead": {
            "p50_ms": _minus(to_request, direct, "p50_ms"),
            "p99_ms": _minus(to_request, direct, "p99_ms"),
        },
        "stages": {name: summary(values) for name, values in calls.stages.items()},
        "veronica_read": summary(calls.run_s),
    }


async def _wait_for_veronica(port: int, limit: float = 30.0) -> None:
    """Until ``GET /services`` says Veronica is up: the first tasks must not wait for her start."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"http://{HOST}:{port}/services") as response:
                    entries = (await response.json()).get("services", [])
                    if any(e.get("name") == "veronica" and e.get("status") == "up" for e in entries):
                        return
            except (aiohttp.ClientError, ValueError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"Veronica not up within {limit:g} s")


async def run(
    port: int,
    *,
    workspace: Path,
    fake_url: str,
    nats_url: str,
    tasks: int = TASKS,
    alone: int = ALONE,
    cpu: Callable[[], dict[str, float]] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The three phases against a ready system whose workspace is ``workspace`` and whose model is
    the fake at ``fake_url``; the figures. ``cpu``: the system's CPU seconds by process so far."""
    phases = {
        "warmup": [f"warm-{i:03d}" for i in range(WARMUP)],
        "concurrent": [f"load-{i:03d}" for i in range(tasks)],
        "alone": [f"solo-{i:03d}" for i in range(alone)],
    }
    paths = make_workspace(workspace, [key for keys in phases.values() for key in keys])
    fakemodel.control(
        fake_url, "/config", {"delay": 0.0, "reads": CALLS, "read_path": READ_PATH, "read_key": READ_KEY}
    )
    fakemodel.control(fake_url, "/reset", {})
    try:
        await _wait_for_veronica(port)
        say(f"t1: {WARMUP} tasks to warm up")
        await run_tasks(port, phases["warmup"], at_once=True)
        say(f"t1: {tasks} tasks of {CALLS} read_file calls each, submitted at once")
        before = cpu() if cpu else {}
        ran = {"concurrent": await run_tasks(port, phases["concurrent"], at_once=True)}
        after = cpu() if cpu else {}
        say(f"t1: {alone} tasks one at a time")
        ran["alone"] = await run_tasks(port, phases["alone"], at_once=False)
        arrivals = fakemodel.control(fake_url, "/arrivals")["arrivals"]
    finally:
        fakemodel.control(fake_url, "/config", {"reads": 0})
    offset = time.time() - time.monotonic()
    events = await stored_events(nats_url)
    measured = [p for p, (key, _) in paths.items() if key.startswith("load-")]
    direct = summary(await asyncio.to_thread(in_process, workspace, measured))
    out: dict[str, Any] = {
        "calls_per_task": CALLS,
        "file_bytes": list(FILE_BYTES),
        "in_process": direct,
        "step_protocol": "native tool calls" if any(a[4] for a in arrivals) else "JSON in text",
    }
    for phase, done in ran.items():
        calls = measure(events, arrivals, paths, set(phases[phase]), offset)
        out[phase] = phase_figures(calls, done, direct)
    load = out["concurrent"]
    if cpu and load["completed"]:
        per = {name: (after.get(name, 0.0) - before.get(name, 0.0)) for name in after}
        out["concurrent"]["cpu_ms_per_call"] = {
            name: round(seconds / (load["completed"] * CALLS) * 1000, 3)
            for name, seconds in sorted(per.items(), key=lambda kv: -kv[1])
        }
    return out


def table(t1: dict[str, Any]) -> list[str]:
    """T1's table (Markdown lines): each measure at p50 and p99, for the concurrent phase and for
    calls alone, and where the time of a call goes."""
    load, alone, direct = t1["concurrent"], t1["alone"], t1["in_process"]

    def cells(figures: dict[str, Any]) -> str:
        return f"{_ms(figures.get('p50_ms'))} | {_ms(figures.get('p99_ms'))}"

    lines = [
        "",
        f"T1: {load['tasks']} agent tasks at once, {t1['calls_per_task']} read_file calls each "
        f"({load['completed']} completed, {load['calls_measured']} calls measured, "
        f"{load['calls_unmatched']} unmatched, step protocol: {t1['step_protocol']}), in {load['wall_s']} s; "
        f"then {alone['tasks']} tasks one at a time ({alone['calls_measured']} calls).",
        "",
        "| T1 measure, ms | at once, p50 | p99 | alone, p50 | p99 |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| intent to outcome | {cells(load['intent_to_outcome'])} | {cells(alone['intent_to_outcome'])} |",
        f"| intent to the next model request | {cells(load['intent_to_next_request'])} | "
        f"{cells(alone['intent_to_next_request'])} |",
        f"| in-process read_file | {cells(direct)} | {cells(direct)} |",
        f"| overhead of a call (aim: p50 < {AIM_MS:g}) | {cells(load['overhead'])} | {cells(alone['overhead'])} |",
    ]
    for name, what in STAGES:
        lines.append(f"| of which: {what} | {cells(load['stages'][name])} | {cells(alone['stages'][name])} |")
    cpu = load.get("cpu_ms_per_call") or {}
    if cpu:
        lines += [
            "",
            f"T1 CPU per call at once, ms (the call's share of its task, model calls included): "
            f"{', '.join(f'{name} {ms:.2f}' for name, ms in cpu.items() if ms >= 0.01)}; "
            f"{sum(cpu.values()):.2f} in all.",
        ]
    return lines


def _ms(value: Any) -> str:
    return "–" if value is None else f"{float(value):,.2f}"
