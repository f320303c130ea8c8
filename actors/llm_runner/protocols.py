"""The two model-server protocols: Ollama's /api/chat and OpenAI's /v1/chat/completions.

Pure code: build the request body, read the answer. The runner does the I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from victoria.errors import LLMProtocolError
from victoria.events.contracts import ChatMessage, FinishReason, ToolCallPart

Api = Literal["ollama", "openai"]


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: FinishReason | None = None
    tool_calls: tuple[ToolCallPart, ...] = ()


def endpoint(api: Api) -> str:
    return "/api/chat" if api == "ollama" else "/v1/chat/completions"


def request_body(
    api: Api,
    model: str,
    messages: list[ChatMessage],
    *,
    json_mode: bool,
    stream: bool = True,
    images: Mapping[str, str] | None = None,
    keep_alive: str | None = None,
    max_tokens: int | None = None,
    num_ctx: int | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The chat request. ``images`` maps a message's image keys to their bytes in base64: Ollama
    takes them in the message's ``images``, an OpenAI-compatible server as ``image_url`` parts
    with a data URL. ``keep_alive`` (Ollama only): how long the model stays loaded after it.
    ``max_tokens``: the output cap (Ollama's ``num_predict``); ``num_ctx`` (Ollama only): the
    context window the models file sets, which Ollama would otherwise take as its own default.
    ``tools``: function specs in OpenAI's shape, which Ollama's ``/api/chat`` takes as they are."""
    msgs = [_message(api, m, images or {}) for m in messages]
    body: dict[str, Any] = {"model": model, "messages": msgs, "stream": stream}
    if tools:
        body["tools"] = tools
    if api == "ollama":
        if json_mode:
            body["format"] = "json"
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        options = {"num_predict": max_tokens, "num_ctx": num_ctx}
        if any(value is not None for value in options.values()):
            body["options"] = {key: value for key, value in options.items() if value is not None}
    else:
        if stream:
            body["stream_options"] = {"include_usage": True}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
    return body


