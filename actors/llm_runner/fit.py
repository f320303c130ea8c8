"""Fitting a model request to the model's context window: pure code.

Tokens are estimated from characters, on the safe side (a character outside ASCII counts as a
token: a small model's vocabulary spends one or more on a Cyrillic letter), and the estimate is
corrected by what the server counted for earlier prompts (``Estimator.learn``). When the prompt
and the output cap do not fit, the longest tool outputs are cut first, then the oldest turns are
left out; the system prompt and the first user message (the goal, the plan) are always kept. A
request that still does not fit is an ``LLMContextError``, never the server's overflow error or
its silent truncation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from victoria.errors import LLMContextError
from victoria.events.contracts import ChatMessage

MESSAGE_OVERHEAD: Final = 8  # tokens of the chat template around each message
PROMPT_OVERHEAD: Final = 32  # tokens of the template around the whole prompt
MIN_OUTPUT: Final = 128  # tokens an answer is left at least, when the cap must shrink to fit
KEEP_CHARS: Final = 600  # characters a cut message keeps
CUT_NOTE: Final = "\n[cut to fit the model's context: {n} characters left out]"
LEFT_OUT: Final = "[{n} earlier messages left out to fit the model's context]"


class Estimator:
    """Prompt tokens from characters, corrected by the server's own counts of recent prompts."""

    def __init__(self) -> None:
        self._ratios: deque[float] = deque(maxlen=20)

    def raw(self, messages: list[ChatMessage], extra: int = 0) -> int:
        """``extra``: tokens of the request beside its messages (its tool table, ``tool_tokens``)."""
        total = PROMPT_OVERHEAD + extra
        for message in messages:
            total += MESSAGE_OVERHEAD + text_tokens(message.content) + 768 * len(message.images)
            if message.tool_calls:
                total += text_tokens(_encode(message.tool_calls).decode())
        return total

    def tokens(self, messages: list[ChatMessage], extra: int = 0) -> int:
        """The estimate, scaled by the largest recent ratio of counted to estimated (at least 0.5)."""
        scale = max(self._ratios, default=1.0)
        return int(self.raw(messages, extra) * max(0.5, scale)) + 1

    def learn(self, messages: list[ChatMessage], counted: int | None, extra: int = 0) -> None:
        """The server counted ``counted`` prompt tokens for ``messages`` (and ``extra``)."""
        if counted and counted > 0:
            self._ratios.append(min(3.0, counted / self.raw(messages, extra)))


_encode: Final = msgspec.json.Encoder().encode


def text_tokens(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return ascii_chars // 3 + (len(text) - ascii_chars)


def tool_tokens(tools: list[dict[str, Any]]) -> int:
    """Tokens of a request's tool table (the server puts it in the prompt), estimated from its JSON."""
    return text_tokens(_encode(tools).decode()) if tools else 0


@dataclass(frozen=True, slots=True)
class Fitted:
    messages: list[ChatMessage]
    max_tokens: int
    """The output cap to send: the asked one, or less when the context leaves less."""
    trimmed: str | None
    """What was left out, in words; None when nothing was."""
    prompt_tokens: int
    """The prompt's estimate after fitting."""


def fit(
    messages: list[ChatMessage], *, context: int | None, cap: int, estimator: Estimator, extra: int = 0
) -> Fitted:
    """``messages`` fitted to ``context`` tokens with room for ``cap`` more (None: not known,
    nothing is changed); ``extra`` tokens of the request are not in its messages (its tool table).
    An assistant message that called tools is left out only with the results that answer it."""
    if context is None:
        return Fitted(messages, cap, None, estimator.tokens(messages, extra))
    need = estimator.tokens(messages, extra)
    if need + cap <= context:
        return Fitted(messages, cap, None, need)
    room = max(min(cap, MIN_OUTPUT), context - need)
    if need + room <= context:  # the prompt fits with a smaller cap: nothing is cut
        return Fitted(messages, min(cap, context - need), None, need)
    budget = context - min(cap, MIN_OUTPUT)
    work = list(messages)
    kept = _kept(work)
    cuts = 0
    # The longest messages that may be cut (tool outputs, earlier answers), longest first.
    while estimator.tokens(work, extra) > budget:
        longest = max(
            (i for i in range(len(work)) if i not in kept and len(work[i].content) > KEEP_CHARS * 2),
            key=lambda i: len(work[i].content),
            default=None,
        )
        if longest is None:
            break
        work[longest] = _cut(work[longest])
        cuts += 1
    # Then the oldest turns, one at a time, between the kept head and the last message.
    dropped = 0
    while estimator.tokens(work, extra) > budget:
        oldest = next((i for i in range(len(work) - 1) if i not in kept and i != len(work) - 1), None)
        if oldest is None:
            break
        end = oldest + 1
        if work[oldest].tool_calls:  # its results go with it: a result without its call is refused
            while end < len(work) and work[end].role == "tool":
                end += 1
            if end >= len(work):
                break  # the last message is one of them
        del work[oldest:end]
        kept = _kept(work)
        dropped += end - oldest
    if dropped:
        head = max(kept) + 1 if kept else 0
        work.insert(head, ChatMessage("user", LEFT_OUT.format(n=dropped)))
    need = estimator.tokens(work, extra)
    if need + MIN_OUTPUT > context:
        raise LLMContextError(
            f"the request needs about {need} tokens and its answer at least {MIN_OUTPUT}, "
            f"but the model's context holds {context}, even with every message that may go left out",
            need=need,
            context=context,
        )
    said = []
    if cuts:
        said.append(f"{cuts} long messages cut")
    if dropped:
        said.append(f"{dropped} oldest messages left out")
    return Fitted(work, min(cap, context - need), ", ".join(said) + f" to fit {context} tokens", need)


def _kept(messages: list[ChatMessage]) -> set[int]:
    """Indices never cut or left out: the system prompts at the head and the first user message."""
    kept: set[int] = set()
    for i, message in enumerate(messages):
        kept.add(i)
        if message.role == "user":
            break
    return kept


def _cut(message: ChatMessage) -> ChatMessage:
    text = message.content
    half = KEEP_CHARS // 2
    left_out = len(text) - 2 * half
    return msgspec.structs.replace(
        message, content=text[:half] + CUT_NOTE.format(n=left_out) + "\n" + text[-half:]
    )
