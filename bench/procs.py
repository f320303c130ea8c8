"""Processes the benchmark starts: each in its own process group, measured with psutil, always stopped."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import psutil

HOST: Final = "127.0.0.1"
MB: Final = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any VICTORIA_/NATS_/OTEL_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VICTORIA_", "NATS_", "OTEL_"))}
    env.update(extra or {})
    return env


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def http_json(port: int, path: str, timeout: float = 5.0) -> Any:
    status, body = http_get(port, path, timeout)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {body[:200]!r}")
    return json.loads(body)


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants that are still alive."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def label(process: psutil.Process) -> str:
    try:
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if not argv:
        return "?"
    if "nats-server" in Path(argv[0]).name:
        return "nats-server"
    text = " ".join(argv)
    for pattern in (r"victoria (actor [\w-]+)", r"victoria (gateway)", r"victoria (up)", r"-m (bench\.\w+)"):
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    if "celery" in text:
        return "celery worker"
    if "redis-server" in text:
        return "redis-server"
    return Path(argv[0]).name


def rss(pid: int) -> dict[str, Any]:
    """Resident memory of a process and its descendants: the total and each process, in MB."""
    parts: dict[str, float] = {}
    total = 0
    for process in tree(pid):
        try:
            value = process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += value
        name = label(process)
        parts[name] = round(parts.get(name, 0.0) + value / MB, 1)
    return {"total_mb": round(total / MB, 1), "processes": len(parts), "by_process_mb": parts}


class Proc:
    """A subprocess in its own session (process group), with its output in a log file."""

    def __init__(self, name: str, argv: list[str], *, env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None
        self.spawned_at = 0.0

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.spawned_at = time.perf_counter()
            self.popen = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_http(self, port: int, path: str, timeout: float, interval: float = 0.01) -> float:
        """Seconds from spawn until GET ``path`` answers 200 (polling every ``interval``)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.popen and self.popen.returncode}:\n{self.tail()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_get(port, path, timeout=1.0)
                if status == 200:
                    return time.perf_counter() - self.spawned_at
            time.sleep(interval)
        raise RuntimeError(f"{self.name}: GET {path} not 200 within {timeout}s:\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL to this process only (its children are left to their own devices)."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to whatever of its tree is left (each by pid, never by name)."""
        if self.popen is None:
            return
        members = tree(self.popen.pid)
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        _, alive = psutil.wait_procs(members, timeout=5)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=5)
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def victoria_argv(port: int, data_dir: Path) -> list[str]:
    """``victoria up`` from the venv the benchmark runs in (its console script, as a user types it)."""
    script = Path(sys.executable).parent / "victoria"
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "victoria"]
    return [*head, "up", "--port", str(port), "--data-dir", str(data_dir)]
