"""``victoria run``, ``status``, ``cancel``, ``runs`` and ``tools``: small HTTP clients of the gateway."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

import httpx

CONNECT_TIMEOUT: Final = 5.0  # seconds
SSE_READ_TIMEOUT: Final = 60.0  # seconds; the gateway sends a keep-alive every 10 s
FINAL_STATUS_WAIT: Final = 5.0  # seconds the status may lag the stream's last event
TERMINAL: Final = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class Gateway:
    """Where the gateway is, and the token it asks for (``VICTORIA_API_TOKEN``). Credentials in
    the URL (``http://victoria:TOKEN@host:8010``) are sent as HTTP Basic auth by httpx."""

    base: str
    token: str | None = field(default=None, repr=False)

    def client(self, timeout: float | httpx.Timeout = CONNECT_TIMEOUT) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return httpx.Client(timeout=timeout, headers=headers)


def _print(text: str) -> None:
    print(text, flush=True)


def _error(response: httpx.Response) -> int:
    try:
        body = response.json()
        detail = body.get("detail") or body
    except ValueError:
        detail = response.text
    print(f"victoria: HTTP {response.status_code}: {detail}", file=sys.stderr)
    return 1


def _unreachable(base: str, exc: Exception) -> int:
    print(f"victoria: cannot reach the gateway at {base}: {exc}", file=sys.stderr)
    return 1


def run(gateway: Gateway, body: dict[str, Any], *, follow: bool, as_json: bool) -> int:
    base = gateway.base
    started = time.monotonic()
    try:
        with gateway.client(httpx.Timeout(CONNECT_TIMEOUT, read=SSE_READ_TIMEOUT)) as http:
            response = http.post(f"{base}/run", params={"async_mode": "true"}, json=body)
            if response.status_code != 202:
                return _error(response)
            task_id = response.json()["task_id"]
            if not follow:
                _print(task_id)
                return 0
            if not as_json:
                _print(f"task {task_id}")
            _follow(http, base, task_id, started, quiet=as_json)
            # The event stream may end a moment before the status (another read) shows the end.
            deadline = time.monotonic() + FINAL_STATUS_WAIT
            while True:
                final = http.get(f"{base}/run/status/{task_id}")
                if final.status_code != 200:
                    return _error(final)
                status = final.json()
                if status["status"] in TERMINAL or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    if as_json:
        _print(json.dumps(status, ensure_ascii=False, indent=2))
    else:
        _print("")
        if status["status"] == "completed":
            _print(status.get("output") or "")
        else:
            _print(f"{status['status']}: {status.get('error') or ''}")
    return 0 if status["status"] == "completed" else 1


SYNC_TIMEOUT: Final = 960.0  # seconds: the task deadline (900 s) and then some, as the old clients wait


def run_sync(gateway: Gateway, body: dict[str, Any], *, as_json: bool) -> int:
    """One synchronous ``POST /run``, as the old server's clients make it: its ``TaskResponse``."""
    base = gateway.base
    try:
        with gateway.client(httpx.Timeout(CONNECT_TIMEOUT, read=SYNC_TIMEOUT)) as http:
            response = http.post(f"{base}/run", json=body)
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    if response.status_code not in (200, 202):
        return _error(response)
    answer = response.json()
    if as_json:
        _print(json.dumps(answer, ensure_ascii=False, indent=2))
    elif answer["status"] == "success":
        _print(answer.get("output") or "")
    elif answer["status"] == "needs_clarification":
        _print("\n".join(answer.get("clarification_questions") or []))
    else:
        _print(f"{answer['status']}: {answer.get('error') or answer.get('message') or ''}")
    return 0 if answer["status"] in ("success", "needs_clarification") else 1


def _follow(http: httpx.Client, base: str, task_id: str, started: float, *, quiet: bool) -> None:
    """Print each stage as it happens, and the model's words as they are written, until the end."""
    with http.stream("GET", f"{base}/run/{task_id}/events") as response:
        if response.status_code != 200:
            return
        kind = "message"
        in_tokens = False
        repeats: set[str] = set()
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:].strip()
                continue
            if not line.startswith("data: "):
                if not line:
                    kind = "message"
                continue
            event = json.loads(line[6:])
            if kind == "token_chunk":
                if not quiet and event.get("text"):
                    if not in_tokens:
                        sys.stdout.write(f"{time.monotonic() - started:7.1f}s    ")
                        in_tokens = True
                    sys.stdout.write(str(event["text"]).replace("\n", " "))
                    sys.stdout.flush()
                if event.get("done") and in_tokens:
                    sys.stdout.write("\n")
                    in_tokens = False
                continue
            if in_tokens:
                sys.stdout.write("\n")
                in_tokens = False
            if not quiet:
                for text in describe(event):
                    if text in repeats:
                        continue  # the same failure again (an unreachable server, asked again)
                    if text.startswith(("  model call failed", "waiting_for_model")):
                        repeats.add(text)
                    _print(f"{time.monotonic() - started:7.1f}s  {text}")
            if event.get("type") in ("task_completed", "task_failed", "task_cancelled"):
                return


