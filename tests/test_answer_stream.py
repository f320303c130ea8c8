"""The answer's words out of a step reply as it is written (gateway/answer_stream.py)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from victoria.gateway.answer_stream import AnswerStream, StepAnswers


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


def test_a_native_reply_is_the_answer_as_it_comes() -> None:
    stream = AnswerStream(native=True)
    pieces = ["  The ", 'answer "as is" ', "\\n here."]
    assert "".join(stream.feed(piece) for piece in pieces) == '  The answer "as is" \\n here.'
    assert stream.started


def test_a_native_reply_written_as_json_is_read_as_json() -> None:
    reply = json.dumps({"tool": "finish", "args": {"answer": "from json"}})
    for size in (1, 4):
        pieces = [reply[i : i + size] for i in range(0, len(reply), size)]
        stream = AnswerStream(native=True)
        assert "".join(stream.feed(p) for p in pieces) == "from json"
    assert AnswerStream(native=True).feed('{"tool": "read_file", "args": {"path": "a"}}') == ""
    tagged = AnswerStream(native=True)
    assert [tagged.feed(p) for p in ["<tool", '_call>{"name": "read_file"}']] == ["", ""]
    html = AnswerStream(native=True)
    assert "".join(html.feed(p) for p in ["<", "b>bold</b>"]) == "<b>bold</b>"


def test_a_steps_words_that_come_before_its_request_wait_for_it() -> None:
    answers = StepAnswers()
    assert answers.feed("step-1", "Plain ") == ""
    assert answers.requested("step-1", native=True) == "Plain "
    assert answers.feed("step-1", "words.") == "words."
    assert answers.requested("step-1", native=True) == ""  # seen once
    answers.requested("step-1-text", native=False)
    assert answers.feed("step-1-text", '{"tool": "finish", "args": {"answer": "json"}}') == "json"
