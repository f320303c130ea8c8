"""Veronica's ``apply_patch``: a unified diff applied to files of the workspace, all or nothing.

The patch
    A unified diff of one or more files (``diff -u``, ``git diff``), read with ``unidiff``: a file
    is ``--- OLD`` and ``+++ NEW`` then its ``@@ -start,count +start,count @@`` hunks; git's
    ``a/`` and ``b/`` prefixes are taken off; ``--- /dev/null`` creates a file, ``+++ /dev/null``
    deletes one (its hunks must remove every line). A hunk's counts must match its lines. A file may
    come more than once; each time it is patched as the ones before left it. Refused: renames and
    copies (two different names), binary diffs, links, paths outside the workspace or inside
    ``.git`` (the checks of ``files.py`` and ``edit.py``), a patch of more than ``MAX_PATCH_CHARS``.
    Line ends do not count: a CRLF patch applies to an LF file and back. A fence of three
    backticks around the whole patch is taken off.
Hunks
    A hunk's old lines (context and removed) must be in the file exactly: no fuzz, no whitespace
    forgiven. They are looked for where the header says, moved by as much as the hunk before was
    found off (as ``patch`` does), then up to ``MAX_HUNK_OFFSET`` lines below and above, nearest
    first, never over a hunk before. A hunk found off says so in the result.
All or nothing
    Every hunk of every file is applied in memory first (``prepare_patch``, which says each file's
    sha256 before and after); one that does not apply is a ``ToolError`` naming the file, the hunk
    (its number and header line) and why, and nothing is written. Then each file is written as
    ``write_file`` writes (``edit.py``: a temporary file in the same folder, fsync, ``os.replace``),
    after checking, right before its rename (or its deletion), that its sha256 is still the one the
    patch was applied to: a file somebody else changed in between is a conflict, not overwritten. If
    a write fails, the files already written are put back as they were.
Line ends
    A changed file keeps its line ends: lines added to a CRLF file end in CRLF (to an LF file, LF);
    lines kept keep their own. A new file takes the patch's. A UTF-8 byte order mark stays, and
    bytes that are not UTF-8 are kept as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from unidiff.errors import UnidiffParseError
from unidiff.patch import Hunk as ParsedHunk
from unidiff.patch import PatchedFile, PatchSet

from victoria.actors.veronica.edit import (
    Existing,
    Target,
    conflict,
    folder,
    read_existing,
    remove,
    replace_atomically,
    sha256,
    target_of,
)
from victoria.actors.veronica.files import _root
from victoria.errors import ToolError

MAX_HUNK_OFFSET: Final = 50  # lines a hunk may be found away from where its header puts it
MAX_PATCH_CHARS: Final = 4 * 1024 * 1024  # characters of a patch, at most
DEV_NULL: Final = "/dev/null"
BOM: Final = "\ufeff"

Change = Literal["created", "modified", "deleted"]


@dataclass(frozen=True, slots=True)
class FileChange:
    """What the patch did to one file."""

    path: str
    """Relative to the workspace (links on the way resolved)."""
    change: Change
    before_sha256: str | None
    """The sha256 of its content before, or None when it did not exist."""
    after_sha256: str | None
    """The sha256 of its content after, or None when it was deleted."""
    added: int
    removed: int
    offsets: tuple[tuple[int, int], ...] = ()
    """(hunk number, lines off) of each hunk found away from where its header put it."""

    def text(self) -> str:
        line = f"{self.change} {self.path} (+{self.added} -{self.removed})"
        for number, off in self.offsets:
            where = "below" if off > 0 else "above"
            lines = "line" if abs(off) == 1 else "lines"
            line += f"; hunk {number} applied {abs(off)} {lines} {where} where its header says"
        return line


@dataclass(frozen=True, slots=True)
class PatchOutcome:
    """What ``apply_patch`` did, file by file, in the order of the patch."""

    files: tuple[FileChange, ...]

    def text(self) -> str:
        """The tool's result, as the model reads it."""
        count = "1 file" if len(self.files) == 1 else f"{len(self.files)} files"
        return "\n".join([f"patched {count}:", *(f"  {change.text()}" for change in self.files)])


@dataclass(frozen=True, slots=True)
class PreparedPatch:
    """A patch applied in memory and not written yet."""

    states: tuple[_State, ...]
    """The files it changes, in the order of the patch."""

    @property
    def files(self) -> tuple[FileChange, ...]:
        """What it does to each file: its sha256 now and after the patch."""
        return tuple(state.outcome() for state in self.states)

    def write(self) -> PatchOutcome:
        """Write every file or none; a conflict when one no longer has the hash it had when the
        patch was applied to it in memory."""
        _write_all(list(self.states))
        return PatchOutcome(self.files)


