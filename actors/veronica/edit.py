"""Veronica's writes: ``write_file``, and the atomic replace that ``apply_patch`` shares.

Paths are checked as for reading (``files.py``: relative, never out by ``..`` or through a link
in any component); and then:

What is written
    A regular file, created or replaced whole, with at most ``MAX_WRITE_BYTES`` of UTF-8 text. Not
    the workspace itself, not a directory or a special file, and nothing inside ``.git`` (git runs
    its hooks and reads its config outside any sandbox; the command sandbox keeps them read-only
    for the same reason). A link inside the workspace is written through: the file it names gets
    the content and the link stays.
Folders
    Missing parent folders are made, one name at a time from the workspace's own directory
    (``mkdir`` and ``openat`` with ``O_NOFOLLOW``), so that a name swapped for a link between the
    check and the write is refused, never followed.
Atomic
    The content goes to a temporary file in the same folder (``.victoria-write-<random>.tmp``,
    created with ``O_EXCL | O_NOFOLLOW``), which is fsynced and then renamed over the file with
    ``os.replace``; the folder is fsynced after. A reader sees the old file or the new one, never
    a part. A file replaced keeps its permission bits. A crash before the rename can leave the
    temporary file behind; never a half-written file under the real name.
Hashes
    Each write says the sha256 of the file's content before (``None`` when there was no file) and
    after, so that a caller can tell what it replaced and a later edit can check nothing else did.
    A write is computed first (``prepare_write``: the hash of the file it replaces, the hash of
    what it writes) and written after (``PreparedWrite.write``); right before its rename it checks
    that the file still has the hash it was computed from. A file somebody else wrote in between
    is a conflict (``conflict``), and is not overwritten.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from victoria.actors.veronica.files import (
    _OPEN_FLAGS,
    BINARY_SAMPLE,
    _is_binary,
    _kind,
    _reason,
    _resolve,
    _root,
    _shown,
)
from victoria.errors import ToolError

MAX_WRITE_BYTES: Final = 4 * 1024 * 1024  # bytes a written or patched file may have, at most
TEMP_PREFIX: Final = ".victoria-write-"  # name of a temporary file, before its random part
GIT_DIR: Final = ".git"
CONFLICT: Final = "changed by someone else since the call was made; not overwritten"

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class WriteOutcome:
    """What ``write_file`` did."""

    path: str
    """The file, relative to the workspace (links on the way resolved)."""
    bytes: int
    """Bytes written: the file's size now."""
    before_sha256: str | None
    """The sha256 of the content it replaced, or None when there was no file."""
    after_sha256: str

    def text(self) -> str:
        """The tool's result, as the model reads it."""
        done = "created" if self.before_sha256 is None else "replaced"
        return f"wrote {self.bytes} bytes to {self.path!r} ({done}; sha256 {self.after_sha256})"


@dataclass(frozen=True, slots=True)
class Target:
    """A file of the workspace to write, checked: its names from the workspace's directory."""

    root: Path
    parts: tuple[str, ...]
    asked: str
    """The path as the caller gave it, for messages."""

    @property
    def path(self) -> str:
        return "/".join(_shown(name) for name in self.parts)

    @property
    def name(self) -> str:
        return self.parts[-1]


@dataclass(frozen=True, slots=True)
class Existing:
    """A regular file as it was found."""

    sha256: str
    mode: int
    """Its permission bits."""
    data: bytes | None = None
    """Its content, when it was asked for."""


class Unchecked(enum.Enum):
    """``replace_atomically`` without a check of what it replaces."""

    ANY = "any"


ANY: Final = Unchecked.ANY


@dataclass(frozen=True, slots=True)
class PreparedWrite:
    """A ``write_file`` computed and not written yet: the file, what it holds now, what it gets."""

    target: Target
    data: bytes
    before: Existing | None
    """The file as it was found (None: there was none)."""

    @property
    def before_sha256(self) -> str | None:
        return self.before.sha256 if self.before else None

    @property
    def after_sha256(self) -> str:
        return sha256(self.data)

    def write(self) -> WriteOutcome:
        """Write it, making missing folders; a ``conflict`` when the file no longer has the hash
        it had when the write was computed (checked right before the rename)."""
        with folder(self.target, create=True) as fd:
            assert fd is not None  # made when missing
            replace_atomically(
                fd,
                self.target,
                self.data,
                mode=self.before.mode if self.before else None,
                expect=self.before_sha256,
            )
        return WriteOutcome(self.target.path, len(self.data), self.before_sha256, self.after_sha256)


