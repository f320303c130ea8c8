"""Veronica's tools: list a directory, read a file, never outside the task's workspace.

These are the only file tools of the system (``victoria.events.tools`` declares them). Victoria's
agent has none of her own: her file tools (and a ``files`` task) are requests to Veronica on
``victoria.rpc.veronica.files``, answered with these functions, so the same rules hold whichever
actor the model's tool call comes through. A refusal is a ``ToolError`` (``OutsideWorkspace`` when
the path leads out) whose text is the note the model gets as the tool's result.

Paths
    Relative to the workspace, with ``/`` between names. Refused: absolute and ``~`` paths, Windows
    drive and network paths (``C:\\x``, ``\\\\host\\share``), backslashes, NUL bytes, paths longer
    than ``MAX_PATH_CHARS`` or with a name longer than ``MAX_NAME_BYTES``, and any path that leads
    out of the workspace, by ``..`` or through a symbolic link in any of its components. Links that
    stay inside are followed. A workspace that is missing or is not a directory is named in the
    error.
What is read
    Regular files only. Directories, device files, named pipes and sockets are refused, e.g.
    ``refused: 'zero' is a character device file, not a regular file``, and are never read from.
    At most ``MAX_READ_BYTES`` of a file are shown (a file is never read whole into memory). Text
    is UTF-8; bytes that are not are shown as U+FFFD.
Line numbers
    With ``offset`` (the first line, from 1) or ``limit`` (how many lines), or when the file has more
    than ``MAX_READ_BYTES``, lines are numbered as ``cat -n`` numbers them (the number right-aligned
    in 6 columns, a tab, the line without its ``\\n`` or ``\\r\\n``), whole lines only, as many as fit
    in ``MAX_READ_BYTES`` of text. When the rest did not fit, the text starts with a line
    ``[truncated: the file has N bytes; only lines 1-812 are shown; read on with offset=813]``; a
    line longer than that is shown alone, cut (``only line 7 is shown, cut at 65536 bytes``). At
    most ``MAX_SEEK_BYTES`` are read past to reach an offset; an offset past the last line is a
    note saying how many lines there are.
Binary files
    A file whose first ``BINARY_SAMPLE`` bytes hold a NUL byte, or in which more than a tenth of the
    characters (and at least ``MIN_UNDECODABLE``) are not UTF-8, is binary: the result says so, with
    its size, its kind when its first bytes tell (PNG image, ZIP archive, ...) and its first 16 bytes
    in hex, and gives no content. That is a successful result, not an error: the file was looked at.
Listings
    Names sorted case-insensitively, directories with a trailing ``/``. Links that lead out of the
    workspace are left out. At most ``MAX_LIST`` names; when more were there the text starts with a
    line ``[200 of 1234 entries shown; 1034 left out ...]`` (a smaller ``limit`` the caller asked
    for cuts the names without a note). At most ``MAX_SCAN`` entries are looked at. Names that are
    not UTF-8 or hold control characters are shown with U+FFFD.

A note of a cut comes first, so that it survives any later cut of the text: the agent shows the
model the first ``OBSERVATION_CHARS`` of a result (``actors/agent/workflow.py``).
Races
    After the path is resolved and checked, it is opened again one name at a time from the
    workspace's own directory (``openat`` with ``O_NOFOLLOW``), each name checked with ``lstat``
    before it is opened and the opened file checked with ``fstat`` after. Files are opened with
    ``O_NONBLOCK`` and ``O_NOCTTY``. So a name swapped for a link, a device or a pipe between the
    check and the open is refused, never followed, read or waited on.
"""

from __future__ import annotations

import codecs
import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from victoria.errors import OutsideWorkspace, ToolError
from victoria.events.tools import LIST_DIRECTORY

MAX_LIST: Final = 200  # entries in a listing
MAX_SCAN: Final = 100_000  # entries of a directory looked at, at most
MAX_READ_BYTES: Final = 64 * 1024  # bytes of a file read, at most
MAX_SEEK_BYTES: Final = 256 * 1024 * 1024  # bytes of a file read past to reach an offset, at most
MAX_PATH_CHARS: Final = 1024  # characters in a requested path
MAX_NAME_BYTES: Final = 255  # bytes in one name of a path (NAME_MAX)
BINARY_SAMPLE: Final = 8 * 1024  # bytes looked at to tell a binary file
MIN_UNDECODABLE: Final = 8  # characters that are not UTF-8 before the share of them counts

