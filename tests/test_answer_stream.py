"""The answer's words out of a step reply as it is written (gateway/answer_stream.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from victoria.gateway.answer_stream import AnswerStream


def fed(pieces: list[str]) -> str:
    stream = AnswerStream()
    return "".join(stream.feed(piece) for piece in pieces)


def test_the_answer_of_a_finish_reply_comes_out_without_the_json_around_it() -> None:
    reply = json.dumps(
        {"tool": "finish", "args": {"answer": "Хайку о NATS:\nтихо летят вести"}}, ensure_ascii=False
    )
    assert fed([reply]) == "Хайку о NATS:\nтихо летят вести"


def test_the_answer_comes_out_piece_by_piece_whatever_the_cuts() -> None:
    reply = json.dumps({"tool": "finish", "args": {"answer": 'He said "hi" \\ there \u2603 \U0001f600'}})
    for size in (1, 2, 3, 5, 7, 11):
        pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
        assert fed(pieces) == 'He said "hi" \\ there \u2603 \U0001f600', size


def test_a_tool_call_reply_has_no_answer() -> None:
    assert fed(['{"tool": "list_directory", "args": {"path": "."}}']) == ""


def test_nothing_after_the_answers_closing_quote_is_taken() -> None:
    stream = AnswerStream()
    assert stream.feed('{"tool": "finish", "args": {"answer": "done"}, "thought": "x"}') == "done"
    assert stream.feed(' "answer": "again"') == ""


@given(st.text(max_size=60), st.integers(min_value=1, max_value=9))
def test_any_answer_survives_any_cut(answer: str, size: int) -> None:
    reply = json.dumps({"tool": "finish", "args": {"answer": answer}})
    pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
    expected = answer.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    assert fed(pieces) == expected
