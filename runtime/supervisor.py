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
from typing import Final, Literal, TextIO

import httpx
import nats.errors
from nats.aio.client import Client as NATS

from victoria.errors import VictoriaError
from victoria.events import subjects
from victoria.events.codec import encode
from victoria.events.contracts import ServiceDown, ServiceUp
from victoria.runtime import connection, credentials, fence, publish, streams
from victoria.runtime.config import Config
from victoria.runtime.listen import Listen
from victoria.runtime.logbus import BusLogHandler
from victoria.runtime.natsserver import EmbeddedNats, embedded_servers

log = logging.getLogger(__name__)

ACTORS: Final = ("victoria", "veronica", "monitor", "llm-runner", "projector")
BACKOFF_MAX: Final = 30.0  # seconds
STABLE_AFTER: Final = 60.0  # seconds of uptime after which the backoff starts over
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL on shutdown
REPORT_WAIT: Final = 30.0  # seconds a service event is offered to a NATS that does not answer
JETSTREAM_TIMEOUT: Final = 30.0  # seconds for a new cluster to elect its JetStream meta leader
NATS_SERVICE: Final = "nats-server"
"""The service name of an embedded NATS server in service events."""
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
    instance: str = ""
    """VICTORIA_INSTANCE of this child; empty: the supervisor's own."""