def _message(api: Api, message: ChatMessage, images: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    data = [images[key] for key in message.images if key in images]
    if data and api == "ollama":
        out["images"] = data
    elif data:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        parts += [
            {"type": "image_url", "image_url": {"url": f"data:{image_type(b64)};base64,{b64}"}}
            for b64 in data
        ]
        out["content"] = parts
    if message.tool_calls:
        out["tool_calls"] = [_tool_call(api, call) for call in message.tool_calls]
    if message.role == "tool":
        if message.tool_call_id is not None:
            out["tool_call_id"] = message.tool_call_id  # Ollama reads it from 0.12.10 on
        if api == "ollama" and message.name is not None:
            out["tool_name"] = message.name
    return out


def _tool_call(api: Api, call: ToolCallPart) -> dict[str, Any]:
    """An assistant message's call, as the protocol takes it back: OpenAI's arguments are a JSON
    string, Ollama's an object (its ``id`` is read from 0.12.10 on, ignored before)."""
    if api == "ollama":
        return {"id": call.id, "function": {"name": call.name, "arguments": call.arguments}}
    arguments = _encode(call.arguments).decode()
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def image_type(b64: str) -> str:
    """The media type of an image in base64, from its first bytes (PNG when unknown)."""
    try:
        head = base64.b64decode(b64[:24], validate=False)
    except (binascii.Error, ValueError):
        return "image/png"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return "image/png"


_json = msgspec.json.Decoder()
_encode = msgspec.json.Encoder().encode


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _arguments(text: str) -> dict[str, Any]:
    """A call's arguments as the model wrote them (a JSON string); what is no JSON object is kept."""
    text = text.strip()
    if not text:
        return {}
    try:
        value = _json.decode(text)
    except msgspec.DecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


class _Call:
    """A tool call as its pieces arrive."""

    __slots__ = ("id", "name", "pieces", "value")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.pieces: list[str] = []
        """OpenAI's ``function.arguments``: a JSON string, streamed in fragments."""
        self.value: dict[str, Any] | None = None
        """Ollama's ``function.arguments``: an object, whole."""


class StreamReader:
    """Reads a streamed answer line by line: Ollama's NDJSON or OpenAI's server-sent events.

    A server that ignores ``stream`` and answers with one JSON document is read as well. Tool
    calls are collected as they come: OpenAI streams each as ``delta.tool_calls[i]`` pieces keyed
    by ``index`` (``id`` and ``function.name`` once, ``function.arguments`` in fragments to join),
    Ollama sends each whole in ``message.tool_calls``; a call without an id (Ollama before 0.12.10)
    gets ``<request_id>-call_<n>``, the same whenever the answer is read.
    """

    def __init__(self, api: Api, model: str, *, request_id: str = "") -> None:
        self.api = api
        self.model = model
        self.request_id = request_id
        self.parts: list[str] = []
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.done = False
        self.lines = 0
        """Lines that carried a JSON object (0 at the end: the server sent nothing at all)."""
        self.said_reason: str | None = None
        """The ``finish_reason`` (``done_reason``) the server sent, as it sent it."""
        self.tool_pieces = 0
        """Pieces of tool calls received: progress of an answer that writes no text."""
        self._calls: dict[int, _Call] = {}

    def feed(self, line: str) -> str:
        """One line of the body; returns the new text it carries (maybe empty)."""
        line = line.strip()
        if not line or line.startswith(":"):
            return ""
        if self.api == "openai":
            if line.startswith("data:"):
                line = line[5:].strip()
            if line == "[DONE]":
                self.done = True
                return ""
        try:
            data = _json.decode(line)
        except msgspec.DecodeError as exc:
            raise LLMProtocolError(f"unreadable line in a streamed answer: {exc}") from None
        if not isinstance(data, dict):
            raise LLMProtocolError("a streamed answer's line is not a JSON object")
        self.lines += 1
        if isinstance(data.get("error"), str | dict):
            raise LLMProtocolError(f"model server reported an error: {data['error']}")
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        text = self._text(data)
        if text:
            self.parts.append(text)
        return text

    def _text(self, data: dict[str, Any]) -> str:
        try:
            if self.api == "ollama":
                if data.get("done"):
                    self.done = True
                    self.said_reason = str(data.get("done_reason") or "stop")
                    self.prompt_tokens = _int(data.get("prompt_eval_count"))
                    self.completion_tokens = _int(data.get("eval_count"))
                message = data.get("message") or {}
                for item in message.get("tool_calls") or ():
                    self._add_call(item, len(self._calls))
                return str(message.get("content") or "")
            usage = data.get("usage") or {}
            if usage:
                self.prompt_tokens = _int(usage.get("prompt_tokens"))
                self.completion_tokens = _int(usage.get("completion_tokens"))
            choices = data.get("choices") or []
            if not choices:
                return ""
            first = choices[0]
            if first.get("finish_reason"):
                self.said_reason = str(first["finish_reason"])
                self.done = self.done or data.get("object") == "chat.completion"
            delta = first.get("delta") or {}
            message = first.get("message") or {}
            for item in delta.get("tool_calls") or ():
                self._add_call(item, self._index(item))
            for item in message.get("tool_calls") or ():  # an answer not streamed: each call whole
                self._add_call(item, len(self._calls))
            piece = delta.get("content") or message.get("content")
            return str(piece or first.get("text") or "")
        except (AttributeError, TypeError, IndexError, KeyError) as exc:
            raise LLMProtocolError(f"a streamed answer is not in the {self.api} shape: {exc}") from None

    def _index(self, item: dict[str, Any]) -> int:
        """Which call a streamed piece belongs to: its ``index``; without one, a piece with a new id
        starts the next call and any other goes on with the last."""
        index = item.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        last = max(self._calls, default=-1)
        new = item.get("id") and (last < 0 or self._calls[last].id not in ("", item["id"]))
        return last + 1 if new or last < 0 else last

    def _add_call(self, item: dict[str, Any], index: int) -> None:
        call = self._calls.setdefault(index, _Call())
        if isinstance(item.get("id"), str) and item["id"]:
            call.id = item["id"]
        function = item.get("function") or item  # a few servers leave out the "function" level
        if isinstance(function.get("name"), str) and function["name"]:
            call.name = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.pieces.append(arguments)
        elif isinstance(arguments, dict):
            call.value = arguments
        self.tool_pieces += 1

    @property
    def tool_calls(self) -> list[ToolCallPart]:
        """The tool calls received so far, in order, their arguments parsed."""
        prefix = f"{self.request_id}-" if self.request_id else ""
        return [
            ToolCallPart(
                call.id or f"{prefix}call_{n}",
                call.name,
                call.value if call.value is not None else _arguments("".join(call.pieces)),
            )
            for n, (_, call) in enumerate(sorted(self._calls.items()))
        ]

    @property
    def finish_reason(self) -> FinishReason | None:
        """How the answer ended: ``length`` when its cap cut it; ``interrupted`` when the stream
        ended without the server saying why (llama-cpp-python ends a stream with ``[DONE]`` and
        no ``finish_reason`` when another request arrives); None before the end. OpenAI's
        ``tool_calls`` is a ``stop``: the model ended its turn by calling tools."""
        if self.said_reason == "length":
            return "length"
        if self.said_reason is not None:
            return "stop"
        return "interrupted" if self.done or self.lines else None

    def completion(self) -> Completion:
        """The answer, once the body has ended; LLMProtocolError when the server sent nothing."""
        if not self.lines and not self.done:
            raise LLMProtocolError(
                "the server ended its answer without sending anything (a request over the model's "
                "context, or the server's own trouble; its log says which)"
            )
        return Completion(
            content="".join(self.parts),
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            tool_calls=tuple(self.tool_calls),
        )