def apply_patch(workspace: Path, patch: str) -> PatchOutcome:
    """Apply the unified diff ``patch`` to the workspace: every hunk of every file or nothing."""
    return prepare_patch(workspace, patch).write()


def prepare_patch(workspace: Path, patch: str) -> PreparedPatch:
    """The unified diff ``patch`` applied to the files of the workspace in memory, nothing written:
    a ``ToolError`` when it does not apply."""
    root = _root(workspace)
    text, crlf = _normalized(patch)
    parsed = _parsed(text)
    lines_of_patch = text.split("\n")
    states: dict[tuple[str, ...], _State] = {}
    for entry in parsed:
        target = target_of(root, _path_of(entry))
        state = states.get(target.parts)
        if state is None:
            state = states[target.parts] = _State.read(target)
        _patch_file(state, entry, lines_of_patch, crlf)
    return PreparedPatch(tuple(state for state in states.values() if state.changed))


# --- reading the patch -----------------------------------------------------------------------------


def _normalized(patch: str) -> tuple[str, bool]:
    """The patch with LF line ends and no fence, and whether its lines ended in CRLF."""
    if len(patch) > MAX_PATCH_CHARS:
        raise ToolError(f"the patch has {len(patch)} characters; at most {MAX_PATCH_CHARS}")
    crlf = patch.count("\r\n") * 2 > patch.count("\n")
    text = patch.replace("\r\n", "\n")
    lines = text.strip("\n").split("\n")
    if len(lines) >= 2 and lines[0].startswith("```") and lines[-1].strip() == "```":
        lines = lines[1:-1]
    return "\n".join(lines) + "\n", crlf


def _parsed(text: str) -> PatchSet:
    try:
        parsed = PatchSet(text)
    except UnidiffParseError as exc:
        hint = ""
        if "expected" in str(exc):
            hint = (
                " (the counts in a hunk header '@@ -start,count +start,count @@' must be the numbers of "
                "its old lines, context and removed, and of its new lines, context and added)"
            )
        raise ToolError(f"the patch cannot be read: {exc}{hint}") from None
    if not parsed:
        raise ToolError(
            "the patch changes no file: give a unified diff, each file as '--- a/PATH' and '+++ b/PATH' "
            "then its '@@ -start,count +start,count @@' hunks"
        )
    return parsed


def _path_of(entry: PatchedFile) -> str:
    """The one workspace path a file of the patch names."""
    source, target = _unquoted(entry.source_file), _unquoted(entry.target_file)
    if entry.is_binary_file:
        raise ToolError(f"the patch changes {target or source!r} as a binary file; only text can be patched")
    if entry.is_symlink or entry.is_submodule:
        raise ToolError(f"the patch changes {target or source!r} as a link or submodule; only files")
    old = None if source == DEV_NULL else source
    new = None if target == DEV_NULL else target
    if old is None and new is None:
        raise ToolError("a file of the patch is /dev/null on both sides")
    if old is not None and new is not None:
        if old.startswith("a/") and new.startswith("b/") and old[2:] == new[2:]:
            return old[2:]
        if old != new:
            raise ToolError(
                f"the patch names two files, {old!r} and {new!r}: renames and copies are not supported "
                "(delete the old file and create the new one)"
            )
        return old
    if old is not None:
        return old[2:] if old.startswith("a/") else old
    assert new is not None
    return new[2:] if new.startswith("b/") else new


