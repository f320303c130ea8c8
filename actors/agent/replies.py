"""Reading a model's replies, whatever they are: JSON, JSON in prose or fences, partial JSON, text.

``parse_action`` reads a step reply of the JSON-in-text protocol (a tool call or the final answer);
``native_call`` reads one native tool call of a reply, ``parse_native`` the text of a native step
reply that called no tool; ``parse_understanding`` reads the understand step's reply (what is
asked, or the questions to ask back)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from victoria.events import tools
from victoria.events.tools import BUILTINS, FINISH, Table, Tool


@dataclass(frozen=True, slots=True)
class Finish:
    answer: str
    thought: str = ""


@dataclass(frozen=True, slots=True)
class ToolCall:
    tool: str
    args: dict[str, Any] = field(default_factory=dict)
    thought: str = ""


@dataclass(frozen=True, slots=True)
class Understanding:
    """What the understand step made of the goal: ``text``, or questions to ask the user first."""

    text: str
    questions: list[str] = field(default_factory=list)
    restatement: str = ""

    @property
    def unclear(self) -> bool:
        return bool(self.questions)


Action = Finish | ToolCall

_decoder: Final = msgspec.json.Decoder()
_FENCE: Final = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_ANSWER: Final = re.compile(r'"(?:' + "|".join(tools.ANSWER_KEYS) + r')"\s*:\s*"((?:[^"\\]|\\.)*)', re.DOTALL)
_TEXT_KEYS: Final = (*tools.ANSWER_KEYS, "text", "content")
"""Where a reply object that names no tool holds its answer: under an answer key, or its text."""
_TOOL: Final = re.compile(r'"(?:tool|action|name)"\s*:\s*"(\w+)"')
_PATH: Final = re.compile(r'"path"\s*:\s*"((?:[^"\\]|\\.)*)"')


def parse_action(text: str, table: Table = BUILTINS) -> Action:
    """The action a step reply asks for, a tool of ``table``. A reply that is not a tool call is
    the final answer."""
    stripped = (text or "").strip()
    if not stripped:
        return Finish("")
    obj = _find_object(stripped)
    if obj is not None:
        action = _from_object(obj, table)
        if action is not None:
            thought = obj.get("thought") or obj.get("reasoning")
            if isinstance(thought, str) and thought.strip():
                return _with_thought(action, thought.strip())
            return action
    partial = _from_partial(stripped)
    if partial is not None:
        return partial
    return Finish(stripped)


_TAGGED: Final = re.compile(r"^<tool_call>\s*(.*?)\s*(?:</tool_call>)?$", re.DOTALL)
_WHOLE_FENCE: Final = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


def parse_native(text: str, table: Table = BUILTINS) -> Action:
    """A native step reply that called no tool: its text is the final answer, except when the whole
    text (bare, in a code fence, or in ``<tool_call>`` tags) is one JSON object naming a tool of the
    table, ``{"tool": <name>, "args": {...}}`` or ``{"name": ..., "arguments": ...}``: what
    small models write when their chat template fails to make a native call of it. That is that
    call (``finish``: its answer), cut-short JSON read as ``parse_action`` reads it. A JSON object
    that names no tool, or JSON inside prose, is the answer as written."""
    stripped = (text or "").strip()
    inner = stripped
    for wrapper in (_WHOLE_FENCE, _TAGGED):
        found = wrapper.match(inner)
        if found:
            inner = found.group(1).strip()
    if not inner.startswith("{"):
        return Finish(stripped)
    try:
        value = _decoder.decode(inner)
    except (msgspec.DecodeError, RecursionError):
        return _from_partial(inner) or Finish(stripped)
    if not isinstance(value, dict):
        return Finish(stripped)
    named = value.get("tool") or value.get("name") or value.get("action")
    tool = table.lookup(named) if isinstance(named, str) else None
    if tool is None:
        return Finish(stripped)
    args = value.get("args") or value.get("arguments") or value.get("parameters") or {}
    action: Action | None
    if tool is not FINISH and isinstance(args, dict):
        action = _call(tool, args) or ToolCall(tool.name, args)  # its arguments are checked after
    else:
        action = _from_object(value, table)
    if action is None:
        return Finish(stripped)
    thought = value.get("thought") or value.get("reasoning")
    return _with_thought(action, thought.strip()) if isinstance(thought, str) and thought.strip() else action


def native_call(name: str, arguments: dict[str, Any], table: Table = BUILTINS) -> Action | str:
    """One native tool call of a reply as an action: the tool the model named (its name or an
    alias, any case) with its arguments under their names or the other names models use, checked
    against the schema after (``checked_args``); a call of ``finish`` is the final answer. A text:
    what is wrong with it (arguments that were not a JSON object). An unknown tool is a call of
    that name, which the check refuses with the names of the tools."""
    if "_raw" in arguments:
        raw = str(arguments["_raw"])
        return f"the arguments of {name} were not a JSON object: {raw[:200]!r}"
    tool = table.lookup(name)
    if tool is None:
        return ToolCall(name, arguments)
    if tool is FINISH:
        return Finish(_answer_text(arguments) or "")
    return _call(tool, arguments) or ToolCall(tool.name, arguments)


def _with_thought(action: Action, thought: str) -> Action:
    if isinstance(action, Finish):
        return Finish(action.answer, thought)
    return ToolCall(action.tool, action.args, thought)


def parse_understanding(text: str) -> Understanding:
    """The understand step's reply: JSON ``{"understanding": ..., "clear": true}`` or ``{"clear":
    false, "questions": [...], "suggested_restatement": ...}``; anything else is the understanding
    in plain words. Questions count only when the model said the goal is not clear."""
    stripped = (text or "").strip()
    obj = _find_object(stripped)
    if obj is None:
        return Understanding(stripped)
    understanding = obj.get("understanding") or obj.get("summary") or ""
    if not isinstance(understanding, str):
        understanding = str(understanding)
    questions = obj.get("questions") or []
    if not isinstance(questions, list):
        questions = [questions]
    asked = [str(q).strip() for q in questions if str(q).strip()]
    restatement = obj.get("suggested_restatement") or obj.get("restatement") or ""
    if obj.get("clear") is False and asked:
        return Understanding(understanding.strip(), asked[:10], str(restatement).strip())
    return Understanding(understanding.strip() or stripped)


def _find_object(text: str) -> dict[str, Any] | None:
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for candidate in candidates:
        candidate = candidate.strip()
        start, end = candidate.find("{"), candidate.rfind("}")
        if start == -1 or end <= start:
            continue
        try:
            value = _decoder.decode(candidate[start : end + 1])
        except (msgspec.DecodeError, RecursionError):  # msgspec recurses on deep nesting
            continue
        if isinstance(value, dict):
            return value
    return None


def _from_object(obj: dict[str, Any], table: Table) -> Action | None:
    tool = obj.get("tool") or obj.get("action") or obj.get("name")
    args = obj.get("args") or obj.get("arguments") or obj.get("parameters") or obj.get("input") or {}
    if not isinstance(args, dict):
        args = {"value": args}
    known = table.lookup(tool) if isinstance(tool, str) else None
    if known is FINISH:
        return Finish(_answer_text(args) or _answer_text(obj) or "")
    if known is not None:
        call = _call(known, args)
        if call is not None:
            return call
    answer = _answer_text(obj)
    if answer is not None:
        return Finish(answer)
    return None


def _call(tool: Tool, args: dict[str, Any]) -> ToolCall | None:
    """The call of ``tool`` with the arguments a model gave, under their names or the other names
    models use; None when a required argument is missing or not text. An MCP server's tool takes
    its arguments as given (its schema checks them)."""
    if tool.input_schema is not None:
        return ToolCall(tool.name, args)
    defaults = tool.args.__struct_defaults__
    fields = tool.fields
    required = len(fields) - len(defaults)
    out: dict[str, Any] = {}
    for n, name in enumerate(fields):
        value = next((args[key] for key in tool.names_for(name) if args.get(key)), None)
        if n < required:
            if not isinstance(value, str) or not value:
                return None
            out[name] = value
        else:
            value = value if value not in (None, "") else defaults[n - required]
            if value is not None:
                out[name] = value  # its type is checked against the tool's schema (workflow)
    return ToolCall(tool.name, out)


def _answer_text(obj: dict[str, Any]) -> str | None:
    for key in _TEXT_KEYS:
        value = obj.get(key)
        if isinstance(value, str):
            return value
        if value is not None and not isinstance(value, dict | list):
            return str(value)
    return None


def _from_partial(text: str) -> Action | None:
    """JSON cut short (a model that hit its token limit): take what can be read."""
    if "{" not in text:
        return None
    named = _TOOL.search(text)
    tool = tools.BY_NAME.get(named.group(1).lower()) if named else None
    if tool is not None and tool is not FINISH:
        path = _PATH.search(text)
        call = _call(tool, {"path": _unescape(path.group(1))} if path else {})
        if call is not None:
            return call
    answer = _ANSWER.search(text)
    if answer:
        return Finish(_unescape(answer.group(1)))
    return None


def _unescape(raw: str) -> str:
    try:
        value = _decoder.decode(f'"{raw}"'.encode("utf-8", "surrogatepass"))
        return value if isinstance(value, str) else raw
    except (msgspec.DecodeError, UnicodeError):
        return raw.replace('\\"', '"').replace("\\n", "\n")
