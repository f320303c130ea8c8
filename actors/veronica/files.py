"""Veronica's tools: list a directory, read a file, never outside the workspace.

A path is resolved (symlinks followed) and must stay inside the resolved workspace; ``..``,
absolute paths and links that point out are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from victoria.errors import OutsideWorkspace, ToolError

MAX_LIST: Final = 200  # entries
MAX_READ_BYTES: Final = 64 * 1024


def resolve_inside(workspace: Path, relative: str) -> Path:
    root = workspace.resolve()
    text = (relative or ".").strip() or "."
    if "\x00" in text:
        raise ToolError("path contains a NUL byte")
    candidate = Path(text)
    if candidate.is_absolute() or text.startswith("~"):
        raise OutsideWorkspace(
            f"{relative!r}: absolute paths are not allowed; give a path inside the workspace"
        )
    try:
        resolved = (root / candidate).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop raises RuntimeError on Python 3.11
        raise ToolError(f"{relative!r} cannot be resolved: {exc}") from None
    if resolved != root and root not in resolved.parents:
        raise OutsideWorkspace(f"{relative!r} is outside the workspace")
    return resolved


def list_directory(workspace: Path, relative: str = ".", limit: int | None = None) -> list[str]:
    path = resolve_inside(workspace, relative)
    if not path.is_dir():
        raise ToolError(f"{relative!r} is not a directory")
    root = workspace.resolve()
    names: list[str] = []
    with os.scandir(path) as it:
        for entry in it:
            # A link that leads out of the workspace is not shown at all.
            try:
                target = Path(entry.path).resolve()
            except (OSError, RuntimeError):  # broken or looping link: leave it out
                continue
            if target != root and root not in target.parents:
                continue
            names.append(entry.name + ("/" if entry.is_dir() else ""))
    names.sort(key=lambda n: (n.lower(), n))
    cap = min(limit, MAX_LIST) if limit is not None and limit > 0 else MAX_LIST
    return names[:cap]


def read_file(workspace: Path, relative: str, max_bytes: int = MAX_READ_BYTES) -> str:
    path = resolve_inside(workspace, relative)
    if not path.is_file():
        raise ToolError(f"{relative!r} is not a file")
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    text = data[:max_bytes].decode("utf-8", errors="replace")
    if len(data) > max_bytes:
        text += f"\n[truncated at {max_bytes} bytes]"
    return text
