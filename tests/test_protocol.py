"""What the runtime parses of JetStream's wire protocol by hand (runtime/protocol.py): no server."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

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
