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

import ast
import functools
import inspect
import itertools
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from victoria.events import subjects
from victoria.events.contracts import McpServerState, McpToolInfo

Effect = Literal["read", "write", "execute", "external"]
"""What a call does to the world: ``read`` changes nothing; ``write`` changes files of the
workspace; ``execute`` runs a command; ``external`` reaches outside the system (MCP servers)."""
Executor = Literal["veronica", "victoria"]
BUILTIN: Final = "builtin"
"""The ``source`` of this table's own tools; an MCP server's are ``mcp:<server>``."""
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
    offset: int | None = None
    """The first line to show (1-based); with it or ``limit`` the lines are numbered."""
    limit: int | None = None
    """How many lines to show."""


class FindFilesArgs(ToolArgs, kw_only=True, frozen=True):
    pattern: str
    """A glob (``**`` for any folders), e.g. ``**/*.py``."""
    path: str = "."
    """The folder to look in."""


class GrepSearchArgs(ToolArgs, kw_only=True, frozen=True):
    pattern: str
    """A regular expression (Python's syntax)."""
    path: str = "."
    glob: str | None = None
    """Only files whose names match this glob."""
    max_results: int | None = None


class WriteFileArgs(ToolArgs, kw_only=True, frozen=True):
    path: str
    content: str
    """The whole new content of the file."""


class ApplyPatchArgs(ToolArgs, kw_only=True, frozen=True):
    patch: str
    """A unified diff: one or more files, new (``--- /dev/null``) and deleted (``+++ /dev/null``) ones."""


