"""How the supervisor describes a child's exit (runtime/supervisor.py describe_exit)."""

from __future__ import annotations

from victoria.runtime.supervisor import describe_exit


def test_killed_by_sigkill_is_reported_as_a_likely_oom_kill() -> None:
    reason, code, sig, oom = describe_exit(-9)
    assert "SIGKILL" in reason
    assert "OOM" in reason
    assert code is None
    assert sig == "SIGKILL"
    assert oom is True


def test_exit_code_137_is_reported_as_a_likely_oom_kill() -> None:
    reason, code, sig, oom = describe_exit(137)
    assert "137" in reason
    assert "OOM" in reason
    assert code == 137
    assert sig == "SIGKILL"
    assert oom is True


def test_killed_by_sigterm_is_not_an_oom_kill() -> None:
    reason, code, sig, oom = describe_exit(-15)
    assert reason == "killed by SIGTERM"
    assert "OOM" not in reason
    assert code is None
    assert sig == "SIGTERM"
    assert oom is False


def test_exit_code_1_is_a_plain_exit_code() -> None:
    assert describe_exit(1) == ("exit code 1", 1, None, False)


def test_exit_code_0_is_a_plain_exit_code() -> None:
    assert describe_exit(0) == ("exit code 0", 0, None, False)


def test_an_unknown_signal_number_is_named_by_number() -> None:
    reason, code, sig, oom = describe_exit(-200)
    assert sig == "signal 200"
    assert reason == "killed by signal 200"
    assert code is None
    assert oom is False
