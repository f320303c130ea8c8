"""Run one shell command in a sandbox and return its outcome.

The model's commands are not trusted. On Linux they run under bubblewrap (``bwrap``), on macOS
under ``sandbox-exec`` with a profile of ours (``SEATBELT_BASE`` and the paths of the command):

- no network (a network namespace of its own; the profile denies it) unless ``network`` is set;
- the workspace read-write, the system's folders read-only, no home directory, no data dir, a
  private ``/tmp`` and a ``HOME`` inside it, ``/proc`` of its own PID namespace (Linux);
- a scrubbed environment: ``PATH``, ``HOME``, ``LANG``, ``TERM`` and the names the operator lists,
  never ``VICTORIA_*`` or ``NATS_*``;
- limits: wall time, CPU seconds, address space, file size and processes (Linux: ``prlimit`` in
  the sandbox's own user namespace, or a ``pids`` cgroup when running as root, whom the kernel
  exempts from ``RLIMIT_NPROC``); on timeout or cancel the whole tree dies: SIGTERM to every
  process of the sandbox, SIGKILL after ``KILL_AFTER`` seconds (on Linux by ending the PID
  namespace, so nothing it started outlives it);
- stdout and stderr read as they come, each kept to its cap (first and last halves, a line says
  how much was cut), never more than the cap in memory.

``find`` picks and tries the sandbox once (``VICTORIA_SANDBOX``: ``auto``, ``bwrap``,
``sandbox-exec``, ``none``); without a usable one ``run`` is refused with ``SandboxUnavailable``,
which says how to install one. ``none`` runs commands with the same environment, limits and
process-group kill but no isolation: only on purpose, and then each command needs a person's
approval (``approval_effects``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from victoria.errors import SandboxUnavailable

log = logging.getLogger(__name__)

Mode = Literal["auto", "bwrap", "sandbox-exec", "none"]
MODES: Final = ("auto", "bwrap", "sandbox-exec", "none")
PR_SET_PDEATHSIG: Final = 1
KILL_AFTER: Final = 2.0  # seconds between SIGTERM and SIGKILL
READ_CHUNK: Final = 65536
TRY_TIMEOUT: Final = 10.0  # seconds the trial command of ``find`` may take
SANDBOX_EXEC: Final = "/usr/bin/sandbox-exec"  # never one found on PATH
PRLIMIT: Final = "/usr/bin/prlimit"
SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSED: Final = ("LANG", "TERM")
"""Variables of the executor's environment a command always gets (when set)."""
NEVER: Final = ("VICTORIA_", "NATS_")
"""Prefixes of variables a command never gets, even when the operator names them."""
SYSTEM_DIRS: Final = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
"""Linux: folders bound read-only (a link, as /bin is on merged-/usr systems, is made a link)."""
ETC: Final = (
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
    "ca-certificates.conf", "localtime", "timezone", "passwd", "group", "nsswitch.conf", "hosts",
    "host.conf", "resolv.conf", "gai.conf", "services", "protocols", "mime.types", "os-release",
    "debian_version", "profile", "bash.bashrc", "inputrc", "environment", "locale.alias",
    "locale.gen", "gitconfig", "mailcap", "magic", "manpath.config", "python3", "pip.conf",
)  # fmt: skip
"""Linux: the entries of /etc a command may read (not shadow, sudoers, ssh keys, machine secrets)."""
SECRETS: Final = (".ssh", ".aws", ".gnupg", ".netrc", ".docker", ".kube", ".config/gcloud", ".pgpass")
"""Folders and files of the home directory hidden even when the workspace holds them."""
KEPT: Final = (".git/hooks", ".git/config")
"""Paths of the workspace commands may not change (``_kept``)."""


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float = 60.0
    """Wall time; the whole tree is killed past it."""
    cpu_s: int | None = None
    """CPU seconds of each process; None: the wall time, rounded up."""
    memory_mb: int = 4096
    """Address space of each process (RLIMIT_AS; macOS does not enforce it)."""
    file_mb: int = 1024
    """Largest file a command may write (RLIMIT_FSIZE)."""
    processes: int = 256
    """Processes at once (a fork bomb ends there)."""
    output_bytes: int = 65536
    """Bytes of stdout, and of stderr, kept for the model (first and last halves)."""


@dataclass(frozen=True, slots=True)
class Policy:
    workspace: Path
    network: bool = False
    env: tuple[str, ...] = ()
    """Names of the executor's environment variables passed on (``VICTORIA_SANDBOX_ENV``)."""
    hidden: tuple[Path, ...] = ()
    """Paths hidden from commands even inside the workspace (the data dir)."""
    read_only: tuple[Path, ...] = ()
    """More folders commands may read (``VICTORIA_SANDBOX_READ``), e.g. a toolchain outside /usr."""


