"""HTTP bodies and query parameters (gateway/requests.py): strict parsing, named fields."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from victoria.events.contracts import ChatTurn
from victoria.gateway.requests import (
    MAX_GOAL,
    MAX_HISTORY_CHARS,
    MAX_HISTORY_TURNS,
    MAX_RUN_BODY,
    MAX_WAIT,
    BadRequest,
    RunRequest,
    clean_header,
    parse_bool,
    parse_run_request,
    parse_wait,
)


def body(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


def bad(raw: bytes) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse_run_request(raw)
    return info.value


def test_a_minimal_body_with_a_goal_is_accepted() -> None:
    request = parse_run_request(b'{"goal": "What can you do?"}')
    assert request.goal == "What can you do?"
    assert request.task_type is None
    assert request.max_steps is None
    assert request.model is None
    assert request.session_id is None
    assert request.project_context is None


def test_a_full_body_is_accepted() -> None:
    full: dict[str, Any] = {
        "goal": "Выведи список файлов",
        "task_type": "files",
        "project_context": {"repo": "victoria", "files": ["a", "b"]},
        "session_id": "s-1",
        "max_steps": 50,
        "model": "llama3.2",
    }
    request = parse_run_request(body(**full))
    assert request == RunRequest(**full)


@pytest.mark.parametrize("task_type", ["capabilities", "files", "agent", "plan"])
def test_each_known_task_type_is_accepted(task_type: str) -> None:
    assert parse_run_request(body(goal="g", task_type=task_type)).task_type == task_type


def test_unknown_fields_in_the_body_are_ignored() -> None:
    assert parse_run_request(body(goal="g", colour="blue")).goal == "g"


@pytest.mark.parametrize("raw", [b"", b"   ", b"\n\t"])
def test_an_empty_body_is_400(raw: bytes) -> None:
    exc = bad(raw)
    assert exc.status == 400
    assert exc.error == "invalid_json"


@pytest.mark.parametrize(
    "raw", [b"{", b'{"goal": "x",}', b"not json", b"\xff\xfe", b'{"goal": "x"} trailing']
)
def test_broken_json_is_400(raw: bytes) -> None:
    exc = bad(raw)
    assert exc.status == 400
    assert exc.error == "invalid_json"
    assert exc.body()["error"] == "invalid_json"


@pytest.mark.parametrize("raw", [b"[]", b'["goal"]', b'"goal"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_422(raw: bytes) -> None:
    exc = bad(raw)
    assert exc.status == 422
    assert exc.error == "invalid_body"
    assert exc.field is None
    assert "field" not in exc.body()


def test_prompt_is_taken_for_the_goal() -> None:
    assert parse_run_request(body(prompt="Что ты умеешь?")).goal == "Что ты умеешь?"
    assert parse_run_request(body(goal="the goal", prompt="not this")).goal == "the goal"


def test_the_old_servers_fields_are_accepted_and_unknown_ones_ignored() -> None:
    request = parse_run_request(
        body(
            goal="g",
            verbose=True,
            use_enhanced=True,
            mode="chat",
            expert_name="python",
            chat_history=[{"user": "What is NATS?", "assistant": "A messaging system."}],
        )
    )
    assert request.verbose and request.use_enhanced
    assert request.chat_history == [ChatTurn(user="What is NATS?", assistant="A messaging system.")]


def test_only_the_latest_turns_of_chat_history_are_kept() -> None:
    turns = [{"user": f"q{n}", "assistant": f"a{n}"} for n in range(40)]
    kept = parse_run_request(body(goal="g", chat_history=turns)).chat_history
    assert len(kept) == MAX_HISTORY_TURNS
    assert kept[-1] == ChatTurn(user="q39", assistant="a39")


def test_chat_history_is_bounded_by_size_keeping_the_latest() -> None:
    big = "x" * (MAX_HISTORY_CHARS // 2)
    turns = [
        {"user": big, "assistant": "old"},
        {"user": big, "assistant": "new"},
        {"user": "last", "assistant": ""},
    ]
    kept = parse_run_request(body(goal="g", chat_history=turns)).chat_history
    assert sum(len(t.user) + len(t.assistant) for t in kept) <= MAX_HISTORY_CHARS
    assert kept[-1].user == "last" and kept[0].assistant == "new"


@pytest.mark.parametrize("history", [["just a string"], [{"user": 5}], {"user": "x"}])
def test_a_malformed_chat_history_is_422_naming_it(history: object) -> None:
    exc = bad(body(goal="g", chat_history=history))
    assert exc.status == 422
    assert exc.field == "chat_history"


def test_images_are_decoded_from_base64_or_data_urls() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"pixels"
    encoded = base64.b64encode(png).decode()
    request = parse_run_request(body(goal="g", images_base64=[encoded, f"data:image/png;base64,{encoded}"]))
    assert request.images == [png, png]


@pytest.mark.parametrize(
    "images",
    [["not base64!"], [""], [base64.b64encode(b"x").decode()] * 6],
)
def test_bad_images_are_422_naming_images_base64(images: list[str]) -> None:
    exc = bad(body(goal="g", images_base64=images))
    assert exc.status == 422
    assert exc.field == "images_base64"


def test_a_missing_goal_is_422_naming_goal() -> None:
    exc = bad(b'{"task_type": "agent"}')
    assert exc.status == 422
    assert exc.field == "goal"
    assert exc.body()["field"] == "goal"


@pytest.mark.parametrize("goal", [1, None, ["x"], {"text": "x"}, True])
def test_a_goal_of_the_wrong_type_is_422_naming_goal(goal: object) -> None:
    exc = bad(body(goal=goal))
    assert exc.status == 422
    assert exc.field == "goal"


@pytest.mark.parametrize("goal", ["", "   ", "\n\t "])
def test_a_blank_goal_is_422_naming_goal(goal: str) -> None:
    exc = bad(body(goal=goal))
    assert exc.status == 422
    assert exc.field == "goal"


def test_a_goal_over_max_goal_characters_is_422_naming_goal() -> None:
    exc = bad(body(goal="x" * (MAX_GOAL + 1)))
    assert exc.status == 422
    assert exc.field == "goal"


@pytest.mark.parametrize("max_steps", [0, -1, "x", 2.5, True])
def test_a_bad_max_steps_is_422_naming_max_steps(max_steps: object) -> None:
    exc = bad(body(goal="g", max_steps=max_steps))
    assert exc.status == 422
    assert exc.field == "max_steps"


@pytest.mark.parametrize("max_steps", [1, 50])
def test_max_steps_at_the_bounds_is_accepted(max_steps: int) -> None:
    request = parse_run_request(body(goal="g", max_steps=max_steps))
    assert (request.max_steps, request.max_steps_requested) == (max_steps, None)


@pytest.mark.parametrize("max_steps", [51, 500, 10**9])
def test_max_steps_above_the_ceiling_is_lowered_and_what_was_asked_is_kept(max_steps: int) -> None:
    request = parse_run_request(body(goal="g", max_steps=max_steps))
    assert (request.max_steps, request.max_steps_requested) == (50, max_steps)
    lowered = parse_run_request(body(goal="g", max_steps=max_steps), max_steps_ceiling=20)
    assert lowered.max_steps == 20


@pytest.mark.parametrize("task_type", ["nope", "AGENT", ""])
def test_an_unknown_task_type_is_422_naming_task_type(task_type: str) -> None:
    exc = bad(body(goal="g", task_type=task_type))
    assert exc.status == 422
    assert exc.field == "task_type"


def test_a_task_type_of_the_wrong_type_is_422_naming_task_type() -> None:
    exc = bad(body(goal="g", task_type=5))
    assert exc.status == 422
    assert exc.field == "task_type"


def test_an_empty_model_name_is_422_naming_model() -> None:
    exc = bad(body(goal="g", model=""))
    assert exc.status == 422
    assert exc.field == "model"


def test_a_body_over_max_run_body_is_413() -> None:
    raw = b'{"goal": "' + b"x" * MAX_RUN_BODY + b'"}'
    exc = bad(raw)
    assert exc.status == 413
    assert exc.error == "body_too_large"


def test_a_body_of_exactly_max_run_body_is_not_413() -> None:
    raw = b'{"goal": "g"}'
    raw = raw + b" " * (MAX_RUN_BODY - len(raw))
    assert parse_run_request(raw).goal == "g"


def test_a_deeply_nested_project_context_is_a_client_error_not_a_crash() -> None:
    depth = 5000
    raw = b'{"goal": "g", "project_context": ' + b"[" * depth + b"]" * depth + b"}"
    assert len(raw) < MAX_RUN_BODY
    try:
        parse_run_request(raw)
    except BadRequest as exc:
        assert 400 <= exc.status < 500


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", " yes ", "on"])
def test_parse_bool_reads_true_values(raw: str) -> None:
    assert parse_bool("wait", raw) is True


@pytest.mark.parametrize("raw", [None, "", "0", "false", "No", "off"])
def test_parse_bool_reads_false_values(raw: str | None) -> None:
    assert parse_bool("wait", raw) is False


@pytest.mark.parametrize("raw", ["maybe", "2", "yess"])
def test_parse_bool_rejects_other_values_naming_the_parameter(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_bool("stream", raw)
    assert info.value.status == 422
    assert info.value.field == "stream"
    assert "stream" in info.value.detail


@pytest.mark.parametrize(("raw", "value"), [(None, None), ("", None), ("0", 0.0), ("12.5", 12.5)])
def test_parse_wait_reads_seconds_or_none_for_until_the_task_ends(
    raw: str | None, value: float | None
) -> None:
    assert parse_wait(raw) == value


def test_parse_wait_accepts_the_maximum() -> None:
    assert parse_wait(str(MAX_WAIT)) == MAX_WAIT


@pytest.mark.parametrize("raw", ["abc", "-1", "3601", "nan", "inf", "1e9"])
def test_parse_wait_rejects_bad_values_naming_wait(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_wait(raw)
    assert info.value.status == 422
    assert info.value.field == "wait"
    assert "wait" in info.value.detail


def test_clean_header_trims_and_caps() -> None:
    assert clean_header(None) is None
    assert clean_header("   ") is None
    assert clean_header("  abc  ") == "abc"
    assert clean_header("x" * 300) == "x" * 200
    assert clean_header("abcdef", limit=3) == "abc"


def _assert_request_or_client_error(raw: bytes) -> None:
    try:
        result = parse_run_request(raw)
    except BadRequest as exc:
        assert 400 <= exc.status <= 499
    else:
        assert isinstance(result, RunRequest)
        assert result.goal.strip()


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_request_or_a_client_error(raw: bytes) -> None:
    _assert_request_or_client_error(raw)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "goal",
                "prompt",
                "task_type",
                "project_context",
                "session_id",
                "max_steps",
                "model",
                "chat_history",
                "verbose",
                "images_base64",
                "other",
            ]
        ),
        _json_values,
    )
)
def test_arbitrary_json_objects_give_a_request_or_a_client_error(fields: dict[str, object]) -> None:
    _assert_request_or_client_error(json.dumps(fields).encode())
