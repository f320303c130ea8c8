"""What a model server can do, asked once: what server it is, its context window, slots, tools.

- Ollama: ``/api/show`` per model (``model_info["<arch>.context_length"]``, ``capabilities``),
  and ``/api/ps`` says the context a loaded model runs with (``context_length``). Without either,
  Ollama runs a model with its default context (``OLLAMA_DEFAULT_CONTEXT``, 4096 tokens), and it
  cuts a longer prompt silently: so that is what requests are fitted to.
- llama.cpp's ``llama-server``: ``/props`` (``default_generation_settings.n_ctx``, ``total_slots``,
  ``chat_template``).
- llama-cpp-python: its OpenAPI document's title says so (``/openapi.json``, served without the
  model's lock). One slot; any request that arrives while it generates, even ``GET /v1/models``,
  ends that generation early (``interrupt_requests``, on by default), so nothing is sent to it
  while a call streams. It does not tell its context; its overflow error does
  (``context_from_error``).
- vLLM: ``max_model_len`` in each ``/v1/models`` entry.
- Any other OpenAI-compatible server (``mlx_lm.server``, ...): nothing known; it may answer
  nothing else while it generates (mlx_lm.server has one thread).

Tools: a server that does not take a request's ``tools`` says so in its error (``refuses_tools``),
except llama-cpp-python, which puts them in the chat template and answers in text (its
``chatml-function-calling`` and ``functionary`` chat formats aside): it is taken as not taking tools
(``tools = true`` in the models file says otherwise), as a llama-server whose chat template has no
tools is.

Pure code except ``discover``, which takes the HTTP getter.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

OLLAMA_DEFAULT_CONTEXT: Final = 4096  # tokens: Ollama's own default num_ctx (0.6 and later)

Get = Callable[[str], Awaitable[Any]]
"""GET a URL, its JSON body; raises on a failure or an error status."""


@dataclass(frozen=True, slots=True)
class Traits:
    kind: str = ""
    """``ollama``, ``llama.cpp``, ``llama-cpp-python``, ``vllm`` or ``openai``; empty: not asked yet."""
    context: int | None = None
    """The context window of its model(s), tokens, when the server tells one for all."""
    slots: int | None = None
    tools: bool | None = None
    answers_while_generating: bool = False
    """It answers a listing while a generation runs, without harm to it (Ollama, llama.cpp, vLLM)."""


async def discover(get: Get, base: str, api: str, listing: Any) -> Traits:
    """Ask the server what it is (``listing``: its answer to ``/v1/models`` or ``/api/tags``)."""
    if api == "ollama":
        return Traits(kind="ollama", answers_while_generating=True)
    vllm = [
        int(item["max_model_len"]) for item in _items(listing) if isinstance(item.get("max_model_len"), int)
    ]
    if vllm:
        return Traits(kind="vllm", context=min(vllm), answers_while_generating=True)
    try:
        props = await get(base + "/props")
    except Exception:  # not llama-server: any failure says only that
        props = None
    if isinstance(props, dict) and isinstance(props.get("default_generation_settings"), dict):
        settings = props["default_generation_settings"]
        n_ctx = settings.get("n_ctx")
        slots = props.get("total_slots")
        template = props.get("chat_template")
        return Traits(
            kind="llama.cpp",
            context=n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None,
            slots=slots if isinstance(slots, int) and slots > 0 else None,
            tools=("tools" in template) if isinstance(template, str) else None,
            answers_while_generating=True,
        )
    try:
        openapi = await get(base + "/openapi.json")
    except Exception:  # no OpenAPI document: some other server
        openapi = None
    title = str(((openapi or {}).get("info") or {}).get("title") or "") if isinstance(openapi, dict) else ""
    if "llama.cpp python" in title.lower():
        return Traits(kind="llama-cpp-python", slots=1, tools=False)
    return Traits(kind="openai")


def _items(listing: Any) -> list[dict[str, Any]]:
    data = listing.get("data") if isinstance(listing, dict) else None
    return [item for item in data or [] if isinstance(item, dict)]


@dataclass(frozen=True, slots=True)
class ModelTraits:
    context: int | None = None
    tools: bool | None = None


def ollama_show(show: Any) -> ModelTraits:
    """``/api/show``'s answer: the model's trained context and whether it takes tools."""
    if not isinstance(show, dict):
        return ModelTraits()
    info = show.get("model_info") or {}
    lengths = [v for k, v in info.items() if k.endswith(".context_length") and isinstance(v, int)]
    capabilities = show.get("capabilities")
    tools = "tools" in capabilities if isinstance(capabilities, list) else None
    return ModelTraits(context=min(lengths) if lengths else None, tools=tools)


def ollama_loaded_context(ps: Any) -> dict[str, int]:
    """``/api/ps``: model -> the context it runs with now (Ollama 0.9 and later say it)."""
    out: dict[str, int] = {}
    for item in (ps or {}).get("models") or [] if isinstance(ps, dict) else []:
        length = item.get("context_length")
        name = str(item.get("name") or item.get("model") or "")
        if name and isinstance(length, int) and length > 0:
            out[name] = length
    return out


_CONTEXT_PATTERNS: Final = (
    re.compile(r"maximum context length is (\d+) tokens"),  # llama-cpp-python, vLLM, OpenAI
    re.compile(r"context window of (\d+)"),
    re.compile(r'"n_ctx"\s*:\s*(\d+)'),  # llama-server's exceed_context_size_error
    re.compile(r"context size \((\d+)\)"),
)


def context_from_error(text: str) -> int | None:
    """The context window an overflow error names, if it names one."""
    for pattern in _CONTEXT_PATTERNS:
        found = pattern.search(text)
        if found:
            return int(found.group(1))
    return None


def is_overflow(text: str) -> bool:
    lowered = text.lower()
    return "context" in lowered and any(
        word in lowered for word in ("exceed", "maximum context", "too long", "context_length")
    )


_NO_TOOLS: Final = (
    "does not support tools",  # Ollama, 400: "<model> does not support tools"
    "tools param requires --jinja",  # llama-server started with --no-jinja (or before jinja by default), 500
    "cannot use tools with stream",  # llama-server before streamed tool calls (early 2025), 500
    "tool choice requires --enable-auto-tool-choice",  # vLLM without a tool parser, 400
)


def refuses_tools(text: str) -> bool:
    """The server's error says it (or the model) does not take a request's ``tools``."""
    lowered = text.lower()
    return any(sign in lowered for sign in _NO_TOOLS)
