"""Routing without a model (actors/agent/classifier.py) and the capabilities answer."""

from __future__ import annotations

import re

import pytest

from victoria.actors.agent.capabilities import REGISTRY, answer
from victoria.actors.agent.classifier import Route, classify, files_route, language
from victoria.events.tools import TOOLS


def test_listing_the_project_root_in_english_is_a_files_list_with_limit_8() -> None:
    route = classify("List the files in the project root. Only names, up to 8.")
    assert route == Route("files", op="list", path=".", limit=8)


def test_listing_the_project_root_in_russian_is_a_files_list_with_limit_8() -> None:
    route = classify("Выведи список файлов в корне проекта. Только имена, до 8 штук.")
    assert route == Route("files", op="list", path=".", limit=8)


@pytest.mark.parametrize(
    "goal",
    [
        "Что ты умеешь? Ответь в двух коротких предложениях.",
        "What can you do?",
        "what could you offer",
        "Who are you?",
        "How can you help me?",
        "Кто ты?",
        "Какие у тебя возможности?",
    ],
)
def test_a_question_about_capabilities_is_routed_to_capabilities(goal: str) -> None:
    assert classify(goal).kind == "capabilities"


@pytest.mark.parametrize(
    ("goal", "path"),
    [
        ("Read the file README.md", "README.md"),
        ("Прочитай файл pyproject.toml", "pyproject.toml"),
        ("Open the file `docs/guide.md` please", "docs/guide.md"),
        ("Show me the contents of setup.cfg", "setup.cfg"),
        ("cat README.md", "README.md"),
        ("Открой «notes.txt»", "notes.txt"),
    ],
)
def test_asking_to_read_a_named_file_is_a_files_read(goal: str, path: str) -> None:
    assert classify(goal) == Route("files", op="read", path=path)


@pytest.mark.parametrize(
    ("goal", "path", "limit"),
    [
        ("List files in the directory src", "src", None),
        ("Покажи файлы в папке docs", "docs", None),
        ("What files are there?", ".", None),
        ("ls", ".", None),
        ("List the first 5 files", ".", 5),
        ("Перечисли первые 3 файла", ".", 3),
    ],
)
def test_asking_to_list_files_is_a_files_list(goal: str, path: str, limit: int | None) -> None:
    assert classify(goal) == Route("files", op="list", path=path, limit=limit)


@pytest.mark.parametrize(
    "goal",
    [
        "Write a haiku about the sea",
        "Summarise the history of Rome in three paragraphs",
        "Напиши стихотворение о море",
        "Объясни, как работает JetStream",
        "",
    ],
)
def test_a_general_goal_is_routed_to_the_agent(goal: str) -> None:
    assert classify(goal) == Route("agent")


def test_white_space_and_line_breaks_in_a_goal_do_not_change_the_route() -> None:
    assert classify("List   the files\n in the project root.\tOnly names,\n up to 8.") == Route(
        "files", op="list", path=".", limit=8
    )


def test_a_limit_of_zero_means_no_limit() -> None:
    assert classify("List the first 0 files").limit is None


def test_files_route_reads_a_named_file_when_the_classifier_did_not_see_a_file_request() -> None:
    assert files_route("README.md") == Route("files", op="read", path="README.md")


def test_files_route_lists_the_root_when_nothing_is_named() -> None:
    assert files_route("anything") == Route("files", op="list", path=".")


def test_files_route_keeps_a_files_route_from_the_classifier() -> None:
    assert files_route("List the first 4 files") == Route("files", op="list", path=".", limit=4)


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Что ты умеешь?", "ru"),
        ("Прочитай файл README.md", "ru"),
        ("What can you do?", "en"),
        ("README.md", "en"),
        ("", "en"),
        ("Ёлка", "ru"),
    ],
)
def test_language_is_russian_when_there_is_cyrillic_and_english_otherwise(text: str, lang: str) -> None:
    assert language(text) == lang


def _sentences(text: str) -> int:
    return len(re.findall(r"[.!?](?=\s|$)", text))


def test_the_russian_capabilities_answer_is_two_sentences_in_cyrillic() -> None:
    text = answer("ru")
    assert language(text) == "ru"
    assert len(re.findall(r"[\u0400-\u04FF]", text)) > len(text) // 3
    assert _sentences(text) == 2
    assert text.endswith(".")


def test_the_english_capabilities_answer_is_two_sentences_without_cyrillic() -> None:
    text = answer("en")
    assert language(text) == "en"
    assert _sentences(text) == 2
    assert text.endswith(".")


def test_the_answers_mention_the_registry_entries_they_are_built_from() -> None:
    assert REGISTRY[0].en in answer("en")
    assert REGISTRY[1].en in answer("en")
    assert REGISTRY[0].ru in answer("ru")
    assert REGISTRY[1].ru in answer("ru")


def test_the_answers_name_every_tool_of_the_table_and_what_it_does() -> None:
    for tool in TOOLS:
        assert tool.name in answer("en") and tool.name in answer("ru")
        assert tool.skill[0] in answer("en") and tool.skill[1] in answer("ru")