def _unquoted(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        return name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return name


@dataclass(frozen=True, slots=True)
class _Hunk:
    number: int
    count: int
    header: str
    start: int
    """Where its old lines start in the file (0-based), by its header."""
    old: tuple[str, ...]
    new: tuple[tuple[int, str, bool], ...]
    """Its new lines: (index into ``old`` for a context line, else -1; text; no newline after)."""

    def what(self, path: str) -> str:
        return f"{path!r}, hunk {self.number} of {self.count} ({self.header})"


def _hunks(entry: PatchedFile, lines_of_patch: list[str]) -> list[_Hunk]:
    hunks = []
    for number, hunk in enumerate(entry, 1):
        old: list[str] = []
        new: list[tuple[int, str, bool]] = []
        last_new = False  # whether the line just read is a new line (added or context)
        for line in hunk:
            value = line.value.removesuffix("\n")
            match line.line_type:
                case " ":
                    new.append((len(old), value, False))
                    old.append(value)
                    last_new = True
                case "-":
                    old.append(value)
                    last_new = False
                case "+":
                    new.append((-1, value, False))
                    last_new = True
                case "\\" if last_new:  # "\ No newline at end of file" after a new line
                    index, value, _ = new[-1]
                    new[-1] = (index, value, True)
                case _:  # the marker after a removed line, or blank lines after the hunk
                    pass
        hunks.append(
            _Hunk(
                number,
                len(entry),
                _header(hunk, lines_of_patch),
                hunk.source_start - 1 if hunk.source_length else hunk.source_start,
                tuple(old),
                tuple(new),
            )
        )
    return hunks


def _header(hunk: ParsedHunk, lines_of_patch: list[str]) -> str:
    first = next((line.diff_line_no for line in hunk if line.diff_line_no), None)
    if first is not None and first >= 2 and lines_of_patch[first - 2].startswith("@@"):
        return lines_of_patch[first - 2]
    return str(hunk).split("\n", 1)[0]


# --- applying it in memory -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    text: str
    end: str
    """``\\n``, ``\\r\\n``, or nothing (the last line of a file without a newline at its end)."""


@dataclass(slots=True)
class _State:
    """A file of the patch: as it was read, and as the hunks so far leave it."""

    target: Target
    before: Existing | None
    lines: list[_Line] | None
    """None while the file does not exist."""
    bom: bool = False
    added: int = 0
    removed: int = 0
    offsets: list[tuple[int, int]] = field(default_factory=list)
    touched: bool = False

    @classmethod
    def read(cls, target: Target) -> _State:
        with folder(target, create=False) as fd:
            before = None if fd is None else read_existing(fd, target, content=True)
        if before is None or before.data is None:
            return cls(target, None, None)
        text = before.data.decode("utf-8", "surrogateescape")
        bom = text.startswith(BOM)
        return cls(target, before, _split(text.removeprefix(BOM)), bom=bom)

    @property
    def data(self) -> bytes | None:
        if self.lines is None:
            return None
        text = (BOM if self.bom else "") + "".join(line.text + line.end for line in self.lines)
        return text.encode("utf-8", "surrogateescape")

    @property
    def changed(self) -> bool:
        return self.touched and not (self.before is None and self.lines is None)

    def outcome(self) -> FileChange:
        data = self.data
        change: Change = "created" if self.before is None else "deleted" if data is None else "modified"
        return FileChange(
            self.target.path,
            change,
            self.before.sha256 if self.before else None,
            None if data is None else sha256(data),
            self.added,
            self.removed,
            tuple(self.offsets),
        )


def _split(text: str) -> list[_Line]:
    lines = text.split("\n")
    last = lines.pop()  # after the last "\n": empty, or a last line without a newline
    out = [_Line(p[:-1], "\r\n") if p.endswith("\r") else _Line(p, "\n") for p in lines]
    if last:
        out.append(_Line(last, ""))
    return out


def _patch_file(state: _State, entry: PatchedFile, lines_of_patch: list[str], crlf: bool) -> None:
    path = state.target.path
    creates = entry.source_file == DEV_NULL or (entry.is_added_file and state.lines is None)
    deletes = entry.target_file == DEV_NULL
    if creates and state.lines is not None:
        raise ToolError(f"the patch creates {path!r}, which exists already; nothing was changed")
    if not creates and state.lines is None:
        raise ToolError(f"the patch changes {path!r}, which does not exist; nothing was changed")
    lines = state.lines or []
    eol = _eol(lines, crlf)
    hunks = _hunks(entry, lines_of_patch)
    if not hunks and not creates and not deletes:
        raise ToolError(f"the patch names {path!r} but has no hunk for it")
    out, offsets = _apply(path, lines, hunks, eol)
    added = sum(1 for hunk in hunks for index, _, _ in hunk.new if index < 0)
    removed = sum(len(hunk.old) for hunk in hunks) - sum(
        1 for hunk in hunks for index, _, _ in hunk.new if index >= 0
    )
    if deletes:
        if out:
            raise ToolError(
                f"the patch deletes {path!r}, but its hunks leave {len(out)} of its lines; "
                "a deletion must remove every line; nothing was changed"
            )
        state.lines = None
    else:
        state.lines = out
    state.added += added
    state.removed += removed
    state.offsets.extend(offsets)
    state.touched = True


def _eol(lines: list[_Line], crlf: bool) -> str:
    """The line end of added lines: the file's (the more common one), or for an empty or new
    file the patch's."""
    crlfs = sum(1 for line in lines if line.end == "\r\n")
    lfs = sum(1 for line in lines if line.end == "\n")
    if crlfs or lfs:
        return "\r\n" if crlfs > lfs else "\n"
    return "\r\n" if crlf else "\n"


def _apply(
    path: str, lines: list[_Line], hunks: list[_Hunk], eol: str
) -> tuple[list[_Line], list[tuple[int, int]]]:
    out: list[_Line] = []
    offsets: list[tuple[int, int]] = []
    done = 0  # lines of the file before this are placed
    shift = 0  # how far off the hunk before was found
    for hunk in hunks:
        at = _place(path, lines, hunk, done, shift)
        if at != hunk.start:
            offsets.append((hunk.number, at - hunk.start))
        shift = at - hunk.start
        out.extend(lines[done:at])
        for index, text, no_newline in hunk.new:
            out.append(lines[at + index] if index >= 0 else _Line(text, "" if no_newline else eol))
        done = at + len(hunk.old)
    out.extend(lines[done:])
    # A line left without its newline (the old last line, say) that is no longer last gets one.
    for n in range(len(out) - 1):
        if not out[n].end:
            out[n] = _Line(out[n].text, eol)
    return out, offsets


def _place(path: str, lines: list[_Line], hunk: _Hunk, done: int, shift: int) -> int:
    """Where in ``lines`` the hunk's old lines are: near where its header says, after ``done``."""
    want = hunk.start + shift
    if not hunk.old:  # lines added with no context: exactly where the header says
        if done <= want <= len(lines):
            return want
        raise ToolError(
            f"the patch does not apply: {hunk.what(path)} adds lines after line {want}, "
            f"but the file has {len(lines)} lines; nothing was changed"
        )
    size = len(hunk.old)
    last = len(lines) - size
    for off in _nearest(MAX_HUNK_OFFSET):
        at = want + off
        if done <= at <= last and all(lines[at + k].text == old for k, old in enumerate(hunk.old)):
            return at
    raise ToolError(
        f"the patch does not apply: {hunk.what(path)} {_mismatch(lines, hunk, want, done)}; "
        "nothing was changed"
    )


def _nearest(reach: int) -> list[int]:
    offsets = [0]
    for n in range(1, reach + 1):
        offsets += [n, -n]
    return offsets


def _mismatch(lines: list[_Line], hunk: _Hunk, want: int, done: int) -> str:
    elsewhere = f"and the hunk's lines are not found within {MAX_HUNK_OFFSET} lines of there either"
    if want < done:
        return f"overlaps the hunk before it, which ends at line {done}"
    for k, old in enumerate(hunk.old):
        if want + k >= len(lines):
            return (
                f"expects {old!r} at line {want + k + 1}, past the end of the file ({len(lines)} lines), "
                + elsewhere
            )
        if lines[want + k].text != old:
            return (
                f"does not match the file: line {want + k + 1} is {lines[want + k].text!r} where the hunk "
                f"has {old!r}, " + elsewhere
            )
    return "does not match the file"  # not reached: the lines at ``want`` would have matched


# --- writing ---------------------------------------------------------------------------------------


def _write_all(states: list[_State]) -> None:
    done: list[_State] = []
    try:
        for state in states:
            _write(state)
            done.append(state)
    except ToolError as exc:
        failed = _restore(done)
        written = ", ".join(repr(state.target.path) for state in done)
        if not done:
            raise ToolError(f"the patch was not applied: {exc}; nothing was changed") from None
        if failed:
            raise ToolError(
                f"the patch was not applied: {exc}; {written} had been written and could not all be "
                f"put back: {'; '.join(failed)}"
            ) from None
        raise ToolError(
            f"the patch was not applied: {exc}; {written} had been written and were put back"
        ) from None


def _write(state: _State) -> None:
    target = state.target
    data = state.data
    expect = state.before.sha256 if state.before else None
    with folder(target, create=data is not None) as fd:
        if data is not None:
            assert fd is not None  # made when missing
            replace_atomically(
                fd, target, data, mode=state.before.mode if state.before else None, expect=expect
            )
        elif fd is None:  # its folder is gone, and the file with it
            raise conflict(target.path)
        else:
            remove(fd, target, expect=expect)


def _restore(done: list[_State]) -> list[str]:
    """Put the files written back as they were; what could not be, said."""
    failed = []
    for state in reversed(done):
        target = state.target
        before = state.before
        try:
            with folder(target, create=True) as fd:
                assert fd is not None  # made when missing
                if before is not None and before.data is not None:
                    replace_atomically(fd, target, before.data, mode=before.mode)
                elif read_existing(fd, target, content=False) is not None:
                    remove(fd, target)
        except ToolError as exc:
            failed.append(str(exc))
    return failed
