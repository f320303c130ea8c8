"""What a goal asks for, without a model call, in English or Russian: pure code.

``classify`` answers one of three routes: ``capabilities`` (what can the system do: answered from
its registry), ``files`` (list a directory or read a file: delegated to Veronica) or ``agent``
(everything else: understand, plan, run steps with the model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

RouteKind = Literal["capabilities", "files", "agent", "plan"]


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    op: Literal["list", "read"] = "list"
    path: str = "."
    limit: int | None = None


_CYRILLIC: Final = re.compile(r"[\u0400-\u04FF]")

_CAPABILITIES: Final = re.compile(
    r"what\s+(can|could|do)\s+you\s+(do|offer)|what\s+are\s+you\s+(able|capable)|your\s+(capabilities|skills)"
    r"|what\s+(are\s+)?your\s+abilities|how\s+can\s+you\s+help|who\s+are\s+you"
    r"|что\s+ты\s+(умеешь|можешь)|что\s+(вы\s+)?умеете|что\s+умеешь|тво[иё]\s+(возможност|умени|навык)"
    r"|какие\s+у\s+тебя\s+(возможност|умени|навык)|чем\s+ты\s+(можешь\s+)?помо|кто\s+ты",
    re.IGNORECASE,
)

_LIST: Final = re.compile(
    r"\blist\b.*\b(files?|director(y|ies)|folders?|contents?)\b|\b(show|give|print|tell)\b.*\bfiles\b"
    r"|\bwhat\s+files\b|\bwhich\s+files\b|^\s*ls\b|\bfiles\s+in\b"
    r"|спис(ок|ке)\s+файл|(выведи|покажи|перечисли|назови|дай)\b.*\bфайл|какие\s+(есть\s+)?файлы"
    r"|содержимое\s+(папки|директории|каталога)|файлы\s+в\b",
    re.IGNORECASE,
)

_READ: Final = re.compile(
    r"\b(read|open|cat|print|show)\b.*\b(file|contents?|content)\b|\bcontents?\s+of\b|^\s*cat\s+\S"
    r"|(прочитай|прочти|открой|покажи\s+содержимое|выведи\s+содержимое)\b",
    re.IGNORECASE,
)

_LIMIT: Final = re.compile(
    r"(?:up\s+to|at\s+most|no\s+more\s+than|max(?:imum)?|first|top|only|до|не\s+более|не\s+больше"
    r"|максимум|первые|только)\s+(\d{1,4})"
    r"|(\d{1,4})\s+(?:files|names|items|entries|штук|файл\w*|имён|имен|шт\.?)",
    re.IGNORECASE,
)

_FILENAME: Final = re.compile(r"[`'\"«]([^`'\"»\s]+)[`'\"»]|((?:[\w.-]+/)*[\w-]+\.[A-Za-z0-9]{1,8})\b")
_DIR: Final = re.compile(
    r"\b(?:in|of|inside|under)\s+(?:the\s+)?(?:directory|folder|dir)\s+[`'\"«]?([\w./-]+)"
    r"|(?:в|из)\s+(?:папке|папки|директории|каталоге|каталога)\s+[`'\"«]?([\w./-]+)",
    re.IGNORECASE,
)


def language(text: str) -> Literal["ru", "en"]:
    return "ru" if _CYRILLIC.search(text) else "en"


def classify(goal: str) -> Route:
    text = " ".join(goal.split())
    if _CAPABILITIES.search(text):
        return Route("capabilities")
    if _READ.search(text):
        name = _filename(text)
        if name is not None:
            return Route("files", op="read", path=name)
    if _LIST.search(text):
        return Route("files", op="list", path=_directory(text), limit=_limit(text))
    return Route("agent")


def files_route(goal: str) -> Route:
    """The file operation a goal asks for, when the client chose ``task_type: files``."""
    route = classify(goal)
    if route.kind == "files":
        return route
    name = _filename(goal)
    if name is not None:
        return Route("files", op="read", path=name)
    return Route("files", op="list", path=_directory(goal), limit=_limit(goal))


def _limit(text: str) -> int | None:
    match = _LIMIT.search(text)
    if not match:
        return None
    value = int(match.group(1) or match.group(2))
    return value if value > 0 else None


def _directory(text: str) -> str:
    match = _DIR.search(text)
    if match:
        path = (match.group(1) or match.group(2) or ".").rstrip(".,;:!?")
        return path or "."
    return "."


def _filename(text: str) -> str | None:
    for match in _FILENAME.finditer(text):
        name = match.group(1) or match.group(2)
        if name and not name.endswith("."):
            return name
    return None
