"""R1, a real model: what Victoria adds to each model call, and to the first token.

Victoria (``victoria up``) calls a real OpenAI-compatible server through ``bench.realproxy``,
which records every call. A handful of agent tasks (English and Russian goals) run one at a time:
some through ``POST /run?async_mode=true`` and the task's ``GET /run/{id}/events`` until its
terminal event, some through ``POST /stream``, timing its first ``chunk`` line. Then, with
Victoria stopped, every recorded request body is sent again, as it was, straight to the server,
one after the other (``replay``), timing it and its first token.

Per task: (wall time - the sum of the direct replays of its calls) / its calls, and the same with
the calls' durations as the proxy saw them; for ``/stream`` tasks, the first answer word's time
through ``/stream`` against the same request sent directly, and against the moment the proxy saw
that word come from the server. Completion tokens both ways, so a reader can see how comparable
a replay was (the body is sent as recorded: same sampling settings, not necessarily same tokens).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import msgspec

from bench.loadgen import summarize
from bench.procs import HOST
from bench.realproxy import CALL_PATH, SSEReader
from victoria.gateway.answer_stream import AnswerStream

DEFAULT_URL: Final = "http://127.0.0.1:18181"
DEFAULT_MODEL: Final = "smollm2"
MAX_STEPS: Final = 3  # steps of one task: bounds its calls on a model that rarely says "finish"
TASK_LIMIT: Final = 600.0  # seconds, one task
STATUS_LAG_LIMIT: Final = 5.0  # seconds the status may take to say what the events said
TERMINAL: Final = ("completed", "failed", "cancelled")
GAP: Final = 0.5  # seconds between tasks, so no call of one overlaps the next
GOALS: Final = (
    ("en", "What is the capital of France? Answer in one sentence."),
    ("ru", "Какая столица у Франции? Ответь одним предложением."),
    ("en", "Name three colours of the rainbow."),
    ("ru", "Назови три цвета радуги."),
    ("en", "Greet the user in a friendly way, in one short sentence."),
    ("ru", "Поприветствуй пользователя одной короткой фразой."),
    ("en", "What is two plus two? Answer with the number."),
    ("ru", "Сколько будет два плюс два? Ответь числом."),
)
_decode = msgspec.json.Decoder()


def via(i: int) -> str:
    """``run`` or ``stream`` for the i-th goal: each way gets English and Russian goals."""
    return "stream" if i % 4 in (1, 2) else "run"


@dataclass
class Task:
    index: int
    lang: str
    goal: str
    via: str
    started_at: float = 0.0
    ended_at: float = 0.0
    task_id: str = ""
    status: str = "?"
    first_chunk_at: float | None = None
    first_chunk: str = ""
    chunks: int = 0
    error: str | None = None
    first_tokens: dict[str, float] = field(default_factory=dict)
    """request id -> when its first words reached this client as ``event: token_chunk``."""
    events_ended_at: float = 0.0
    status_lag_s: float | None = None
    """From the terminal event on ``/run/{id}/events`` to ``/run/status`` saying it ended."""


# --- driving Victoria ------------------------------------------------------------------------------
async def run_tasks(port: int, *, model: str, count: int) -> list[Task]:
    """The first ``count`` goals, one task at a time, each submitted as soon as the last one ended."""
    tasks = []
    timeout = aiohttp.ClientTimeout(total=TASK_LIMIT, sock_read=TASK_LIMIT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for i in range(count):
            lang, text = GOALS[i % len(GOALS)]
            task = Task(i, lang, text, via(i))
            body = {"goal": text, "task_type": "agent", "model": model, "max_steps": MAX_STEPS}
            try:
                if task.via == "stream":
                    await _stream(http, port, body, task)
                else:
                    await _run(http, port, body, task)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                task.error = f"{type(exc).__name__}: {exc}"
                task.ended_at = time.monotonic()
            tasks.append(task)
            await asyncio.sleep(GAP)
    return tasks


async def _run(http: aiohttp.ClientSession, port: int, body: dict[str, Any], task: Task) -> None:
    """``POST /run?async_mode=true``, then the task's events until the terminal one."""
    base = f"http://{HOST}:{port}"
    task.started_at = time.monotonic()
    async with http.post(f"{base}/run?async_mode=true", json=body) as response:
        if response.status != 202:
            raise ValueError(f"POST /run: HTTP {response.status}: {(await response.text())[:200]}")
        task.task_id = str((await response.json())["task_id"])
    await _follow(http, base, task)
    task.ended_at = task.events_ended_at
    # The events route closes on the terminal event; the status may say so a moment later.
    deadline = time.monotonic() + STATUS_LAG_LIMIT
    while True:
        async with http.get(f"{base}/run/status/{task.task_id}") as response:
            task.status = str((await response.json()).get("status"))
        if task.status in TERMINAL or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    task.status_lag_s = time.monotonic() - task.ended_at


