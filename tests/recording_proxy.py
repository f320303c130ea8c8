"""A recording HTTP proxy in front of a model server, for the real-model tests: it forwards every
request (streamed answers as they come) and keeps, for each one, its method, path, body and the
times it arrived, got its first byte back and ended, and whether the client left before the end.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    arrived: float
    first_byte: float | None = None
    last_byte: float | None = None
    chunks: int = 0
    ended: float | None = None
    client_left: bool = False
    status: int = 0


@dataclass
class RecordingProxy:
    upstream: str
    extra: dict[str, Any] = field(default_factory=dict)
    """Fields added to every chat request on its way (``min_tokens``: a generation that lasts)."""
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self) -> list[Seen]:
        """The chat requests (not the listings and other looks)."""
        return [s for s in self.seen if s.method == "POST" and s.path.endswith("/chat/completions")]

    def start(self) -> RecordingProxy:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the recording proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        session: aiohttp.ClientSession | None = None

        async def forward(request: web.Request) -> web.StreamResponse:
            assert session is not None
            body = await request.read()
            if self.extra and request.method == "POST" and request.path.endswith("/chat/completions"):
                body = json.dumps({**json.loads(body), **self.extra}).encode()
            seen = Seen(request.method, request.path, body, time.monotonic())
            self.seen.append(seen)
            headers = {
                k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")
            }
            try:
                async with session.request(
                    request.method, self.upstream + request.path_qs, data=body or None, headers=headers
                ) as upstream:
                    seen.status = upstream.status
                    out = web.StreamResponse(status=upstream.status)
                    out.content_type = upstream.content_type
                    await out.prepare(request)
                    async for chunk in upstream.content.iter_any():
                        if seen.first_byte is None:
                            seen.first_byte = time.monotonic()
                        seen.last_byte = time.monotonic()
                        seen.chunks += 1
                        await out.write(chunk)
                    await out.write_eof()
            except asyncio.CancelledError:
                seen.client_left = True
                raise
            except ConnectionResetError:  # the client left: what it was sent is all it gets
                seen.client_left = True
            except aiohttp.ClientPayloadError:  # the server broke its answer off: so does the proxy
                if out is None:
                    raise
                out.force_close()
            finally:
                seen.ended = time.monotonic()
            if out is None:
                raise web.HTTPBadGateway()
            return out

        async def begin() -> None:
            nonlocal session
            # A connection per request: one the server broke off (an overflow it streams as a cut
            # body) is never taken again for the next.
            session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None), connector=aiohttp.TCPConnector(force_close=True)
            )
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", forward)

            async def close_session(_: web.Application) -> None:
                assert session is not None
                await session.close()

            app.on_cleanup.append(close_session)
            self._runner = web.AppRunner(app, handle_signals=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        loop.run_until_complete(begin())
        ready.set()
        loop.run_forever()
        loop.close()

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
