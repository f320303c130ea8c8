"""The MCP servers whose tools Veronica offers: read from the file ``VICTORIA_MCP_CONFIG``.

The file has the shape Claude Desktop, Cursor and Claude Code use::

    {"mcpServers": {
        "time": {"command": "uvx", "args": ["mcp-server-time"]},
        "git": {"command": "mcp-server-git", "args": ["--repository", "/srv/repo"],
                "env": {"GIT_AUTHOR_NAME": "Victoria"}},
        "search": {"url": "https://mcp.example.com/mcp",
                   "headers": {"Authorization": "Bearer ${SEARCH_TOKEN}"}}
    }}

A server is a command run over stdio (``command``, ``args``, ``env``, ``cwd``) or a streamable-HTTP
endpoint (``url``, ``headers``). VS Code's top-level key ``servers`` is read as ``mcpServers``;
``"disabled": true`` leaves a server out; the other keys those clients write (``type``,
``autoApprove``, ...) are ignored, except an SSE ``type``, which is refused. A name is a subject
token (``[A-Za-z0-9_-]``, at most 40 characters): the model calls its tools ``mcp__<name>__<tool>``.

``${VAR}`` and ``${VAR:-default}`` in ``command``, ``args``, ``env``, ``cwd``, ``url`` and
``headers`` are replaced with Veronica's environment variable (as Claude Code and Cursor do; Claude
Desktop does not), when she starts the server (``expand``), so that a secret stays out of the file.
A variable that is not set, without a default, leaves that server down, saying which. Variables
named ``VICTORIA_*`` or ``NATS_*`` are never given to a server. A stdio server gets no other
variable of Veronica's environment than ``HOME``, ``LOGNAME``, ``PATH``, ``SHELL``, ``TERM``,
``USER`` (the MCP SDK's safe set) and those its ``env`` names.

Nothing here starts a server: this is the file and its rules (``actors/veronica/mcp.py`` runs them).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from victoria.runtime import urls

NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_VARIABLE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
NEVER: Final = ("VICTORIA_", "NATS_")
"""Prefixes of Veronica's variables a server never gets, even through ``${VAR}``."""


@dataclass(frozen=True, slots=True)
class McpServer:
    """One server of the file, as written (``${VAR}`` not replaced yet)."""

    name: str
    transport: Literal["stdio", "http"]
    command: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    cwd: str | None = None
    url: str = field(default="", repr=False)  # may hold a password: ``target`` is what is shown
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def target(self) -> str:
        """What ``/services`` shows: the command line, or the URL without a password, as written
        in the file (so a secret given as ``${VAR}`` is never shown)."""
        if self.transport == "stdio":
            return shlex.join((self.command, *self.args))
        return redact(self.url)


class UnsetVariable(ValueError):
    """A ``${VAR}`` of a server's entry names a variable that is not set and has no default."""

    def __init__(self, variable: str) -> None:
        super().__init__(f"${{{variable}}} is not set in Veronica's environment")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class Expanded:
    """A server's entry with its ``${VAR}`` replaced: what Veronica starts it with."""

    command: str
    args: list[str]
    env: dict[str, str]
    cwd: str | None
    url: str
    headers: dict[str, str]


def load_file(path: Path) -> tuple[McpServer, ...]:
    """The servers of the file, in its order; ``ValueError`` saying what is wrong and where."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not JSON: {exc}") from None
    return parse(data, str(path))


def parse(data: object, where: str = "the MCP config") -> tuple[McpServer, ...]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object with mcpServers")
    servers = data.get("mcpServers", data.get("servers"))
    if not isinstance(servers, dict):
        raise ValueError(f"{where}: expected an object mcpServers (name: server)")
    parsed = []
    for name, entry in servers.items():
        if not NAME.match(name):
            raise ValueError(
                f"{where}: server name {name!r} must be 1 to 40 letters, digits, '_' or '-' "
                "(the model calls its tools mcp__<name>__<tool>)"
            )
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: server {name}: expected an object")
        if entry.get("disabled") is True:
            continue
        parsed.append(_server(name, entry, f"{where}: server {name}"))
    return tuple(parsed)


def _server(name: str, entry: dict[str, Any], where: str) -> McpServer:
    kind = entry.get("type", entry.get("transport"))
    if kind == "sse":
        raise ValueError(f"{where}: the SSE transport is not supported; use streamable HTTP (url)")
    command, url = entry.get("command"), entry.get("url")
    if (command is None) == (url is None):
        raise ValueError(f"{where}: give either command (a stdio server) or url (an HTTP one)")
    if command is not None:
        if not isinstance(command, str) or not command.strip():
            raise ValueError(f"{where}: command must be a non-empty string")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ValueError(f"{where}: cwd must be a string")
        return McpServer(
            name,
            "stdio",
            command=command,
            args=tuple(_strings(entry.get("args", []), f"{where}: args")),
            env=_pairs(entry.get("env", {}), f"{where}: env"),
            cwd=cwd,
        )
    if not isinstance(url, str) or not re.match(r"^(https?://[^\s/]+|\$\{)", url):
        raise ValueError(f"{where}: url must be an http(s) URL")
    return McpServer(name, "http", url=url, headers=_pairs(entry.get("headers", {}), f"{where}: headers"))


def _strings(value: object, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}: expected a list of strings")
    return value


def _pairs(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{where}: expected an object of strings")
    return tuple(value.items())


def expand(server: McpServer, environ: Mapping[str, str]) -> Expanded:
    """The entry with each ``${VAR}`` replaced from ``environ``; ``UnsetVariable`` for one that is
    not set and has no default (a ``VICTORIA_*`` or ``NATS_*`` one is never set, here)."""

    def text(value: str) -> str:
        return _VARIABLE.sub(lambda found: _value(found, environ), value)

    return Expanded(
        command=text(server.command),
        args=[text(arg) for arg in server.args],
        env={key: text(value) for key, value in server.env},
        cwd=text(server.cwd) if server.cwd is not None else None,
        url=text(server.url),
        headers={key: text(value) for key, value in server.headers},
    )


def _value(found: re.Match[str], environ: Mapping[str, str]) -> str:
    name, default = found.group(1), found.group(2)
    value = None if name.startswith(NEVER) else environ.get(name)
    if value is not None:
        return value
    if default is not None:
        return default
    raise UnsetVariable(name)


def redact(url: str) -> str:
    """The URL without the password of its user part, if it has one (as it is, if it cannot be
    parsed: the file's checks said what they could of it)."""
    try:
        return urls.redact(url)
    except ValueError:
        return url
