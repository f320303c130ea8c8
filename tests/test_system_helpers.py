"""The test harness's own check: a process log with a traceback fails the test that made it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.system import assert_no_tracebacks


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
