"""A recording proxy in front of a real OpenAI-compatible model server, for R1.

``python -m bench.realproxy --port P --upstream http://127.0.0.1:18181`` forwards every request
to the upstream server (streamed answers chunk by chunk, as they arrive) and records each one.
For ``POST /v1/chat/completions``: the request body, when the request reached the proxy, when the
first byte and the first content from upstream came, when the answer ended, every content delta
with its time, the usage and the finish reason. Other requests (``GET /v1/models`` and other
probes) are forwarded and recorded as probes, not as calls. Times are ``time.monotonic()``
(CLOCK_MONOTONIC: one clock for every process on the machine), so the benchmark compares them
with its own.

Two routes of its own, never forwarded: ``GET /__proxy/records`` (everything recorded, JSON) and
``POST /__proxy/reset``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import aiohttp
from aiohttp import web

HOST: Final = "127.0.0.1"
CALL_PATH: Final = "/v1/chat/completions"
CONTROL: Final = "/__proxy/"
UPSTREAM_TIMEOUT: Final = 900.0  # seconds, one forwarded request
_HOP: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
)


@dataclass
class SSEReader:
    """Content deltas, usage and finish reason out of an OpenAI chat stream, fed bytes as they come
    (or one JSON document, for a server that does not stream)."""

    deltas: list[tuple[float, str]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    done: bool = False
    _buffer: bytes = b""

    def feed(self, at: float, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(at, line.strip())

    def close(self, at: float) -> None:
        rest, self._buffer = self._buffer.strip(), b""
        if rest.startswith(b"{"):  # not streamed: one JSON document
            self._document(at, rest)
        elif rest:
            self._line(at, rest)

    def _line(self, at: float, line: bytes) -> None:
        if not line.startswith(b"data:"):
            if line.startswith(b"{"):
                self._buffer = line + b"\n" + self._buffer  # a JSON document spread over lines
            return
        payload = line[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            data = json.loads(payload)
        except ValueError:
            return
        self._chunk(at, data, "delta")

    def _document(self, at: float, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        self._chunk(at, data, "message")

    def _chunk(self, at: float, data: Any, key: str) -> None:
        if not isinstance(data, dict):
            return
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        for choice in data.get("choices") or []:
            text = (choice.get(key) or {}).get("content")
            if text:
                self.deltas.append((at, str(text)))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])

    @property
    def completion_tokens(self) -> int | None:
        value = (self.usage or {}).get("completion_tokens")
        return int(value) if isinstance(value, int) else None


@dataclass
class Call:
    """One ``POST /v1/chat/completions`` as the proxy saw it (monotonic seconds)."""

    body: str
    at: float
    """The request reached the proxy (its handler began)."""
    status: int = 0
    first_byte_at: float | None = None
    first_content_at: float | None = None
    end_at: float | None = None
    deltas: list[tuple[float, str]] = field(default_factory=list)
    completion_tokens: int | None = None
    """From the usage the server reported, when it did."""
    content_pieces: int = 0
    """Content deltas: one token each on llama-cpp-python."""
    finish_reason: str | None = None
    error: str | None = None
    overlapped_by: int = 0
    """Requests that reached the proxy while this call was in flight (each may cut it short)."""


@dataclass
class Probe:
    method: str
    path: str
    at: float
    status: int = 0
    end_at: float | None = None
    during_call: bool = False
    """It reached the proxy while a call was in flight."""


class Recorder:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.calls: list[Call] = []
        self.probes: list[Probe] = []
        self.in_flight: list[Call] = []
        self.http: aiohttp.ClientSession | None = None

    async def on_startup(self, app: web.Application) -> None:
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT), auto_decompress=False
        )

    async def on_cleanup(self, app: web.Application) -> None:
        if self.http is not None:
            await self.http.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        at = time.monotonic()
        if request.path.startswith(CONTROL):
            return self.control(request)
        for call in self.in_flight:
            call.overlapped_by += 1
        body = await request.read()
        if request.method == "POST" and request.path == CALL_PATH:
            call = Call(body=body.decode("utf-8", "replace"), at=at)
            self.calls.append(call)
            self.in_flight.append(call)
            try:
                return await self.forward(request, body, call)
            finally:
                self.in_flight.remove(call)
        probe = Probe(request.method, request.path_qs, at, during_call=bool(self.in_flight))
        self.probes.append(probe)
        response = await self.forward(request, body, None)
        probe.status, probe.end_at = response.status, time.monotonic()
        return response

    def control(self, request: web.Request) -> web.Response:
        if request.path == CONTROL + "reset" and request.method == "POST":
            self.calls.clear()
            self.probes.clear()
            return web.json_response({"ok": True})
        if request.path == CONTROL + "records":
            return web.json_response(
                {"calls": [asdict(c) for c in self.calls], "probes": [asdict(p) for p in self.probes]}
            )
        return web.json_response({"error": "unknown"}, status=404)

    async def forward(self, request: web.Request, body: bytes, call: Call | None) -> web.StreamResponse:
        assert self.http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        reader = SSEReader()
        response: web.StreamResponse | None = None
        try:
            async with self.http.request(
                request.method, self.upstream + request.path_qs, data=body or None, headers=headers
            ) as upstream:
                if call is not None:
                    call.status = upstream.status
                response = web.StreamResponse(status=upstream.status, headers=_pass(upstream.headers.items()))
                await response.prepare(request)
                async for data in upstream.content.iter_any():
                    now = time.monotonic()
                    if call is not None:
                        if call.first_byte_at is None:
                            call.first_byte_at = now
                        reader.feed(now, data)
                        if call.first_content_at is None and reader.deltas:
                            call.first_content_at = reader.deltas[0][0]
                    await response.write(data)
                await response.write_eof()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            if call is not None:
                call.error = f"{type(exc).__name__}: {exc}"
            if response is None:
                response = web.json_response({"error": f"upstream: {exc}"}, status=502)
        finally:
            if call is not None:
                call.end_at = time.monotonic()
                reader.close(call.end_at)
                call.deltas = reader.deltas
                call.first_content_at = reader.deltas[0][0] if reader.deltas else None
                call.completion_tokens = reader.completion_tokens
                call.content_pieces = len(reader.deltas)
                call.finish_reason = reader.finish_reason
        return response


def _pass(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: v for k, v in headers if k.lower() not in _HOP}


def app(upstream: str) -> web.Application:
    recorder = Recorder(upstream)
    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.on_startup.append(recorder.on_startup)
    application.on_cleanup.append(recorder.on_cleanup)
    application.router.add_route("*", "/{tail:.*}", recorder.handle)
    return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.realproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the model server, e.g. http://127.0.0.1:18181")
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.upstream, args.port))


async def serve(upstream: str, port: int) -> None:
    runner = web.AppRunner(app(upstream), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, HOST, port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
