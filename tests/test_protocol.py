"""Wire protocols parsed by hand, without a server: JetStream's (runtime/protocol.py), and the model
servers' chat protocols with their native tool calls (actors/llm_runner/protocols.py)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from victoria.actors.llm_runner import protocols, traits
from victoria.errors import LLMProtocolError
from victoria.events.contracts import ChatMessage, ToolCallPart
from victoria.runtime.protocol import (
    REFUSED_EXPECTATION,
    WRONG_LAST_SEQUENCE,
    AckSubject,
    decode_pub_ack,
    fencing_supported,
    format_version,
    found_sequence,
    parse_ack_subject,
    pull_status,
)


def test_an_ack_subject_of_the_first_form_gives_every_field() -> None:
    reply = "$JS.ACK.VICTORIA_TASKS_2.victoria.3.1041.77.1764600000000000000.12"
    assert parse_ack_subject(reply) == AckSubject(
        "VICTORIA_TASKS_2", "victoria", 3, 1041, 77, 1764600000000000000, 12
    )


def test_an_ack_subject_with_a_domain_and_account_hash_gives_the_same_fields() -> None:
    reply = "$JS.ACK.hub.ACCHASH.VICTORIA_TASKS_0.llm-runner.1.55.9.1764600000000000000.0"
    ack = parse_ack_subject(reply)
    assert ack is not None
    assert (ack.stream, ack.consumer, ack.delivered, ack.stream_seq, ack.pending) == (
        "VICTORIA_TASKS_0",
        "llm-runner",
        1,
        55,
        0,
    )


def test_an_ack_subject_with_a_random_token_at_the_end_is_read_too() -> None:
    reply = "$JS.ACK.hub.ACCHASH.S.c.2.8.4.1764600000000000000.0.xYz12"
    ack = parse_ack_subject(reply)
    assert ack is not None and (ack.delivered, ack.stream_seq) == (2, 8)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        "",
        "_INBOX.abc.def",
        "$JS.ACK.S.c.1.2.3.4",  # one token short
        "$JS.ACK.S.c.one.2.3.4.5",  # not a number
        "$JS.NAK.S.c.1.2.3.4.5",
        "$JS.ACK.a.b.S.c.1.2.3.4.5.6.7",  # 13 tokens
    ],
)
def test_anything_else_is_not_an_ack_subject(reply: str | None) -> None:
    assert parse_ack_subject(reply) is None


@given(st.text(max_size=200))
def test_parsing_an_ack_subject_never_raises(reply: str) -> None:
    parse_ack_subject(reply)


def test_a_stored_message_carries_no_pull_status() -> None:
    assert pull_status(None) is None
    assert pull_status({}) is None
    assert pull_status({"traceparent": "00-abc"}) is None


def test_an_idle_heartbeat_is_a_status_that_says_so() -> None:
    status = pull_status({"Status": "100", "Description": "Idle Heartbeat"})
    assert status is not None and status.heartbeat


def test_an_expired_request_says_how_many_of_its_messages_will_not_come() -> None:
    status = pull_status({"Status": "408", "Nats-Pending-Messages": "37", "Nats-Pending-Bytes": "0"})
    assert status is not None
    assert (status.code, status.unfilled, status.heartbeat) == ("408", 37, False)


def test_a_dropped_request_that_does_not_say_how_many_leaves_unfilled_unknown() -> None:
    status = pull_status({"Status": "409", "Description": "Consumer Deleted"})
    assert status is not None and status.unfilled is None


def test_a_pub_ack_is_decoded_with_its_sequence_and_duplicate_flag() -> None:
    ack = decode_pub_ack(b'{"stream":"VICTORIA_TASKS_1","seq":42,"duplicate":true}')
    assert (ack.stream, ack.seq, ack.duplicate, ack.error, ack.error_code) == (
        "VICTORIA_TASKS_1",
        42,
        True,
        None,
        None,
    )


def test_a_refused_publish_carries_the_error_and_its_code() -> None:
    data = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 41"},"stream":"S","seq":0}'
    ack = decode_pub_ack(data)
    assert ack.error_code == WRONG_LAST_SEQUENCE
    assert found_sequence(ack.error) == 41


def test_an_answer_that_is_not_a_pub_ack_does_not_decode() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_pub_ack(b"+OK")


@pytest.mark.parametrize(
    "error",
    [
        None,
        {},
        {"err_code": 10071, "description": "wrong last sequence"},
        {"err_code": 10060, "description": "wrong last sequence: 4"},  # another error
        {"err_code": 10071},
    ],
)
def test_a_refusal_that_names_no_sequence_gives_none(error: dict[str, object] | None) -> None:
    assert found_sequence(error) is None


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ((2, 9, 10), False),
        ((2, 10, 29), False),
        ((2, 11, 0), True),
        ((2, 11, 7), True),
        ((2, 15, 1), True),
        ((3, 0, 0), True),
    ],
)
def test_fencing_needs_nats_server_2_11_or_later(version: tuple[int, int, int], supported: bool) -> None:
    assert fencing_supported(version) is supported


def test_a_version_is_written_as_nats_server_writes_it() -> None:
    assert format_version((2, 9, 10)) == "2.9.10"


def test_a_refusal_without_the_sequence_found_is_a_refused_expectation_too() -> None:
    error = {"code": 400, "err_code": 10164, "description": "wrong last sequence"}
    assert error["err_code"] in REFUSED_EXPECTATION
    assert found_sequence(error) is None  # the fence then reads the last event itself


# --- the model servers' chat protocols, with tools ---------------------------------------------

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the workspace",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
]
CALLED = ChatMessage(
    "assistant",
    "",
    tool_calls=[
        ToolCallPart("call_1", "read_file", {"path": "a.txt"}),
        ToolCallPart("call_2", "list_directory"),
    ],
)
RESULT = ChatMessage("tool", "hello", tool_call_id="call_1", name="read_file")


def sse(data: dict[str, Any]) -> str:
    return "data: " + json.dumps(data)


def openai_delta(**delta: Any) -> str:
    return sse(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    )


@pytest.mark.parametrize("api", ["ollama", "openai"])
def test_the_tool_table_goes_as_the_protocols_own_tools_and_only_when_there_is_one(
    api: protocols.Api,
) -> None:
    messages = [ChatMessage("user", "hi")]
    assert protocols.request_body(api, "m", messages, json_mode=False, tools=TOOLS)["tools"] == TOOLS
    assert "tools" not in protocols.request_body(api, "m", messages, json_mode=False, tools=[])
    assert "tools" not in protocols.request_body(api, "m", messages, json_mode=False)


def test_openai_gets_back_the_calls_with_json_string_arguments_and_each_result_for_its_call_id() -> None:
    body = protocols.request_body("openai", "m", [CALLED, RESULT], json_mode=False, tools=TOOLS)
    called, result = body["messages"]
    assert called == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path":"a.txt"}'},
            },
            {"id": "call_2", "type": "function", "function": {"name": "list_directory", "arguments": "{}"}},
        ],
    }
    assert result == {"role": "tool", "content": "hello", "tool_call_id": "call_1"}


def test_ollama_gets_back_the_calls_with_object_arguments_and_each_result_with_its_tool_name() -> None:
    body = protocols.request_body("ollama", "m", [CALLED, RESULT], json_mode=False, tools=TOOLS)
    called, result = body["messages"]
    assert called["tool_calls"] == [
        {"id": "call_1", "function": {"name": "read_file", "arguments": {"path": "a.txt"}}},
        {"id": "call_2", "function": {"name": "list_directory", "arguments": {}}},
    ]
    assert result == {"role": "tool", "content": "hello", "tool_call_id": "call_1", "tool_name": "read_file"}


def test_a_message_without_tool_fields_is_sent_as_before() -> None:
    body = protocols.request_body("openai", "m", [ChatMessage("user", "hi")], json_mode=False)
    assert body["messages"] == [{"role": "user", "content": "hi"}]


def test_openai_streamed_calls_are_joined_per_index_in_order_and_end_as_a_stop() -> None:
    reader = protocols.StreamReader("openai", "m", request_id="step-2")
    lines = [
        openai_delta(role="assistant", content=None),
        openai_delta(
            tool_calls=[
                {
                    "index": 0,
                    "id": "c0",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": ""},
                }
            ]
        ),
        openai_delta(
            tool_calls=[{"index": 1, "id": "c1", "type": "function", "function": {"name": "list_directory"}}]
        ),
        openai_delta(tool_calls=[{"index": 0, "function": {"arguments": '{"pa'}}]),
        openai_delta(tool_calls=[{"index": 1, "function": {"arguments": '{"path": "."}'}}]),
        openai_delta(tool_calls=[{"index": 0, "function": {"arguments": 'th": "a.txt"}'}}]),
        sse(
            {
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
            }
        ),
        sse(
            {
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 4},
            }
        ),
        "data: [DONE]",
    ]
    assert [reader.feed(line) for line in lines] == [""] * len(lines)  # no words: nothing to show
    assert reader.tool_pieces == 5
    completion = reader.completion()
    assert completion.tool_calls == (
        ToolCallPart("c0", "read_file", {"path": "a.txt"}),
        ToolCallPart("c1", "list_directory", {"path": "."}),
    )
    assert (completion.content, completion.finish_reason, completion.prompt_tokens) == ("", "stop", 9)


def test_ollama_calls_come_whole_and_get_ids_from_the_request_when_the_server_gives_none() -> None:
    reader = protocols.StreamReader("ollama", "m", request_id="step-3")
    first = {"function": {"name": "read_file", "arguments": {"path": "a.txt"}}}
    second = {"function": {"index": 1, "name": "list_directory", "arguments": {}}}
    reader.feed(
        json.dumps({"message": {"role": "assistant", "content": "", "tool_calls": [first]}, "done": False})
    )
    reader.feed(
        json.dumps({"message": {"role": "assistant", "content": "", "tool_calls": [second]}, "done": False})
    )
    reader.feed(
        json.dumps({"message": {"content": ""}, "done": True, "done_reason": "stop", "eval_count": 7})
    )
    assert reader.tool_calls == [
        ToolCallPart("step-3-call_0", "read_file", {"path": "a.txt"}),
        ToolCallPart("step-3-call_1", "list_directory", {}),
    ]
    assert reader.completion().finish_reason == "stop"
    with_ids = protocols.StreamReader("ollama", "m", request_id="step-3")  # Ollama 0.12.10 and later
    with_ids.feed(json.dumps({"message": {"tool_calls": [{"id": "call_x1", **first}]}, "done": True}))
    assert [call.id for call in with_ids.tool_calls] == ["call_x1"]


@pytest.mark.parametrize(
    ("arguments", "parsed"),
    [
        ('{"path": "a.txt"', {"_raw": '{"path": "a.txt"'}),  # cut off
        ("[1, 2]", {"_raw": "[1, 2]"}),  # JSON, but no object
        ("", {}),
        (" ", {}),
    ],
)
def test_arguments_that_are_no_json_object_are_kept_as_written(
    arguments: str, parsed: dict[str, Any]
) -> None:
    reader = protocols.StreamReader("openai", "m")
    reader.feed(
        openai_delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": arguments}}])
    )
    assert reader.tool_calls == [ToolCallPart("c", "f", parsed)]


def test_an_unstreamed_answer_with_calls_is_read_in_both_protocols() -> None:
    openai = protocols.StreamReader("openai", "m")
    call = {"id": "c9", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "b"}'}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    openai.feed(
        json.dumps(
            {"object": "chat.completion", "choices": [{"message": message, "finish_reason": "tool_calls"}]}
        )
    )
    assert openai.completion().tool_calls == (ToolCallPart("c9", "read_file", {"path": "b"}),)
    assert openai.completion().finish_reason == "stop"
    ollama = protocols.StreamReader("ollama", "m", request_id="plan")
    whole = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}],
    }
    ollama.feed(json.dumps({"message": whole, "done": True, "done_reason": "stop"}))
    assert ollama.completion().tool_calls == (ToolCallPart("plan-call_0", "f", {"a": 1}),)


def test_streamed_pieces_without_an_index_go_by_their_ids() -> None:
    reader = protocols.StreamReader("openai", "m")
    reader.feed(openai_delta(tool_calls=[{"id": "a", "function": {"name": "f", "arguments": '{"x"'}}]))
    reader.feed(openai_delta(tool_calls=[{"function": {"arguments": ": 1}"}}]))
    reader.feed(openai_delta(tool_calls=[{"id": "b", "function": {"name": "g", "arguments": "{}"}}]))
    assert reader.tool_calls == [ToolCallPart("a", "f", {"x": 1}), ToolCallPart("b", "g", {})]


def test_an_answer_without_calls_has_none() -> None:
    reader = protocols.StreamReader("openai", "m", request_id="step-1")
    reader.feed(openai_delta(content="Paris"))
    reader.feed("data: [DONE]")
    assert reader.completion().tool_calls == ()
    assert reader.completion().content == "Paris"


# Keys of both protocols' answers, so that generated lines reach the code that reads tool calls.
KEYS = st.sampled_from(
    ["choices", "delta", "message", "tool_calls", "function", "name", "arguments", "index", "id", "content"]
) | st.text(max_size=6)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=16,
)


@given(st.dictionaries(KEYS, JSON, max_size=4), st.sampled_from(["ollama", "openai"]))
def test_any_json_object_in_a_stream_gives_text_or_a_protocol_error(
    data: dict[str, Any], api: protocols.Api
) -> None:
    reader = protocols.StreamReader(api, "m", request_id="r")
    try:
        assert isinstance(reader.feed(json.dumps(data)), str)
    except LLMProtocolError:
        return
    assert all(isinstance(call, ToolCallPart) for call in reader.tool_calls)


@pytest.mark.parametrize(
    "said",
    [
        '{"error":"registry.ollama.ai/library/gemma3:270m does not support tools"}',  # Ollama, 400
        '{"error":{"code":500,"message":"tools param requires --jinja flag","type":"server_error"}}',  # llama-server
        '{"error":{"code":500,"message":"Cannot use tools with stream","type":"server_error"}}',  # older llama-server
        '{"object":"error","message":"\\"auto\\" tool choice requires --enable-auto-tool-choice and '
        '--tool-call-parser to be set","type":"BadRequestError","code":400}',  # vLLM
    ],
)
def test_each_servers_own_words_for_no_tools_are_known(said: str) -> None:
    assert traits.refuses_tools(said)


@pytest.mark.parametrize(
    "said",
    [
        "This model's maximum context length is 8192 tokens.",
        '{"error":"model \'x\' not found"}',
        "model exploded",
    ],
)
def test_other_errors_are_not_taken_for_a_refusal_of_tools(said: str) -> None:
    assert not traits.refuses_tools(said)
