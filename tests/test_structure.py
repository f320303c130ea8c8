"""The shape of the code: layers that only look down, one tool table, events that know their kind.

Read from the source with ``ast`` (nothing is run): each rule names the file and line that breaks it.
"""

from __future__ import annotations

import ast
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from victoria.events import contracts, subjects, tools

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("events", "runtime", "actors", "gateway")
ALLOWED: dict[str, tuple[str, ...]] = {
    "events": ("victoria.events",),
    "runtime": ("victoria.events", "victoria.runtime", "victoria.errors", "victoria"),
    "actors": ("victoria.events", "victoria.runtime", "victoria.actors", "victoria.errors", "victoria"),
    "gateway": ("victoria.events", "victoria.runtime", "victoria.gateway", "victoria.errors", "victoria"),
}
"""What each layer may import of ours. ``victoria`` alone is the package root (its version), and
``victoria.errors`` the error tree, which imports nothing of ours."""
THIRD_PARTY_IN_EVENTS = {"msgspec"}


def _sources(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def _ours(module: str) -> bool:
    return module == "victoria" or module.startswith("victoria.")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or (p != "victoria" and module.startswith(p + ".")) for p in prefixes)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    """So the gateway and the runtime never import an actor, and neither the runtime nor an actor
    imports the gateway."""
    broken = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _sources(layer)
        for line, module in _imports(path)
        if _ours(module) and not _within(module, ALLOWED[layer])
    ]
    assert broken == []


def test_the_events_import_only_the_standard_library_and_msgspec() -> None:
    broken = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in _sources("events")
        for line, module in _imports(path)
        if not _ours(module)
        and module.split(".")[0] not in sys.stdlib_module_names
        and module.split(".")[0] not in THIRD_PARTY_IN_EVENTS
        and module != "__future__"
    ]
    assert broken == []


def _string_constants(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_the_tool_names_are_written_in_one_source_file() -> None:
    names = set(tools.BY_NAME)
    holders = {
        str(path.relative_to(ROOT))
        for path in _sources(*LAYERS, "victoria", "bench")
        for _, text in _string_constants(path)
        if text in names or any(f'"{name}"' in text for name in names)
    }
    assert holders == {"events/tools.py"}


def test_every_tool_has_a_schema_from_its_argument_type_and_a_known_effect() -> None:
    for tool in (*tools.TOOLS, tools.FINISH):
        schema = tool.schema()
        assert schema["$ref"].endswith(tool.args.__name__)
        assert tool.effect in typing.get_args(tools.Effect)
        assert msgspec.convert(tool.example, tool.args) is not None  # the prompt's example is valid
    assert len({tool.name for tool in tools.TOOLS}) == len(tools.TOOLS)
    assert all(tools.by_op(tool.op) is tool for tool in tools.TOOLS if tool.op is not None)


def _task_event_classes() -> list[type[contracts.TaskEvent]]:
    return [t for t in typing.get_args(contracts.AnyTaskEvent)]


def test_every_task_event_knows_its_kind_and_no_two_share_one() -> None:
    kinds = [cls.kind for cls in _task_event_classes()]
    assert len(set(kinds)) == len(kinds)
    history = set(typing.get_args(subjects.TaskKind))
    assert {k for k in kinds if k not in subjects.RESULT_KINDS} == history
    assert {cls.kind for cls in contracts.RESULT_EVENTS} == set(subjects.RESULT_KINDS)


def test_every_match_over_events_ends_in_assert_never() -> None:
    """A ``match`` whose cases name event classes ends with ``case _: assert_never(...)``, so that a
    new event is never ignored in silence (mypy --strict checks the cases are complete)."""
    names = {cls.__name__ for cls in _task_event_classes()} | {
        cls.__name__ for cls in typing.get_args(contracts.AnyServiceEvent)
    }
    broken = []
    for path in _sources(*LAYERS, "victoria"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Match):
                continue
            named = {
                n.cls.id
                for case in node.cases
                for n in ast.walk(case.pattern)
                if isinstance(n, ast.MatchClass) and isinstance(n.cls, ast.Name)
            }
            if not named & names:
                continue
            last = node.cases[-1]
            ends = (
                isinstance(last.pattern, ast.MatchAs)
                and last.pattern.pattern is None
                and any(
                    isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "assert_never"
                    for n in ast.walk(last.body[0])
                )
            )
            if not ends:
                broken.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert broken == []


def test_the_routes_the_document_and_the_open_paths_come_from_one_table() -> None:
    from victoria.gateway import dashboard, openapi
    from victoria.gateway.routes import OPEN_PATHS, OPERATIONS

    # app.py lists no route of its own: it builds them from the table
    assert 'Route("/' not in (ROOT / "gateway" / "app.py").read_text(encoding="utf-8")
    assert {"/health", "/ready", *dashboard.PATHS} == OPEN_PATHS
    paths = openapi.document()["paths"]
    assert {(op.method.lower(), op.path) for op in OPERATIONS} == {
        (method, path) for path, item in paths.items() for method in item
    }
