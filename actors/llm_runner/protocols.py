"""The two model-server protocols: Ollama's /api/chat and OpenAI's /v1/chat/completions.

Pure code: build the request body, read the answer. The runner does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from events.contracts import ChatMessage
from victoria.errors import LLMProtocolError

Api = Literal["ollama", "openai"]


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None


def endpoint(api: Api) -> str:
    return "/api/chat" if api == "ollama" else "/v1/chat/completions"


def request_body(api: Api, model: str, messages: list[ChatMessage], *, json_mode: bool) -> dict[str, Any]:
    msgs = [{"role": m.role, "content": m.content} for m in messages]
    if api == "ollama":
        body: dict[str, Any] = {"model": model, "messages": msgs, "stream": False}
        if json_mode:
            body["format"] = "json"
        return body
    body = {"model": model, "messages": msgs, "stream": False}
    return body


_json = msgspec.json.Decoder()


def parse_response(api: Api, raw: bytes, model: str) -> Completion:
    try:
        data = _json.decode(raw)
    except msgspec.DecodeError as exc:
        raise LLMProtocolError(f"model server answered with non-JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LLMProtocolError("model server answered with a JSON value that is not an object")
    try:
        if api == "ollama":
            message = data.get("message") or {}
            content = message.get("content") or ""
            return Completion(
                content=str(content),
                model=str(data.get("model") or model),
                prompt_tokens=_int(data.get("prompt_eval_count")),
                completion_tokens=_int(data.get("eval_count")),
            )
        choices = data.get("choices") or []
        first = choices[0] if choices else {}
        content = ((first.get("message") or {}).get("content")) or first.get("text") or ""
        usage = data.get("usage") or {}
        return Completion(
            content=str(content),
            model=str(data.get("model") or model),
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
        )
    except (AttributeError, TypeError, IndexError) as exc:
        raise LLMProtocolError(f"model server answer is not in the {api} shape: {exc}") from None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None
