"""The answer's words out of a step reply as the model writes it. Pure code, no I/O.

A step reply is a JSON tool call; the one that finishes holds the answer under one of the keys the
tool table names for it (``victoria.events.tools.ANSWER_KEYS``, the keys the agent's reply parser
takes the answer from). ``POST /stream`` sends the old server's clients the answer's words as they
come (``chunk`` lines), not the JSON around them: ``AnswerStream`` is fed the model's text in the
pieces the runner publishes and returns, each time, the new characters of the answer's string,
with JSON escapes undone (an escape cut in two by a piece boundary waits for its end).

A native step reply (its request sent the tool table as the protocol's ``tools``) is the answer as
it stands when it calls no tool: ``AnswerStream(native=True)`` passes its text through as it
comes, unless it opens as JSON (``{``, a code fence, ``<tool_call>``), a call or answer written as
text, which is read as above. Text a model writes before its tool calls goes out too: the stream
cannot know calls are coming (the ``end`` line's ``output`` is the answer). ``StepAnswers`` keeps
one stream per request of a task, each in the protocol its stored request says.
"""

from __future__ import annotations

import json
import re
from typing import Final

from victoria.events.tools import ANSWER_KEYS

_OPENING: Final = re.compile(r'"(?:' + "|".join(ANSWER_KEYS) + r')"\s*:\s*"')
_SIMPLE_ESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


_JSON_OPENINGS: Final = ("{", "`", "<tool_call>")
"""How a native reply that is JSON written as text begins."""


class AnswerStream:
    """One step reply's answer, read as the reply is written."""

    def __init__(self, *, native: bool = False) -> None:
        self._seen = ""  # the reply so far, up to the opening quote of the answer
        self._inside = False
        self._closed = False
        self._pending = ""  # an escape not yet complete
        self._plain: bool | None = None if native else False
        """The reply is the answer as it stands; None: not known yet (a native reply's start)."""
        self._start = ""  # a native reply's first characters, until they tell

    @property
    def started(self) -> bool:
        return self._inside or self._closed or bool(self._plain)

    def feed(self, text: str) -> str:
        """The answer's new characters in ``text`` (empty when there are none yet, or any more)."""
        if self._plain is None:
            self._start += text
            opening = self._start.lstrip()
            if not opening or any(len(opening) < len(o) and o.startswith(opening) for o in _JSON_OPENINGS):
                return ""
            self._plain = not opening.startswith(_JSON_OPENINGS)
            text, self._start = self._start, ""
        if self._plain:
            return text
        if self._closed:
            return ""
        if not self._inside:
            self._seen += text
            found = _OPENING.search(self._seen)
            if found is None:
                self._seen = self._seen[-64:]  # enough to find an opening cut in two
                return ""
            self._inside = True
            text = self._seen[found.end() :]
            self._seen = ""
        return self._read(self._pending + text)

    def _read(self, text: str) -> str:
        out: list[str] = []
        self._pending = ""
        i = 0
        while i < len(text):
            char = text[i]
            if char == '"':
                self._closed = True
                break
            if char != "\\":
                out.append(char)
                i += 1
                continue
            if i + 1 >= len(text):
                self._pending = text[i:]
                break
            code = text[i + 1]
            if code == "u":
                # A character outside the BMP is two escapes (a surrogate pair): read them together.
                size = 12 if text[i + 2 : i + 4].lower() in ("d8", "d9", "da", "db") else 6
                if i + size > len(text):
                    self._pending = text[i:]
                    break
                out.append(_unicode(text[i : i + size]))
                i += size
                continue
            out.append(_SIMPLE_ESCAPES.get(code, code))
            i += 2
        return "".join(out)


def _unicode(escape: str) -> str:
    try:
        value = json.loads(f'"{escape}"')
    except ValueError:
        return ""
    if not isinstance(value, str):
        return ""
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # no lone surrogate


class StepAnswers:
    """The answers' words of one task's step replies, by request. A reply's pieces that come before
    its stored request (tokens and events travel apart) are held until the request says how to
    read them."""

    def __init__(self) -> None:
        self._streams: dict[str, AnswerStream] = {}
        self._held: dict[str, list[str]] = {}

    def requested(self, request_id: str, *, native: bool) -> str:
        """A step request seen (``native``: it sent tools): the words of what came before it."""
        if request_id in self._streams:
            return ""
        stream = self._streams[request_id] = AnswerStream(native=native)
        return "".join(stream.feed(text) for text in self._held.pop(request_id, []))

    def feed(self, request_id: str, text: str) -> str:
        """The answer's new characters in a piece of a step reply."""
        stream = self._streams.get(request_id)
        if stream is None:
            self._held.setdefault(request_id, []).append(text)
            return ""
        return stream.feed(text)
