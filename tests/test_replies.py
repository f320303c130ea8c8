"""Reading a model's step reply (actors/agent/replies.py: parse_action, parse_native, native_call)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from victoria.actors.agent.replies import Finish, ToolCall, native_call, parse_action, parse_native


def test_a_clean_json_finish_is_a_finish_with_the_answer() -> None:
    assert parse_action('{"tool": "finish", "args": {"answer": "Done."}}') == Finish("Done.")


def test_a_finish_with_the_answer_at_the_top_level_is_read() -> None:
    assert parse_action('{"tool": "finish", "answer": "ok"}') == Finish("ok")


def test_a_bare_answer_object_is_a_finish() -> None:
    assert parse_action('{"answer": "42"}') == Finish("42")


def test_json_in_a_json_fence_is_read() -> None:
    text = 'Here is my step:\n```json\n{"tool": "read_file", "args": {"path": "README.md"}}\n```\n'
    assert parse_action(text) == ToolCall("read_file", {"path": "README.md"})


def test_json_in_a_plain_fence_is_read() -> None:
    assert parse_action('```\n{"answer": "x"}\n```') == Finish("x")


def test_json_inside_prose_is_read() -> None:
    text = 'Sure! I will look first. {"tool": "list_directory", "args": {"path": "src"}} Then I answer.'
    assert parse_action(text) == ToolCall("list_directory", {"path": "src"})


def test_a_list_directory_call_without_a_path_lists_the_root() -> None:
    assert parse_action('{"tool": "list_directory"}') == ToolCall("list_directory", {"path": "."})
    assert parse_action('{"tool": "ls", "args": {"path": ""}}') == ToolCall("list_directory", {"path": "."})


def test_a_read_file_call_is_a_tool_call_with_the_path() -> None:
    assert parse_action('{"tool": "read_file", "args": {"path": "docs/a.md"}}') == ToolCall(
        "read_file", {"path": "docs/a.md"}
    )


@pytest.mark.parametrize(
    "text",
    [
        '{"action": "read_file", "arguments": {"path": "a.txt"}}',
        '{"name": "cat", "parameters": {"file": "a.txt"}}',
        '{"tool": "open_file", "input": "a.txt"}',
        '{"tool": "READ_FILE", "args": {"path": "a.txt"}}',
    ],
)
def test_tool_name_and_argument_synonyms_are_understood(text: str) -> None:
    assert parse_action(text) == ToolCall("read_file", {"path": "a.txt"})


def test_a_read_file_call_without_a_path_is_not_a_tool_call() -> None:
    action = parse_action('{"tool": "read_file", "args": {}}')
    assert isinstance(action, Finish)


def test_a_truncated_json_with_an_answer_is_a_finish_with_what_was_written() -> None:
    assert parse_action('{"tool": "finish", "args": {"answer": "The files are a, b an') == Finish(
        "The files are a, b an"
    )


def test_escapes_in_a_truncated_answer_are_decoded() -> None:
    assert parse_action('{"answer": "line 1\\nline \\"2\\"') == Finish('line 1\nline "2"')


def test_a_truncated_list_directory_call_is_still_a_tool_call() -> None:
    assert parse_action('{"tool": "list_directory", "args": {"path": "src"') == ToolCall(
        "list_directory", {"path": "src"}
    )
    assert parse_action('{"tool": "list_directory", "ar') == ToolCall("list_directory", {"path": "."})


def test_a_truncated_read_file_call_with_a_whole_path_is_still_a_tool_call() -> None:
    assert parse_action('{"tool": "read_file", "args": {"path": "a.txt"') == ToolCall(
        "read_file", {"path": "a.txt"}
    )


def test_a_read_file_call_cut_inside_the_path_is_not_run() -> None:
    action = parse_action('{"tool": "read_file", "args": {"path": "a.t')
    assert isinstance(action, Finish)


def test_plain_text_is_the_final_answer() -> None:
    assert parse_action("  The project has 3 files.  ") == Finish("The project has 3 files.")


def test_russian_plain_text_is_the_final_answer() -> None:
    assert parse_action("В проекте три файла.") == Finish("В проекте три файла.")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_an_empty_reply_is_an_empty_finish(text: str) -> None:
    assert parse_action(text) == Finish("")


def test_an_unknown_tool_is_a_finish_not_a_tool_call() -> None:
    text = '{"tool": "delete_everything", "args": {"path": "/"}}'
    action = parse_action(text)
    assert isinstance(action, Finish)
    assert action == Finish(text)


def test_a_json_array_is_not_an_action_and_becomes_the_answer() -> None:
    assert parse_action("[1, 2, 3]") == Finish("[1, 2, 3]")


def test_a_non_string_answer_is_turned_into_text() -> None:
    assert parse_action('{"answer": 8}') == Finish("8")


def test_deeply_nested_json_does_not_raise() -> None:
    text = '{"answer": "ok", "junk": ' + "[" * 2000 + "]" * 2000 + "}"
    action = parse_action(text)
    assert isinstance(action, Finish | ToolCall)


def test_a_lone_surrogate_in_a_truncated_answer_does_not_raise() -> None:
    action = parse_action('{"answer": "broken \ud800')
    assert isinstance(action, Finish)


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_text_never_raises(text: str) -> None:
    action = parse_action(text)
    assert isinstance(action, Finish | ToolCall)
    if isinstance(action, ToolCall):
        assert action.tool in ("list_directory", "read_file")
        assert isinstance(action.args.get("path"), str)


_json_ish = st.lists(
    st.sampled_from(
        [
            "{",
            "}",
            '"',
            ":",
            ",",
            "[",
            "]",
            "\\",
            '"tool"',
            '"args"',
            '"path"',
            '"answer"',
            '"read_file"',
            '"list_directory"',
            '"finish"',
            "```json",
            "```",
            " ",
            "x",
            "\n",
            "1",
            "null",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=200)
@given(_json_ish)
def test_any_json_like_fragment_never_raises(text: str) -> None:
    assert isinstance(parse_action(text), Finish | ToolCall)


def test_a_native_reply_in_plain_words_is_the_answer_as_written() -> None:
    assert parse_native("  Here it is.\n") == Finish("Here it is.")
    assert parse_native('{"answer": "42"}') == Finish('{"answer": "42"}')  # names no tool: as written
    assert parse_native('See {"tool": "read_file", "args": {"path": "a"}}.') == Finish(
        'See {"tool": "read_file", "args": {"path": "a"}}.'
    )


def test_a_native_reply_that_is_a_json_tool_call_is_that_call() -> None:
    assert parse_native('{"tool": "read_file", "args": {"path": "a.md"}}') == ToolCall(
        "read_file", {"path": "a.md"}
    )
    tagged = '<tool_call>\n{"name": "run_command", "arguments": {"cmd": "ls"}}\n</tool_call>'
    assert parse_native(tagged) == ToolCall("run_command", {"command": "ls", "cwd": "."})
    fenced = '```json\n{"tool": "read_file", "args": {}, "thought": "look"}\n```'
    assert parse_native(fenced) == ToolCall("read_file", {}, "look")  # the schema check refuses it after
    assert parse_native('{"tool": "finish", "args": {"answer": "Done."}}') == Finish("Done.")
    assert parse_native('{"tool": "finish", "args": {"answer": "Cut sho') == Finish("Cut sho")


def test_a_native_call_is_read_by_the_tools_names_and_aliases() -> None:
    assert native_call("ls", {}) == ToolCall("list_directory", {"path": "."})
    assert native_call("read_file", {"file": "a"}) == ToolCall("read_file", {"path": "a"})
    assert native_call("read_file", {"path": 3}) == ToolCall("read_file", {"path": 3})
    assert native_call("nothing", {"a": 1}) == ToolCall("nothing", {"a": 1})
    assert native_call("finish", {"answer": "bye"}) == Finish("bye")
    assert str(native_call("read_file", {"_raw": "{oops"})).startswith("the arguments of read_file were not")