async def _follow(http: aiohttp.ClientSession, base: str, task: Task) -> None:
    """``GET /run/{id}/events`` until it closes: when each request's first words came, and when
    the last stored event (the terminal one) did."""
    async with http.get(f"{base}/run/{task.task_id}/events") as events:
        kind = b""
        async for line in events.content:
            now = time.monotonic()
            if line.startswith(b"event:"):
                kind = line[6:].strip()
            elif line.startswith(b"data:"):
                if kind == b"token_chunk":
                    chunk = _decode.decode(line[5:])
                    if chunk.get("text"):
                        task.first_tokens.setdefault(str(chunk.get("request_id")), now)
                else:
                    task.events_ended_at = now
            elif not line.strip():
                kind = b""


async def _stream(http: aiohttp.ClientSession, port: int, body: dict[str, Any], task: Task) -> None:
    """``POST /stream``: the time of its first ``chunk`` line, and of its ``end`` line."""
    base = f"http://{HOST}:{port}"
    follower: asyncio.Task[None] | None = None
    task.started_at = time.monotonic()
    async with http.post(f"{base}/stream", json=body) as response:
        if response.status != 200:
            raise ValueError(f"POST /stream: HTTP {response.status}: {(await response.text())[:200]}")
        async for line in response.content:
            if not line.startswith(b"data:"):
                continue
            now = time.monotonic()
            event = _decode.decode(line[5:])
            kind = event.get("type")
            if kind == "start":
                task.task_id = str(event.get("task_id"))
                # /stream sends only the answer's words; the events route sends every call's.
                follower = asyncio.create_task(_follow(http, base, task))
            elif kind == "chunk":
                task.chunks += 1
                if task.first_chunk_at is None:
                    task.first_chunk_at = now
                    task.first_chunk = str(event.get("content"))
            elif kind == "end":
                task.ended_at = now
                task.status = {"success": "completed"}.get(str(event.get("status")), str(event.get("status")))
    if follower is not None:
        await asyncio.wait_for(follower, TASK_LIMIT)


