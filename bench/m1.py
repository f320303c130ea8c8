"""M1, what MCP costs: the tool ``run_task`` over ``/mcp`` against a sync ``POST /run``, same goals.

A ``victoria up`` of its own with the instant fake model runs ``tasks`` pairs of tasks one at a
time: in each pair the same goal once as ``POST /run`` (httpx, one connection kept) and once as
``run_task`` (the SDK's client over Streamable HTTP, one session kept, no ``progressToken``: the
call waits on the gateway's view as ``POST /run`` does), the order of the two alternating from one
pair to the next so that neither always goes first. A few pairs warm up first and are not counted.

Each latency is the client's: the request sent to the answer read. The overhead of a pair is its
``run_task`` latency less its ``POST /run`` latency; the figures are those differences at p50 and
p99, beside each route's own latencies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import httpx
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from bench.procs import HOST
from bench.tools import summary

TASKS: Final = 50  # pairs measured
WARMUP: Final = 5  # pairs, not counted
AIM_MS: Final = 5.0  # the aim: the overhead's p50 under this
CALL_LIMIT: Final = 60.0  # seconds one task may take (the instant fake model answers at once)


def goal(n: int) -> str:
    return f"Write a haiku about message {n}"


async def _post_run(http: httpx.AsyncClient, text: str) -> tuple[float, str]:
    started = time.perf_counter()
    response = await http.post("/run", json={"goal": text})
    elapsed = time.perf_counter() - started
    body = response.json()
    return elapsed, str(body.get("output") or body.get("status"))


async def _run_task(session: ClientSession, text: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = await session.call_tool("run_task", {"goal": text})
    elapsed = time.perf_counter() - started
    said = "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))
    return elapsed, said


async def run(port: int, *, tasks: int = TASKS, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The pairs against a ready system on ``port``; the figures."""
    base = f"http://{HOST}:{port}"
    timeout = httpx.Timeout(10.0, read=CALL_LIMIT)
    pairs: list[tuple[float, float]] = []
    differing = 0
    async with (
        httpx.AsyncClient(base_url=base, timeout=timeout) as http,
        httpx.AsyncClient(timeout=timeout) as mcp_http,
        streamable_http_client(f"{base}/mcp", http_client=mcp_http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        say(f"m1: {WARMUP} pairs to warm up, then {tasks} pairs of POST /run and run_task, one at a time")
        for n in range(WARMUP + tasks):
            text = goal(n)
            if n % 2:
                over_mcp = await _run_task(session, text)
                over_http = await _post_run(http, text)
            else:
                over_http = await _post_run(http, text)
                over_mcp = await _run_task(session, text)
            if n < WARMUP:
                continue
            differing += over_http[1] != over_mcp[1]
            pairs.append((over_http[0], over_mcp[0]))
    overhead = summary([mcp - run for run, mcp in pairs])
    return {
        "tasks": len(pairs),
        "answers_differing": differing,
        "post_run": summary([run for run, _ in pairs]),
        "run_task": summary([mcp for _, mcp in pairs]),
        "overhead": {"p50_ms": overhead.get("p50_ms"), "p99_ms": overhead.get("p99_ms")},
    }


def table(m1: dict[str, Any]) -> list[str]:
    """M1's table (Markdown lines)."""

    def cells(figures: dict[str, Any]) -> str:
        return f"{_ms(figures.get('p50_ms'))} | {_ms(figures.get('p99_ms'))}"

    return [
        "",
        f"M1: {m1['tasks']} pairs of tasks one at a time, each goal once as a sync POST /run and once as "
        f"the MCP tool run_task over /mcp (one session, no progress asked for); "
        f"{m1['answers_differing']} pairs answered differently.",
        "",
        "| M1 measure, ms | p50 | p99 |",
        "| --- | ---: | ---: |",
        f"| POST /run, sent to answered | {cells(m1['post_run'])} |",
        f"| run_task over MCP, sent to answered | {cells(m1['run_task'])} |",
        f"| overhead of MCP, per pair (aim: p50 < {AIM_MS:g}) | {cells(m1['overhead'])} |",
    ]


def _ms(value: Any) -> str:
    return "–" if value is None else f"{float(value):,.2f}"