def prepare_write(workspace: Path, relative: str, content: str) -> PreparedWrite:
    """``write_file``'s checks and hashes, with nothing written: the file ``relative`` as it is
    now and ``content`` as UTF-8."""
    data = encoded(relative, content)
    target = target_of(_root(workspace), relative)
    with folder(target, create=False) as fd:
        before = None if fd is None else read_existing(fd, target, content=False)
    return PreparedWrite(target, data, before)


def write_file(workspace: Path, relative: str, content: str) -> WriteOutcome:
    """Create or replace a file of the workspace with ``content`` (UTF-8), atomically, making its
    missing parent folders."""
    return prepare_write(workspace, relative, content).write()


def current_sha256(workspace: Path, relative: str) -> str | None:
    """The sha256 of the file ``relative`` of the workspace now, or None when there is none (the
    checks of every write: a folder, a link out or a special file there is a ``ToolError``)."""
    target = target_of(_root(workspace), relative)
    with folder(target, create=False) as fd:
        found = None if fd is None else read_existing(fd, target, content=False)
    return found.sha256 if found else None


def conflict(path: str) -> ToolError:
    """The error of a write whose file somebody else changed since the write was computed."""
    return ToolError(f"{path!r} was {CONFLICT}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoded(relative: str, content: str) -> bytes:
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ToolError(f"the content for {relative!r} is not valid text: {exc.reason}") from None
    if len(data) > MAX_WRITE_BYTES:
        raise ToolError(
            f"the content for {relative!r} has {len(data)} bytes; a file tool writes at most {MAX_WRITE_BYTES}"
        )
    return data


def target_of(root: Path, relative: str) -> Target:
    """The file ``relative`` names, checked as every path of the file tools is, and writable."""
    path = _resolve(root, relative)
    parts = path.relative_to(root).parts
    if not parts:
        raise ToolError(f"{relative!r} is the workspace itself, not a file")
    if GIT_DIR in parts:
        raise ToolError(
            f"refused: {relative!r} is inside {GIT_DIR}; the file tools do not write git's own files"
        )
    return Target(root, parts, relative)


@contextlib.contextmanager
def folder(target: Target, *, create: bool) -> Iterator[int | None]:
    """The open folder that holds ``target`` (its descriptor), its missing folders made when
    ``create``; ``None`` when one is missing and not ``create``."""
    fd = open_folder(target, create=create)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def open_folder(target: Target, *, create: bool) -> int | None:
    """``folder``'s descriptor, for the caller to close."""
    try:
        fd = os.open(target.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ToolError(f"the workspace cannot be opened: {_reason(exc)}") from None
    try:
        for n, name in enumerate(target.parts[:-1]):
            shown = "/".join(target.parts[: n + 1])
            try:
                before = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    os.close(fd)
                    return None
                with contextlib.suppress(FileExistsError):  # made by someone else meanwhile: checked below
                    os.mkdir(name, 0o777, dir_fd=fd)
                before = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(before.st_mode):
                raise ToolError(f"{target.asked!r} changed while it was being opened; try again")
            if not stat.S_ISDIR(before.st_mode):
                raise ToolError(f"{target.asked!r} cannot be written: {shown!r} is not a folder")
            next_fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
            after = os.fstat(fd)
            if (before.st_dev, before.st_ino) != (after.st_dev, after.st_ino):
                raise ToolError(f"{target.asked!r} changed while it was being opened; try again")
        return fd
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # O_NOFOLLOW met a link swapped in
            raise ToolError(f"{target.asked!r} changed while it was being opened; try again") from None
        raise ToolError(f"{target.asked!r} cannot be written: {_reason(exc)}") from None
    except BaseException:
        os.close(fd)
        raise


def read_existing(fd: int, target: Target, *, content: bool) -> Existing | None:
    """The file of that name in folder ``fd`` (with its ``content`` when asked: then it must be
    text of at most ``MAX_WRITE_BYTES``), or None when there is none."""
    try:
        before = os.stat(target.name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ToolError(f"{target.asked!r} cannot be read: {_reason(exc)}") from None
    if stat.S_ISLNK(before.st_mode):
        raise ToolError(f"{target.asked!r} changed while it was being opened; try again")
    if stat.S_ISDIR(before.st_mode):
        raise ToolError(f"{target.asked!r} is a directory, not a file")
    if not stat.S_ISREG(before.st_mode):
        raise ToolError(f"refused: {target.asked!r} is {_kind(before.st_mode)}, not a regular file")
    if content and before.st_size > MAX_WRITE_BYTES:
        raise ToolError(
            f"{target.asked!r} has {before.st_size} bytes; the file tools change files of at most "
            f"{MAX_WRITE_BYTES}"
        )
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    try:
        file_fd = os.open(target.name, _OPEN_FLAGS, dir_fd=fd)
        try:
            after = os.fstat(file_fd)
            if not stat.S_ISREG(after.st_mode) or (before.st_dev, before.st_ino) != (
                after.st_dev,
                after.st_ino,
            ):
                raise ToolError(f"{target.asked!r} changed while it was being opened; try again")
            while chunk := os.read(file_fd, 1 << 16):
                digest.update(chunk)
                if content:
                    chunks.append(chunk)
        finally:
            os.close(file_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise ToolError(f"{target.asked!r} changed while it was being opened; try again") from None
        raise ToolError(f"{target.asked!r} cannot be read: {_reason(exc)}") from None
    mode = stat.S_IMODE(after.st_mode) & 0o777
    if not content:
        return Existing(digest.hexdigest(), mode)
    data = b"".join(chunks)
    if _is_binary(data[:BINARY_SAMPLE]):
        raise ToolError(f"{target.asked!r} is a binary file; the file tools change text files only")
    return Existing(digest.hexdigest(), mode, data)


def replace_atomically(
    fd: int, target: Target, data: bytes, *, mode: int | None, expect: str | Unchecked | None = ANY
) -> None:
    """Give the file ``target`` in folder ``fd`` the content ``data``: a temporary file in the same
    folder, fsynced, renamed over it. ``mode``: its permission bits (None: a new file's, by umask).
    ``expect``: the sha256 the file must still have right before the rename (None: no file there),
    else a ``conflict`` and nothing replaced."""
    temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}.tmp"
    try:
        temp_fd = os.open(temp, _TEMP_FLAGS, 0o666, dir_fd=fd)
    except OSError as exc:
        raise ToolError(f"{target.asked!r} cannot be written: {_reason(exc)}") from None
    try:
        try:
            if mode is not None:
                os.fchmod(temp_fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(temp_fd, view) :]
            os.fsync(temp_fd)
        finally:
            os.close(temp_fd)
        if not isinstance(expect, Unchecked):
            unchanged(fd, target, expect)
        os.replace(temp, target.name, src_dir_fd=fd, dst_dir_fd=fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=fd)
        raise ToolError(f"{target.asked!r} cannot be written: {_reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=fd)
        raise
    _sync_folder(fd)


def unchanged(fd: int, target: Target, expect: str | None) -> None:
    """Nothing, when the file ``target`` in folder ``fd`` has the sha256 ``expect`` (None: there is
    no file); else a ``conflict``."""
    found = read_existing(fd, target, content=False)
    if (found.sha256 if found else None) != expect:
        raise conflict(target.path)


def remove(fd: int, target: Target, *, expect: str | Unchecked | None = ANY) -> None:
    """Delete the regular file ``target`` from folder ``fd``; ``expect``: the sha256 it must still
    have right before (else a ``conflict``, and it stays)."""
    if not isinstance(expect, Unchecked):
        unchanged(fd, target, expect)
    try:
        before = os.stat(target.name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(before.st_mode):
            raise ToolError(f"refused: {target.asked!r} is not a regular file")
        os.unlink(target.name, dir_fd=fd)
    except OSError as exc:
        raise ToolError(f"{target.asked!r} cannot be deleted: {_reason(exc)}") from None
    _sync_folder(fd)


def _sync_folder(fd: int) -> None:
    # The rename is durable only once the folder is on disk; some file systems cannot fsync a
    # folder (EINVAL), and the write has happened all the same.
    with contextlib.suppress(OSError):
        os.fsync(fd)
