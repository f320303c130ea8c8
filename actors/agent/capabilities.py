"""The registry of what the system can do. Questions about it are answered from here, no model call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal


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


def answer(lang: Literal["ru", "en"]) -> str:
    """Two short sentences, in the language of the question."""
    if lang == "ru":
        return (
            "Я Victoria: умею "
            + REGISTRY[0].ru
            + " с инструментами просмотра и чтения файлов, а также "
            + REGISTRY[1].ru
            + ". Каждая задача хранится в журнале событий, поэтому переживает сбои и перезапуски."
        )
    return (
        "I am Victoria: I "
        + REGISTRY[0].en
        + " with tools that list and read files, and I "
        + REGISTRY[1].en
        + ". Every task is kept in an event log, so it survives crashes and restarts."
    )
