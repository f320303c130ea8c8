"""A lean fake model server for the benchmark, run as its own process.

It speaks Ollama's ``/api/chat`` (one JSON answer, or NDJSON lines when the body asks for
``"stream": true``) and OpenAI's ``/v1/chat/completions`` (JSON, or server-sent events when
streaming), over HTTP/1.1 keep-alive on raw asyncio sockets, so it costs little CPU next to what it
serves. Answers mirror ``tests/fakellm.py`` (normal mode): an agent task makes exactly three calls
(understand, plan, step 1 that finishes).

Control and counting, across every process that calls it:

- ``GET /stats``: ``calls``, ``repeated`` (calls whose message list was seen before), ``in_flight``,
  ``max_in_flight``, ``aborted`` (clients gone before the answer), ``streamed`` (calls that asked
  for a stream), ``by_path``, ``delay``.
- ``POST /reset``: zero the counters. ``POST /config`` with ``{"delay": seconds}``: answer delay;
  ``{"load_time": seconds}``: above 0, the server holds one model at a time and takes one call at a
  time, first come first served (as Ollama does with a big model), and a call for a model other
  than the loaded one first costs this long (a swap; ``swaps`` and ``loaded`` in the stats,
  ``/api/ps`` names the loaded model).
- ``POST /config`` with ``{"reads": N, "read_path": "dir/{key}/{n}.txt", "read_key": REGEX}``: a
  task whose first user message matches ``read_key`` (its group 1 is the task's key) gets, for its
  first N step requests, a ``read_file`` call of ``read_path`` (``n`` from 0), then its final answer:
  JSON in text, or the protocol's native ``tool_calls`` when the request has ``tools``. Each of its
  chat requests is recorded on arrival (``GET /arrivals``: key, purpose, steps done, monotonic
  seconds, whether it had ``tools``), so a benchmark can match them with the task's events. ``"reads": 0`` turns it off.

Run alone: ``python -m bench.fakemodel --port 11434 [--delay 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import re
import time
import urllib.request
from collections import Counter
from typing import Any, Final

import msgspec

from bench.loadgen import run_fast
from victoria.events.tools import FINISH, READ_FILE

MAX_HEAD: Final = 64 * 1024  # bytes of request line and headers
MAX_BODY: Final = 16 * 1024 * 1024  # bytes of request body

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()

MODELS: Final = ("fake", "llama3.2", "bench-a", "bench-b")
"""What ``/api/tags`` and ``/v1/models`` list: the default model and W4's two."""
REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 413: "Payload Too Large"}


def answer(messages: list[dict[str, Any]]) -> str:
    """The reply to a chat, as ``tests/fakellm.FakeLLM.answer`` makes it in its normal mode."""
    system = next((m.get("content", "") for m in messages if m.get("role") == "system"), "")
    user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    goal = str(user).removeprefix("Goal: ").split("\n")[0][:80]
    if "carrying out a plan" not in str(system):
        if "numbered plan" in str(system):
            return "1. Look at the goal.\n2. Answer it."
        return json.dumps({"clear": True, "understanding": f"The user wants: {goal}"}, ensure_ascii=False)
    return json.dumps({"tool": FINISH.name, "args": {"answer": f"Done: {goal}"}}, ensure_ascii=False)


