"""The design Victoria replaces, as the benchmark's baseline: one process, no durability.

Each task is an asyncio task that makes the same three model calls as Victoria's agent run
(understand, plan, step 1) over HTTP to the same model server, with the same prompts (streamed
with ``--stream``, as Victoria's runner asks for them) and the same HTTP client (aiohttp, one
session with a connection pool, as the runner's); its status
lives in a dict. The HTTP surface is the gateway's, on the same stack (Starlette served by uvicorn
with uvloop and httptools): ``POST /run`` (``?async_mode=true`` answers 202 at once, otherwise it
waits up to ``?wait=`` seconds for the task and answers 200 with the status, or 202),
``GET /run/status/{task_id}`` and ``GET /health``. A crash loses every task it holds.

Run: ``python -m bench.baseline --port 8020 --model-url http://127.0.0.1:11434``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from victoria.actors.agent import workflow

# The very prompts of Victoria's agent run, so both systems send the model the same work.
SYSTEM: Final = workflow.SYSTEM
MAX_STEPS: Final = 8
MAX_WAIT: Final = 300.0
TERMINAL: Final = ("completed", "failed", "cancelled")

_json = msgspec.json.Encoder()


class Body(msgspec.Struct):
    goal: str
    task_type: str | None = None
    max_steps: int | None = None
    model: str | None = None


def now() -> str:
    return datetime.now(UTC).isoformat()


def chat_body(model: str, messages: list[dict[str, str]], *, json_mode: bool, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if json_mode:
        body["format"] = "json"
    return body


async def post_chat(http: aiohttp.ClientSession, body: dict[str, Any], *, stream: bool) -> str:
    """One Ollama ``/api/chat`` call with aiohttp (Victoria's runner's client): the reply's text."""
    async with http.post(
        "/api/chat", data=_json.encode(body), headers={"content-type": "application/json"}
    ) as response:
        response.raise_for_status()
        if not stream:
            data = msgspec.json.decode(await response.read())
            return str(data.get("message", {}).get("content", ""))
        parts: list[str] = []
        async for raw in response.content:
            piece, done = stream_piece(raw.decode("utf-8", "replace"))
            parts.append(piece)
            if done:
                break
        return "".join(parts)


def stream_piece(line: str) -> tuple[str, bool]:
    """(content, done) of one NDJSON line of an Ollama stream."""
    if not line.strip():
        return "", False
    data = msgspec.json.decode(line)
    return str((data.get("message") or {}).get("content") or ""), bool(data.get("done"))