class Outcome(msgspec.Struct, kw_only=True, frozen=True):
    """What a command did."""

    exit_code: int | None
    """Its exit status; None when it was killed (see ``reason``)."""
    stdout: str
    stderr: str
    duration_s: float
    stdout_bytes: int
    """Bytes it wrote to stdout, all of them (``stdout`` holds at most the cap)."""
    stderr_bytes: int
    cut: bool
    """Output was cut to its cap."""
    killed: bool
    """The sandbox ended it (timeout or cancel)."""
    reason: str | None = None
    """Why it ended other than by itself: ``timed out after 60s``, ``cancelled``, ``killed by SIGKILL``."""
    sandbox: str = ""


class _Capped:
    """One output stream as it comes: the first half of the cap kept, the last half as a rolling
    tail, the rest counted."""

    def __init__(self, cap: int) -> None:
        self.head_cap = cap - cap // 2
        self.tail_cap = cap // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data and self.tail_cap:
            self.tail += data
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    @property
    def cut(self) -> bool:
        return self.total > len(self.head) + len(self.tail)

    def text(self) -> str:
        if not self.cut:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", "replace")
        left_out = self.total - len(self.head) - len(self.tail)
        note = f"\n[... {left_out} bytes cut: {self.total} in all, the first and last {self.head_cap + self.tail_cap} kept ...]\n"
        return self.head.decode("utf-8", "replace") + note + self.tail.decode("utf-8", "replace")


async def _end_reading(reading: asyncio.Future[Any]) -> None:
    """Wait for the pipes' readers: they end when the last process holding the pipes is gone (and
    their transports close at that end of file); past ``KILL_AFTER`` + 1 s they are cancelled, and
    their end is awaited all the same, so that nothing is left for the garbage collector."""
    try:
        async with asyncio.timeout(KILL_AFTER + 1):
            await asyncio.shield(reading)
    except TimeoutError:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _drain(stream: asyncio.StreamReader | None, into: _Capped) -> None:
    if stream is None:
        return
    while chunk := await stream.read(READ_CHUNK):
        into.add(chunk)