# --- the direct replay -----------------------------------------------------------------------------
async def replay(url: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every recorded body, as it was, straight to the server, one after the other."""
    out = []
    timeout = aiohttp.ClientTimeout(total=TASK_LIMIT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for call in calls:
            reader = SSEReader()
            first_byte: float | None = None
            sent = time.monotonic()
            error = None
            try:
                async with http.post(
                    url.rstrip("/") + CALL_PATH,
                    data=call["body"].encode(),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    async for data in response.content.iter_any():
                        now = time.monotonic()
                        first_byte = first_byte or now
                        reader.feed(now, data)
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            end = time.monotonic()
            reader.close(end)
            out.append(
                {
                    "sent_at": sent,
                    "first_byte_at": first_byte,
                    "first_content_at": reader.deltas[0][0] if reader.deltas else None,
                    "end_at": end,
                    "deltas": reader.deltas,
                    "completion_tokens": reader.completion_tokens,
                    "content_pieces": len(reader.deltas),
                    "finish_reason": reader.finish_reason,
                    "error": error,
                }
            )
    return out


# --- figures ---------------------------------------------------------------------------------------
def answer_word_at(deltas: list[tuple[float, str]] | list[list[Any]]) -> float | None:
    """When the first word of the answer came (what ``/stream`` sends as its first ``chunk``)."""
    words = AnswerStream()
    for at, text in deltas:
        if words.feed(str(text)):
            return float(at)
    return None


def _tokens(call: dict[str, Any]) -> int:
    value = call.get("completion_tokens")
    return int(value) if isinstance(value, int) else int(call.get("content_pieces") or 0)


def _direct_for_live_tokens(call: dict[str, Any], again: dict[str, Any]) -> float:
    """The replay's time scaled to the live call's length: its time to first token, then its
    time per token for as many tokens as the live call wrote."""
    whole = float(again["end_at"] - again["sent_at"])
    first, pieces = again["first_content_at"], int(again["content_pieces"])
    if first is None or pieces < 2:
        return whole
    per_token = (again["deltas"][-1][0] - first) / (pieces - 1)
    tail = again["end_at"] - again["deltas"][-1][0]  # usage and [DONE] after the last word
    return float(first - again["sent_at"] + per_token * max(0, int(call["content_pieces"]) - 1) + tail)


def figures(tasks: list[Task], calls: list[dict[str, Any]], direct: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-task figures and their p50/p99 (``calls`` as the proxy recorded them, ``direct`` their
    replays, in the same order)."""
    rows = []
    series: dict[str, list[float]] = {
        name: []
        for name in (
            "overhead_per_call_direct",
            "overhead_per_call_direct_adjusted",
            "overhead_per_call_proxy",
            "ttft_vs_direct",
            "ttft_vs_proxy",
            "submit_to_first_call",
            "between_calls",
            "last_call_to_end",
            "token_latency",
            "server_ttft_live_minus_direct",
            "stream_first_chunk",
            "stream_answer_word_vs_proxy",
        )
    }
    for task in tasks:
        mine = [
            (c, d)
            for c, d in zip(calls, direct, strict=True)
            if task.started_at <= c["at"] <= (task.ended_at or float("inf"))
        ]
        wall = task.ended_at - task.started_at
        row: dict[str, Any] = {
            "index": task.index,
            "lang": task.lang,
            "via": task.via,
            "task_id": task.task_id,
            "status": task.status,
            "error": task.error,
            "wall_s": round(wall, 3),
            "calls": len(mine),
            "interrupted_calls": sum(1 for c, _ in mine if c["finish_reason"] is None),
            "calls_overlapped": sum(1 for c, _ in mine if c["overlapped_by"]),
            "upstream_s": [round(c["end_at"] - c["at"], 3) for c, _ in mine],
            "direct_s": [round(d["end_at"] - d["sent_at"], 3) for _, d in mine],
            "tokens_live": [_tokens(c) for c, _ in mine],
            "tokens_direct": [_tokens(d) for _, d in mine],
            "finish_live": [c["finish_reason"] for c, _ in mine],
            "finish_direct": [d["finish_reason"] for _, d in mine],
            "ttft_live_at_proxy_ms": [_ms(c["first_content_at"], c["at"]) for c, _ in mine],
            "ttft_direct_ms": [_ms(d["first_content_at"], d["sent_at"]) for _, d in mine],
        }
        if task.status_lag_s is not None:
            row["status_lag_ms"] = round(task.status_lag_s * 1000, 2)
        if not mine or task.status != "completed" or not task.ended_at:
            rows.append(row)  # a task that failed may end before its last call does
            continue
        n = len(mine)
        # How far the server's own time to first token moves between the live call and its replay:
        # the noise under every comparison with the replays.
        series["server_ttft_live_minus_direct"].extend(
            (c["first_content_at"] - c["at"]) - (d["first_content_at"] - d["sent_at"])
            for c, d in mine
            if c["first_content_at"] is not None and d["first_content_at"] is not None
        )
        for name, model_time in (
            ("overhead_per_call_direct", sum(d["end_at"] - d["sent_at"] for _, d in mine)),
            ("overhead_per_call_direct_adjusted", sum(_direct_for_live_tokens(c, d) for c, d in mine)),
            ("overhead_per_call_proxy", sum(c["end_at"] - c["at"] for c, _ in mine)),
        ):
            series[name].append((wall - model_time) / n)
            row[f"{name}_ms"] = round((wall - model_time) / n * 1000, 2)
        first_call, first_again = mine[0]
        series["submit_to_first_call"].append(first_call["at"] - task.started_at)
        row["submit_to_first_call_ms"] = _ms(first_call["at"], task.started_at)
        # The rest of the proxy-observed overhead: from one call's end to the next one's start,
        # and from the last call's end to the client seeing the task end.
        gaps = [b["at"] - a["end_at"] for (a, _), (b, _) in itertools.pairwise(mine)]
        series["between_calls"].extend(gaps)
        row["between_calls_ms"] = [round(gap * 1000, 2) for gap in gaps]
        series["last_call_to_end"].append(task.ended_at - mine[-1][0]["end_at"])
        row["last_call_to_end_ms"] = _ms(task.ended_at, mine[-1][0]["end_at"])
        # The client's first model words (``event: token_chunk``), against the same request's
        # first token: at the proxy (live), and sent directly (the replay).
        seen = sorted(task.first_tokens.values())
        if seen and first_call["first_content_at"] is not None:
            client = seen[0] - task.started_at
            row["ttft_client_ms"] = round(client * 1000, 2)
            live = first_call["first_content_at"] - first_call["at"]
            series["ttft_vs_proxy"].append(client - live)
            row["ttft_vs_proxy_ms"] = round((client - live) * 1000, 2)
            if first_again["first_content_at"] is not None:
                alone = first_again["first_content_at"] - first_again["sent_at"]
                series["ttft_vs_direct"].append(client - alone)
                row["ttft_vs_direct_ms"] = round((client - alone) * 1000, 2)
        if len(seen) == n:  # each call's first words, to the client, after the proxy saw them
            lags = [at - c["first_content_at"] for at, (c, _) in zip(seen, mine, strict=True) if c["deltas"]]
            series["token_latency"].extend(lags)
            row["token_latency_ms"] = [round(lag * 1000, 2) for lag in lags]
        if task.via == "stream" and task.first_chunk_at is not None:
            series["stream_first_chunk"].append(task.first_chunk_at - task.started_at)
            row["stream_first_chunk_ms"] = _ms(task.first_chunk_at, task.started_at)
            row["first_chunk"] = task.first_chunk[:80]
            before = [c for c, _ in mine if c["at"] <= task.first_chunk_at]
            word_at = answer_word_at(before[-1]["deltas"]) if before else None
            if word_at is not None and word_at <= task.first_chunk_at:
                row["first_chunk_from_call"] = len(before)
                series["stream_answer_word_vs_proxy"].append(task.first_chunk_at - word_at)
                row["stream_answer_word_vs_proxy_ms"] = round((task.first_chunk_at - word_at) * 1000, 2)
            else:
                row["first_chunk_from_call"] = None  # no reply held an answer: it came with the end
        rows.append(row)
    same = sum(
        1
        for c, d in zip(calls, direct, strict=True)
        if "".join(t for _, t in c["deltas"]) == "".join(t for _, t in d["deltas"])
    )
    return {
        "tasks": len(tasks),
        "completed": sum(1 for t in tasks if t.status == "completed"),
        "calls": len(calls),
        "calls_interrupted_live": sum(1 for c in calls if c["finish_reason"] is None),
        "calls_interrupted_direct": sum(1 for d in direct if d["finish_reason"] is None),
        "calls_same_text_both_ways": same,
        "completion_tokens": {"live": sum(map(_tokens, calls)), "direct": sum(map(_tokens, direct))},
        "model_seconds": {
            "live_at_proxy": round(sum(c["end_at"] - c["at"] for c in calls), 2),
            "direct": round(sum(d["end_at"] - d["sent_at"] for d in direct), 2),
        },
        **{name: summarize(values) for name, values in series.items()},
        "per_task": rows,
    }


def _ms(end: float | None, start: float) -> float | None:
    return None if end is None else round((end - start) * 1000, 2)


def probe_figures(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """The requests that were not calls: how many, which, and how many came while a call streamed."""
    paths: dict[str, int] = {}
    for p in probes:
        key = f"{p['method']} {p['path']}"
        paths[key] = paths.get(key, 0) + 1
    return {
        "requests": len(probes),
        "by_path": paths,
        "during_a_call": sum(1 for p in probes if p["during_call"]),
        "during_a_call_paths": sorted({f"{p['method']} {p['path']}" for p in probes if p["during_call"]}),
    }
