"""Veronica's searches: ``find_files`` (names by a glob) and ``grep_search`` (lines by a regex).

What is looked at
    The files under a folder of the workspace (``path``, checked as every path of the file tools:
    ``files.py``), walked one folder at a time from the workspace's own directory (``os.fwalk``,
    links not followed: a link is neither listed nor searched, nor a folder it names entered). Left
    out, as git leaves them out: every ``.git``, and what the ``.gitignore`` files of the workspace
    ignore (``pathspec``'s ``GitIgnoreSpec``, git's rules: a deeper file's patterns over a higher
    one's, the last matching pattern of a file wins, ``!`` takes a name back, nothing under an
    ignored folder is looked at). Only the ``.gitignore`` files inside the workspace count, from
    its top down to each folder, whether or not it is a git repository; not ``.git/info/exclude``
    nor a global one. When ``path`` is itself ignored, nothing under it is looked at, and the result
    says so. At most ``MAX_SCAN`` entries are looked at; a walk stopped there says so.
Globs
    ``find_files``'s ``pattern`` and ``grep_search``'s ``glob`` are matched against paths relative
    to ``path``, as ``.gitignore`` patterns are: ``*``, ``?`` and ``[abc]`` within a name, ``**``
    across folders; a glob without ``/`` matches a name at any depth (``*.py``), one with ``/`` is
    anchored at ``path`` (``src/*.py``), and a folder's name matches everything under it.
Results
    Paths relative to the workspace, sorted as listings are (case-insensitively), at most
    ``MAX_LIST`` of them or ``MAX_MATCHES`` matching lines; when more were found, the text starts
    with a note saying how many were left out. A matching line is ``path:line: text``, its text cut
    at ``MAX_LINE_CHARS``.
``grep_search``
    ``pattern`` is a Python regular expression (``re``); one that does not compile is a
    ``ToolError`` naming it. Searched: regular files of at most ``MAX_SEARCH_BYTES`` that are not
    binary (the test of ``read_file``: a NUL byte or mostly not UTF-8 in the first
    ``BINARY_SAMPLE`` bytes), line by line (``\\n``; a ``\\r`` before it is not part of the line),
    each line's bytes as UTF-8 (bytes that are not read as U+FFFD). The files are picked and opened
    here, one name at a time with ``O_NOFOLLOW``, whichever engine reads them:

    - ripgrep (``rg``, when it is on ``PATH`` and ``/dev/fd`` exists) gets the open files
      themselves as ``/dev/fd/N``, never a path that it could resolve anew after the check (a name
      swapped for a link meanwhile), with ``--no-config`` (no ``RIPGREP_CONFIG_PATH``), ``--text``
      (binary files are left out here) and ``--crlf``, as a list of arguments (no shell), in
      batches of ``RG_FILES``, within ``SEARCH_TIMEOUT`` in all. A pattern that ripgrep's engine
      does not take (look-around, back-references) is searched in Python instead.
    - the Python scan reads the same files and matches each line with ``re.search``.

    So both give the same lines in the same order, cut the same way, for every pattern that means
    the same in both engines' syntax (the common one: classes, ``\\b``, ``\\d``, ``\\w``, groups,
    repeats); a pattern that means something else to ripgrep's engine may differ. ``SEARCH_TIMEOUT``
    bounds a ripgrep search; the Python scan looks at the time between lines only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal, cast

from pathspec import GitIgnoreSpec

from victoria.actors.veronica.files import (
    _OPEN_FLAGS,
    BINARY_SAMPLE,
    MAX_LIST,
    MAX_READ_BYTES,
    MAX_SCAN,
    _is_binary,
    _open,
    _resolve,
    _root,
    _shown,
)
from victoria.errors import ToolError

log = logging.getLogger(__name__)

MAX_MATCHES: Final = 200  # matching lines in a search's result, at most (and when not asked)
MAX_LINE_CHARS: Final = 300  # characters of a matching line shown
MAX_SEARCH_BYTES: Final = 4 * 1024 * 1024  # bytes of a file searched; larger files are left out
MAX_PATTERN_CHARS: Final = 1000  # characters of a pattern or a glob
SEARCH_TIMEOUT: Final = 30.0  # seconds a search may take
RG_FILES: Final = 200  # open files given to one run of ripgrep
GIT_DIR: Final = ".git"
GITIGNORE: Final = ".gitignore"

Engine = Literal["auto", "ripgrep", "python"]


@dataclass(frozen=True, slots=True)
class FoundFiles:
    """The files ``find_files`` found, as many as shown, and how many there were."""

    pattern: str
    where: str
    paths: tuple[str, ...]
    total: int
    complete: bool = True
    """False when the walk stopped at ``MAX_SCAN`` entries."""
    ignored: bool = False
    """``where`` is itself ignored by a ``.gitignore``: nothing under it was looked at."""

    def text(self) -> str:
        """The tool's result: a note when something was left out, then one path a line."""
        notes = []
        if self.ignored:
            notes.append(f"[{self.where!r} is ignored by a .gitignore; nothing under it is looked at]")
        left = self.total - len(self.paths)
        if left > 0:
            notes.append(
                f"[{len(self.paths)} of {self.total} files shown; {left} left out. "
                "Narrow the pattern or the path.]"
            )
        if not self.complete:
            notes.append(f"[only the first {MAX_SCAN} entries under {self.where!r} were looked at]")
        if not self.paths and not self.ignored:
            notes.append(f"[no file under {self.where!r} matches {self.pattern!r}]")
        return "\n".join([*notes, *self.paths])