def environment(policy: Policy, home: str, source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a command gets: nothing of the executor's but what is named."""
    source = os.environ if source is None else source
    env = {"PATH": SYSTEM_PATH, "HOME": home, "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
    for name in (*PASSED, *policy.env):
        if name.startswith(NEVER):
            continue
        if name in source:
            env[name] = source[name]
    return env


def _rlimits(limits: Limits) -> list[tuple[int, int]]:
    cpu = limits.cpu_s if limits.cpu_s is not None else int(limits.timeout_s) + 1
    out = [
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, limits.file_mb * 1024 * 1024),
        (resource.RLIMIT_CORE, 0),
    ]
    if sys.platform != "darwin":
        out.append((resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024))
    return out


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGKILL when the executor dies, so that a command never
    outlives a Veronica killed with -9 (bwrap's ``--die-with-parent`` takes it on from there)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class _Cgroup:
    """A ``pids`` cgroup of one command (cgroup v2 or v1), for a root executor, whom the kernel
    does not hold to RLIMIT_NPROC. None of this is needed, or tried, for other users."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def make(cls, limit: int) -> _Cgroup | None:
        for parent in (Path("/sys/fs/cgroup/victoria-sandbox"), Path("/sys/fs/cgroup/pids/victoria-sandbox")):
            root = parent.parent
            if not (root / "cgroup.procs").exists() or (
                root.name == "cgroup" and not (root / "cgroup.controllers").exists()
            ):
                continue
            try:
                if root.name == "cgroup":  # v2: the pids controller enabled for our subtree
                    if "pids" not in (root / "cgroup.controllers").read_text().split():
                        continue
                    _enable_pids(root)
                    parent.mkdir(exist_ok=True)
                    _enable_pids(parent)
                else:
                    parent.mkdir(exist_ok=True)
                path = parent / uuid.uuid4().hex[:12]
                path.mkdir()
                (path / "pids.max").write_text(str(limit))
            except OSError as exc:
                log.debug("no pids cgroup under %s: %s", parent, exc)
                continue
            return cls(path)
        return None

    def enter(self) -> None:
        """In the child, before exec: this process and all it starts belong to the cgroup."""
        with open(self.path / "cgroup.procs", "w") as procs:
            procs.write(str(os.getpid()))

    async def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                await asyncio.sleep(0.02)
        log.warning("cgroup %s left behind: processes still in it", self.path)


def _enable_pids(path: Path) -> None:
    control = path / "cgroup.subtree_control"
    if "pids" not in control.read_text().split():
        control.write_text("+pids")


@dataclass(slots=True)
class Sandbox:
    """A usable sandbox (or ``none``), found once by ``find``."""

    kind: Literal["bwrap", "sandbox-exec", "none"]
    program: str | None
    version: str = ""
    policy: Policy = field(default_factory=lambda: Policy(Path.cwd()))
    process_limit: str = ""
    """How the process limit is held (``_process_limit``), or empty when it is not."""

    @property
    def isolated(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        if self.kind == "none":
            return "no sandbox (VICTORIA_SANDBOX=none): commands run as the executor's user, each with a person's approval"
        network = "network allowed" if self.policy.network else "no network"
        limit = f"process limit by {self.process_limit}" if self.process_limit else "no process limit"
        return (
            f"{self.kind} {self.version}".strip()
            + f": {network}, workspace {self.policy.workspace} read-write, {limit}"
        )

    async def run(self, command: str, *, cwd: Path | None = None, limits: Limits = Limits()) -> Outcome:
        """Run ``command`` with ``/bin/sh -c`` in the sandbox; cancelling the caller kills it."""
        workspace = self.policy.workspace.resolve()
        where = (cwd or workspace).resolve()
        scratch = Path(tempfile.mkdtemp(prefix="victoria-cmd-"))
        cgroup: _Cgroup | None = None
        try:
            home = "/tmp/home" if self.kind == "bwrap" else str(scratch / "home")
            env = environment(self.policy, home)
            if self.kind != "bwrap":
                (scratch / "home").mkdir()
                (scratch / "tmp").mkdir()
                env["TMPDIR"] = str(scratch / "tmp")
            info_r = info_w = -1
            rlimits = _rlimits(limits)
            if self.kind == "bwrap":
                info_r, info_w = os.pipe()
                if self.process_limit == "cgroup":
                    cgroup = _Cgroup.make(limits.processes)
                argv = self._bwrap(command, where, limits, info_w)
            else:
                argv = ["/bin/sh", "-c", command]
                if self.kind == "sandbox-exec":
                    argv = [SANDBOX_EXEC, "-p", self._profile(scratch), *argv]
                if self.process_limit == "rlimit":  # counts all of the user's processes
                    rlimits.append((resource.RLIMIT_NPROC, limits.processes + await _user_processes()))

            def before_exec() -> None:
                _die_with_parent()
                if cgroup is not None:
                    cgroup.enter()
                for which, value in rlimits:
                    with contextlib.suppress(ValueError, OSError):
                        resource.setrlimit(which, (value, value))

            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=str(where),
                env=env,
                start_new_session=True,
                preexec_fn=before_exec,
                pass_fds=(info_w,) if info_w >= 0 else (),
            )
            child = None
            if info_w >= 0:
                os.close(info_w)
                child = await _child_pid(info_r)
            out, err = _Capped(limits.output_bytes), _Capped(limits.output_bytes)
            reading = asyncio.gather(_drain(process.stdout, out), _drain(process.stderr, err))
            # A reader cancelled on its own (the loop's end cancels every task) makes the gather's
            # exception a CancelledError that nobody may be left to await: marked as seen here.
            reading.add_done_callback(_seen)
            reason: str | None = None
            try:
                async with asyncio.timeout(limits.timeout_s):
                    await process.wait()
            except TimeoutError:
                reason = f"timed out after {limits.timeout_s:g}s"
            except asyncio.CancelledError:
                await asyncio.shield(self._kill(process, child))
                await asyncio.shield(_end_reading(reading))
                raise
            if reason is not None:
                await self._kill(process, child)
            await _end_reading(reading)
            code = process.returncode
            killed = reason is not None
            if code is not None and code < 0:
                reason = reason or f"killed by {signal.Signals(-code).name}"
            return Outcome(
                exit_code=None if killed or (code is not None and code < 0) else code,
                stdout=out.text(),
                stderr=err.text(),
                duration_s=round(time.monotonic() - started, 3),
                stdout_bytes=out.total,
                stderr_bytes=err.total,
                cut=out.cut or err.cut,
                killed=killed,
                reason=reason,
                sandbox=self.kind,
            )
        finally:
            if cgroup is not None:
                await cgroup.remove()
            shutil.rmtree(scratch, ignore_errors=True)

    async def _kill(self, process: asyncio.subprocess.Process, child: int | None) -> None:
        """SIGTERM to every process of the command, SIGKILL after ``KILL_AFTER`` seconds."""
        targets = _namespace_members(child) if child is not None else []
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        if child is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(KILL_AFTER):
                await process.wait()
                if child is not None:  # the command is done; what it left behind goes with bwrap
                    return
        except TimeoutError:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # bwrap: its PID namespace ends with it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_AFTER):
                await process.wait()

    # --- the command lines ---------------------------------------------------------------------
    def _bwrap(self, command: str, cwd: Path, limits: Limits, info_fd: int) -> list[str]:
        assert self.program is not None
        workspace = self.policy.workspace.resolve()
        argv = [
            self.program,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--info-fd",
            str(info_fd),
        ]
        if self.policy.network:
            argv.append("--share-net")
        for name in SYSTEM_DIRS:
            path = Path(name)
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                argv += ["--ro-bind", name, name]
        for name in ETC:
            if os.path.lexists(f"/etc/{name}"):
                argv += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for extra in self.policy.read_only:
            if extra.exists():
                argv += ["--ro-bind", str(extra.resolve()), str(extra.resolve())]
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", "/tmp/home"]
        argv += ["--bind", str(workspace), str(workspace)]
        for kept in _kept(workspace):
            argv += ["--ro-bind", str(kept), str(kept)]
        for hidden in self._hidden(workspace):
            argv += ["--tmpfs", str(hidden)] if hidden.is_dir() else ["--ro-bind", "/dev/null", str(hidden)]
        argv += ["--chdir", str(cwd)]
        argv.append("--")
        if self.process_limit == "prlimit":  # inside its own user namespace: only its processes count
            argv += [PRLIMIT, f"--nproc={limits.processes}", "--"]
        argv += ["/bin/sh", "-c", command]
        return argv

    def _hidden(self, workspace: Path) -> list[Path]:
        """What the workspace holds that no command may see: the data dir, the user's secrets."""
        home = Path.home()
        candidates = [*self.policy.hidden, *(home / name for name in SECRETS)]
        out = []
        for path in candidates:
            if path.exists() or path.is_symlink():
                real = path.resolve()
                if real == workspace or workspace in real.parents:
                    out.append(real)
        return out

    def _profile(self, scratch: Path) -> str:
        """The sandbox-exec profile of one command: an allowlist, nothing denied after an allow."""
        workspace = self.policy.workspace.resolve()
        hidden = self._hidden(workspace)
        inside = _sb_all(_sb_subpath(workspace), *(f"(require-not {_sb_subpath(h)})" for h in hidden))
        readable = [
            _sb_all(f"(require-not {_sb_subpath(Path.home().resolve())})",
                    *(f"(require-not {_sb_subpath(h)})" for h in hidden)),
            inside,
            _sb_subpath(scratch.resolve()),
            *(_sb_subpath(extra.resolve()) for extra in self.policy.read_only),
        ]  # fmt: skip
        kept = [f"(require-not {_sb_subpath(k)})" for k in _kept(workspace)]
        writable = [
            _sb_all(_sb_subpath(workspace), *kept, *(f"(require-not {_sb_subpath(h)})" for h in hidden))
        ]
        writable.append(_sb_subpath(scratch.resolve()))
        lines = [
            SEATBELT_BASE,
            "(allow file-read* " + " ".join(readable) + ")",
            "(allow file-write* " + " ".join(writable) + ")",
        ]
        if self.policy.network:
            lines.append(SEATBELT_NETWORK)
        return "\n".join(lines) + "\n"


def _kept(workspace: Path) -> list[Path]:
    """What of the workspace commands may read but not change: what git runs outside the sandbox
    (its hooks, and its config, which can name other hooks, an fsmonitor, a pager)."""
    return [path for path in (workspace / name for name in KEPT) if path.exists() and not path.is_symlink()]


def _sb_subpath(path: Path) -> str:
    return f"(subpath {json.dumps(str(path))})"


def _sb_all(*filters: str) -> str:
    return filters[0] if len(filters) == 1 else "(require-all " + " ".join(filters) + ")"


SEATBELT_BASE: Final = """(version 1)
(deny default)
(allow process-exec process-fork)
(allow signal (target same-sandbox))
(allow process-info* (target same-sandbox))
(allow sysctl-read)
(allow file-read-metadata)
(allow ipc-posix-sem ipc-posix-shm)
(allow pseudo-tty)
(allow file-read* file-write* file-ioctl (literal "/dev/null") (literal "/dev/zero") (literal "/dev/tty")
  (literal "/dev/ptmx") (regex #"^/dev/ttys[0-9]+$"))
(allow file-read* (literal "/dev/random") (literal "/dev/urandom"))
(allow mach-lookup (global-name "com.apple.system.opendirectoryd.libinfo")
  (global-name "com.apple.system.logger") (global-name "com.apple.system.notification_center"))"""
"""macOS: what every command may do besides reading and writing files."""
SEATBELT_NETWORK: Final = """(allow network*)
(allow mach-lookup (global-name "com.apple.dnssd.service") (global-name "com.apple.trustd")
  (global-name "com.apple.SystemConfiguration.configd"))"""


async def _child_pid(info_r: int) -> int | None:
    """bwrap's ``--info-fd`` JSON: the host PID of the sandbox's first process."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(info_r, "rb")
    )
    try:
        async with asyncio.timeout(TRY_TIMEOUT):
            data = await reader.read()
    except TimeoutError:
        return None
    finally:
        transport.close()
    with contextlib.suppress(ValueError):
        pid = json.loads(data or b"{}").get("child-pid")
        return int(pid) if pid else None
    return None


def _namespace_members(child: int) -> list[int]:
    """The host PIDs of the processes in ``child``'s PID namespace, ``child`` (its init) last."""
    try:
        target = os.readlink(f"/proc/{child}/ns/pid")
    except OSError:
        return []
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != child:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    members.append(int(entry))
    return members


async def _user_processes() -> int:
    """Processes of this user now (macOS and ``none``: RLIMIT_NPROC counts all of them)."""
    with contextlib.suppress(OSError, TimeoutError):
        ps = await asyncio.create_subprocess_exec(
            "ps",
            "-U",
            str(os.getuid()),
            "-o",
            "pid=",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(TRY_TIMEOUT):
            return len((await ps.communicate())[0].split())
    return 1024


def _process_limit(kind: str) -> str:
    """How the process limit is held: ``prlimit`` (Linux, not root: counted in the sandbox's own
    user namespace), ``cgroup`` (root, whom RLIMIT_NPROC does not hold), ``rlimit`` (macOS and
    ``none``, not root: the user's processes now plus the limit), or empty: not held."""
    if kind == "bwrap":
        if os.geteuid() != 0:
            return "prlimit" if os.path.exists(PRLIMIT) else ""
        probe = _Cgroup.make(1)
        if probe is None:
            return ""
        with contextlib.suppress(OSError):
            probe.path.rmdir()
        return "cgroup"
    return "rlimit" if os.geteuid() != 0 else ""


def _program(kind: str) -> str | None:
    if kind == "bwrap":
        return shutil.which("bwrap")
    return SANDBOX_EXEC if os.path.exists(SANDBOX_EXEC) else None


async def find(mode: Mode, policy: Policy) -> Sandbox:
    """The sandbox ``mode`` names, tried once with ``true``; ``SandboxUnavailable`` says why
    there is none and how to get one."""
    if mode == "none":
        return Sandbox("none", None, policy=policy, process_limit=_process_limit("none"))
    wanted: list[Literal["bwrap", "sandbox-exec"]] = (
        [mode] if mode != "auto" else (["sandbox-exec"] if sys.platform == "darwin" else ["bwrap"])
    )
    reasons = []
    for kind in wanted:
        program = _program(kind)
        if program is None:
            reasons.append(f"{kind} is not installed")
            continue
        version = ""
        if kind == "bwrap":
            with contextlib.suppress(OSError, TimeoutError):
                proc = await asyncio.create_subprocess_exec(
                    program, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
                )
                async with asyncio.timeout(TRY_TIMEOUT):
                    version = (await proc.communicate())[0].decode().split()[-1]
        sandbox = Sandbox(kind, program, version, policy, _process_limit(kind))
        try:
            trial = await sandbox.run("true", limits=Limits(timeout_s=TRY_TIMEOUT))
        except OSError as exc:
            reasons.append(f"{kind} cannot start: {exc}")
            continue
        if trial.exit_code != 0:
            said = trial.stderr.strip().splitlines()[-1:] or [trial.reason or f"exit {trial.exit_code}"]
            reasons.append(f"{kind} does not work here: {said[0]}")
            continue
        return sandbox
    raise SandboxUnavailable("; ".join(reasons), macos=sys.platform == "darwin")


def approval_effects(effects: frozenset[str], sandbox_mode: Mode) -> frozenset[str]:
    """The effects that need a person's yes: ``VICTORIA_APPROVAL``'s, and ``execute`` whenever
    commands run without a sandbox (``VICTORIA_SANDBOX=none``)."""
    return effects | {"execute"} if sandbox_mode == "none" else effects