_DRIVE: Final = re.compile(r"[A-Za-z]:(?:[\\/]|$)")
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF8", "GIF image"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\xfd7zXZ\x00", "xz archive"),
    (b"BZh", "bzip2 archive"),
    (b"\x7fELF", "ELF executable"),
    (b"SQLite format 3\x00", "SQLite database"),
)


@dataclass(frozen=True, slots=True)
class Listing:
    """A directory's names, as many as shown, and how many there were."""

    names: list[str]
    total: int
    """Entries in the directory (links out of the workspace not counted), up to ``MAX_SCAN``."""
    complete: bool = True
    """False when the directory had more than ``MAX_SCAN`` entries and the rest were not counted."""
    noted: bool = True
    """Whether a cut is noted: not when the caller's own ``limit`` made it."""

    @property
    def note(self) -> str:
        left = self.total - len(self.names)
        if not self.noted or (left <= 0 and self.complete):
            return ""
        if not self.complete:
            return (
                f"[{len(self.names)} of more than {self.total} entries shown; the rest are left out. "
                "List a subdirectory, or read a file by its name.]"
            )
        return (
            f"[{len(self.names)} of {self.total} entries shown; {left} left out. "
            "List a subdirectory, or read a file by its name.]"
        )

    def text(self) -> str:
        """The tool's result: the note if the listing was cut, then one name a line."""
        return "\n".join([self.note, *self.names] if self.note else self.names)


def resolve_inside(workspace: Path, relative: str) -> Path:
    """The real path (links resolved) that ``relative`` names inside ``workspace``."""
    return _resolve(_root(workspace), relative)


def list_directory(workspace: Path, relative: str = ".", limit: int | None = None) -> list[str]:
    return scan_directory(workspace, relative, limit).names


def scan_directory(workspace: Path, relative: str = ".", limit: int | None = None) -> Listing:
    """The names in a directory of the workspace; ``limit`` (at most ``MAX_LIST``) caps them."""
    root = _root(workspace)
    path = _resolve(root, relative)
    fd = _open(root, path, relative, directory=True)
    names: list[str] = []
    complete = True
    try:
        with os.scandir(fd) as it:
            for entry in it:
                if len(names) >= MAX_SCAN:
                    complete = False
                    break
                if entry.is_symlink() and not _inside(root, _real(path / entry.name)):
                    continue  # a link that leads out of the workspace is not shown at all
                try:
                    is_dir = entry.is_dir()
                except OSError:
                    is_dir = False
                names.append(_shown(entry.name) + ("/" if is_dir else ""))
    finally:
        os.close(fd)
    names.sort(key=lambda n: (n.lower(), n))
    asked = limit if limit is not None and 0 < limit < MAX_LIST else None
    return Listing(names[: asked or MAX_LIST], len(names), complete, noted=asked is None)


def read_file(
    workspace: Path,
    relative: str,
    max_bytes: int = MAX_READ_BYTES,
    *,
    offset: int | None = None,
    limit: int | None = None,
) -> str:
    """The text of a regular file of the workspace, its first ``max_bytes`` at most, or a note
    saying that it is binary. With ``offset`` (first line, from 1) or ``limit`` (lines), or when the
    file has more than ``max_bytes``, its lines numbered (``cat -n``), starting at ``offset``."""
    first = _line_number("offset", offset)
    count = _line_number("limit", limit)
    root = _root(workspace)
    path = _resolve(root, relative)
    fd = _open(root, path, relative, directory=False)
    try:
        size = os.fstat(fd).st_size
        data = _read_at_most(fd, max_bytes + 1)
        total = max(size, len(data))
        if _is_binary(data[:BINARY_SAMPLE]):
            return _binary_note(relative, data, total)
        if offset is None and limit is None and len(data) <= max_bytes:
            return data.decode("utf-8", "replace")
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", buffering=1 << 16, closefd=False) as reader:
            return _numbered(reader, relative, total, first or 1, count, max_bytes)
    except OSError as exc:
        raise ToolError(f"{relative!r} cannot be read: {_reason(exc)}") from None
    finally:
        os.close(fd)