class RunCommandArgs(ToolArgs, kw_only=True, frozen=True):
    command: str
    """Shell text, run with /bin/sh -c in the sandbox."""
    cwd: str = "."
    """A folder of the workspace to run it in."""
    timeout_s: float | None = None
    """Seconds it may take (60 unless given; at most VICTORIA_COMMAND_MAX_S)."""


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
    """What it does, in English and in Russian, for the capabilities answer: a phrase that follows
    "my tools ... let me" ("read files", "читать файлы")."""
    source: str = BUILTIN
    """Where it comes from: ``builtin`` (this table), or ``mcp:<server>``."""
    input_schema: dict[str, Any] | None = None
    """An MCP tool's JSON Schema, as its server gives it (``args`` is then the empty base)."""
    server: str | None = None
    """An MCP tool's server, and (``remote``) the server's own name for it."""
    remote: str | None = None

    @property
    def fields(self) -> tuple[str, ...]:
        if self.input_schema is not None:
            return tuple(self.input_schema.get("properties", {}))
        return tuple(field.name for field in msgspec.structs.fields(self.args))

    def signature(self) -> str:
        """``read_file(path)``: how the plan prompt names it."""
        return f"{self.name}({', '.join(self.fields)})"

    def schema(self) -> dict[str, Any]:
        """The JSON Schema of its arguments."""
        if self.input_schema is not None:
            return self.input_schema
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
    skill=("list folders", "показывать папки"),
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
    skill=("read files", "читать файлы"),
)
FIND_FILES: Final = Tool(
    "find_files",
    "Find files of the workspace whose paths match a glob (ignoring .git and what .gitignore ignores).",
    FindFilesArgs,
    "read",
    rerun=True,
    executor="veronica",
    example={"pattern": "**/*.py"},
    aliases=("glob", "find"),
    skill=("find files by name", "искать файлы по имени"),
)
GREP_SEARCH: Final = Tool(
    "grep_search",
    "Search the workspace's files for a regular expression; returns path:line: text lines.",
    GrepSearchArgs,
    "read",
    rerun=True,
    executor="veronica",
    example={"pattern": "def main", "glob": "*.py"},
    aliases=("grep", "search", "rg"),
    arg_aliases=(("pattern", ("query", "regex")),),
    skill=("search the text of files", "искать по тексту файлов"),
)
WRITE_FILE: Final = Tool(
    "write_file",
    "Create or replace a file of the workspace with the given content.",
    WriteFileArgs,
    "write",
    rerun=False,
    executor="veronica",
    example={"path": "notes.txt", "content": "..."},
    aliases=("create_file", "save_file"),
    arg_aliases=(("path", ("file",)), ("content", ("text", "data"))),
    skill=("write files", "записывать файлы"),
)
APPLY_PATCH: Final = Tool(
    "apply_patch",
    "Apply a unified diff to files of the workspace, all of it or nothing.",
    ApplyPatchArgs,
    "write",
    rerun=False,
    executor="veronica",
    example={"patch": "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-old\n+new\n"},
    aliases=("patch", "edit_file"),
    arg_aliases=(("patch", ("diff",)),),
    skill=("apply patches", "применять патчи"),
)
RUN_COMMAND: Final = Tool(
    "run_command",
    "Run a shell command in the workspace, in a sandbox without network; returns its exit code, "
    "stdout and stderr.",
    RunCommandArgs,
    "execute",
    rerun=False,
    executor="veronica",
    example={"command": "pytest -q"},
    aliases=("shell", "bash", "run", "exec"),
    arg_aliases=(("command", ("cmd", "script")),),
    skill=("run commands in a sandbox", "запускать команды в песочнице"),
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

TOOLS: Final[tuple[Tool, ...]] = (
    LIST_DIRECTORY,
    READ_FILE,
    FIND_FILES,
    GREP_SEARCH,
    WRITE_FILE,
    APPLY_PATCH,
    RUN_COMMAND,
)
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
    return next((tool for tool in TOOLS if tool.op is not None and tool.op == op), LIST_DIRECTORY)


def from_mcp(server: str, info: McpToolInfo) -> Tool:
    """An MCP server's tool as a tool of the table: named ``mcp__<server>__<tool>``, its schema
    the server's, its effect from MCP's annotations (``readOnlyHint``: ``read``; otherwise
    ``external``, which the approvals can name). It may run again after a crash when it is
    read-only, or idempotent and not destructive; any other call follows the at-most-once rule."""
    return Tool(
        subjects.mcp_tool(server, info.name),
        info.description or f"{info.name}, a tool of the MCP server {server}",
        ToolArgs,
        "read" if info.read_only else "external",
        rerun=info.read_only or (info.idempotent and not info.destructive),
        executor="veronica",
        example={},
        source=f"mcp:{server}",
        input_schema=info.input_schema or {"type": "object", "properties": {}},
        server=server,
        remote=info.name,
    )


@dataclass(frozen=True, slots=True)
class Table:
    """The tools of one moment: ``TOOLS``, then the tools of the MCP servers that are up."""

    tools: tuple[Tool, ...] = TOOLS

    @classmethod
    def of(cls, servers: Iterable[McpServerState]) -> Table:
        """The table with the tools of ``servers`` that are up (one of each name: several instances
        of Veronica run the same servers)."""
        found: dict[str, Tool] = {}
        for state in servers:
            if state.status != "up":
                continue
            for info in state.tools:
                tool = from_mcp(state.server, info)
                found.setdefault(tool.name, tool)
        return cls((*TOOLS, *(found[name] for name in sorted(found))))

    def get(self, name: str) -> Tool | None:
        """The tool of exactly ``name`` (``finish`` too)."""
        return next((tool for tool in self.tools if tool.name == name), None) or (
            FINISH if name == FINISH.name else None
        )

    def lookup(self, name: str) -> Tool | None:
        """The tool a model means by ``name``: a builtin's name or alias (any case), or an MCP
        tool's exact name."""
        return lookup(name) or self.get(name.strip())

    def specs(self) -> list[dict[str, Any]]:
        """The table as the protocols' ``tools``: ``specs()``, made once, then the MCP servers'."""
        return [*specs(), *(_spec(tool) for tool in self.tools if tool.source != BUILTIN)]


BUILTINS: Final = Table()
"""The table without MCP servers."""


@functools.cache
def specs() -> list[dict[str, Any]]:
    """The tool table as the protocols' ``tools``: one OpenAI function spec per tool of ``TOOLS``
    (``{"type": "function", "function": {"name", "description", "parameters"}}``, which Ollama's
    ``/api/chat`` takes as it is), its parameters the JSON Schema of its arguments written out as
    one object (no ``$ref``, no titles; an optional argument is its type, not a union with null).
    ``finish`` is not among them: a reply without a tool call is the final answer. Made once;
    the list is shared, and not to be changed."""
    return [_spec(tool) for tool in TOOLS]


def _spec(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": _parameters(tool)},
    }


def _parameters(tool: Tool) -> dict[str, Any]:
    if tool.input_schema is not None:
        return tool.input_schema
    schema = tool.schema()
    body: dict[str, Any] = dict(schema.get("$defs", {}).get(tool.args.__name__, schema))
    body.pop("title", None)
    properties: dict[str, Any] = {}
    for name, prop in body.get("properties", {}).items():
        options = prop.get("anyOf")
        if isinstance(options, list):
            kept = [option for option in options if option != {"type": "null"}]
            if len(kept) == 1:
                prop = {**{k: v for k, v in prop.items() if k not in ("anyOf", "default")}, **kept[0]}
        said = _field_docs(tool.args).get(name)
        properties[name] = {**prop, "description": said} if said else prop
    return {"type": "object", "properties": properties, "required": list(body.get("required", []))}


@functools.cache
def _field_docs(args: type[ToolArgs]) -> dict[str, str]:
    """The docstrings under an argument class's fields (what the model is told of each argument);
    none when the source is not at hand (a build without it)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(args)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs: dict[str, str] = {}
    for field, doc in itertools.pairwise(body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split()).replace("``", "")
    return docs
