"""Message contracts (events/contracts.py) and their codec (events/codec.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import victoria.events as events
from victoria.events import contracts
from victoria.events.codec import encode, service_decoder, task_decoder
from victoria.runtime.reads import decode_task_event

TS = datetime(2025, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)

TASK_EVENTS: list[contracts.Message] = [
    contracts.TaskSubmitted(
        task_id="t1",
        goal="Выведи список файлов",
        task_type="files",
        project_context={"repo": "x", "n": [1, 2]},
        session_id="s1",
        max_steps=5,
        model="llama3.2",
        correlation_id="c1",
        idempotency_key="k1",
        deadline_s=60.0,
        ts=TS,
    ),
    contracts.TaskStarted(task_id="t1", attempt=2, instance="host-1", route="files", ts=TS),
    contracts.TaskStage(task_id="t1", stage="plan", step=3, detail="thinking", ts=TS),
    contracts.LLMRequested(
        task_id="t1",
        request_id="step-3",
        purpose="step",
        messages=[contracts.ChatMessage("system", "be brief"), contracts.ChatMessage("user", "привет")],
        model="m",
        timeout_s=12.5,
        json_mode=True,
        ts=TS,
    ),
    contracts.LLMResult(
        task_id="t1",
        request_id="step-3",
        ok=False,
        content="",
        model="m",
        error="boom",
        error_kind="timeout",
        url="http://127.0.0.1:11434",
        prompt_tokens=10,
        completion_tokens=0,
        duration_s=1.5,
        instance="r1",
        ts=TS,
    ),
    contracts.ToolResult(
        task_id="t1", call_id="c-1", tool="read_file", args={"path": "a.txt"}, output="hi", ts=TS
    ),
    contracts.TaskCancelRequested(task_id="t1", reason="user asked", ts=TS),
    contracts.TaskCompleted(task_id="t1", output="done", attempts=2, ts=TS),
    contracts.TaskFailed(task_id="t1", error="bad", error_kind="deadline", attempts=3, ts=TS),
    contracts.TaskCancelled(task_id="t1", reason="stop", attempts=1, ts=TS),
]

TAGS = {
    contracts.TaskSubmitted: "task_submitted",
    contracts.TaskStarted: "task_started",
    contracts.TaskStage: "task_stage",
    contracts.LLMRequested: "llm_requested",
    contracts.LLMResult: "llm_result",
    contracts.ToolResult: "tool_result",
    contracts.TaskCancelRequested: "task_cancel_requested",
    contracts.TaskCompleted: "task_completed",
    contracts.TaskFailed: "task_failed",
    contracts.TaskCancelled: "task_cancelled",
    contracts.ServiceDown: "service_down",
    contracts.ServiceUp: "service_up",
}


@pytest.mark.parametrize("event", TASK_EVENTS, ids=lambda e: type(e).__name__)
def test_every_task_event_round_trips_through_encode_and_task_decoder(event: contracts.Message) -> None:
    decoded = task_decoder.decode(encode(event))
    assert type(decoded) is type(event)
    assert decoded == event


@pytest.mark.parametrize("event", TASK_EVENTS, ids=lambda e: type(e).__name__)
def test_the_json_of_every_task_event_carries_type_version_and_timestamp(event: contracts.Message) -> None:
    obj = msgspec.json.decode(encode(event))
    assert obj["type"] == TAGS[type(event)]
    assert obj["v"] == contracts.SCHEMA_VERSION
    assert datetime.fromisoformat(obj["ts"].replace("Z", "+00:00")) == TS


@pytest.mark.parametrize(("cls", "tag"), list(TAGS.items()), ids=lambda x: getattr(x, "__name__", x))
def test_each_message_class_has_its_documented_tag(cls: type[contracts.Message], tag: str) -> None:
    assert cls.__struct_config__.tag == tag


def test_a_new_event_gets_the_current_schema_version_and_an_aware_utc_timestamp() -> None:
    before = datetime.now(UTC)
    event = contracts.TaskCompleted(task_id="t", output="x")
    assert event.v == contracts.SCHEMA_VERSION
    assert event.ts.tzinfo is not None
    assert before <= event.ts <= datetime.now(UTC)


def test_unknown_extra_fields_are_ignored_on_decode() -> None:
    raw = (
        b'{"type":"task_completed","v":2,"ts":"2025-03-01T12:30:45Z","task_id":"t1","output":"ok",'
        b'"attempts":4,"brand_new_field":{"nested":[1,2]},"another":"x"}'
    )
    event = task_decoder.decode(raw)
    assert isinstance(event, contracts.TaskCompleted)
    assert (event.task_id, event.output, event.attempts, event.v) == ("t1", "ok", 4, 2)


def test_a_minimal_event_decodes_with_defaults_for_missing_optional_fields() -> None:
    event = task_decoder.decode(b'{"type":"task_submitted","task_id":"t1","goal":"hi"}')
    assert isinstance(event, contracts.TaskSubmitted)
    assert event.v == contracts.SCHEMA_VERSION
    assert event.max_steps == 8
    assert event.task_type is None
    assert event.deadline_s == 900.0


def test_model_requests_and_results_stored_before_native_tool_calls_decode_without_tools() -> None:
    request = task_decoder.decode(
        b'{"type":"llm_requested","v":1,"ts":"2025-03-01T12:30:45Z","task_id":"t1","request_id":"step-1",'
        b'"purpose":"step","messages":[{"role":"user","content":"hi","images":[]}],"json_mode":true}'
    )
    assert isinstance(request, contracts.LLMRequested)
    assert request.tools == [] and request.messages == [contracts.ChatMessage("user", "hi")]
    message = request.messages[0]
    assert (message.tool_calls, message.tool_call_id, message.name) == ([], None, None)
    result = task_decoder.decode(
        b'{"type":"llm_result","v":1,"ts":"2025-03-01T12:30:46Z","task_id":"t1","request_id":"step-1",'
        b'"ok":true,"content":"{\\"tool\\": \\"finish\\"}","model":"m"}'
    )
    assert isinstance(result, contracts.LLMResult)
    assert (result.tool_calls, result.tools_refused) == ([], False)


def test_a_request_with_tools_and_its_answer_of_tool_calls_round_trip() -> None:
    call = contracts.ToolCallPart("call_1", "read_file", {"path": "a.txt"})
    request = contracts.LLMRequested(
        task_id="t1",
        request_id="step-2",
        purpose="step",
        messages=[
            contracts.ChatMessage("user", "read a.txt"),
            contracts.ChatMessage("assistant", "", tool_calls=[call]),
            contracts.ChatMessage("tool", "hello", tool_call_id="call_1", name="read_file"),
        ],
        tools=[{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}],
        ts=TS,
    )
    result = contracts.LLMResult(
        task_id="t1",
        request_id="step-2",
        ok=True,
        tool_calls=[call, contracts.ToolCallPart("c2", "f")],
        ts=TS,
    )
    refused = contracts.LLMResult(task_id="t1", request_id="step-2", ok=False, tools_refused=True, ts=TS)
    for event in (request, result, refused):
        assert task_decoder.decode(encode(event)) == event
    assert msgspec.json.decode(encode(result))["tool_calls"][1] == {"id": "c2", "name": "f", "arguments": {}}


def test_an_unknown_tag_is_a_decode_error() -> None:
    with pytest.raises(msgspec.ValidationError):
        task_decoder.decode(b'{"type":"task_exploded","task_id":"t1"}')


def test_a_service_event_is_not_a_task_event() -> None:
    raw = encode(contracts.ServiceDown(name="veronica", instance="h1", reason="gone"))
    with pytest.raises(msgspec.ValidationError):
        task_decoder.decode(raw)
    decoded = service_decoder.decode(raw)
    assert isinstance(decoded, contracts.ServiceDown)
    assert decoded.reason == "gone"


def test_service_events_round_trip_through_service_decoder() -> None:
    for event in (
        contracts.ServiceDown(
            name="llm-runner", instance="h1", reason="SIGKILL", likely_oom=True, exit_code=137, ts=TS
        ),
        contracts.ServiceUp(name="llm-runner", instance="h1", reason="restarted", pid=12, ts=TS),
    ):
        assert service_decoder.decode(encode(event)) == event


def test_decode_task_event_returns_the_event_for_good_bytes() -> None:
    event = contracts.TaskStage(task_id="t1", stage="understand", ts=TS)
    assert decode_task_event(encode(event), "victoria.task.t1.stage") == event


@pytest.mark.parametrize("raw", [b"", b"not json", b"{}", b"[]", b'{"type":"task_completed"}', b"\xff\xfe"])
def test_decode_task_event_returns_none_for_bad_bytes(raw: bytes) -> None:
    assert decode_task_event(raw, "victoria.task.t1.x") is None


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bytes_given_to_decode_task_event_never_raise(raw: bytes) -> None:
    result = decode_task_event(raw, "victoria.task.t1.x")
    assert result is None or isinstance(result, events.TaskEvent)


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from(["type", "task_id", "output", "attempts", "ts", "v", "goal", "error", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=10),
            st.sampled_from(list(TAGS.values())),
        ),
    )
)
def test_random_json_objects_given_to_decode_task_event_never_raise(obj: dict[str, object]) -> None:
    result = decode_task_event(msgspec.json.encode(obj), "victoria.task.t1.x")
    assert result is None or isinstance(result, events.TaskEvent)


def test_the_public_names_of_the_events_package_are_pinned() -> None:
    assert sorted(events.__all__) == [
        "AnyServiceEvent",
        "AnyTaskEvent",
        "ChatMessage",
        "DeadLetter",
        "FilesReply",
        "FilesRequest",
        "Heartbeat",
        "LLMRequested",
        "LLMResult",
        "Message",
        "ModelCall",
        "SCHEMA_VERSION",
        "ServiceDown",
        "ServiceEntry",
        "ServiceStarted",
        "ServiceUp",
        "ServicesReply",
        "ServicesRequest",
        "TERMINAL_EVENTS",
        "TERMINAL_STATUSES",
        "TaskCancelRequested",
        "TaskCancelled",
        "TaskCompleted",
        "TaskEvent",
        "TaskFailed",
        "TaskHistory",
        "TaskStage",
        "TaskStarted",
        "TaskStatus",
        "TaskSubmitted",
        "ToolResult",
        "encode",
        "fold",
        "service_decoder",
        "status_dict",
        "subjects",
        "task_decoder",
        "utcnow",
    ]
    for name in events.__all__:
        assert hasattr(events, name), name


def test_messages_are_not_tracked_by_the_garbage_collector() -> None:
    import gc

    event = contracts.LLMRequested(
        task_id="t1", request_id="r", purpose="p", messages=[contracts.ChatMessage("user", "hi")]
    )
    assert not gc.is_tracked(event) and not gc.is_tracked(event.messages[0])
    assert not gc.is_tracked(contracts.TaskSubmitted(task_id="t1", goal="hi", project_context={"a": [1]}))
