"""``victoria up``: the embedded NATS, then every actor as a child process, supervised.

A child that exits without being asked to is restarted with exponential backoff. Its exit code or
signal goes into a ``service_down`` event at once (SIGKILL, or exit 137, is reported as a likely OOM
kill). A child that keeps crashing (``VICTORIA_CRASH_LOOP_LIMIT`` restarts within ``VICTORIA_CRASH_LOOP_WINDOW``) is
left down and reported, instead of burning the machine. Children exit by themselves when this
process dies (they watch their parent pid).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

import httpx
from nats.aio.client import Client as NATS

from victoria.errors import VictoriaError
from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import ServiceDown
from victoria.runtime import bus
from victoria.runtime.config import Config
from victoria.runtime.logbus import BusLogHandler
from victoria.runtime.natsserver import EmbeddedNats

log = logging.getLogger(__name__)

ACTORS: Final = ("victoria", "veronica", "monitor", "llm-runner", "projector")
BACKOFF_MAX: Final = 30.0  # seconds
STABLE_AFTER: Final = 60.0  # seconds of uptime after which the backoff starts over
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL on shutdown
READY_TIMEOUT: Final = 30.0  # seconds to wait for the gateway's /ready at start


def describe_exit(returncode: int) -> tuple[str, int | None, str | None, bool]:
    """(reason, exit code, signal name, likely OOM) for a child's return code."""
    if returncode < 0:
        signum = -returncode
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        oom = signum == signal.SIGKILL
        reason = f"killed by {name}" + (" (likely OOM kill)" if oom else "")
        return reason, None, name, oom
    if returncode == 137:
        return "exit code 137 (SIGKILL; likely OOM kill)", 137, "SIGKILL", True
    return f"exit code {returncode}", returncode, None, False


