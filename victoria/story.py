"""``victoria watch TASK_ID``: one task's whole story in the terminal, followed to its end.

Read from the gateway over HTTP (``GET /run/{id}/status``, ``/events``, ``/logs``), as
``victoria run`` does: it needs only the gateway's URL and token (``VICTORIA_URL``,
``VICTORIA_API_TOKEN``), not NATS credentials, so it works from any machine that can reach the
gateway, and what it prints is what the dashboard shows. Stages, attempts (and the crash between
two), each model call with its model, duration and tokens and its words as they are written, each
tool call and its result, then the log records and the output or error.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from typing import Any, Final

import httpx

from victoria.client import SSE_READ_TIMEOUT, TERMINAL, Gateway, _error, _unreachable

CONNECT_TIMEOUT: Final = 5.0  # seconds
_TASK_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_task_id(argument: str) -> bool:
    """A task id (32 hex digits, or any id of letters, digits, ``-`` and ``_``), not a subject:
    subjects here always have dots (``victoria.>``) or wildcards."""
    return bool(_TASK_ID.fullmatch(argument))


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class _Story:
    def __init__(self) -> None:
        self.start: datetime | None = None
        self.attempt = 0
        self.in_words = False
        self.stage: str | None = None

    def at(self, event: dict[str, Any]) -> str:
        try:
            ts = datetime.fromisoformat(str(event.get("ts")).replace("Z", "+00:00"))
        except ValueError:
            return "        "
        if self.start is None:
            self.start = ts
        return f"{(ts - self.start).total_seconds():7.1f}s"

    def line(self, event: dict[str, Any], text: str) -> None:
        self.end_words()
        _out(f"{self.at(event)}  {text}")

    def end_words(self) -> None:
        if self.in_words:
            _out()
            self.in_words = False

    def attempt_of(self, event: dict[str, Any]) -> None:
        attempt = event.get("attempt")
        if not isinstance(attempt, int) or attempt <= self.attempt:
            return
        if self.attempt:
            self.line(event, f"attempt {self.attempt} ended without a result (its process stopped); resumed")
        self.attempt = attempt
        self.line(event, f"attempt {attempt} on {event.get('instance') or '?'}")

    def stage_of(self, event: dict[str, Any]) -> None:
        step = event.get("step")
        stage = f"step {step}" if step is not None else event.get("stage")
        if stage is None or (stage == self.stage and event.get("type") == "llm_requested"):
            return
        self.stage = str(stage)
        detail = event.get("detail")
        self.line(event, self.stage + (f": {detail}" if detail else ""))

    def event(self, kind: str, event: dict[str, Any]) -> None:
        if kind == "token_chunk":
            text = str(event.get("text") or "")
            if text:
                if not self.in_words:
                    sys.stdout.write(f"{self.at(event)}      ")
                    self.in_words = True
                sys.stdout.write(text.replace("\n", " "))
                sys.stdout.flush()
            return
        if kind == "task_submitted":
            self.line(event, f"queued: {event.get('goal')}")
        elif kind == "task_started":
            self.attempt_of(event)
        elif kind == "task_stage":
            self.stage_of(event)
        elif kind == "llm_requested":
            self.attempt_of(event)
            self.stage_of(event)
            model = f" ({event['model']})" if event.get("model") else ""
            self.line(event, f"  model call {event.get('request_id')}: {event.get('purpose')}{model}")
        elif kind == "llm_result":
            tokens = ""
            if event.get("prompt_tokens") is not None or event.get("completion_tokens") is not None:
                tokens = f", {event.get('prompt_tokens')} + {event.get('completion_tokens')} tokens"
            outcome = "answered" if event.get("ok") else f"failed: {event.get('error')}"
            self.line(
                event,
                f"  model {outcome} in {float(event.get('duration_s') or 0):.2f}s "
                f"({event.get('model') or '?'}{tokens})",
            )
        elif kind == "tool_intent":
            args = " ".join(f"{k}={str(v)[:80]}" for k, v in (event.get("args") or {}).items())
            self.line(event, f"  tool {event.get('tool')} {args} ({event.get('effect')})")
        elif kind == "tool_outcome":
            result = "ok" if event.get("ok") else f"failed: {event.get('error')}"
            if event.get("exit_code") is not None:
                result += f" (exit {event['exit_code']})"
            self.line(
                event,
                f"  tool {event.get('call_id')}: {result} in {float(event.get('duration_s') or 0):.2f}s",
            )
        elif kind == "tool_result":
            args = " ".join(f"{k}={v}" for k, v in (event.get("args") or {}).items())
            result = "ok" if event.get("ok") else f"failed: {event.get('error')}"
            self.line(event, f"  tool {event.get('tool')} {args}: {result}")
        elif kind == "task_cancel_requested":
            self.line(event, f"cancel requested: {event.get('reason')}")
        elif kind in ("task_completed", "task_failed", "task_cancelled"):
            self.line(event, kind.removeprefix("task_"))


def watch_task(gateway: Gateway, task_id: str) -> int:
    """Print the task's story from the first event, follow it to its end, then its log and result."""
    base = gateway.base
    story = _Story()
    try:
        with gateway.client(httpx.Timeout(CONNECT_TIMEOUT, read=SSE_READ_TIMEOUT)) as http:
            status = http.get(f"{base}/run/status/{task_id}")
            if status.status_code != 200:
                return _error(status)
            trace = status.json().get("trace_id")
            _out(f"task {task_id}" + (f"  trace {trace}" if trace else ""))
            with http.stream("GET", f"{base}/run/{task_id}/events") as response:
                if response.status_code != 200:
                    response.read()
                    return _error(response)
                kind = "message"
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:].strip()
                    elif line.startswith("data: "):
                        story.event(kind, json.loads(line[6:]))
                    elif not line:
                        kind = "message"
            story.end_words()
            logs = http.get(f"{base}/run/{task_id}/logs")
            final = http.get(f"{base}/run/status/{task_id}").json()
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    if logs.status_code == 200 and logs.json()["records"]:
        _out("\nlog:")
        for record in logs.json()["records"]:
            _out(
                f"  {record['ts'][11:23]} {record['actor']}/{record['instance']} {record['level']}: {record['message']}"
            )
    _out()
    if final["status"] == "completed":
        _out(final.get("output") or "")
    else:
        _out(f"{final['status']}: {final.get('error') or ''}")
    return 0 if final["status"] in TERMINAL else 1
