"""The registry of what the system can do. Questions about it are answered from here, no model call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from victoria.events.tools import TOOLS


@dataclass(frozen=True, slots=True)
class Capability:
    name: str
    en: str
    ru: str


REGISTRY: Final = (
    Capability(
        "agent",
        "plan a goal with a language model and carry it out step by step",
        "планировать задачу с языковой моделью и выполнять её по шагам",
    ),
    Capability(
        "files",
        "list and read the files of the workspace (delegated to the helper agent Veronica)",
        "показывать и читать файлы рабочей папки (это поручается помощнице Veronica)",
    ),
    Capability(
        "durability",
        "keep every task in an event log, so that it survives crashes and restarts",
        "хранить каждую задачу в журнале событий, чтобы она переживала сбои и перезапуски",
    ),
)


def _both(words: list[str], conjunction: str) -> str:
    return f" {conjunction} ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def answer(lang: Literal["ru", "en"]) -> str:
    """Two short sentences, in the language of the question; the tools are exactly those of the
    table, by name and by what they do."""
    names = ", ".join(tool.name for tool in TOOLS)
    if lang == "ru":
        return (
            f"Я Victoria: умею {REGISTRY[0].ru}; мои инструменты ({names}) позволяют "
            + _both([tool.skill[1] for tool in TOOLS], "и")
            + f", а также {REGISTRY[1].ru}. "
            + "Каждая задача хранится в журнале событий, поэтому переживает сбои и перезапуски."
        )
    return (
        f"I am Victoria: I {REGISTRY[0].en}; my tools ({names}) let me "
        + _both([tool.skill[0] for tool in TOOLS], "and")
        + f", and I {REGISTRY[1].en}. "
        + "Every task is kept in an event log, so it survives crashes and restarts."
    )
