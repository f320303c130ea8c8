"""Writes done once by their hashes, and no tool run for a fenced-out attempt (actors/veronica/
executor.py), on a real system and real files.

A write Veronica claimed and then died in (between her claim and her outcome) is set up by the test
playing that Veronica: the live one is frozen (SIGSTOP) while the task's intent is stored, the test
stores the dead one's claim with the files' hashes and does to the files what she did (all of the
write, none of it, or somebody else's write), and the live one, thawed, takes the intent."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fakellm import FakeLLM
from tests.system import NatsServer, System, stream_messages, victoria_up
from victoria.events import contracts, subjects
from victoria.runtime import connection, fence

pytestmark = pytest.mark.e2e

OLD = "def main():\n    return 1\n"
NEW = "def main():\n    return 2\n"
PATCH = "--- a/app.py\n+++ b/app.py\n@@ -1,2 +1,2 @@\n def main():\n-    return 1\n+    return 2\n"
WRITE: dict[str, Any] = {"tool": "write_file", "args": {"path": "app.py", "content": NEW}}
APPLY: dict[str, Any] = {"tool": "apply_patch", "args": {"patch": PATCH}}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def events(system: System, task_id: str, kind: str) -> list[dict[str, Any]]:
    return [m for m in stream_messages(system.bus_url(), f"victoria.task.*.{task_id}.>") if m["type"] == kind]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "app.py").write_text(OLD, encoding="utf-8")
    return path


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def claim_as_a_dead_veronica(
    system: System, intent: dict[str, Any], changes: list[contracts.FileChange]
) -> None:
    """Store the claim a Veronica (instance ``gone``) made of the call before she died in it."""
    claim = contracts.ToolClaim(
        task_id=intent["task_id"], call_id=intent["call_id"], instance="gone", changes=changes
    )

    async def store() -> bool:
        nc = await connection.connect(system.bus_url(), name="dead-veronica")
        try:
            return await fence.append_once(nc, subjects.tool_claim(claim.task_id, claim.call_id), claim)
        finally:
            await nc.close()

    assert asyncio.run(store())


def delivered_again(
    system: System, fake: FakeLLM, step: dict[str, Any], then: str | None
) -> tuple[str, dict[str, Any], int]:
    """Run a task whose one step is ``step`` (app.py, from OLD to NEW), whose call a dead Veronica
    claimed leaving app.py holding ``then`` (None: no file); its id, the call's outcome, and the
    inode app.py had when the live Veronica took the call (0: none)."""
    fake.mode, fake.steps = "steps", [step]
    workspace = Path(system.env["VICTORIA_WORKSPACE"])
    with frozen(system.pid_of("veronica")):
        task_id = system.submit("Change app.py", task_type="agent")
        [intent] = system.wait_for(lambda: events(system, task_id, "tool_intent"), what="the intent")
        claim_as_a_dead_veronica(
            system, intent, [contracts.FileChange(path="app.py", before=sha(OLD), after=sha(NEW))]
        )
        if then is None:
            (workspace / "app.py").unlink()
        else:
            (workspace / "app.py").write_text(then, encoding="utf-8")  # in place: the same inode
        inode = (workspace / "app.py").stat().st_ino if then is not None else 0
    end = system.wait_terminal(task_id, timeout=90)
    assert end["status"] == "completed", end
    [outcome] = events(system, task_id, "tool_outcome")
    [claim] = events(system, task_id, "tool_claim")  # the live Veronica's claim was refused
    assert claim["instance"] == "gone"
    return task_id, outcome, inode


@pytest.mark.parametrize("step", [WRITE, APPLY], ids=["write_file", "apply_patch"])
def test_a_write_delivered_again_that_the_dead_veronica_had_done_is_recorded_done_without_writing(
    tmp_path: Path, fake: FakeLLM, workspace: Path, step: dict[str, Any]
) -> None:
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        _, outcome, inode = delivered_again(system, fake, step, then=NEW)  # she wrote it, then died
        assert (workspace / "app.py").stat().st_ino == inode  # not written again: a write renames
        assert (workspace / "app.py").read_text(encoding="utf-8") == NEW
        assert outcome["ok"] is True and outcome["output"].startswith("found done: 'app.py'"), outcome
        assert outcome["changes"] == [{"path": "app.py", "before": sha(OLD), "after": sha(NEW)}]
        assert "found done: 'app.py'" in fake.prompts_text()


def test_a_write_delivered_again_that_had_not_happened_is_written_once(
    tmp_path: Path, fake: FakeLLM, workspace: Path
) -> None:
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        task_id, outcome, inode = delivered_again(system, fake, WRITE, then=OLD)  # died before the rename
        assert (workspace / "app.py").read_text(encoding="utf-8") == NEW
        assert (workspace / "app.py").stat().st_ino != inode  # renamed into place
        assert outcome["ok"] is True and outcome["output"].startswith("wrote "), outcome
        assert outcome["instance"] != "gone"
        assert outcome["changes"] == [{"path": "app.py", "before": sha(OLD), "after": sha(NEW)}]
        said = [
            r["message"]
            for r in stream_messages(system.bus_url(), "victoria.log.veronica.>")
            if task_id in str(r["message"])
        ]
        assert sum("writing it now" in line for line in said) == 1, said
        assert sorted(os.listdir(workspace)) == ["app.py"]  # no temporary file left


@pytest.mark.parametrize("theirs", ["def main():\n    return 3\n", None], ids=["changed", "deleted"])
def test_a_file_changed_by_someone_else_before_the_write_was_delivered_again_is_a_conflict_the_model_reads(
    tmp_path: Path, fake: FakeLLM, workspace: Path, theirs: str | None
) -> None:
    with victoria_up(tmp_path / "data", fake, workspace).start() as system:
        _, outcome, _ = delivered_again(system, fake, WRITE, then=theirs)
        conflict = "'app.py' was changed by someone else since the call was made; not overwritten"
        assert outcome["ok"] is False and outcome["error"] == conflict, outcome
        assert conflict in fake.prompts_text()
        if theirs is None:
            assert not (workspace / "app.py").exists()
        else:
            assert (workspace / "app.py").read_text(encoding="utf-8") == theirs


# --- a fenced-out attempt ------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.mark.chaos
@pytest.mark.skipif(not os.path.exists("/usr/bin/bwrap") and not os.environ.get("CI"), reason="no bubblewrap")
def test_a_fenced_out_attempt_thawed_stores_no_intent_and_runs_no_tool(
    tmp_path: Path, workspace: Path, broker: NatsServer
) -> None:
    """The first Victoria is frozen while the model answers the step that calls the command; the
    task goes to a second, which runs it; thawed past the duplicate window, the first one's intent
    is refused by the fence."""
    fake = FakeLLM(delay=2.0).start()
    fake.mode, fake.steps = "steps", [{"tool": "run_command", "args": {"command": "echo ran >> runs.txt"}}]
    settings = {
        "VICTORIA_LLM_URL": fake.url,
        "VICTORIA_WORKSPACE": str(workspace),
        "VICTORIA_ACK_WAIT": "2",
        "VICTORIA_DEDUP_WINDOW": "3",
    }
    system = System(tmp_path / "data", env={**settings, "VICTORIA_INSTANCE": "first"}, nats_url=broker.url)
    system.start()
    second: subprocess.Popen[bytes] | None = None
    first_pid = 0
    try:
        task_id = system.submit("Run it", task_type="agent")
        system.wait_for(
            lambda: fake.total_calls == 3 and system.status(task_id)["stage"] == "step",
            what="the step's model call made",
        )
        first_pid = system.pid_of("victoria")
        os.kill(first_pid, signal.SIGSTOP)
        with (tmp_path / "second.log").open("ab") as out:
            second = subprocess.Popen(
                [sys.executable, "-m", "victoria", "actor", "victoria", "--nats-url", broker.url],
                env={**system.env, **settings, "VICTORIA_INSTANCE": "second"},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        assert system.wait_terminal(task_id, timeout=60)["status"] == "completed"
        assert (workspace / "runs.txt").read_text().split() == ["ran"]
        time.sleep(4.0)  # the duplicate window (3 s) forgets the message ids the second stored
        os.kill(first_pid, signal.SIGCONT)

        def lost() -> bool:
            records = stream_messages(broker.url, "victoria.log.victoria.warning", timeout=1.0)
            return any(
                r["instance"] == "first" and "lost the task" in r["message"] and task_id in r["message"]
                for r in records
            )

        assert system.wait_for(lost, timeout=30, what="the first says it lost the task")
        time.sleep(2.0)  # a tool the thawed attempt had got run would have run by now
        assert (workspace / "runs.txt").read_text().split() == ["ran"]  # the second's run, alone
        history = [e for e in stream_messages(broker.url, "victoria.task.>") if e["task_id"] == task_id]
        intents = Counter(e["call_id"] for e in history if e["type"] == "tool_intent")
        assert len(intents) == 1 and set(intents.values()) == {1}, intents
        assert [e["ok"] for e in history if e["type"] == "tool_outcome"] == [True]
        assert fake.repeated_prompts() == 0 and fake.total_calls == 4  # understand, plan, two steps
    finally:
        if first_pid:
            os.kill(first_pid, signal.SIGCONT)
        if second is not None:
            second.terminate()
            second.wait(10)
        system.close()
        fake.stop()