def _line_number(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ToolError(f"{name} must be a whole number of lines, 1 or more (not {value!r})")
    return value


def _numbered(
    reader: BinaryIO, relative: str, total: int, first: int, count: int | None, max_bytes: int
) -> str:
    """Lines ``first`` on (``count`` of them at most) as ``cat -n`` shows them, whole lines only,
    as many as fit in ``max_bytes`` of text; a note first when the rest did not fit."""
    shown: list[str] = []
    used = 0
    number = 0
    while count is None or len(shown) < count:
        if number + 1 < first:
            if not _skip_line(reader, relative, first):
                break
            number += 1
            continue
        line = reader.readline(max_bytes + 1)
        if not line:
            break
        number += 1
        long = len(line) > max_bytes
        body = line[:max_bytes] if long else line.removesuffix(b"\n").removesuffix(b"\r")
        # A multi-byte character cut at the end of a long line is left out, not shown as U+FFFD.
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(body, final=not long)
        entry = f"{number:6d}\t{text}"
        cost = len(entry.encode()) + 1
        if shown and used + cost > max_bytes:
            return _cut_note(total, first, number - 1) + "\n" + "\n".join(shown)
        shown.append(entry)
        used += cost
        if long:  # it filled the text alone: the next read starts after it
            return _cut_note(total, first, number, cut=max_bytes) + "\n" + "\n".join(shown)
    if number < first:
        lines = "1 line" if number == 1 else f"{number} lines"
        return f"[{relative!r} has {lines}; offset={first} is past its end]"
    return "\n".join(shown)


def _skip_line(reader: BinaryIO, relative: str, first: int) -> bool:
    """Reads past one line: False at the end of the file."""
    chunk = b""
    while True:
        if reader.tell() > MAX_SEEK_BYTES:
            raise ToolError(
                f"offset={first} is too far into {relative!r}: at most the first {MAX_SEEK_BYTES} bytes "
                "are read past to reach an offset"
            )
        part = reader.readline(1 << 16)
        if not part:
            return bool(chunk)
        chunk = part
        if part.endswith(b"\n"):
            return True


def _cut_note(total: int, first: int, last: int, *, cut: int = 0) -> str:
    lines = f"line {last} is" if first == last else f"lines {first}-{last} are"
    cut_at = f", cut at {cut} bytes" if cut else ""
    return (
        f"[truncated: the file has {total} bytes; only {lines} shown{cut_at}; read on with offset={last + 1}]"
    )


# --- checks ----------------------------------------------------------------------------------------


def _root(workspace: Path) -> Path:
    where = str(workspace)
    try:
        root = workspace.resolve(strict=True)
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise ToolError(f"the workspace {where!r} does not exist") from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise ToolError(f"the workspace {where!r} cannot be opened: {_reason(exc)}") from None
    if not stat.S_ISDIR(mode):
        raise ToolError(f"the workspace {where!r} is not a directory")
    return root


def _checked(relative: str) -> str:
    """The path as asked, stripped, or a refusal saying what is wrong with its text."""
    text = (relative or ".").strip() or "."
    if "\x00" in text:
        raise ToolError("path contains a NUL byte")
    if len(text) > MAX_PATH_CHARS:
        raise ToolError(f"path is too long ({len(text)} characters; at most {MAX_PATH_CHARS})")
    if _DRIVE.match(text) or text.startswith("\\"):
        raise OutsideWorkspace(
            f"refused: {relative!r} is a Windows drive or network path; "
            "give a path relative to the workspace, with '/' between names"
        )
    if Path(text).is_absolute() or text.startswith("~"):
        raise OutsideWorkspace(
            f"refused: {relative!r} is an absolute path; give a path relative to the workspace"
        )
    if "\\" in text:
        raise ToolError(f"{relative!r} contains a backslash: separate names with '/', as in 'docs/guide.md'")
    for name in text.split("/"):
        if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
            raise ToolError(f"{relative!r} has a name longer than {MAX_NAME_BYTES} bytes")
    return text


def _resolve(root: Path, relative: str) -> Path:
    text = _checked(relative)
    try:
        resolved = (root / text).resolve()
    except RuntimeError:  # Python 3.11 says so of a symlink loop
        raise ToolError(f"{relative!r} cannot be resolved: a symbolic link loop") from None
    except (OSError, ValueError) as exc:
        raise ToolError(f"{relative!r} cannot be resolved: {_reason(exc)}") from None
    if not _inside(root, resolved):
        if _inside(root, Path(os.path.normpath(root / text))):
            raise OutsideWorkspace(
                f"refused: {relative!r} is outside the workspace (a symbolic link on the way leads out)"
            )
        raise OutsideWorkspace(f"refused: {relative!r} is outside the workspace")
    return resolved


def _open(root: Path, path: Path, relative: str, *, directory: bool) -> int:
    """``path`` (resolved, inside ``root``) opened one name at a time from ``root``, following no
    link: an open descriptor of a directory or of a regular file, as asked."""
    parts = path.relative_to(root).parts
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ToolError(f"the workspace cannot be opened: {_reason(exc)}") from None
    try:
        before: os.stat_result | None = None
        for n, name in enumerate(parts):
            last = n == len(parts) - 1
            try:
                before = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise ToolError(f"{relative!r} does not exist in the workspace") from None
            if stat.S_ISLNK(before.st_mode):
                raise ToolError(f"{relative!r} changed while it was being opened; try again")
            if not last and not stat.S_ISDIR(before.st_mode):
                shown = "/".join(parts[: n + 1])
                raise ToolError(f"{relative!r} does not exist: {shown!r} is not a directory")
            if last:
                _refuse_kind(relative, before.st_mode, directory=directory)
            flags = _OPEN_FLAGS | (os.O_DIRECTORY if directory or not last else 0)
            next_fd = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        after = os.fstat(fd)
        _refuse_kind(relative, after.st_mode, directory=directory)
        if before is not None and (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
            raise ToolError(f"{relative!r} changed while it was being opened; try again")
        return fd
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link swapped in
            raise ToolError(f"{relative!r} changed while it was being opened; try again") from None
        raise ToolError(f"{relative!r} cannot be opened: {_reason(exc)}") from None
    except BaseException:
        os.close(fd)
        raise


def _refuse_kind(relative: str, mode: int, *, directory: bool) -> None:
    if directory:
        if not stat.S_ISDIR(mode):
            raise ToolError(f"{relative!r} is not a directory (it is {_kind(mode)}); read it instead")
        return
    if stat.S_ISDIR(mode):
        raise ToolError(f"{relative!r} is a directory, not a file: list it with {LIST_DIRECTORY.name}")
    if not stat.S_ISREG(mode):
        raise ToolError(f"refused: {relative!r} is {_kind(mode)}, not a regular file")


_KINDS: Final = (
    (stat.S_ISREG, "a regular file"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device file"),
    (stat.S_ISBLK, "a block device file"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def _inside(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop: it leads nowhere, so treat it as out
        return Path("/")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


# --- content ---------------------------------------------------------------------------------------


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _is_binary(sample: bytes) -> bool:
    if b"\x00" in sample:
        return True
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(sample, final=False)
    bad = text.count("\ufffd")
    return bad >= MIN_UNDECODABLE and bad * 10 > len(text)


def _binary_note(relative: str, data: bytes, total: int) -> str:
    kind = next((f" ({name})" for magic, name in _MAGIC if data.startswith(magic)), "")
    head = data[:16].hex(" ")
    return (
        f"{relative!r} is a binary file{kind} of {total} bytes; its content is not shown. "
        f"First {min(16, len(data))} bytes: {head}"
    )


def _shown(name: str) -> str:
    """A name as text that can go on the bus: bytes that are not UTF-8 and control characters as
    U+FFFD (a newline in a name would otherwise pass for two entries)."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join("\ufffd" if ord(c) < 32 or ord(c) == 127 else c for c in text)