@dataclass
class Child:
    name: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    crash_times: list[float] = field(default_factory=list)
    gave_up: bool = False


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        nats_url: str | None,
        host: str,
        port: int,
        log_handler: BusLogHandler | None = None,
    ) -> None:
        self.config = config
        self.log_handler = log_handler
        """Publishes this process's log records as ``victoria.log.up.<level>`` once NATS is up."""
        self.external_url = nats_url
        self.host = host
        self.port = port
        self.nats: EmbeddedNats | None = None
        self.nc: NATS | None = None
        self.url = ""
        self.children: list[Child] = []
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self._lock: TextIO | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        try:
            self._lock_data_dir()
            self._check_port()
            await self._start_broker()
            self._start_children()
            if await self._wait_ready(stop):
                print(
                    f"victoria ready in {time.monotonic() - started:.2f}s: http://{self.host}:{self.port} "
                    f"(NATS {self.url})",
                    flush=True,
                )
            await stop.wait()
            log.info("stopping")
            return 0
        except VictoriaError as exc:
            log.error("%s", exc)
            return 1
        finally:
            await self._shutdown()

    def _check_port(self) -> None:
        """Fail at once, and say why, when the gateway's port is taken (rather than crash-looping)."""
        with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise VictoriaError(
                    f"cannot listen on {self.host}:{self.port} ({exc.strerror}); is another victoria "
                    "running? pass --port"
                ) from None

    def _lock_data_dir(self) -> None:
        """One ``victoria up`` per data dir: a second one would fight the first over the store."""
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = (data_dir / "up.lock").open("a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            other = lock.read().strip() or "?"
            lock.close()
            raise VictoriaError(
                f"another `victoria up` (pid {other}) is running with the data dir {data_dir}; "
                "stop it, or pass another --data-dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        self._lock = lock  # held (and the lock with it) until this process exits

    async def _start_broker(self) -> None:
        data_dir = self.config.data_dir
        if self.external_url:
            self.url = self.external_url
            print(f"using NATS at {self.url}", flush=True)
        else:
            self.nats = EmbeddedNats(data_dir)
            self.url = await self.nats.start()
            print(
                f"nats-server {self.nats.version} (embedded, {self.nats.binary}) listening on {self.url}; "
                f"JetStream in {self.nats.store_dir}",
                flush=True,
            )
        self.config.nats_url_file.write_text(self.url + "\n", encoding="utf-8")
        self.nc = await bus.connect(self.url, name="supervisor", connect_timeout=10.0)
        if self.log_handler is not None:
            self.log_handler.attach(self.nc)  # lines logged before this go out now
        # Refuses a server that cannot fence appends (older than 2.11) unless told otherwise.
        bus.fenced_appends(self.nc, self.url, allow_unfenced=self.config.allow_unfenced)
        await bus.ensure_streams(self.nc.jetstream(), dedup_window=self.config.dedup_window)

    def _start_children(self) -> None:
        gateway = Child("gateway", ["gateway", "--host", self.host, "--port", str(self.port)])
        # The projector keeps the task history in PostgreSQL: without a database it has nothing to do.
        actors = [name for name in ACTORS if name != "projector" or self.config.postgres_dsn]
        self.children = [gateway] + [Child(name, ["actor", name]) for name in actors]
        for child in self.children:
            self._watchers.append(asyncio.create_task(self._supervise(child), name=f"supervise-{child.name}"))

    async def _spawn(self, child: Child) -> None:
        env = dict(os.environ)
        env.update(
            NATS_URL=self.url,
            VICTORIA_PARENT_PID=str(os.getpid()),
            VICTORIA_RESTARTS=str(child.restarts),
            VICTORIA_DATA_DIR=str(self.config.data_dir),
        )
        child.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "victoria", *child.argv, env=env, stdin=subprocess.DEVNULL
        )
        child.started_at = time.monotonic()

    async def _supervise(self, child: Child) -> None:
        cfg = self.config
        backoff = cfg.restart_backoff
        while not self._stopping:
            await self._spawn(child)
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            now = time.monotonic()
            if now - child.started_at > STABLE_AFTER:
                backoff = cfg.restart_backoff
            child.crash_times = [t for t in child.crash_times if now - t < cfg.crash_loop_window] + [now]
            reason, exit_code, sig, oom = describe_exit(code)
            give_up = len(child.crash_times) > cfg.crash_loop_limit
            if give_up:
                reason += f"; crash loop: {len(child.crash_times)} exits in {cfg.crash_loop_window:g}s, not restarting"
            log.warning("%s (pid %s) exited: %s", child.name, child.process.pid, reason)
            await self._report_down(child, reason, exit_code, sig, oom)
            if give_up:
                child.gave_up = True
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            child.restarts += 1

    async def _report_down(
        self, child: Child, reason: str, exit_code: int | None, sig: str | None, oom: bool
    ) -> None:
        if self.nc is None:
            return
        event = ServiceDown(
            name=child.name,
            instance=self.config.instance,
            reason=reason,
            source="supervisor",
            pid=child.process.pid if child.process else None,
            exit_code=exit_code,
            signal=sig,
            likely_oom=oom,
            restarts=child.restarts,
        )
        try:
            await self.nc.jetstream().publish(
                subjects.service_event(child.name, self.config.instance, "down"), encode(event), timeout=2.0
            )
        except Exception as exc:  # NATS may be the thing that is down; the log line stays
            log.error("could not publish service_down for %s: %s", child.name, exc)

    async def _wait_ready(self, stop: asyncio.Event) -> bool:
        url = f"http://{self.host}:{self.port}/ready"
        deadline = time.monotonic() + READY_TIMEOUT
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    if (await client.get(url)).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        if not stop.is_set():
            log.error("the gateway was not ready within %ss at %s", READY_TIMEOUT, url)
        return False

    async def _shutdown(self) -> None:
        self._stopping = True
        running = [c.process for c in self.children if c.process and c.process.returncode is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        if running:
            await asyncio.wait([asyncio.create_task(p.wait()) for p in running], timeout=STOP_TIMEOUT)
            for process in running:
                if process.returncode is None:
                    process.kill()
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        if self.log_handler is not None:
            await self.log_handler.aclose()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 2.0)
            except Exception as exc:  # closing anyway
                log.debug("close: %s", exc)
        if self.nats is not None:
            await self.nats.stop()
        url_file: Path = self.config.nats_url_file
        await asyncio.to_thread(url_file.unlink, missing_ok=True)