@dataclass(frozen=True, slots=True)
class Match:
    path: str
    line: int
    text: str

    def text_line(self) -> str:
        return f"{self.path}:{self.line}: {self.text}"


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The lines ``grep_search`` found, as many as shown, and how many there were."""

    pattern: str
    where: str
    matches: tuple[Match, ...]
    total: int
    engine: Literal["ripgrep", "python"]
    """Which engine matched the lines."""
    complete: bool = True
    ignored: bool = False
    too_big: int = 0
    """Files left out for having more than ``MAX_SEARCH_BYTES``."""

    def text(self) -> str:
        """The tool's result: a note when something was left out, then ``path:line: text`` lines."""
        notes = []
        if self.ignored:
            notes.append(f"[{self.where!r} is ignored by a .gitignore; nothing under it is searched]")
        left = self.total - len(self.matches)
        if left > 0:
            notes.append(
                f"[{len(self.matches)} of {self.total} matching lines shown; {left} left out. "
                "Narrow the pattern, the path or the glob.]"
            )
        if self.too_big:
            files = "1 file" if self.too_big == 1 else f"{self.too_big} files"
            notes.append(f"[{files} of more than {MAX_SEARCH_BYTES} bytes not searched]")
        if not self.complete:
            notes.append(f"[only the first {MAX_SCAN} entries under {self.where!r} were looked at]")
        if not self.matches and not self.ignored:
            notes.append(f"[no line under {self.where!r} matches {self.pattern!r}]")
        return "\n".join([*notes, *(match.text_line() for match in self.matches)])


def find_files(workspace: Path, pattern: str, path: str = ".") -> FoundFiles:
    """The files under ``path`` whose path (relative to ``path``) matches the glob ``pattern``."""
    walk = _Walk(workspace, path, _glob("pattern", pattern))
    found = [candidate.path for candidate in walk.files()]
    found.sort(key=_order)
    return FoundFiles(
        pattern, path, tuple(found[:MAX_LIST]), len(found), complete=walk.complete, ignored=walk.ignored
    )


def grep_search(
    workspace: Path,
    pattern: str,
    path: str = ".",
    glob: str | None = None,
    max_results: int | None = None,
    *,
    engine: Engine = "auto",
) -> SearchResult:
    """The lines of the files under ``path`` (those matching ``glob``, if given) in which the
    regular expression ``pattern`` is found; ``max_results`` (at most ``MAX_MATCHES``) caps them.
    ``engine``: ripgrep when it is there (``auto``), or one of them."""
    regex = _regex(pattern)
    cap = _cap(max_results)
    spec = _glob("glob", glob) if glob is not None else None
    rg = shutil.which("rg") if engine != "python" else None
    if engine == "ripgrep" and rg is None:
        raise ToolError("ripgrep (rg) is not on PATH")
    deadline = time.monotonic() + SEARCH_TIMEOUT
    if rg is not None and os.path.isdir("/dev/fd"):
        walk = _Walk(workspace, path, spec)
        try:
            found = _with_ripgrep(rg, pattern, walk, cap, deadline)
            return found.result(pattern, path, "ripgrep", walk)
        except _RipgrepRefused as exc:
            if engine == "ripgrep":
                raise ToolError(f"ripgrep cannot search for {pattern!r}: {exc}") from None
            log.debug("ripgrep refused %r (%s); searching in Python", pattern, exc)
    walk = _Walk(workspace, path, spec)
    found = _with_python(regex, walk, cap, deadline)
    return found.result(pattern, path, "python", walk)


