"""A lean HTTP/1.1 load generator: raw asyncio sockets, keep-alive, minimal parsing.

httpx tops out near 600 requests/s on a 2-core machine, which would measure the client instead of
the server. Here each connection is one ``asyncio.open_connection`` that sends a request, reads the
status line, the headers up to the blank line and ``Content-Length`` bytes (or chunks), and goes
again. ``max_rate`` measures what the client itself can do against a cheap endpoint, and how much
of its own CPU one request costs, so a report can show the client is not the bottleneck.

Every loop here is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

T = TypeVar("T")

REQUEST_TIMEOUT: Final = 60.0  # seconds, one request
MAX_ERROR_SAMPLES: Final = 5


def run_fast(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (the gateway uses it too), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class ProtocolError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened by the next request after any failure."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._host_header = f"Host: {host}:{port}\r\n".encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes | None = None, *, timeout: float = REQUEST_TIMEOUT
    ) -> tuple[int, bytes]:
        """(status, body). Any failure closes the connection and raises."""
        try:
            async with asyncio.timeout(timeout):
                return await self._request(method, path, body)
        except BaseException:
            self.close()
            raise

    async def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        reader, writer = await self._open()
        head = b"%s %s HTTP/1.1\r\n%s" % (method.encode(), path.encode(), self._host_header)
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        writer.write(head + b"\r\n" + (body or b""))
        raw = await reader.readuntil(b"\r\n\r\n")
        if not raw.startswith(b"HTTP/1."):
            raise ProtocolError(f"not an HTTP response: {raw[:40]!r}")
        status = int(raw[9:12])
        lower = raw.lower()
        match = re.search(rb"\r\ncontent-length:\s*(\d+)", lower)
        if match is not None:
            data = await reader.readexactly(int(match.group(1)))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            data = await _read_chunked(reader)
        else:
            raise ProtocolError("response without Content-Length or chunks")
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, data


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    for _ in range(1_000_000):
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
    raise ProtocolError("too many chunks")


# --- figures -------------------------------------------------------------------------------------
def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summarize(latencies: list[float]) -> dict[str, float | int]:
    """Latency figures in milliseconds."""
    values = sorted(latencies)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p90_ms": round(percentile(values, 90) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(values[-1] * 1000, 2),
        "mean_ms": round(sum(values) / len(values) * 1000, 2),
    }


@dataclass
class LoopResult:
    requested: int = 0
    ok: int = 0
    errors: int = 0
    elapsed: float = 0.0
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text[:300])

    def figures(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "ok": self.ok,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "elapsed_s": round(self.elapsed, 3),
            "per_s": round(self.ok / self.elapsed, 1) if self.elapsed > 0 else 0.0,
            "latency": summarize(self.latencies),
            "client_cpu_us_per_request": round(self.client_cpu / self.requested * 1e6, 1)
            if self.requested
            else None,
        }


RequestFn = Callable[[int], tuple[str, str, bytes | None]]


async def closed_loop(
    host: str,
    port: int,
    *,
    clients: int,
    total: int,
    make_request: RequestFn,
    check: Callable[[int, int, bytes], str | None],
    time_limit: float,
    request_timeout: float = REQUEST_TIMEOUT,
) -> LoopResult:
    """``clients`` connections, each sending its next request as soon as the last one is answered,
    until ``total`` requests were sent or ``time_limit`` seconds passed. ``check(i, status, body)``
    returns None for a success, else what was wrong."""
    result = LoopResult()
    counter = iter(range(total))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit

    async def client() -> None:
        conn = Connection(host, port)
        try:
            for i in counter:
                if loop.time() > deadline:
                    return
                method, path, body = make_request(i)
                result.requested += 1
                started = time.perf_counter()
                try:
                    status, data = await conn.request(method, path, body, timeout=request_timeout)
                except (OSError, asyncio.IncompleteReadError, ProtocolError, TimeoutError, ValueError) as exc:
                    result.error(f"{type(exc).__name__}: {exc}")
                    continue
                latency = time.perf_counter() - started
                problem = check(i, status, data)
                if problem is None:
                    result.ok += 1
                    result.latencies.append(latency)
                else:
                    result.error(problem)
        finally:
            conn.close()

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.elapsed = time.perf_counter() - t0
    result.client_cpu = time.process_time() - cpu0
    return result


async def probe(
    host: str,
    port: int,
    path: Callable[[], str | None],
    *,
    interval: float,
    stop: asyncio.Event,
    time_limit: float,
    timeout: float = 10.0,
) -> LoopResult:
    """One connection sending GET ``path()`` every ``interval`` seconds (skipped when it returns
    None) until ``stop`` is set or ``time_limit`` passes: the latency a user sees meanwhile."""
    result = LoopResult()
    conn = Connection(host, port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    t0 = time.perf_counter()
    try:
        while not stop.is_set() and loop.time() < deadline:
            target = path()
            if target is not None:
                result.requested += 1
                started = time.perf_counter()
                try:
                    status, _ = await conn.request("GET", target, timeout=timeout)
                except (OSError, asyncio.IncompleteReadError, ProtocolError, TimeoutError, ValueError) as exc:
                    result.error(f"{type(exc).__name__}: {exc}")
                else:
                    if status == 200:
                        result.ok += 1
                        result.latencies.append(time.perf_counter() - started)
                    else:
                        result.error(f"HTTP {status} for {target}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        conn.close()
    result.elapsed = time.perf_counter() - t0
    return result


async def max_rate(host: str, port: int, path: str, *, conns: int, duration: float) -> dict[str, Any]:
    """The request rate this client reaches against GET ``path``, and its own CPU per request."""
    result = await closed_loop(
        host,
        port,
        clients=conns,
        total=10_000_000,
        make_request=lambda i: ("GET", path, None),
        check=lambda i, status, body: None if status == 200 else f"HTTP {status}",
        time_limit=duration,
        request_timeout=10.0,
    )
    figures = result.figures()
    return {
        "path": path,
        "connections": conns,
        "duration_s": duration,
        "requests_per_s": figures["per_s"],
        "errors": result.errors,
        "client_cpu_us_per_request": figures["client_cpu_us_per_request"],
        "client_cpu_share": round(result.client_cpu / result.elapsed, 2) if result.elapsed else None,
    }


def wrk_rate(url: str, *, conns: int, duration: float, threads: int = 1) -> dict[str, Any] | None:
    """wrk against a plain GET, for comparison with ``max_rate``; None when wrk is not installed."""
    binary = shutil.which("wrk")
    if binary is None:
        return None
    argv = [binary, f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
    match = re.search(r"Requests/sec:\s*([\d.]+)", out.stdout)
    if match is None:
        return {"error": (out.stderr or out.stdout)[-300:]}
    return {"url": url, "connections": conns, "threads": threads, "requests_per_s": float(match.group(1))}


async def gather_bounded(coros: list[Awaitable[T]], limit: int) -> list[T]:
    """Await coroutines with at most ``limit`` running at once, results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def one(aw: Awaitable[T]) -> T:
        async with semaphore:
            return await aw

    return list(await asyncio.gather(*(one(c) for c in coros)))
