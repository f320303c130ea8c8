"""The second peer: Celery with Redis as broker and result backend, for W1 and W3.

One Celery task per agent task, making the same three model calls with the same prompts as the
baseline (``bench.baseline.SYSTEM``). Durable settings: ``acks_late`` (the message is acknowledged
after the task ran), ``task_reject_on_worker_lost`` and a short Redis ``visibility_timeout``, so a
task whose worker was killed is delivered again once that timeout passes, and runs again from its
first step (its model calls are repeated). The worker uses the threads pool (the work is I/O);
each thread calls the model with aiohttp, Victoria's runner's client, from an event loop of its own.
Model answers are streamed when ``BENCH_MODEL_STREAM=1``, as the baseline's ``--stream``.

Needs ``pip install celery redis`` and a Redis on 127.0.0.1:6379; the benchmark uses one database
(``BENCH_CELERY_REDIS``, default DB 13) and flushes only that one.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import aiohttp
from celery import Celery

from bench.baseline import SYSTEM, chat_body, post_chat
from bench.loadgen import LoopResult

REDIS_URL: Final = os.environ.get("BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/13")
MODEL_URL: Final = os.environ.get("BENCH_MODEL_URL", "http://127.0.0.1:11434")
VISIBILITY_TIMEOUT: Final = float(os.environ.get("BENCH_CELERY_VISIBILITY", "10"))
WORKER_THREADS: Final = int(os.environ.get("BENCH_CELERY_THREADS", "64"))
STREAM: Final = os.environ.get("BENCH_MODEL_STREAM", "") == "1"

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # Sweep for expired unacknowledged messages every second (the defaults sweep every 100 s).
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    result_backend_thread_safe=True,
    result_expires=3600,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)

_local = threading.local()


def _session() -> tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]:
    """Each worker thread's own event loop and aiohttp session: the HTTP client Victoria's runner
    uses, driven from Celery's threads."""
    found: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = getattr(_local, "http", None)
    if found is None:
        loop = asyncio.new_event_loop()

        async def make() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(
                base_url=MODEL_URL, timeout=aiohttp.ClientTimeout(total=300.0), read_bufsize=1 << 20
            )

        found = (loop, loop.run_until_complete(make()))
        _local.http = found
    return found


async def _post(session: aiohttp.ClientSession, body: dict[str, Any]) -> str:
    return await post_chat(session, body, stream=STREAM)


def _ask(messages: list[dict[str, str]], *, json_mode: bool = False) -> str:
    loop, session = _session()
    return loop.run_until_complete(
        _post(session, chat_body("llama3.2", messages, json_mode=json_mode, stream=STREAM))
    )


@app.task(name="bench.agent")  # type: ignore[untyped-decorator]
def agent(goal: str, max_steps: int = 8) -> dict[str, Any]:
    understanding = _ask(
        [{"role": "system", "content": SYSTEM["understand"]}, {"role": "user", "content": goal}]
    )
    plan = _ask(
        [
            {"role": "system", "content": SYSTEM["plan"].format(max_steps=max_steps)},
            {"role": "user", "content": f"Goal: {goal}\n\nWhat is asked: {understanding}"},
        ]
    )
    reply = _ask(
        [
            {"role": "system", "content": SYSTEM["step"].format()},
            {"role": "user", "content": f"Goal: {goal}\n\nPlan:\n{plan}"},
        ],
        json_mode=True,
    )
    return {"status": "completed", "output": reply}


def worker_argv() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.celery_peer:app",
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(WORKER_THREADS),
        "--loglevel",
        "WARNING",
        "--without-gossip",
        "--without-mingle",
        "--hostname",
        f"bench-{os.getpid()}@%h",
    ]


def flush() -> None:
    """Empty the benchmark's own Redis database (and only that one)."""
    client = app.broker_connection().default_channel.client
    client.flushdb()


def goal(tag: str, i: int) -> str:
    return f"{tag} task {i}: write a haiku about NATS"


def wait_worker(timeout: float = 60.0) -> float:
    """Seconds until a worker has run one task."""
    started = time.perf_counter()
    agent.apply_async((goal("celery-ready", 0),)).get(timeout=timeout)
    return time.perf_counter() - started


def w1(*, tasks: int, clients: int, tag: str, time_limit: float) -> dict[str, Any]:
    """``clients`` threads, each submitting a task and waiting for its result, ``tasks`` in all."""
    result = LoopResult()
    lock = threading.Lock()
    counter = iter(range(tasks))
    deadline = time.monotonic() + time_limit

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(counter, None)
                if i is None:
                    return
                result.requested += 1
            started = time.perf_counter()
            try:
                out = agent.apply_async((goal(tag, i),)).get(timeout=60.0)
                ok = isinstance(out, dict) and out.get("status") == "completed"
                problem = None if ok else f"result {out!r}"[:200]
            except Exception as exc:  # any failure of the round trip is an error of this request
                problem = f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - started
            with lock:
                if problem is None:
                    result.ok += 1
                    result.latencies.append(latency)
                else:
                    result.error(problem)

    cpu0, t0 = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(time_limit + 70)
    result.elapsed = time.perf_counter() - t0
    result.client_cpu = time.process_time() - cpu0
    figures = result.figures()
    figures["tasks_per_s"] = figures.pop("per_s")
    figures["clients"] = clients
    return figures


def w3(
    *,
    tasks: int,
    tag: str,
    calls_so_far: Callable[[], int],
    kill: Callable[[], dict[str, Any]],
    time_limit: float,
) -> dict[str, Any]:
    """Submit ``tasks`` tasks, kill the worker once each made its first model call, restart it, and
    wait for every result."""
    submitted_at = time.perf_counter()
    results = [agent.apply_async((goal(tag, i),)) for i in range(tasks)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and calls_so_far() < tasks:
        time.sleep(0.05)
    calls_before = calls_so_far()
    killed_at = time.perf_counter()
    kill_info = kill()
    done: dict[int, float] = {}
    states: dict[int, str] = {}
    deadline = time.monotonic() + time_limit
    while time.monotonic() < deadline and len(done) < tasks:
        for i, res in enumerate(results):
            if i not in done and res.ready():
                done[i] = time.perf_counter()
                states[i] = str(res.state)
        time.sleep(0.2)
    completed = sum(1 for s in states.values() if s == "SUCCESS")
    return {
        "tasks": tasks,
        "completed": completed,
        "failed_or_cancelled": len(states) - completed,
        "lost": tasks - len(done),
        "time_limit_s": time_limit,
        "all_done_after_kill_s": round(max(done.values()) - killed_at, 2) if len(done) == tasks else None,
        "all_done_after_submit_s": round(max(done.values()) - submitted_at, 2)
        if len(done) == tasks
        else None,
        "model_calls_before_kill": calls_before,
        "kill": kill_info,
    }