# --- arguments -------------------------------------------------------------------------------------


def _regex(pattern: str) -> re.Pattern[str]:
    if not pattern:
        raise ToolError("the pattern is empty: give a regular expression to look for")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ToolError(f"the pattern has {len(pattern)} characters; at most {MAX_PATTERN_CHARS}")
    if "\x00" in pattern:
        raise ToolError("the pattern contains a NUL byte")
    try:
        with warnings.catch_warnings():  # "possible nested set" and the like: a valid pattern still
            warnings.simplefilter("ignore")
            return re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ToolError(f"{pattern!r} is not a valid regular expression: {exc}") from None


def _glob(name: str, glob: str) -> GitIgnoreSpec:
    text = glob.strip()
    if not text:
        raise ToolError(f"the {name} is empty: give a glob such as '*.py' or 'src/**/*.md'")
    if len(text) > MAX_PATTERN_CHARS:
        raise ToolError(f"the {name} has {len(text)} characters; at most {MAX_PATTERN_CHARS}")
    if "\x00" in text or "\n" in text:
        raise ToolError(f"the {name} {glob!r} contains a NUL byte or a line break")
    if text.startswith(("/", "~")) or re.match(r"[A-Za-z]:[\\/]", text):
        raise ToolError(f"the {name} {glob!r} is absolute; give one relative to the path searched")
    if ".." in text.split("/"):
        raise ToolError(f"the {name} {glob!r} climbs out with '..'; search a higher path instead")
    text = text.removeprefix("./")
    if text[0] in "!#":  # a name that starts so, not a negation or a comment
        text = "\\" + text
    return GitIgnoreSpec.from_lines([text])


def _cap(max_results: int | None) -> int:
    if max_results is None:
        return MAX_MATCHES
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise ToolError(f"max_results must be a whole number, 1 or more (not {max_results!r})")
    return min(max_results, MAX_MATCHES)


def _order(path: str) -> tuple[str, str]:
    return (path.lower(), path)


# --- the walk --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Candidate:
    path: str
    """Relative to the workspace, as shown."""
    folder: int
    """The open folder that holds it: valid only until the walk goes on."""
    name: str
    status: os.stat_result


