"""The answer's words out of a step reply as the model writes it. Pure code, no I/O.

A step reply is a JSON tool call; the one that finishes holds the answer under one of the keys the
tool table names for it (``victoria.events.tools.ANSWER_KEYS``, the keys the agent's reply parser
takes the answer from). ``POST /stream`` sends the old server's clients the answer's words as they
come (``chunk`` lines), not the JSON around them: ``AnswerStream`` is fed the model's text in the
pieces the runner publishes and returns, each time, the new characters of the answer's string,
with JSON escapes undone (an escape cut in two by a piece boundary waits for its end).
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


class AnswerStream:
    """One step reply's answer, read as the reply is written."""

    def __init__(self) -> None:
        self._seen = ""  # the reply so far, up to the opening quote of the answer
        self._inside = False
        self._closed = False
        self._pending = ""  # an escape not yet complete

    @property
    def started(self) -> bool:
        return self._inside or self._closed

    def feed(self, text: str) -> str:
        """The answer's new characters in ``text`` (empty when there are none yet, or any more)."""
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
