"""Reading a model's step reply, whatever it is: JSON, JSON in prose or fences, partial JSON, text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

TOOLS: Final = ("list_directory", "read_file", "finish")


@dataclass(frozen=True, slots=True)
class Finish:
    answer: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    tool: str
    args: dict[str, Any] = field(default_factory=dict)


Action = Finish | ToolCall

_decoder: Final = msgspec.json.Decoder()
_FENCE: Final = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_ANSWER: Final = re.compile(
    r'"(?:answer|final|final_answer|output|result)"\s*:\s*"((?:[^"\\]|\\.)*)', re.DOTALL
)
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
            return action
    partial = _from_partial(stripped)
    if partial is not None:
        return partial
    return Finish(stripped)


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
    if isinstance(tool, str):
        tool = tool.strip().lower()
        if tool in ("finish", "final", "answer", "final_answer", "done"):
            return Finish(_answer_text(args) or _answer_text(obj) or "")
        if tool in ("list_directory", "list_dir", "ls", "list_files"):
            return ToolCall("list_directory", {"path": str(args.get("path") or ".")})
        if tool in ("read_file", "cat", "open_file"):
            path = args.get("path") or args.get("file") or args.get("value")
            if isinstance(path, str) and path:
                return ToolCall("read_file", {"path": path})
    answer = _answer_text(obj)
    if answer is not None:
        return Finish(answer)
    return None


def _answer_text(obj: dict[str, Any]) -> str | None:
    for key in ("answer", "final", "final_answer", "output", "result", "text", "content"):
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
    tool = _TOOL.search(text)
    if tool and tool.group(1).lower() in ("list_directory", "read_file"):
        path = _PATH.search(text)
        if tool.group(1).lower() == "list_directory":
            return ToolCall("list_directory", {"path": _unescape(path.group(1)) if path else "."})
        if path:
            return ToolCall("read_file", {"path": _unescape(path.group(1))})
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
