"""The tool table: every tool the model may call, declared once.

Each ``Tool`` says its name, what it does (for the model), its argument type (a msgspec Struct, from
which its JSON Schema comes), its effect, whether it may run again after a crash, who executes it,
and (for Veronica's file tools) the operation of her files request. The agent's prompts, its reply
parser, Veronica's dispatch, the capabilities answer and the gateway read this table; no tool name
is written anywhere else in the source.

``finish`` is not a tool that runs: in the JSON-in-text protocol it is how the model gives its final
answer (``{"tool": "finish", "args": {"answer": "..."}}``), so it is declared here with the others
(``FINISH``) but is not in ``TOOLS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

Effect = Literal["read", "write", "execute", "external"]
"""What a call does to the world: ``read`` changes nothing; ``write`` changes files of the
workspace; ``execute`` runs a command; ``external`` reaches outside the system (MCP servers)."""
Executor = Literal["veronica", "victoria"]
FilesOp = Literal["list", "read"]
"""The operations of Veronica's files request (``FilesRequest.op``)."""


class ToolArgs(msgspec.Struct, kw_only=True, frozen=True):
    """Base of every tool's arguments."""


class ListDirectoryArgs(ToolArgs, kw_only=True, frozen=True):
    path: str = "."
    """A directory, relative to the workspace."""


class ReadFileArgs(ToolArgs, kw_only=True, frozen=True):
    path: str
    """A file, relative to the workspace."""


class FinishArgs(ToolArgs, kw_only=True, frozen=True):
    answer: str
    """The final answer for the user."""


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    args: type[ToolArgs]
    effect: Effect
    rerun: bool
    """It may simply run again when a crash left its outcome unknown (nothing it does can repeat)."""
    executor: Executor
    example: dict[str, Any]
    """Arguments shown to the model in the JSON-in-text protocol's step prompt."""
    op: FilesOp | None = None
    aliases: tuple[str, ...] = ()
    """Other names models use for it (``ls``, ``cat``), read as this tool."""
    arg_aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Other names models use for an argument: (argument, its other names)."""
    skill: tuple[str, str] = ("", "")
    """What it does to files, in English and in Russian, for the capabilities answer ("tools that
    list and read files", "инструменты просмотра и чтения файлов")."""

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(field.name for field in msgspec.structs.fields(self.args))

    def signature(self) -> str:
        """``read_file(path)``: how the plan prompt names it."""
        return f"{self.name}({', '.join(self.fields)})"

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of its arguments."""
        schema: dict[str, Any] = msgspec.json.schema(self.args)
        return schema

    def names_for(self, argument: str) -> tuple[str, ...]:
        """The argument's own name first, then the other names models use for it."""
        return (argument, *dict(self.arg_aliases).get(argument, ()))


LIST_DIRECTORY: Final = Tool(
    "list_directory",
    "List the entries of a directory of the workspace, with their kinds.",
    ListDirectoryArgs,
    "read",
    rerun=True,
    executor="veronica",
    example={"path": "."},
    op="list",
    aliases=("list_dir", "ls", "list_files"),
    skill=("list", "просмотра"),
)
READ_FILE: Final = Tool(
    "read_file",
    "Read a text file of the workspace.",
    ReadFileArgs,
    "read",
    rerun=True,
    executor="veronica",
    example={"path": "README.md"},
    op="read",
    aliases=("cat", "open_file"),
    arg_aliases=(("path", ("file", "value")),),
    skill=("read", "чтения"),
)
FINISH: Final = Tool(
    "finish",
    "Give the final answer for the user and end the task.",
    FinishArgs,
    "read",
    rerun=True,
    executor="victoria",
    example={"answer": "<the final answer for the user>"},
    aliases=("final", "answer", "final_answer", "done"),
    arg_aliases=(("answer", ("final", "final_answer", "output", "result")),),
)

TOOLS: Final[tuple[Tool, ...]] = (LIST_DIRECTORY, READ_FILE)
"""The tools that run, in the order the prompts name them."""
BY_NAME: Final[dict[str, Tool]] = {tool.name: tool for tool in (*TOOLS, FINISH)}
ANSWER_KEYS: Final = FINISH.names_for("answer")
"""The keys under which a model's reply holds its final answer: what the agent takes as the answer
and what ``/stream`` sends the words of while the reply is written."""


def lookup(name: str) -> Tool | None:
    """The tool a model means by ``name`` (its name or one of its aliases, any case)."""
    wanted = name.strip().lower()
    for tool in BY_NAME.values():
        if wanted == tool.name or wanted in tool.aliases:
            return tool
    return None


def by_op(op: str) -> Tool:
    """The file tool of one operation of Veronica's files request (``auto``, which no caller sends
    any more, lists)."""
    return next((tool for tool in TOOLS if tool.op == op), LIST_DIRECTORY)