class Supervisor:
    def __init__(
        self,
        config: Config,
        *,
        nats_url: str | None,
        host: str,
        port: int,
        insecure: bool = False,
        nodes: int = 1,
        instances: int = 1,
        log_handler: BusLogHandler | None = None,
    ) -> None:
        self.config = config
        self.listen = Listen(host, port, insecure)
        """Where the gateway listens."""
        self.nodes = nodes
        """Embedded NATS servers: 1, or a cluster of this many on loopback (``--nodes``)."""
        self.instances = instances
        """Processes of each actor but the monitor (``--instances``)."""
        self.log_handler = log_handler
        """Publishes this process's log records as ``victoria.log.up.<level>`` once NATS is up."""
        self.external_url = nats_url
        self.url = ""
        self.servers: list[EmbeddedNats] = []
        self.nc: NATS | None = None
        self.users: dict[str, str] = {}
        """Every NATS user's password (``<data dir>/nats-credentials.json``)."""
        self.auth = credentials.Auth()
        """How this process connects to NATS."""
        self.children: list[Child] = []
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self._reports: set[asyncio.Task[None]] = set()
        self._last_report: asyncio.Task[None] | None = None
        self._lock: TextIO | None = None
        self._port_hold: socket.socket | None = None
        """The gateway's port, bound from the check until the gateway is started: meanwhile an
        embedded nats-server asking the kernel for any port (``-p -1``) cannot be given it."""

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        try:
            self._check_exposure()
            self._lock_data_dir()
            self._check_port()
            await self._start_broker()
            self._start_children()
            if await self._wait_ready(stop):
                print(
                    f"victoria ready in {time.monotonic() - started:.2f}s: http://{self.listen.host}:{self.listen.port} "
                    f"(NATS {credentials.redact(self.url)})",
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

    def _check_exposure(self) -> None:
        """Refuse, before anything starts, a gateway open to the network with no token asked for."""
        self.listen.refuse_open(self.config)

    def _check_port(self) -> None:
        """Fail at once, and say why, when the gateway's port is taken (rather than crash-looping);
        else hold it (``_port_hold``) until the gateway starts."""
        host, port = self.listen.host, self.listen.port
        probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            probe.close()
            raise VictoriaError(
                f"cannot listen on {host}:{port} ({exc.strerror}); is another victoria running? pass --port"
            ) from None
        self._port_hold = probe

    def _release_port(self) -> None:
        if self._port_hold is not None:
            self._port_hold.close()
            self._port_hold = None

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
        users_file = self.config.nats_credentials_file
        made = not users_file.exists()
        self.users = credentials.load_or_create(users_file)
        if made:
            log.info("made passwords for the NATS users %s in %s", ", ".join(credentials.ROLES), users_file)
        if self.external_url:
            self.url = self.external_url
            # The operator's own credentials (in the URL, the environment, a creds file) rule there;
            # else the users of nats.conf, from the credentials file.
            self.auth = credentials.for_role(self.config, "supervisor", self.url)
            print(f"using NATS at {credentials.redact(self.url)}", flush=True)
        else:
            self.servers = embedded_servers(
                data_dir, self.nodes, environment=credentials.server_environment(self.users)
            )
            self.url = ",".join(await asyncio.gather(*(server.start() for server in self.servers)))
            first = self.servers[0]
            self.auth = credentials.Auth(
                user="supervisor", password=self.users["supervisor"], source=str(users_file)
            )
            print(
                f"nats-server {first.version} (embedded, {first.binary}) listening on {self.url}; "
                f"JetStream in {', '.join(str(server.store_dir) for server in self.servers)}",
                flush=True,
            )
        self.config.nats_url_file.write_text(
            credentials.without_credentials(self.url) + "\n", encoding="utf-8"
        )
        self.nc = await connection.connect(
            self.url,
            name="supervisor",
            connect_timeout=10.0,
            user=self.auth.user,
            password=self.auth.password,
            creds_file=self.auth.creds_file,
        )
        if self.log_handler is not None:
            self.log_handler.attach(self.nc)  # lines logged before this go out now
        # Refuses a server that cannot fence appends (older than 2.11) unless told otherwise.
        fence.fenced_appends(self.nc, self.url, allow_unfenced=self.config.allow_unfenced)
        if len(self.servers) > 1:
            await self._wait_for_jetstream()
        await streams.ensure_streams(
            self.nc.jetstream(), dedup_window=self.config.dedup_window, replicas=self.config.replicas
        )
        for server in self.servers:
            self._watchers.append(asyncio.create_task(self._supervise_server(server)))

    async def _wait_for_jetstream(self) -> None:
        """A cluster's JetStream answers once its servers have elected a meta leader."""
        assert self.nc is not None
        js = self.nc.jetstream(timeout=2.0)
        deadline = time.monotonic() + JETSTREAM_TIMEOUT
        while True:
            try:
                await js.account_info()
                return
            except (nats.errors.Error, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise VictoriaError(
                        f"the NATS cluster's JetStream did not answer within {JETSTREAM_TIMEOUT}s: {exc}"
                    ) from None
                await asyncio.sleep(0.2)

    async def _supervise_server(self, server: EmbeddedNats) -> None:
        """An embedded server that dies is started again, on the same ports, with its store: its
        streams catch up from the others (in a cluster) or from its own disk."""
        instance = self.config.instance + (f"-{server.node.name}" if server.node is not None else "")
        backoff = self.config.restart_backoff
        restarts = 0
        while not self._stopping:
            assert server.process is not None
            code = await server.process.wait()
            if self._stopping:
                return
            self._report_exit(
                f"nats-server {instance}", NATS_SERVICE, instance, server.process.pid, code, restarts=restarts
            )
            while not self._stopping:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                try:
                    await server.start()
                    break
                except VictoriaError as exc:
                    log.error("nats-server %s did not start again: %s", instance, exc)
            if self._stopping:
                return
            restarts += 1
            backoff = self.config.restart_backoff
            log.info("nats-server %s started again (pid %s)", instance, server.process.pid)
            self._report(
                ServiceUp(
                    name=NATS_SERVICE,
                    instance=instance,
                    reason=f"started again by the supervisor ({restarts} restarts)",
                    source="supervisor",
                    pid=server.process.pid,
                )
            )

    def _report_exit(
        self, who: str, name: str, instance: str, pid: int | None, code: int, *, restarts: int, more: str = ""
    ) -> None:
        """Log the exit of a process (``code``: its return code) and report it as ``service_down``;
        ``more`` is said after the reason."""
        reason, exit_code, sig, oom = describe_exit(code)
        reason += more
        log.warning("%s (pid %s) exited: %s", who, pid, reason)
        self._report(
            ServiceDown(
                name=name,
                instance=instance,
                reason=reason,
                source="supervisor",
                pid=pid,
                exit_code=exit_code,
                signal=sig,
                likely_oom=oom,
                restarts=restarts,
            )
        )

    def _report(self, event: ServiceDown | ServiceUp) -> None:
        """Publish in the background: a restart never waits for NATS to take the report. Reports
        are stored in the order they were made (a ``service_down`` that NATS took late is not
        stored after the ``service_up`` that followed it): each waits for the one before."""
        previous = self._last_report

        async def in_order() -> None:
            if previous is not None:
                await asyncio.wait([previous])
            await self._publish(event)

        task = self._last_report = asyncio.create_task(in_order())
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    async def _publish(self, event: ServiceDown | ServiceUp) -> None:
        """Store a service event, publishing again while NATS does not answer (a server of the
        cluster just died, maybe the very one that was to tell), up to ``REPORT_WAIT`` seconds or
        until this supervisor stops. The message id makes a repeat of a publish that was stored
        after all a duplicate, not a second event."""
        if self.nc is None:
            return
        kind: Literal["down", "up"] = "down" if isinstance(event, ServiceDown) else "up"
        subject = subjects.service_event(event.name, event.instance, kind)
        headers = {"Nats-Msg-Id": f"{subject}:{event.pid}:{event.ts.isoformat()}"}
        try:
            answer = await publish.publish(
                self.nc,
                subject,
                encode(event),
                headers,
                wait=REPORT_WAIT,
                again_after_timeout=True,
                stopping=lambda: self._stopping,
            )
            publish.raise_for(answer)
        except Exception as exc:  # NATS may be the thing that is down; the log line stays
            log.error("could not publish %s: %s", subject, exc)

    def _start_children(self) -> None:
        gateway = Child(
            "gateway",
            [
                "gateway",
                "--host",
                self.listen.host,
                "--port",
                str(self.listen.port),
                *(["--insecure"] if self.listen.insecure else []),
            ],
        )
        # The projector keeps the task history in PostgreSQL: without a database it has nothing to do.
        actors = [name for name in ACTORS if name != "projector" or self.config.postgres_dsn]
        self.children = [gateway]
        for name in actors:
            count = 1 if name == "monitor" else self.instances
            for k in range(1, count + 1):
                instance = self.config.instance if count == 1 else f"{self.config.instance}-{k}"
                self.children.append(Child(name, ["actor", name], instance=instance))
        self._release_port()  # the gateway binds it itself
        for child in self.children:
            self._watchers.append(asyncio.create_task(self._supervise(child), name=f"supervise-{child.name}"))

    async def _spawn(self, child: Child) -> None:
        env = dict(os.environ)
        if self.auth.source == str(self.config.nats_credentials_file):
            # Each child gets its own role's user and password, and no other.
            env = credentials.child_environment(env, child.name, self.users)
        env.update(
            NATS_URL=self.url,
            VICTORIA_INSTANCE=child.instance or self.config.instance,
            VICTORIA_REPLICAS=str(self.config.replicas),
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
            give_up = len(child.crash_times) > cfg.crash_loop_limit
            crash_loop = (
                f"; crash loop: {len(child.crash_times)} exits in {cfg.crash_loop_window:g}s, not restarting"
                if give_up
                else ""
            )
            instance = child.instance or self.config.instance
            self._report_exit(
                child.name,
                child.name,
                instance,
                child.process.pid,
                code,
                restarts=child.restarts,
                more=crash_loop,
            )
            if give_up:
                child.gave_up = True
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            child.restarts += 1

    async def _wait_ready(self, stop: asyncio.Event) -> bool:
        url = f"http://{self.listen.host}:{self.listen.port}/ready"
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
        self._release_port()
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
        if self._reports:  # reports under way get a moment to land
            await asyncio.wait(self._reports, timeout=2.0)
        if self.log_handler is not None:
            await self.log_handler.aclose()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 2.0)
            except Exception as exc:  # closing anyway
                log.debug("close: %s", exc)
        await asyncio.gather(*(server.stop() for server in self.servers))
        url_file: Path = self.config.nats_url_file
        await asyncio.to_thread(url_file.unlink, missing_ok=True)