def describe(event: dict[str, Any]) -> list[str]:
    """The lines ``victoria run`` and ``watch`` print for one event (none for most model requests)."""
    kind = event.get("type")
    if kind == "task_submitted":
        return ["queued"]
    if kind == "task_started":
        return [_started(event)]
    if kind == "task_stage":
        return [_stage(event)]
    if kind == "llm_requested":  # the first request of a stage, or of attempt 1, records its start
        lines = [_started(event)] if event.get("attempt") is not None else []
        return lines + ([_stage(event)] if event.get("stage") is not None else [])
    if kind == "llm_result":
        if event.get("ok"):
            said = f"  model answered in {event.get('duration_s', 0):.2f}s ({event.get('model')})"
            if event.get("finish_reason") == "length":
                said += f", cut at its cap of {event.get('max_tokens')} tokens"
            elif event.get("finish_reason") == "interrupted":
                said += ", ended early by the server"
            if event.get("trimmed"):
                said += f"; {event['trimmed']}"
            return [said]
        if event.get("error_kind") == "unavailable":
            return []  # the stage waiting_for_model that follows says it
        return [f"  model call failed: {event.get('error')}"]
    if kind == "tool_result":
        path = event.get("args", {}).get("path", "")
        return [f"  {event.get('tool')} {path}: {'ok' if event.get('ok') else event.get('error')}"]
    if kind == "tool_intent":  # its outcome's line follows
        return []
    if kind == "tool_outcome":
        said = "ok" if event.get("ok") else str(event.get("error"))
        if event.get("exit_code") is not None:
            said += f" (exit {event['exit_code']})"
        return [
            f"  {event.get('tool')} {event.get('call_id')}: {said} in {float(event.get('duration_s') or 0):.2f}s"
        ]
    if kind == "task_cancel_requested":
        return ["cancel requested"]
    if kind == "model_wait":  # not stored: the runner's word that a call waits for its model
        if not event.get("waiting", True):
            if not event.get("server_up", True):
                return [f"  no server of {event.get('model')} answers; the call tries {event.get('server')}"]
            return [f"  {event.get('model')} loaded: the call goes to {event.get('server')}"]
        return [f"waiting_for_model {event.get('model')} (place {event.get('place')})"]
    if kind in ("task_completed", "task_failed", "task_cancelled"):
        return [str(kind).removeprefix("task_")]
    return []


def _started(event: dict[str, Any]) -> str:
    return f"running (attempt {event.get('attempt')}, {event.get('instance')})"


def _stage(event: dict[str, Any]) -> str:
    step = event.get("step")
    stage = f"step {step}" if step is not None else str(event.get("stage"))
    detail = event.get("detail")
    return f"{stage}" + (f": {detail}" if detail else "")


def status(gateway: Gateway, task_id: str) -> int:
    return _show(gateway, "GET", f"/run/status/{task_id}", ok=(200,))


def cancel(gateway: Gateway, task_id: str) -> int:
    return _show(gateway, "POST", f"/run/{task_id}/cancel", ok=(200, 202))