class Baseline:
    def __init__(self, model_url: str, model: str, concurrency: int, *, stream: bool) -> None:
        self.model_url = model_url
        self.concurrency = concurrency
        self._http: aiohttp.ClientSession | None = None
        self.model = model
        self.stream = stream
        self.status: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def http(self) -> aiohttp.ClientSession:
        """The runner's settings: one session, a pool of ``concurrency`` connections, no timeout of
        its own (the model's answer time is what it is)."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                base_url=self.model_url,
                connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=None),
                read_bufsize=1 << 20,
            )
        return self._http

    async def ask(self, messages: list[dict[str, str]], *, json_mode: bool = False) -> str:
        body = chat_body(self.model, messages, json_mode=json_mode, stream=self.stream)
        return await post_chat(self.http, body, stream=self.stream)

    async def run_task(self, task_id: str, goal: str, max_steps: int) -> None:
        state = self.status[task_id]
        state.update(status="running", stage="understanding", updated_at=now())
        try:
            understanding = await self.ask(
                [{"role": "system", "content": SYSTEM["understand"]}, {"role": "user", "content": goal}]
            )
            state.update(stage="planning", updated_at=now())
            plan = await self.ask(
                [
                    {"role": "system", "content": SYSTEM["plan"].format(max_steps=max_steps)},
                    {"role": "user", "content": f"Goal: {goal}\n\nWhat is asked: {understanding}"},
                ]
            )
            state.update(stage="step", step=1, updated_at=now())
            reply = await self.ask(
                [
                    {"role": "system", "content": SYSTEM["step"].format()},
                    {"role": "user", "content": f"Goal: {goal}\n\nPlan:\n{plan}"},
                ],
                json_mode=True,
            )
            try:
                action = json.loads(reply)
                output = str(action["args"]["answer"])
            except (ValueError, KeyError, TypeError):
                output = reply.strip() or plan
            state.update(status="completed", output=output, updated_at=now())
        except Exception as exc:  # a failed task is a status, never a crash
            state.update(status="failed", error=f"{type(exc).__name__}: {exc}", updated_at=now())
        finally:
            self.tasks.pop(task_id, None)

    def submit(self, body: Body) -> str:
        task_id = uuid.uuid4().hex
        stamp = now()
        self.status[task_id] = {
            "task_id": task_id,
            "status": "queued",
            "stage": None,
            "output": None,
            "error": None,
            "attempts": 1,
            "created_at": stamp,
            "updated_at": stamp,
        }
        self.tasks[task_id] = asyncio.create_task(
            self.run_task(task_id, body.goal, body.max_steps or MAX_STEPS)
        )
        return task_id


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json.encode(body), status_code=status, media_type="application/json")


def create_app(baseline: Baseline) -> Starlette:
    async def health(request: Request) -> Response:
        return json_response({"status": "ok"})

    async def run(request: Request) -> Response:
        try:
            body = msgspec.json.decode(await request.body(), type=Body)
        except msgspec.DecodeError as exc:
            return json_response({"error": "bad_request", "detail": str(exc)}, 422)
        async_mode = request.query_params.get("async_mode", "").lower() in ("1", "true", "yes")
        wait = min(float(request.query_params.get("wait") or 30.0), MAX_WAIT)
        task_id = baseline.submit(body)
        accepted = {"task_id": task_id, "status": "queued", "status_url": f"/run/status/{task_id}"}
        if async_mode:
            return json_response(accepted, 202)
        task = baseline.tasks.get(task_id)
        if task is not None:
            await asyncio.wait({task}, timeout=wait)
        state = baseline.status[task_id]
        if state["status"] == "completed":  # the old server's TaskResponse, as Victoria's gateway answers
            return json_response({"status": "success", "output": state["output"], "task_id": task_id}, 200)
        if state["status"] in TERMINAL:
            return json_response(state, 200)
        accepted["status"] = state["status"]
        return json_response(accepted, 202)

    async def status(request: Request) -> Response:
        task_id = request.path_params["task_id"]
        state = baseline.status.get(task_id)
        if state is None:
            return json_response({"error": "not_found", "detail": f"no task {task_id!r}"}, 404)
        return json_response(state)

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/ready", health, methods=["GET"]),
            Route("/run", run, methods=["POST"]),
            Route("/run/status/{task_id}", status, methods=["GET"]),
        ]
    )


async def serve(host: str, port: int, model_url: str, model: str, concurrency: int, stream: bool) -> None:
    baseline = Baseline(model_url, model, concurrency, stream=stream)
    config = uvicorn.Config(
        create_app(baseline),
        host=host,
        port=port,
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=30,
        backlog=2048,
        loop="uvloop",
        http="httptools",
    )
    server = uvicorn.Server(config)
    print(f"baseline on http://{host}:{port} (model server {model_url}, stream={stream})", flush=True)
    await server.serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8020)
    parser.add_argument("--model-url", default="http://127.0.0.1:11434")
    parser.add_argument("--model", default="llama3.2")
    parser.add_argument("--concurrency", type=int, default=256, help="model calls at once (connections)")
    parser.add_argument("--stream", action="store_true", help="ask the model for streamed answers")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.host, args.port, args.model_url, args.model, args.concurrency, args.stream))


if __name__ == "__main__":
    main()
