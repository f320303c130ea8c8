"""The test harness's own check: a process log with a traceback fails the test that made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system import assert_no_permission_violations, assert_no_tracebacks


def test_a_log_with_a_traceback_fails_naming_it(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    log.write_text(
        "2026-12-01 INFO victoria: started\n"
        "2026-12-01 ERROR victoria.runtime.consumer: handler of victoria failed\n"
        "Traceback (most recent call last):\n"
        '  File "actor.py", line 1, in <module>\n'
        "ValueError: boom\n",
        encoding="utf-8",
    )
    with pytest.raises(AssertionError, match="Traceback") as caught:
        assert_no_tracebacks(log)
    assert "ValueError: boom" in str(caught.value)


def test_a_never_retrieved_task_exception_fails_too(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    log.write_text("asyncio: Task exception was never retrieved\n", encoding="utf-8")
    with pytest.raises(AssertionError):
        assert_no_tracebacks(log)


def test_a_clean_log_passes(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    log.write_text("2026-12-01 WARNING victoria: task t lost the task\n", encoding="utf-8")
    assert_no_tracebacks(log)


@pytest.mark.parametrize(
    "line",
    [
        # nats-py's error callback, as connection.connect logs it
        "2026-12-01 WARNING gateway[7] victoria.runtime.connection: nats Error: nats: permissions violation for "
        'publish to "victoria.task.0.t1.completed"\n',
        # the server's own log
        '[9] 2026/12/01 17:18:54.002043 [ERR] 127.0.0.1:46286 - cid:65 - "$G/user:gateway" - Publish '
        'Violation - Subject "victoria.task.0.t1.completed"\n',
        '[9] 2026/12/01 17:18:54.002043 [ERR] 127.0.0.1:46286 - cid:65 - "$G/user:gateway" - Subscription '
        'Violation - Subject "victoria.svc.>"\n',
    ],
)
def test_a_nats_permissions_violation_in_a_log_fails_naming_it(tmp_path: Path, line: str) -> None:
    log = tmp_path / "nats-server.log"
    log.write_text("[9] 2026/12/01 17:18:53 [INF] Server is ready\n" + line, encoding="utf-8")
    with pytest.raises(AssertionError, match="permissions violation") as caught:
        assert_no_permission_violations(log)
    assert "victoria." in str(caught.value)
    log.write_text("[9] 2026/12/01 17:18:53 [WRN] Plaintext passwords detected\n", encoding="utf-8")
    assert_no_permission_violations(log)
