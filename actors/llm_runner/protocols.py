"""The two model-server protocols: Ollama's /api/chat and OpenAI's /v1/chat/completions.

Pure code: build the request body, read the answer. The runner does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from victoria.errors import LLMProtocolError
from victoria.events.contracts import ChatMessage

Api = Literal["ollama", "openai"]


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None


def endpoint(api: Api) -> str:
    return "/api/chat" if api == "ollama" else "/v1/chat/completions"


def request_body(
    api: Api, model: str, messages: list[ChatMessage], *, json_mode: bool, stream: bool = True
) -> dict[str, Any]:
    msgs = [{"role": m.role, "content": m.content} for m in messages]
    body: dict[str, Any] = {"model": model, "messages": msgs, "stream": stream}
    if api == "ollama":
        if json_mode:
            body["format"] = "json"
    elif stream:
        body["stream_options"] = {"include_usage": True}
    return body


_json = msgspec.json.Decoder()


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


class StreamReader:
    """Reads a streamed answer line by line: Ollama's NDJSON or OpenAI's server-sent events.

    A server that ignores ``stream`` and answers with one JSON document is read as well.
    """

    def __init__(self, api: Api, model: str) -> None:
        self.api = api
        self.model = model
        self.parts: list[str] = []
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.done = False

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
                    self.prompt_tokens = _int(data.get("prompt_eval_count"))
                    self.completion_tokens = _int(data.get("eval_count"))
                return str((data.get("message") or {}).get("content") or "")
            usage = data.get("usage") or {}
            if usage:
                self.prompt_tokens = _int(usage.get("prompt_tokens"))
                self.completion_tokens = _int(usage.get("completion_tokens"))
            choices = data.get("choices") or []
            if not choices:
                return ""
            first = choices[0]
            if first.get("finish_reason"):
                self.done = self.done or data.get("object") == "chat.completion"
            piece = (first.get("delta") or {}).get("content") or (first.get("message") or {}).get("content")
            return str(piece or first.get("text") or "")
        except (AttributeError, TypeError, IndexError) as exc:
            raise LLMProtocolError(f"a streamed answer is not in the {self.api} shape: {exc}") from None

    def completion(self) -> Completion:
        return Completion(
            content="".join(self.parts),
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
        )
