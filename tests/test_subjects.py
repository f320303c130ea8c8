"""Subject builders in events/subjects.py: pure functions, strict tokens."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from victoria.events import subjects

INVALID_TOKENS = [
    pytest.param("a.b", id="dot"),
    pytest.param(".", id="lone-dot"),
    pytest.param("a*", id="star"),
    pytest.param("*", id="lone-star"),
    pytest.param("a>", id="gt"),
    pytest.param(">", id="lone-gt"),
    pytest.param("a b", id="space"),
    pytest.param(" ", id="lone-space"),
    pytest.param("", id="empty"),
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("задача", id="cyrillic"),
    pytest.param("café", id="accented"),
    pytest.param("a\tb", id="tab"),
]


def test_a_task_event_subject_has_prefix_family_shard_id_and_kind() -> None:
    shard = subjects.shard_of("t-1")
    assert subjects.task_event("t-1", "submitted") == f"victoria.task.{shard}.t-1.submitted"
    shard = subjects.shard_of("abc_DEF-9")
    assert subjects.task_event("abc_DEF-9", "completed") == f"victoria.task.{shard}.abc_DEF-9.completed"


def test_the_shard_is_a_stable_hash_of_the_task_id() -> None:
    assert subjects.shard_of("t1") == zlib.crc32(b"t1") % subjects.TASK_SHARDS
    ids = [f"task-{n}" for n in range(400)]
    counts = {shard: sum(subjects.shard_of(i) == shard for i in ids) for shard in range(subjects.TASK_SHARDS)}
    assert all(count > 50 for count in counts.values()), counts


def test_each_shard_has_its_own_stream_and_filters() -> None:
    assert tuple(f"VICTORIA_TASKS_{n}" for n in range(subjects.TASK_SHARDS)) == subjects.TASK_STREAMS
    assert subjects.task_stream_of("t1") == f"VICTORIA_TASKS_{subjects.shard_of('t1')}"
    assert subjects.shard_events(2) == "victoria.task.2.>"
    assert subjects.shard_events_of_kind(3, "submitted") == "victoria.task.3.*.submitted"
    with pytest.raises(ValueError):
        subjects.task_stream(subjects.TASK_SHARDS)


def test_task_events_filters_every_kind_of_one_task() -> None:
    assert subjects.task_events("t1") == f"victoria.task.{subjects.shard_of('t1')}.t1.>"


def test_all_tasks_of_kind_uses_single_token_wildcards_for_shard_and_id() -> None:
    assert subjects.all_tasks_of_kind("cancel") == "victoria.task.*.*.cancel"


def test_service_event_subject_names_service_instance_and_kind() -> None:
    assert subjects.service_event("veronica", "host-1", "down") == "victoria.svc.veronica.host-1.down"


def test_heartbeat_subject_names_service_and_instance() -> None:
    assert subjects.heartbeat("monitor", "h1") == "victoria.heartbeat.monitor.h1"


def test_dead_letter_subjects_are_in_the_dlq_family() -> None:
    assert subjects.dead_letter_task("t1") == "victoria.dlq.task.t1"
    assert subjects.dead_letter_bad("gateway") == "victoria.dlq.bad.gateway"


def test_rpc_subject_names_service_and_method() -> None:
    assert subjects.rpc("veronica", "files") == "victoria.rpc.veronica.files"
    assert subjects.rpc("veronica", "files") == subjects.VERONICA_FILES
    assert subjects.rpc("monitor", "services") == subjects.MONITOR_SERVICES


def test_log_subject_lowercases_the_level() -> None:
    assert subjects.log("victoria", "WARNING") == "victoria.log.victoria.warning"


def test_tokens_subject_carries_the_task_id() -> None:
    assert subjects.tokens("t1") == "victoria.tokens.t1"


def test_the_catch_all_filters_cover_each_family() -> None:
    assert subjects.ALL_TASK_EVENTS == "victoria.task.>"
    assert subjects.ALL_SERVICE_EVENTS == "victoria.svc.>"
    assert subjects.ALL_HEARTBEATS == "victoria.heartbeat.>"
    assert subjects.ALL_DEAD_LETTERS == "victoria.dlq.>"
    assert subjects.ALL_LOGS == "victoria.log.>"


def test_a_64_character_token_is_accepted() -> None:
    task_id = "a" * 64
    assert (
        subjects.task_event(task_id, "stage") == f"victoria.task.{subjects.shard_of(task_id)}.{task_id}.stage"
    )


@pytest.mark.parametrize("bad", INVALID_TOKENS)
def test_an_invalid_task_id_is_rejected(bad: str) -> None:
    assert not subjects.is_token(bad)
    with pytest.raises(ValueError, match="task id"):
        subjects.task_event(bad, "submitted")
    with pytest.raises(ValueError):
        subjects.task_events(bad)
    with pytest.raises(ValueError):
        subjects.dead_letter_task(bad)
    with pytest.raises(ValueError):
        subjects.tokens(bad)


@pytest.mark.parametrize("bad", INVALID_TOKENS)
def test_an_invalid_service_name_or_instance_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="service name"):
        subjects.service_event(bad, "i1", "up")
    with pytest.raises(ValueError, match="instance"):
        subjects.service_event("svc", bad, "up")
    with pytest.raises(ValueError):
        subjects.heartbeat(bad, "i1")
    with pytest.raises(ValueError):
        subjects.heartbeat("svc", bad)


@pytest.mark.parametrize("bad", INVALID_TOKENS)
def test_an_invalid_rpc_log_or_consumer_token_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        subjects.rpc(bad, "m")
    with pytest.raises(ValueError):
        subjects.rpc("s", bad)
    with pytest.raises(ValueError):
        subjects.log(bad, "info")
    with pytest.raises(ValueError):
        subjects.log("a", bad)
    with pytest.raises(ValueError):
        subjects.dead_letter_bad(bad)


@pytest.mark.parametrize("bad", ["abc\n", "abc\r\n", "\nabc"])
def test_a_task_id_with_a_newline_is_rejected(bad: str) -> None:
    # The docstring promises "no white space"; a newline in a subject breaks the NATS protocol line.
    assert not subjects.is_token(bad)
    with pytest.raises(ValueError):
        subjects.task_event(bad, "submitted")


def test_task_id_of_reads_the_id_back_from_a_task_subject() -> None:
    assert subjects.task_id_of(subjects.task_event("t-42", "llm_request")) == "t-42"
    assert subjects.task_id_of(subjects.llm_result("t-42", "step-3")) == "t-42"


@pytest.mark.parametrize(
    "subject",
    [
        "victoria.task.t1",
        "victoria.task.t1.submitted",
        "victoria.task.0.t1.submitted.extra",
        "victoria.task.0.t*.submitted",
        "other.task.t1.submitted",
        "victoria.svc.t1.submitted",
        "",
    ],
)
def test_task_id_of_rejects_a_subject_that_is_not_a_task_subject(subject: str) -> None:
    with pytest.raises(ValueError):
        subjects.task_id_of(subject)


@settings(max_examples=200)
@given(st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9_-]{1,64}\n?", fullmatch=True))
def test_any_accepted_token_builds_a_five_token_subject_that_round_trips(task_id: str) -> None:
    if not subjects.is_token(task_id):
        with pytest.raises(ValueError):
            subjects.task_event(task_id, "submitted")
        return
    subject = subjects.task_event(task_id, "submitted")
    parts = subject.split(".")
    assert len(parts) == 5
    assert all(parts)
    assert not any(ch.isspace() for ch in subject)
    assert subjects.task_id_of(subject) == task_id


@settings(max_examples=200)
@given(st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True))
def test_every_token_of_the_documented_alphabet_is_accepted(task_id: str) -> None:
    assert subjects.is_token(task_id)
    assert subjects.task_id_of(subjects.task_event(task_id, "cancel")) == task_id