class FakeModel:
    def __init__(self, delay: float = 0.0, load_time: float = 0.0) -> None:
        self.delay = delay
        self.load_time = load_time
        self.loaded: str | None = None
        self.swaps = 0
        self.serial = asyncio.Lock()  # FIFO: first come, first served
        self.calls = 0
        self.by_path: Counter[str] = Counter()
        self.seen: set[bytes] = set()
        self.repeated = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.aborted = 0
        self.streamed = 0
        self.reads = 0
        """Step requests of a keyed task answered with a read_file call before its final answer."""
        self.read_path = "{key}/{n}.txt"
        self.read_key: re.Pattern[str] | None = None
        self.arrivals: list[tuple[str, str, int, float, bool]] = []
        """(key, purpose, steps done, time.monotonic(), whether it had ``tools``) of every chat
        request of a keyed task."""

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "repeated": self.repeated,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "aborted": self.aborted,
            "streamed": self.streamed,
            "by_path": dict(self.by_path),
            "delay": self.delay,
            "load_time": self.load_time,
            "loaded": self.loaded,
            "swaps": self.swaps,
        }

    def reset(self) -> None:
        self.calls = 0
        self.by_path.clear()
        self.seen.clear()
        self.repeated = 0
        self.max_in_flight = self.in_flight
        self.aborted = 0
        self.streamed = 0
        self.swaps = 0
        self.arrivals.clear()

    def scripted(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], arrived: float
    ) -> tuple[str, list[dict[str, Any]]] | None:
        """The reply (text, native calls) to a keyed task's request, or None for any other; its
        arrival recorded. A step request is one whose system prompt is the step's or that has
        ``tools``; its steps done are its assistant messages (one per step, either protocol)."""
        if self.reads <= 0 or self.read_key is None:
            return None
        first = next((m for m in messages if m.get("role") == "user"), {})
        found = self.read_key.search(str(first.get("content", "")))
        if found is None:
            return None
        key = found.group(1)
        system = str(next((m.get("content", "") for m in messages if m.get("role") == "system"), ""))
        if "carrying out a plan" not in system and not tools:
            purpose = "plan" if "numbered plan" in system else "understand"
            self.arrivals.append((key, purpose, 0, arrived, bool(tools)))
            return None
        done = sum(1 for m in messages if m.get("role") == "assistant")
        self.arrivals.append((key, "step", done, arrived, bool(tools)))
        offered = {str((t.get("function") or {}).get("name")) for t in tools}
        if done < self.reads:
            args = {"path": self.read_path.format(key=key, n=done)}
            if tools:
                return "", [{"id": f"call_{done}", "name": READ_FILE.name, "arguments": args}]
            return json.dumps({"tool": READ_FILE.name, "args": args}), []
        final = f"Done: read {done} files of {key}"
        if FINISH.name in offered:
            return "", [{"id": f"call_{done}", "name": FINISH.name, "arguments": {"answer": final}}]
        if tools:
            return final, []
        return json.dumps({"tool": FINISH.name, "args": {"answer": final}}), []

    def count(self, path: str, messages: list[dict[str, Any]]) -> None:
        self.calls += 1
        self.by_path[path] += 1
        key = hashlib.blake2b(_encode.encode(messages), digest_size=16).digest()
        if key in self.seen:
            self.repeated += 1
        else:
            self.seen.add(key)

    # --- HTTP ------------------------------------------------------------------------------------
    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request_line, _, header_block = head.decode("latin-1").partition("\r\n")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    return
                method, path, _version = parts
                headers = {}
                for line in header_block.split("\r\n"):
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    await self._send(writer, 413, {"error": "body too large"})
                    return
                body = await reader.readexactly(length) if length else b""
                keep_going = await self.route(writer, method, path.split("?", 1)[0], body)
                if not keep_going or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def route(self, writer: asyncio.StreamWriter, method: str, path: str, body: bytes) -> bool:
        if method == "GET" and path in ("/api/tags", "/v1/models", "/"):
            await self._send(
                writer, 200, {"models": [{"name": n} for n in MODELS], "data": [{"id": n} for n in MODELS]}
            )
            return True
        if method == "GET" and path == "/api/ps":
            loaded = [{"name": self.loaded, "model": self.loaded}] if self.loaded else []
            await self._send(writer, 200, {"models": loaded})
            return True
        if method == "GET" and path == "/arrivals":
            await self._send(writer, 200, {"arrivals": self.arrivals, "clock": "monotonic"})
            return True
        if method == "GET" and path == "/stats":
            await self._send(writer, 200, self.stats())
            return True
        if method == "POST" and path == "/reset":
            self.reset()
            await self._send(writer, 200, self.stats())
            return True
        if method == "POST" and path == "/config":
            try:
                settings = _decode.decode(body or b"{}")
                self.delay = float(settings.get("delay", self.delay))
                self.load_time = float(settings.get("load_time", self.load_time))
                self.reads = int(settings.get("reads", self.reads))
                self.read_path = str(settings.get("read_path", self.read_path))
                if settings.get("read_key"):
                    self.read_key = re.compile(str(settings["read_key"]))
            except (msgspec.DecodeError, AttributeError, TypeError, ValueError, re.error):
                await self._send(writer, 400, {"error": 'expected {"delay": seconds, "load_time": seconds}'})
                return True
            await self._send(writer, 200, self.stats())
            return True
        if method == "POST" and path in ("/api/chat", "/v1/chat/completions"):
            return await self.chat(writer, path, body)
        await self._send(writer, 404, {"error": "not found"})
        return True

    async def chat(self, writer: asyncio.StreamWriter, path: str, body: bytes) -> bool:
        arrived = time.monotonic()
        try:
            request = _decode.decode(body or b"{}")
            messages = list(request.get("messages") or [])
            tools = list(request.get("tools") or [])
        except (msgspec.DecodeError, AttributeError, TypeError):
            await self._send(writer, 400, {"error": "bad JSON"})
            return True
        self.count(path, messages)
        scripted = self.scripted(messages, tools, arrived)
        content, calls = scripted if scripted is not None else (answer(messages), [])
        model = str(request.get("model") or "fake")
        stream = bool(request.get("stream"))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.load_time > 0:
                async with self.serial:  # one model, one call at a time, in arrival order
                    if self.loaded != model:
                        if self.loaded is not None:
                            self.swaps += 1
                        await asyncio.sleep(self.load_time)
                        self.loaded = model
                    await self._reply(writer, path, model, content, stream=stream, calls=calls)
                return True
            await self._reply(writer, path, model, content, stream=stream, calls=calls)
            return True
        except ConnectionError:
            self.aborted += 1
            return False
        finally:
            self.in_flight -= 1

    @staticmethod
    def _whole(
        path: str, model: str, content: str, calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        if calls:
            return _whole_calls(path, model, calls)
        if path == "/api/chat":
            return {
                "model": model,
                "message": {"role": "assistant", "content": content},
                "done": True,
                "prompt_eval_count": 10,
                "eval_count": 5,
            }
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        }

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        path: str,
        model: str,
        content: str,
        *,
        stream: bool,
        calls: list[dict[str, Any]] | None = None,
    ) -> None:
        if stream:
            self.streamed += 1
            if calls:
                await self._stream_calls(writer, path, model, calls)
                return
            await self._stream(writer, path, model, content)
            return
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        await self._send(writer, 200, self._whole(path, model, content, calls))

    async def _stream_calls(
        self, writer: asyncio.StreamWriter, path: str, model: str, calls: list[dict[str, Any]]
    ) -> None:
        """Native tool calls, streamed as the servers send them: Ollama each call whole in a line
        of its own, then its ``done`` line; OpenAI each call in one ``delta.tool_calls`` piece, then
        a chunk with ``finish_reason: tool_calls``, the usage and ``[DONE]``."""
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        ollama = path == "/api/chat"
        media = "application/x-ndjson" if ollama else "text/event-stream"
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {media}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        lines: list[bytes] = []
        if ollama:
            for call in calls:
                message = {"role": "assistant", "content": "", "tool_calls": [_ollama_call(call)]}
                lines.append(_encode.encode({"model": model, "message": message, "done": False}) + b"\n")
            final = {
                "model": model,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 10,
                "eval_count": 5,
            }
            lines.append(_encode.encode(final) + b"\n")
        else:
            for n, call in enumerate(calls):
                delta = {"tool_calls": [{"index": n, **_openai_call(call)}]}
                chunk = {"id": "chatcmpl-fake", "model": model, "choices": [{"index": 0, "delta": delta}]}
                lines.append(b"data: " + _encode.encode(chunk) + b"\n\n")
            end = {
                "id": "chatcmpl-fake",
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
            }
            usage = {
                "id": "chatcmpl-fake",
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }
            lines += [b"data: " + _encode.encode(end) + b"\n\n", b"data: " + _encode.encode(usage) + b"\n\n"]
            lines.append(b"data: [DONE]\n\n")
        writer.write(b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in lines) + b"0\r\n\r\n")
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, path: str, model: str, content: str) -> None:
        """Chunked NDJSON (Ollama) or server-sent events (OpenAI), the delay spread over the pieces."""
        step = max(1, len(content) // 4 + 1)
        pieces = [content[i : i + step] for i in range(0, len(content), step)] or [""]
        ollama = path == "/api/chat"
        media = "application/x-ndjson" if ollama else "text/event-stream"
        writer.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {media}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        lines: list[bytes] = []
        for piece in pieces:
            if ollama:
                lines.append(
                    _encode.encode(
                        {"model": model, "message": {"role": "assistant", "content": piece}, "done": False}
                    )
                    + b"\n"
                )
            else:
                chunk = {
                    "id": "chatcmpl-fake",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": piece}}],
                }
                lines.append(b"data: " + _encode.encode(chunk) + b"\n\n")
        if ollama:
            final = {"model": model, "done": True, "prompt_eval_count": 10, "eval_count": 5}
            lines.append(_encode.encode(final) + b"\n")
        else:
            usage = {
                "id": "chatcmpl-fake",
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            }
            lines.append(b"data: " + _encode.encode(usage) + b"\n\n")
            lines.append(b"data: [DONE]\n\n")
        pause = self.delay / len(pieces) if self.delay > 0 else 0.0
        for i, line in enumerate(lines):
            if pause and i < len(pieces):
                await asyncio.sleep(pause)
            writer.write(b"%x\r\n%s\r\n" % (len(line), line))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
        data = _encode.encode(body)
        writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (status, REASONS.get(status, "OK").encode(), len(data), data)
        )
        await writer.drain()


