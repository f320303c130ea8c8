"""Reading a model's replies, whatever they are: JSON, JSON in prose or fences, partial JSON, text.

``parse_action`` reads a step reply (a tool call or the final answer); ``parse_understanding``
reads the understand step's reply (what is asked, or the questions to ask back)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from victoria.events import tools
from victoria.events.tools import FINISH, Tool


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


def parse_action(text: str) -> Action:
    """The action a step reply asks for. A reply that is not a tool call is the final answer."""
    stripped = (text or "").strip()
    if not stripped:
        return Finish("")
    obj = _find_object(stripped)
    if obj is not None:
        action = _from_object(obj)
        if action is not None:
            thought = obj.get("thought") or obj.get("reasoning")
            if isinstance(thought, str) and thought.strip():
                return _with_thought(action, thought.strip())
            return action
    partial = _from_partial(stripped)
    if partial is not None:
        return partial
    return Finish(stripped)


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


def _from_object(obj: dict[str, Any]) -> Action | None:
    tool = obj.get("tool") or obj.get("action") or obj.get("name")
    args = obj.get("args") or obj.get("arguments") or obj.get("parameters") or obj.get("input") or {}
    if not isinstance(args, dict):
        args = {"value": args}
    known = tools.lookup(tool) if isinstance(tool, str) else None
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
    models use; None when a required argument is missing or not text."""
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
