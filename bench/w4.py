"""W4, model swaps: a model server that holds one model at a time and takes calls first come,
first served (``bench.fakemodel`` with ``load_time``), and agent tasks for two models.

- **Interleaved**: ``tasks`` agent tasks, half for model A and half for B, submitted at once in
  alternation. Victoria (``victoria up``, through the gateway) against a plain client that sends
  the same calls as they come (``bench.baseline``'s task run in this process: aiohttp, one session
  per model, as the runner). Time until every task has ended, and the swaps the server made.
- **Lone task**: model A's tasks keep coming for ``lone_duration`` seconds (``lone_workers`` clients,
  each submitting the next as its last ends); a single task for B is submitted ``lone_at`` seconds
  in. Its time from submission to the end, against ``VICTORIA_MODEL_MAX_WAIT`` plus its own calls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Final

import aiohttp

from bench import fakemodel
from bench.baseline import Baseline
from bench.procs import HOST

MODELS: Final = ("bench-a", "bench-b")
TERMINAL: Final = ("completed", "failed", "cancelled")
POLL: Final = 0.1  # seconds between status polls


def goal(tag: str, i: int) -> str:
    return f"{tag} task {i}: write a haiku about NATS"


async def _submit(http: aiohttp.ClientSession, port: int, text: str, model: str) -> str:
    body = {"goal": text, "task_type": "agent", "model": model}
    async with http.post(f"http://{HOST}:{port}/run?async_mode=true", json=body) as response:
        data = await response.json()
        return str(data["task_id"])


async def _wait_end(http: aiohttp.ClientSession, port: int, task_id: str, limit: float) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        async with http.get(f"http://{HOST}:{port}/run/status/{task_id}") as response:
            if response.status == 200:
                data: dict[str, Any] = await response.json()
                if data.get("status") in TERMINAL:
                    return data
        await asyncio.sleep(POLL)
    return {"status": "timeout"}


async def victoria_interleaved(
    port: int, fake_url: str, *, tasks: int, tag: str, limit: float
) -> dict[str, Any]:
    fakemodel.control(fake_url, "/reset", {})
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        ids = [await _submit(http, port, goal(tag, i), MODELS[i % 2]) for i in range(tasks)]
        ends = await asyncio.gather(*(_wait_end(http, port, task_id, limit) for task_id in ids))
        seconds = time.monotonic() - started
    stats = fakemodel.control(fake_url, "/stats")
    return {
        "tasks": tasks,
        "completed": sum(1 for e in ends if e.get("status") == "completed"),
        "seconds": round(seconds, 2),
        "swaps": stats["swaps"],
        "model_calls": stats["calls"],
    }


async def as_they_come(fake_url: str, *, tasks: int, tag: str) -> dict[str, Any]:
    """The same tasks' calls, each sent as soon as the task makes it (no scheduling)."""
    fakemodel.control(fake_url, "/reset", {})
    runs = {model: Baseline(fake_url, model, 256, stream=True) for model in MODELS}
    try:
        started = time.monotonic()
        jobs = []
        for i in range(tasks):
            run = runs[MODELS[i % 2]]
            task_id = uuid.uuid4().hex
            run.status[task_id] = {"status": "queued"}
            jobs.append((run, task_id, run.run_task(task_id, goal(tag, i), 8)))
        await asyncio.gather(*(job for _, _, job in jobs))
        seconds = time.monotonic() - started
        completed = sum(1 for run, task_id, _ in jobs if run.status[task_id]["status"] == "completed")
    finally:
        for run in runs.values():
            if run._http is not None:
                await run._http.close()
    stats = fakemodel.control(fake_url, "/stats")
    return {
        "tasks": tasks,
        "completed": completed,
        "seconds": round(seconds, 2),
        "swaps": stats["swaps"],
        "model_calls": stats["calls"],
    }


async def lone_task(
    port: int, fake_url: str, *, duration: float, workers: int, lone_at: float, tag: str, limit: float
) -> dict[str, Any]:
    """Model A's tasks keep coming for ``duration`` s; one task for B is submitted at ``lone_at``."""
    fakemodel.control(fake_url, "/reset", {})
    busy_done = 0
    async with aiohttp.ClientSession() as http:
        stop_at = time.monotonic() + duration

        async def worker(w: int) -> None:
            nonlocal busy_done
            i = 0
            while time.monotonic() < stop_at:
                task_id = await _submit(http, port, goal(f"{tag}-a{w}", i), MODELS[0])
                end = await _wait_end(http, port, task_id, limit)
                busy_done += end.get("status") == "completed"
                i += 1

        async def lone() -> dict[str, Any]:
            await asyncio.sleep(lone_at)
            submitted = time.monotonic()
            task_id = await _submit(http, port, goal(f"{tag}-lone", 0), MODELS[1])
            seen_waiting = False
            deadline = submitted + limit
            while time.monotonic() < deadline:
                async with http.get(f"http://{HOST}:{port}/run/status/{task_id}") as response:
                    data: dict[str, Any] = await response.json()
                seen_waiting = seen_waiting or data.get("stage") == "waiting_for_model"
                if data.get("status") in TERMINAL:
                    break
                await asyncio.sleep(POLL)
            return {
                "status": data.get("status"),
                "seconds": round(time.monotonic() - submitted, 2),
                "showed_waiting_for_model": seen_waiting,
            }

        results = await asyncio.gather(lone(), *(worker(w) for w in range(workers)))
    stats = fakemodel.control(fake_url, "/stats")
    lone_result = results[0]
    assert isinstance(lone_result, dict)
    return {
        **lone_result,
        "busy_tasks_completed": busy_done,
        "busy_for_s": duration,
        "submitted_at_s": lone_at,
        "swaps": stats["swaps"],
    }