def _ollama_call(call: dict[str, Any]) -> dict[str, Any]:
    """A call in Ollama's shape (0.12.10 and later, which give it an id): arguments an object."""
    return {"id": call["id"], "function": {"name": call["name"], "arguments": call["arguments"]}}


def _openai_call(call: dict[str, Any]) -> dict[str, Any]:
    """A call in OpenAI's shape: arguments a JSON string."""
    arguments = _encode.encode(call["arguments"]).decode()
    return {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": arguments}}


def _whole_calls(path: str, model: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """An answer not streamed that calls tools, in the protocol's shape."""
    message: dict[str, Any]
    if path == "/api/chat":
        message = {"role": "assistant", "content": "", "tool_calls": [_ollama_call(c) for c in calls]}
        return {
            "model": model,
            "message": message,
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 10,
            "eval_count": 5,
        }
    message = {"role": "assistant", "content": None, "tool_calls": [_openai_call(c) for c in calls]}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
    }


async def serve(host: str, port: int, delay: float) -> None:
    fake = FakeModel(delay)
    server = await asyncio.start_server(fake.serve_connection, host, port, limit=MAX_HEAD, backlog=2048)
    print(f"fake model server on http://{host}:{port} (delay {delay:g}s)", flush=True)
    async with server:
        await server.serve_forever()


# --- control, from the benchmark ------------------------------------------------------------------
def control(url: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """GET (no body) or POST (body) one of the control endpoints; the answer as a dict."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path,
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run_fast(serve(args.host, args.port, args.delay))


if __name__ == "__main__":
    main()
