"""W1, W2 and W3 against any system with the gateway's HTTP surface (Victoria or the baseline).

Each function drives the system over HTTP with ``bench.loadgen`` and returns plain figures.
Goals carry a tag and an index, so every task's prompts are distinct and the fake model server can
tell a repeated model call from a new one.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import msgspec

from bench import fakemodel
from bench.loadgen import Connection, LoopResult, ProtocolError, closed_loop, probe, summarize
from bench.procs import HOST

TERMINAL: Final = ("completed", "failed", "cancelled")
_encode = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()
_NET_ERRORS: Final = (OSError, asyncio.IncompleteReadError, ProtocolError, TimeoutError, ValueError)


def run_body(tag: str, i: int) -> bytes:
    return _encode.encode({"goal": f"{tag} task {i}: write a haiku about NATS", "task_type": "agent"})


def _status_of(body: bytes) -> str:
    try:
        return str(_decode.decode(body).get("status"))
    except (msgspec.DecodeError, AttributeError):
        return "?"


# --- W1: overhead ----------------------------------------------------------------------------------
async def w1(port: int, *, tasks: int, clients: int, tag: str, time_limit: float) -> dict[str, Any]:
    """``tasks`` agent tasks through sync ``POST /run`` from ``clients`` keep-alive connections."""

    def make(i: int) -> tuple[str, str, bytes | None]:
        return "POST", "/run?wait=60", run_body(tag, i)

    def check(i: int, status: int, body: bytes) -> str | None:
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}"
        state = _status_of(body)
        return None if state == "success" else f"status {state}: {body[:200]!r}"

    result = await closed_loop(
        HOST, port, clients=clients, total=tasks, make_request=make, check=check, time_limit=time_limit
    )
    figures = result.figures()
    figures["tasks_per_s"] = figures.pop("per_s")
    figures["clients"] = clients
    return figures


# --- W2: responsiveness ----------------------------------------------------------------------------
async def w2(
    port: int,
    *,
    in_flight: int,
    duration: float,
    tag: str,
    poll_interval: float = 1.0,
    probe_interval: float = 0.01,
    drain_limit: float = 120.0,
) -> dict[str, Any]:
    """Keep ``in_flight`` tasks running (each worker submits one, polls it until it ends, submits
    the next) for ``duration`` seconds while two probes measure ``GET /health`` and
    ``GET /run/status/{id}`` of a running task, one request every ``probe_interval`` seconds each."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    active: dict[str, None] = {}
    counts: Counter[str] = Counter()
    submit_latency: list[float] = []
    poll_latency: list[float] = []
    task_seconds: list[float] = []
    in_flight_samples: list[int] = []
    index = iter(range(1_000_000))
    hard_deadline = loop.time() + duration + drain_limit

    async def worker() -> None:
        conn = Connection(HOST, port)
        # Independent clients poll at independent moments. Started together, the workers stayed
        # in step (each model call takes exactly the same time), and every second all 200 polls
        # arrived at once: the probes then measured how long a 200-request burst takes to drain.
        await asyncio.sleep(random.uniform(0, poll_interval))
        try:
            while not stop.is_set() and loop.time() < hard_deadline:
                i = next(index)
                started = time.perf_counter()
                try:
                    status, body = await conn.request("POST", "/run?async_mode=true", run_body(tag, i))
                except _NET_ERRORS as exc:
                    counts[f"submit error {type(exc).__name__}"] += 1
                    await asyncio.sleep(poll_interval)
                    continue
                submit_latency.append(time.perf_counter() - started)
                if status != 202:
                    counts[f"submit HTTP {status}"] += 1
                    await asyncio.sleep(poll_interval)
                    continue
                task_id = str(_decode.decode(body)["task_id"])
                counts["submitted"] += 1
                active[task_id] = None
                try:
                    while loop.time() < hard_deadline:
                        await asyncio.sleep(poll_interval)
                        started = time.perf_counter()
                        try:
                            status, body = await conn.request("GET", f"/run/status/{task_id}")
                        except _NET_ERRORS as exc:
                            counts[f"poll error {type(exc).__name__}"] += 1
                            continue
                        poll_latency.append(time.perf_counter() - started)
                        view = _decode.decode(body) if status == 200 else {}
                        state = str(view.get("status")) if status == 200 else f"HTTP {status}"
                        if state in TERMINAL:
                            counts[state] += 1
                            took = _seconds_between(view.get("created_at"), view.get("updated_at"))
                            if took is not None:
                                task_seconds.append(took)
                            break
                finally:
                    active.pop(task_id, None)
        finally:
            conn.close()

    def some_task() -> str | None:
        in_flight_samples.append(len(active))
        if not active:
            return None
        return f"/run/status/{random.choice(list(active))}"

    workers = [asyncio.create_task(worker()) for _ in range(in_flight)]
    health = asyncio.create_task(
        probe(HOST, port, lambda: "/health", interval=probe_interval, stop=stop, time_limit=duration + 5)
    )
    status = asyncio.create_task(
        probe(HOST, port, some_task, interval=probe_interval, stop=stop, time_limit=duration + 5)
    )
    await asyncio.sleep(duration)
    stop.set()
    health_result, status_result = await asyncio.gather(health, status)
    _, pending = await asyncio.wait(workers, timeout=drain_limit)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    samples = in_flight_samples or [0]
    return {
        "in_flight_target": in_flight,
        "duration_s": duration,
        "in_flight_mean": round(sum(samples) / len(samples), 1),
        "in_flight_min_after_start": min(samples[len(samples) // 10 :] or [0]),
        "health": _probe_figures(health_result),
        "status": _probe_figures(status_result),
        "submit": summarize(submit_latency),
        "status_polls_by_workers": summarize(poll_latency),
        "task_duration": {
            k.replace("_ms", "_s"): round(v / 1000, 2) if k != "n" else v
            for k, v in summarize(task_seconds).items()
        },
        "tasks": dict(counts),
        "unfinished_after_drain": len(pending),
    }


def _probe_figures(result: LoopResult) -> dict[str, Any]:
    figures: dict[str, Any] = dict(summarize(result.latencies))
    figures["errors"] = result.errors
    if result.error_samples:
        figures["error_samples"] = result.error_samples
    return figures


# --- W3: recovery ----------------------------------------------------------------------------------
async def w3(
    port: int,
    fake_url: str,
    *,
    tasks: int,
    tag: str,
    kill: Callable[[], Awaitable[dict[str, Any]]],
    time_limit: float,
) -> dict[str, Any]:
    """Submit ``tasks`` tasks at once, kill the system (``kill``) once every task has made its first
    model call, then poll every task until it has ended or the system no longer knows it (404:
    lost). The fake model's counters tell how many model calls were repeated."""
    fakemodel.control(fake_url, "/reset", {})
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    conns = [Connection(HOST, port) for _ in range(8)]
    for conn in conns:
        pool.put_nowait(conn)

    async def submit(i: int) -> str:
        conn = await pool.get()
        try:
            status, body = await conn.request("POST", "/run?async_mode=true", run_body(tag, i))
        finally:
            pool.put_nowait(conn)
        if status != 202:
            raise RuntimeError(f"submit: HTTP {status}: {body[:200]!r}")
        return str(_decode.decode(body)["task_id"])

    submitted_at = time.perf_counter()
    ids = await asyncio.gather(*(submit(i) for i in range(tasks)))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while loop.time() < deadline:
        stats = await asyncio.to_thread(fakemodel.control, fake_url, "/stats")
        if stats["calls"] >= tasks:
            break
        await asyncio.sleep(0.05)
    before_kill = await asyncio.to_thread(fakemodel.control, fake_url, "/stats")
    killed_at = time.perf_counter()
    killed_wall = time.time()
    kill_info = await kill()

    final: dict[str, dict[str, Any]] = {}
    lost: set[str] = set()
    ended_at: dict[str, float] = {}
    deadline = loop.time() + time_limit

    async def look(task_id: str) -> None:
        conn = await pool.get()
        try:
            status, body = await conn.request("GET", f"/run/status/{task_id}", timeout=5.0)
        except _NET_ERRORS:
            return  # the system is restarting; look again next round
        finally:
            pool.put_nowait(conn)
        if status == 404:
            lost.add(task_id)
        elif status == 200:
            state = _decode.decode(body)
            if state.get("status") in TERMINAL:
                final[task_id] = state
                ended_at[task_id] = time.perf_counter()

    rounds = 0
    while loop.time() < deadline:
        rounds += 1
        pending = [t for t in ids if t not in final and t not in lost]
        if not pending:
            break
        await asyncio.gather(*(look(t) for t in pending))
        await asyncio.sleep(0.2)
    for conn in conns:
        conn.close()
    stats = await asyncio.to_thread(fakemodel.control, fake_url, "/stats")
    completed = [s for s in final.values() if s.get("status") == "completed"]
    never = [t for t in ids if t not in final and t not in lost]
    stamps = [_wall(s.get("updated_at")) for s in final.values()]
    stamps_ok = [s for s in stamps if s is not None]
    return {
        "tasks": tasks,
        "completed": len(completed),
        "failed_or_cancelled": len(final) - len(completed),
        "lost": len(lost) + len(never),
        "unknown_to_system_after_kill": len(lost),
        "not_finished_within_limit": len(never),
        "time_limit_s": time_limit,
        "all_done_after_kill_s": round(max(ended_at.values()) - killed_at, 2)
        if final and not never and not lost
        else None,
        "last_terminal_event_after_kill_s": round(max(stamps_ok) - killed_wall, 2) if stamps_ok else None,
        "all_done_after_submit_s": round(max(ended_at.values()) - submitted_at, 2)
        if final and not never and not lost
        else None,
        "model_calls_before_kill": before_kill["calls"],
        "model_calls": stats["calls"],
        "model_calls_expected": 3 * tasks,
        "model_calls_repeated": stats["repeated"],
        "attempts": dict(Counter(str(s.get("attempts")) for s in final.values())),
        "kill": kill_info,
        "poll_rounds": rounds,
    }


def _seconds_between(start: object, end: object) -> float | None:
    """Seconds from one ISO timestamp of a status object to another (created_at to updated_at)."""
    a, b = _wall(start), _wall(end)
    return None if a is None or b is None else b - a


def _wall(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