class _Walk:
    """The files under one folder of the workspace that git would not ignore."""

    def __init__(self, workspace: Path, relative: str, glob: GitIgnoreSpec | None) -> None:
        self.root = _root(workspace)
        self.relative = relative
        self.base = _resolve(self.root, relative)
        self.parts = self.base.relative_to(self.root).parts
        self.glob = glob
        self.specs: dict[tuple[str, ...], GitIgnoreSpec] = {}
        self.complete = True
        self.ignored = False
        self.looked = 0

    def files(self) -> Iterator[_Candidate]:
        """Each regular file not ignored (and matching the glob), while its folder is open."""
        self._load_above()
        directory = self.base.is_dir()
        above = any(self._ignored(self.parts[:n], directory=True) for n in range(1, len(self.parts)))
        if above or self._ignored(self.parts, directory=directory):
            self.ignored = True
            return
        if not directory:
            yield from self._one_file()
            return
        base_fd = _open(self.root, self.base, self.relative, directory=True)
        try:
            yield from self._walk(base_fd)
        finally:
            os.close(base_fd)

    def _one_file(self) -> Iterator[_Candidate]:
        fd = _open(self.root, self.base, self.relative, directory=False)  # refuses what is not a file
        os.close(fd)
        fd = _open(self.root, self.base.parent, self.relative, directory=True)
        try:
            name = self.parts[-1]
            status = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(status.st_mode):
                yield _Candidate(_shown_path(self.parts), fd, name, status)
        finally:
            os.close(fd)

    def _walk(self, base_fd: int) -> Iterator[_Candidate]:
        # A generator (typeshed says Iterator): closed at the end, so that its open folders are too.
        walker = cast(
            Generator[tuple[str, list[str], list[str], int], None, None], os.fwalk(".", dir_fd=base_fd)
        )
        try:
            for top, folders, names, fd in walker:
                here = self.parts + tuple(part for part in top.split("/") if part not in ("", "."))
                self._load(here, fd)
                self.looked += len(folders) + len(names)
                if self.looked > MAX_SCAN:
                    self.complete = False
                    return
                kept = []
                for name in sorted(folders):
                    if name == GIT_DIR or not _is_folder(fd, name):
                        continue  # a link to a folder is not entered
                    if not self._ignored((*here, name), directory=True):
                        kept.append(name)
                folders[:] = kept
                for name in sorted(names):
                    if name == GIT_DIR:
                        continue
                    parts = (*here, name)
                    try:
                        status = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    if not stat.S_ISREG(status.st_mode) or self._ignored(parts, directory=False):
                        continue
                    if self.glob is not None and not self.glob.match_file("/".join(parts[len(self.parts) :])):
                        continue
                    yield _Candidate(_shown_path(parts), fd, name, status)
        finally:
            walker.close()

    def _load_above(self) -> None:
        """The ``.gitignore`` files of the folders from the workspace's top down to the base's parent."""
        for depth in range(len(self.parts)):
            parts = self.parts[:depth]
            where = self.root.joinpath(*parts)
            try:
                fd = _open(self.root, where, "/".join(parts) or ".", directory=True)
            except ToolError:
                continue
            try:
                self._load(parts, fd)
            finally:
                os.close(fd)

    def _load(self, parts: tuple[str, ...], fd: int) -> None:
        if parts in self.specs:
            return
        try:
            status = os.stat(GITIGNORE, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return
        if not stat.S_ISREG(status.st_mode):
            return  # git too reads no .gitignore through a link
        try:
            file_fd = os.open(GITIGNORE, _OPEN_FLAGS, dir_fd=fd)
        except OSError:
            return
        try:
            data = os.read(file_fd, MAX_READ_BYTES)
        except OSError:
            return
        finally:
            os.close(file_fd)
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        self.specs[parts] = GitIgnoreSpec.from_lines(lines)

    def _ignored(self, parts: tuple[str, ...], *, directory: bool) -> bool:
        """Whether git would ignore ``parts``, its folders above not ignored: the deepest
        ``.gitignore`` with a pattern that matches it decides."""
        for depth in range(len(parts) - 1, -1, -1):
            spec = self.specs.get(parts[:depth])
            if spec is None:
                continue
            below = "/".join(parts[depth:]) + ("/" if directory else "")
            include = spec.check_file(below).include
            if include is not None:
                return include
        return False


def _is_folder(fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _shown_path(parts: tuple[str, ...]) -> str:
    return "/".join(_shown(part) for part in parts)


# --- the engines -----------------------------------------------------------------------------------


class _RipgrepRefused(Exception):
    pass


class _Found:
    """The matching lines kept (the first ``cap`` by path and line) and how many there were."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self.too_big = 0
        self._kept: list[tuple[tuple[str, str], int, str, str]] = []

    def add(self, path: str, line: int, raw: bytes) -> None:
        self.total += 1
        self._kept.append((_order(path), line, path, _text(raw)))
        if len(self._kept) >= 4 * self.cap + 1000:  # keep memory bounded: only the first cap can be shown
            self._prune()

    def _prune(self) -> None:
        self._kept.sort()
        del self._kept[self.cap :]

    def opened(self, candidate: _Candidate) -> int | None:
        """The candidate opened (``O_NOFOLLOW``, the same file as walked) to be searched, unless it
        is too big (counted) or binary."""
        try:
            fd = os.open(candidate.name, _OPEN_FLAGS, dir_fd=candidate.folder)
        except OSError:
            return None
        try:
            now = os.fstat(fd)
            same = (now.st_dev, now.st_ino) == (candidate.status.st_dev, candidate.status.st_ino)
            if not stat.S_ISREG(now.st_mode) or not same:
                os.close(fd)
                return None
            if now.st_size > MAX_SEARCH_BYTES:
                self.too_big += 1
                os.close(fd)
                return None
            if _is_binary(os.pread(fd, BINARY_SAMPLE, 0)):
                os.close(fd)
                return None
        except OSError:
            os.close(fd)
            return None
        return fd

    def result(
        self, pattern: str, where: str, engine: Literal["ripgrep", "python"], walk: _Walk
    ) -> SearchResult:
        self._prune()
        matches = tuple(Match(path, line, text) for _, line, path, text in self._kept)
        return SearchResult(
            pattern,
            where,
            matches,
            self.total,
            engine,
            complete=walk.complete,
            ignored=walk.ignored,
            too_big=self.too_big,
        )


def _text(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    text = "".join("\ufffd" if (ord(c) < 32 and c != "\t") or ord(c) == 127 else c for c in text)
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + "…"


def _with_python(regex: re.Pattern[str], walk: _Walk, cap: int, deadline: float) -> _Found:
    found = _Found(cap)
    for candidate in walk.files():
        fd = found.opened(candidate)
        if fd is None:
            continue
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        except OSError:
            continue
        finally:
            os.close(fd)
        lines = b"".join(chunks).split(b"\n")
        if not lines[-1]:
            lines.pop()  # what follows the last newline is no line
        for number, raw in enumerate(lines, 1):
            if number % 1024 == 0 and time.monotonic() > deadline:
                raise _timed_out()
            line = raw.removesuffix(b"\r")
            if regex.search(line.decode("utf-8", "replace")):
                found.add(candidate.path, number, line)
        if time.monotonic() > deadline:
            raise _timed_out()
    return found


def _with_ripgrep(rg: str, pattern: str, walk: _Walk, cap: int, deadline: float) -> _Found:
    found = _Found(cap)
    batch: dict[int, str] = {}  # open file -> its path
    try:
        for candidate in walk.files():
            fd = found.opened(candidate)
            if fd is None:
                continue
            batch[fd] = candidate.path
            if len(batch) >= RG_FILES:
                _ripgrep(rg, pattern, batch, found, deadline)
                _close_all(batch)
        if batch:
            _ripgrep(rg, pattern, batch, found, deadline)
    finally:
        _close_all(batch)
    return found


def _close_all(batch: dict[int, str]) -> None:
    for fd in batch:
        os.close(fd)
    batch.clear()


def _ripgrep(rg: str, pattern: str, batch: dict[int, str], found: _Found, deadline: float) -> None:
    """One run of ripgrep over the open files of ``batch``, its lines added to ``found``."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _timed_out()
    args = [
        rg,
        "--no-config",
        "--no-ignore",
        "--text",
        "--crlf",
        "--no-heading",
        "--with-filename",
        "--line-number",
        "--null",
        "--color",
        "never",
        "--regexp",
        pattern,
        "--",
        *(f"/dev/fd/{fd}" for fd in batch),
    ]
    env = {name: value for name, value in os.environ.items() if not name.startswith("RIPGREP_")}
    killed = threading.Event()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            pass_fds=tuple(batch),
            env=env,
        )

        def stop() -> None:
            killed.set()
            process.kill()

        timer = threading.Timer(remaining, stop)
        timer.start()
        try:
            assert process.stdout is not None
            _read_ripgrep(process.stdout, batch, found)
            code = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if killed.is_set():
            raise _timed_out()
        if code not in (0, 1):
            errors.seek(0)
            said = errors.read(4096).decode("utf-8", "replace").strip().splitlines()
            why = next((line for line in said if line.startswith("error:")), said[0] if said else "")
            raise _RipgrepRefused(why.removeprefix("error:").strip() or f"exit status {code}")


def _read_ripgrep(stdout: IO[bytes], batch: dict[int, str], found: _Found) -> None:
    for raw in stdout:
        name, _, rest = raw.partition(b"\0")
        number, colon, text = rest.partition(b":")
        path = batch.get(int(name.removeprefix(b"/dev/fd/"))) if name.startswith(b"/dev/fd/") else None
        if path is None or not colon or not number.isdigit():
            continue
        found.add(path, int(number), text.removesuffix(b"\n").removesuffix(b"\r"))


def _timed_out() -> ToolError:
    return ToolError(
        f"the search took longer than {SEARCH_TIMEOUT:g} s; narrow the path, the glob or the pattern"
    )