def decide(gateway: Gateway, task_id: str, approval_id: str | None, decision: str, reason: str) -> int:
    """``victoria approve`` / ``deny``: the decision on one call that waits; without ``approval_id``
    the task's only waiting call (with several, they are listed and nothing is decided)."""
    base = gateway.base
    try:
        with gateway.client() as http:
            if approval_id is None:
                found = http.get(f"{base}/run/status/{task_id}")
                if found.status_code != 200:
                    return _error(found)
                pending = found.json().get("pending_approvals") or []
                if len(pending) != 1:
                    what = "no call waits" if not pending else f"{len(pending)} calls wait; name one"
                    print(f"victoria: task {task_id}: {what}", file=sys.stderr)
                    for call in pending:
                        args = json.dumps(call["arguments"], ensure_ascii=False)
                        print(f"  {call['id']}  {call['tool']} {args}", file=sys.stderr)
                    return 1
                approval_id = str(pending[0]["id"])
            response = http.post(
                f"{base}/run/{task_id}/approvals/{approval_id}", json={"decision": decision, "reason": reason}
            )
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code == 409:
        print(
            f"victoria: {approval_id} was decided before: {body.get('decision')} by {body.get('by')}",
            file=sys.stderr,
        )
        return 1
    if response.status_code != 200:
        return _error(response)
    said = f": {body['reason']}" if body.get("reason") else ""
    _print(f"{task_id} {approval_id}: {body['decision']} by {body['by']}{said}")
    return 0


def _show(gateway: Gateway, method: str, path: str, *, ok: tuple[int, ...]) -> int:
    """Print the JSON answer of one request; 0 when its status is one of ``ok``."""
    base = gateway.base
    try:
        with gateway.client() as http:
            response = http.request(method, f"{base}{path}")
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    if response.status_code not in ok:
        return _error(response)
    _print(json.dumps(response.json(), ensure_ascii=False, indent=2))
    return 0


def _fetch(
    gateway: Gateway, path: str, params: dict[str, Any] | None = None, *, as_json: bool
) -> dict[str, Any] | int:
    """``GET path``'s JSON body, for the caller to print; or the exit status: 1 when it failed
    (said on stderr), 0 when ``as_json`` printed it as it came."""
    base = gateway.base
    try:
        with gateway.client() as http:
            response = http.get(f"{base}{path}", params=params)
    except httpx.HTTPError as exc:
        return _unreachable(base, exc)
    if response.status_code != 200:
        return _error(response)
    body: dict[str, Any] = response.json()
    if as_json:
        _print(json.dumps(body, ensure_ascii=False, indent=2))
        return 0
    return body


def runs(gateway: Gateway, params: dict[str, Any], *, as_json: bool) -> int:
    """``victoria runs``: the task history, newest first, one line each."""
    body = _fetch(gateway, "/runs", params, as_json=as_json)
    if not isinstance(body, dict):
        return body
    for run in body["runs"]:
        goal = " ".join(str(run["goal"]).split())[:60]
        project = f" [{run['project']}]" if run.get("project") else ""
        _print(f"{run['created_at'][:19]}  {run['task_id']}  {run['status']:<9}  {goal}{project}")
    return 0


def tools(gateway: Gateway, *, as_json: bool) -> int:
    """``victoria tools``: the tools the model may call (``GET /tools``), one line each: name,
    effect, whether its calls wait for a person's yes, description."""
    body = _fetch(gateway, "/tools", as_json=as_json)
    if not isinstance(body, dict):
        return body
    rows = [("name", "effect", "approval", "description")]
    for tool in body["tools"]:
        source = tool.get("source", "builtin")
        name = tool["name"] if source == "builtin" else f"{tool['name']} ({source})"
        approval = "needed" if tool["needs_approval"] else "-"
        rows.append((name, tool["effect"], approval, " ".join(str(tool["description"]).split())))
    widths = [max(len(row[n]) for row in rows) for n in range(3)]
    for *cells, description in rows:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        _print("  ".join([*padded, description]))
    needed = body.get("approvals_needed") or []
    if needed:
        _print(f"\ncalls of effect {', '.join(needed)} wait for a person's yes")
    return 0
