"""The workspace tools' functions (actors/veronica/files.py, search.py, edit.py, patch.py), on real
files: reading by lines, finding files, searching lines (ripgrep and the Python scan alike),
writing a file atomically and applying a patch all or nothing; never outside the workspace."""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from victoria.actors.veronica import edit, files, patch, search
from victoria.actors.veronica.edit import MAX_WRITE_BYTES, WriteOutcome, write_file
from victoria.actors.veronica.files import read_file
from victoria.actors.veronica.patch import MAX_HUNK_OFFSET, apply_patch
from victoria.actors.veronica.search import MAX_LINE_CHARS, RG_FILES, find_files, grep_search
from victoria.errors import OutsideWorkspace, ToolError

needs_rg = pytest.mark.skipif(shutil.which("rg") is None, reason="ripgrep (rg) is not on PATH")
ENGINES = [pytest.param("ripgrep", marks=needs_rg), "python"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


def tree(root: Path, entries: dict[str, str | bytes]) -> None:
    for name, content in entries.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def outside_paths(outside: Path) -> list[str]:
    """Paths that lead out of the workspace ``ws``, whose sibling is ``outside``; the link ``out``
    (to ``outside``) is made by the test."""
    return ["../outside/secret.txt", str(outside / "secret.txt"), "out/secret.txt"]


# --- read_file by lines ----------------------------------------------------------------------------


def test_offset_and_limit_give_numbered_lines_like_cat_n(ws: Path) -> None:
    (ws / "poem.txt").write_text("one\ntwo\nthree\nfour\nfive\n", encoding="utf-8")
    assert read_file(ws, "poem.txt", offset=2, limit=3) == "     2\ttwo\n     3\tthree\n     4\tfour"
    assert read_file(ws, "poem.txt", offset=4) == "     4\tfour\n     5\tfive"
    assert read_file(ws, "poem.txt", limit=1) == "     1\tone"


def test_a_small_file_read_without_offset_or_limit_is_its_plain_text(ws: Path) -> None:
    (ws / "poem.txt").write_text("one\ntwo\n", encoding="utf-8")
    assert read_file(ws, "poem.txt") == "one\ntwo\n"


def test_a_file_over_max_bytes_is_numbered_and_the_note_says_where_to_read_on(ws: Path) -> None:
    (ws / "long.txt").write_text("".join(f"line {n}\n" for n in range(1, 401)), encoding="utf-8")
    text = read_file(ws, "long.txt", max_bytes=200)
    note, *lines = text.split("\n")
    last = len(lines)
    assert note == (
        f"[truncated: the file has {(ws / 'long.txt').stat().st_size} bytes; only lines 1-{last} are shown; "
        f"read on with offset={last + 1}]"
    )
    assert lines[0] == "     1\tline 1" and lines[-1] == f"{last:6d}\tline {last}"
    assert len("\n".join(lines).encode()) < 200
    following = read_file(ws, "long.txt", max_bytes=200, offset=last + 1)
    assert following.split("\n")[1] == f"{last + 1:6d}\tline {last + 1}"


def test_numbered_lines_leave_out_the_carriage_return_of_crlf(ws: Path) -> None:
    (ws / "dos.txt").write_bytes(b"one\r\ntwo\r\n")
    assert read_file(ws, "dos.txt", offset=1) == "     1\tone\n     2\ttwo"


def test_an_offset_past_the_end_says_how_many_lines_the_file_has(ws: Path) -> None:
    (ws / "short.txt").write_text("a\nb\nc", encoding="utf-8")
    assert read_file(ws, "short.txt", offset=9) == "['short.txt' has 3 lines; offset=9 is past its end]"


@pytest.mark.parametrize("bad", [0, -3, True, "2", 1.5])
def test_offset_and_limit_must_be_whole_numbers_from_one(ws: Path, bad: Any) -> None:
    (ws / "a.txt").write_text("a\n", encoding="utf-8")
    with pytest.raises(ToolError, match="offset must be a whole number of lines"):
        read_file(ws, "a.txt", offset=bad)
    with pytest.raises(ToolError, match="limit must be a whole number of lines"):
        read_file(ws, "a.txt", limit=bad)


def test_a_binary_file_read_by_lines_is_still_only_described(ws: Path) -> None:
    (ws / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    text = read_file(ws, "logo.png", offset=1, limit=5)
    assert text.startswith("'logo.png' is a binary file (PNG image) of 108 bytes; its content is not shown.")


def test_an_offset_too_far_into_a_file_is_refused(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_SEEK_BYTES", 1000)
    (ws / "big.log").write_text("x" * 99 + "\n" + "line\n" * 1000, encoding="utf-8")
    assert read_file(ws, "big.log", offset=5, limit=1) == "     5\tline"
    with pytest.raises(ToolError, match=re.escape("offset=900 is too far into 'big.log'")):
        read_file(ws, "big.log", offset=900)


def test_reading_by_lines_refuses_paths_outside(ws: Path, outside: Path) -> None:
    (ws / "out").symlink_to(outside)
    for path in outside_paths(outside):
        with pytest.raises(OutsideWorkspace):
            read_file(ws, path, offset=1, limit=1)


# --- find_files ------------------------------------------------------------------------------------


def test_find_files_matches_a_glob_at_any_depth_and_sorts_the_paths(ws: Path) -> None:
    tree(ws, {"b.py": "", "A.py": "", "src/c.py": "", "src/deep/d.py": "", "src/e.txt": "", "README": ""})
    found = find_files(ws, "*.py")
    assert found.paths == ("A.py", "b.py", "src/c.py", "src/deep/d.py")
    assert found.text() == "A.py\nb.py\nsrc/c.py\nsrc/deep/d.py"
    assert find_files(ws, "**/*.py").paths == found.paths


def test_a_glob_with_a_slash_is_anchored_at_the_path_searched(ws: Path) -> None:
    tree(ws, {"src/c.py": "", "src/deep/d.py": "", "lib/src/x.py": "", "src/deep/e.md": ""})
    assert find_files(ws, "src/*.py").paths == ("src/c.py",)
    assert find_files(ws, "src/**/*.py").paths == ("src/c.py", "src/deep/d.py")
    assert find_files(ws, "deep/*", path="src").paths == ("src/deep/d.py", "src/deep/e.md")


def test_find_files_leaves_out_git_and_what_gitignore_files_ignore(ws: Path) -> None:
    tree(
        ws,
        {
            ".gitignore": "# build output\nbuild/\n*.log\n!keep.log\n/top-only.txt\n",
            ".git/config": "",
            ".git/HEAD": "",
            "build/out.txt": "",
            "src/build/also-out.txt": "",
            "app.log": "",
            "keep.log": "",
            "top-only.txt": "",
            "src/top-only.txt": "",
            "src/.gitignore": "generated_*.py\n",
            "src/generated_a.py": "",
            "src/real.py": "",
            "other/generated_b.py": "",
        },
    )
    assert find_files(ws, "*").paths == (
        ".gitignore",
        "keep.log",
        "other/generated_b.py",
        "src/.gitignore",
        "src/real.py",
        "src/top-only.txt",
    )


def test_a_deeper_gitignore_takes_back_what_a_higher_one_ignores(ws: Path) -> None:
    tree(
        ws, {".gitignore": "*.log\n", "logs/.gitignore": "!wanted.log\n", "logs/wanted.log": "", "x.log": ""}
    )
    assert find_files(ws, "*.log").paths == ("logs/wanted.log",)


def test_gitignore_files_above_the_path_searched_still_count(ws: Path) -> None:
    tree(ws, {".gitignore": "*.tmp\n", "src/a.tmp": "", "src/a.py": ""})
    assert find_files(ws, "*", path="src").paths == ("src/a.py",)


def test_searching_an_ignored_folder_finds_nothing_and_says_why(ws: Path) -> None:
    tree(ws, {".gitignore": "node_modules/\n", "node_modules/x/index.js": "x"})
    found = find_files(ws, "*.js", path="node_modules")
    assert found.paths == () and found.ignored
    assert found.text() == "['node_modules' is ignored by a .gitignore; nothing under it is looked at]"


def test_find_files_caps_the_paths_and_says_how_many_were_left_out(ws: Path) -> None:
    for n in range(search.MAX_LIST + 7):
        (ws / f"f{n:04d}.txt").touch()
    found = find_files(ws, "*.txt")
    assert len(found.paths) == search.MAX_LIST and found.total == search.MAX_LIST + 7
    assert found.text().split("\n")[0] == (
        f"[{search.MAX_LIST} of {search.MAX_LIST + 7} files shown; 7 left out. Narrow the pattern or the path.]"
    )


def test_no_file_found_is_said(ws: Path) -> None:
    (ws / "a.txt").touch()
    assert find_files(ws, "*.rs").text() == "[no file under '.' matches '*.rs']"


def test_find_files_follows_no_link(ws: Path, outside: Path) -> None:
    tree(ws, {"real/a.txt": ""})
    (ws / "out").symlink_to(outside)
    (ws / "again").symlink_to(ws / "real")
    (ws / "alias.txt").symlink_to(ws / "real" / "a.txt")
    assert find_files(ws, "*").paths == ("real/a.txt",)


def test_find_files_refuses_paths_and_globs_that_lead_outside(ws: Path, outside: Path) -> None:
    (ws / "out").symlink_to(outside)
    for path in ("..", str(outside), "out"):
        with pytest.raises(OutsideWorkspace):
            find_files(ws, "*", path=path)
    for glob in ("../outside/*", "/etc/*", "a/../../*", "~/x"):
        with pytest.raises(ToolError, match="the pattern"):
            find_files(ws, glob)


# --- grep_search -----------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
def test_grep_search_gives_path_line_text_lines(ws: Path, engine: search.Engine) -> None:
    tree(ws, {"src/app.py": "import os\n\ndef main():\n    return 1\n", "notes.md": "def main: no\n"})
    found = grep_search(ws, r"def main\(", engine=engine)
    assert found.engine == engine
    assert found.text() == "src/app.py:3: def main():"
    assert grep_search(ws, "def main", glob="*.md", engine=engine).text() == "notes.md:1: def main: no"
    assert grep_search(ws, "return", path="src/app.py", engine=engine).text() == "src/app.py:4:     return 1"


@pytest.mark.parametrize("engine", ENGINES)
def test_grep_search_honours_gitignore_and_skips_git_and_binary_files(
    ws: Path, engine: search.Engine
) -> None:
    tree(
        ws,
        {
            ".gitignore": "dist/\n*.min.js\n",
            "dist/app.js": "needle\n",
            "app.min.js": "needle\n",
            ".git/COMMIT_EDITMSG": "needle\n",
            "blob.bin": b"needle\x00\x01\x02",
            "src/app.js": "let needle = 1;\n",
        },
    )
    assert grep_search(ws, "needle", engine=engine).text() == "src/app.js:1: let needle = 1;"


@pytest.mark.parametrize("engine", ENGINES)
def test_no_matching_line_is_said(ws: Path, engine: search.Engine) -> None:
    (ws / "a.txt").write_text("hay\n", encoding="utf-8")
    assert grep_search(ws, "needle", engine=engine).text() == "[no line under '.' matches 'needle']"


def busy_tree(root: Path) -> None:
    """Files of many kinds: nested, ignored, CRLF, not UTF-8, binary, long lines, odd names, more
    than one batch of ripgrep."""
    tree(
        root,
        {
            ".gitignore": "ignored/\n*.bak\n!important.bak\n",
            ".git/config": "[core]\n\tdef main\n",
            "ignored/x.py": "def main():\n",
            "old.bak": "def main():\n",
            "important.bak": "def main(): kept\n",
            "src/app.py": "import os\n\n\ndef main():\n    # TODO: more\n    return 42\n",
            "src/.gitignore": "*.gen.py\n",
            "src/x.gen.py": "def main(): generated\n",
            "src/dos.py": b"def dos():\r\n    return 'x'\r\n\r\n# FIXME x\r\n",
            "src/latin.txt": "Café au lait 123\n".encode("latin-1") + b"ok 456\n",
            "src/blob.bin": b"def main\x00" + bytes(range(256)),
            "src/no-newline.txt": "last line 789 x",
            "src/empty.txt": "",
            "docs/guide.md": "Привет, мир 2024.\nTODO: écrire\n   \n",
            "docs/long.txt": "x" * (MAX_LINE_CHARS + 50) + " TODO\n",
            "docs/a:b c.txt": "def main with a colon in the name\n",
            "docs/-rf.txt": "def main -rf\n",
            "docs/tabs.txt": "\tdef\tmain\t\n",
        },
    )
    for n in range(RG_FILES + 30):
        (root / "many" / f"m{n:03d}.txt").parent.mkdir(exist_ok=True)
        (root / "many" / f"m{n:03d}.txt").write_text(f"item {n}\n" + ("TODO\n" if n % 7 == 0 else ""))


@needs_rg
@pytest.mark.parametrize(
    ("pattern", "path", "glob", "max_results"),
    [
        (r"def \w+", ".", None, None),
        (r"TODO|FIXME", ".", None, None),
        (r"TODO", ".", None, 5),
        (r"x$", ".", None, None),
        (r"^\s*$", ".", None, None),
        (r"\d{3}", "src", None, None),
        (r"[А-я]+", ".", "*.md", None),
        (r"é|Caf", ".", None, None),
        (r"item 1\d\d\b", "many", "m1*.txt", None),
        (r"main", "docs", None, None),
        (r"def", "src/dos.py", None, None),
    ],
)
def test_ripgrep_and_the_python_scan_give_the_same_results_on_the_same_tree(
    ws: Path, pattern: str, path: str, glob: str | None, max_results: int | None
) -> None:
    busy_tree(ws)
    by_rg = grep_search(ws, pattern, path, glob, max_results, engine="ripgrep")
    by_python = grep_search(ws, pattern, path, glob, max_results, engine="python")
    assert by_rg.engine == "ripgrep" and by_python.engine == "python"
    assert by_rg.matches == by_python.matches
    assert by_rg.total == by_python.total
    assert by_rg.text() == by_python.text()
    assert by_rg.matches, "the pattern should find something in the tree"


@needs_rg
def test_the_busy_tree_gives_the_lines_expected(ws: Path) -> None:
    busy_tree(ws)
    found = grep_search(ws, r"def \w+", engine="ripgrep")
    assert [f"{m.path}:{m.line}" for m in found.matches] == [
        "docs/-rf.txt:1",
        "docs/a:b c.txt:1",
        "important.bak:1",
        "src/app.py:4",
        "src/dos.py:1",
    ]
    todo = grep_search(ws, "TODO", path="docs", engine="ripgrep")
    long = next(m for m in todo.matches if m.path == "docs/long.txt")
    assert long.text == "x" * MAX_LINE_CHARS + "…"
    dos = grep_search(ws, "return", path="src/dos.py", engine="ripgrep")
    assert dos.text() == "src/dos.py:2:     return 'x'"


@pytest.mark.parametrize("engine", ENGINES)
def test_max_results_caps_the_lines_and_says_how_many_were_left_out(ws: Path, engine: search.Engine) -> None:
    tree(ws, {"b.txt": "hit\n" * 5, "a.txt": "hit\nmiss\nhit\n"})
    found = grep_search(ws, "hit", max_results=3, engine=engine)
    assert found.text().split("\n") == [
        "[3 of 7 matching lines shown; 4 left out. Narrow the pattern, the path or the glob.]",
        "a.txt:1: hit",
        "a.txt:3: hit",
        "b.txt:1: hit",
    ]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_bad_regex_is_a_tool_error_naming_it(ws: Path, engine: search.Engine) -> None:
    (ws / "a.txt").write_text("x\n", encoding="utf-8")
    with pytest.raises(ToolError, match=r"'foo\(bar' is not a valid regular expression"):
        grep_search(ws, "foo(bar", engine=engine)


@pytest.mark.parametrize("bad", [0, -1, True, "5"])
def test_max_results_must_be_a_whole_number_from_one(ws: Path, bad: Any) -> None:
    with pytest.raises(ToolError, match="max_results must be a whole number"):
        grep_search(ws, "x", max_results=bad)


@needs_rg
def test_a_pattern_ripgrep_cannot_run_is_searched_in_python(ws: Path) -> None:
    (ws / "a.txt").write_text("foobar\nbar\n", encoding="utf-8")
    found = grep_search(ws, r"(?<=foo)bar")
    assert found.engine == "python"
    assert found.text() == "a.txt:1: foobar"
    with pytest.raises(ToolError, match="ripgrep cannot search for"):
        grep_search(ws, r"(?<=foo)bar", engine="ripgrep")


@needs_rg
def test_grep_search_prefers_ripgrep_when_it_is_on_path(ws: Path) -> None:
    (ws / "a.txt").write_text("x\n", encoding="utf-8")
    assert grep_search(ws, "x").engine == "ripgrep"


@needs_rg
def test_ripgrep_gets_the_open_files_a_list_of_arguments_and_no_config(
    ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree(ws, {"a.txt": "Needle\n", "sub/b.txt": "needle\n"})
    config = tmp_path / "ripgreprc"
    config.write_text("--ignore-case\n--glob=!sub\n", encoding="utf-8")
    monkeypatch.setenv("RIPGREP_CONFIG_PATH", str(config))
    calls: list[tuple[Any, dict[str, Any]]] = []
    real = search.subprocess.Popen

    def spy(args: Any, **kwargs: Any) -> Any:
        calls.append((args, kwargs))
        return real(args, **kwargs)

    monkeypatch.setattr(search.subprocess, "Popen", spy)
    found = grep_search(ws, "needle", engine="ripgrep")
    assert found.text() == "sub/b.txt:1: needle"  # case-sensitive, sub searched: the config was not read
    [(args, kwargs)] = calls
    assert isinstance(args, list) and not kwargs.get("shell")
    assert "--no-config" in args and "RIPGREP_CONFIG_PATH" not in kwargs["env"]
    files_given = args[args.index("--") + 1 :]
    assert all(arg.startswith("/dev/fd/") for arg in files_given) and len(files_given) == 2
    assert not any(str(ws) in arg or "a.txt" in arg for arg in args)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_search_past_its_time_is_a_tool_error(
    ws: Path, engine: search.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "a.txt").write_text("x\n", encoding="utf-8")
    monkeypatch.setattr(search, "SEARCH_TIMEOUT", -1.0)
    with pytest.raises(ToolError, match="the search took longer than"):
        grep_search(ws, "x", engine=engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_file_too_big_is_not_searched_and_is_counted(
    ws: Path, engine: search.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "MAX_SEARCH_BYTES", 100)
    tree(ws, {"small.txt": "needle\n", "big.txt": "needle\n" * 50})
    found = grep_search(ws, "needle", engine=engine)
    assert found.text() == "[1 file of more than 100 bytes not searched]\nsmall.txt:1: needle"


@pytest.mark.parametrize("engine", ENGINES)
def test_grep_search_refuses_paths_that_lead_outside(ws: Path, outside: Path, engine: search.Engine) -> None:
    (ws / "out").symlink_to(outside)
    for path in ("..", str(outside), "out", "out/secret.txt", "../outside/secret.txt"):
        with pytest.raises(OutsideWorkspace):
            grep_search(ws, "secret", path=path, engine=engine)
    (ws / "link.txt").symlink_to(outside / "secret.txt")
    assert "secret" not in grep_search(ws, "secret", engine=engine).text().replace("'secret'", "")


# --- write_file ------------------------------------------------------------------------------------


def test_write_file_creates_a_file_and_its_folders_and_gives_the_hashes(ws: Path) -> None:
    outcome = write_file(ws, "docs/new/guide.md", "# Guide\nПривет\n")
    data = "# Guide\nПривет\n".encode()
    assert (ws / "docs" / "new" / "guide.md").read_bytes() == data
    assert outcome == WriteOutcome("docs/new/guide.md", len(data), None, sha(data))
    assert outcome.text() == f"wrote {len(data)} bytes to 'docs/new/guide.md' (created; sha256 {sha(data)})"


def test_write_file_replaces_a_file_and_gives_the_hash_of_what_it_replaced(ws: Path) -> None:
    (ws / "a.txt").write_bytes(b"old\n")
    outcome = write_file(ws, "a.txt", "new\n")
    assert (ws / "a.txt").read_bytes() == b"new\n"
    assert outcome.before_sha256 == sha(b"old\n") and outcome.after_sha256 == sha(b"new\n")
    assert outcome.bytes == 4 and "(replaced;" in outcome.text()


def test_write_file_goes_through_a_temporary_file_in_the_same_folder(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "docs").mkdir()
    target = ws / "docs" / "a.txt"
    target.write_text("old\n", encoding="utf-8")
    seen: dict[str, Any] = {}
    real = os.replace

    def spy(src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        assert src_dir_fd is not None and src_dir_fd == dst_dir_fd
        seen["same folder"] = os.path.samestat(os.fstat(src_dir_fd), os.stat(ws / "docs"))
        seen["temp"], seen["dst"] = src, dst
        seen["temp content"] = (ws / "docs" / src).read_text(encoding="utf-8")
        seen["target then"] = target.read_text(encoding="utf-8")
        real(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "replace", spy)
    write_file(ws, "docs/a.txt", "new and longer\n")
    assert seen["same folder"] and seen["dst"] == "a.txt"
    assert seen["temp"].startswith(edit.TEMP_PREFIX) and seen["temp content"] == "new and longer\n"
    assert seen["target then"] == "old\n"  # until the rename, the old file whole
    assert sorted(os.listdir(ws / "docs")) == ["a.txt"]  # the temporary file is gone
    assert target.read_text(encoding="utf-8") == "new and longer\n"


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "a.txt").write_text("old\n", encoding="utf-8")

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(ToolError, match=re.escape("'a.txt' cannot be written: no space left on device")):
        write_file(ws, "a.txt", "new\n")
    assert (ws / "a.txt").read_text(encoding="utf-8") == "old\n"
    assert os.listdir(ws) == ["a.txt"]


def test_write_file_keeps_the_permission_bits_of_the_file_it_replaces(ws: Path) -> None:
    (ws / "run.sh").write_text("#!/bin/sh\n", encoding="utf-8")
    (ws / "run.sh").chmod(0o750)
    write_file(ws, "run.sh", "#!/bin/sh\necho hi\n")
    assert stat.S_IMODE((ws / "run.sh").stat().st_mode) == 0o750


def test_write_file_writes_through_a_link_that_stays_inside(ws: Path) -> None:
    (ws / "real.txt").write_text("old\n", encoding="utf-8")
    (ws / "alias.txt").symlink_to("real.txt")
    outcome = write_file(ws, "alias.txt", "new\n")
    assert outcome.path == "real.txt"
    assert (ws / "alias.txt").is_symlink() and (ws / "real.txt").read_text(encoding="utf-8") == "new\n"


def test_write_file_refuses_paths_that_lead_outside(ws: Path, outside: Path) -> None:
    (ws / "out").symlink_to(outside)
    (ws / "secret-link").symlink_to(outside / "secret.txt")
    for path in [*outside_paths(outside), "secret-link", "out/new/deeper.txt", "../outside/new.txt"]:
        with pytest.raises(OutsideWorkspace):
            write_file(ws, path, "pwned\n")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text(encoding="utf-8") == "top secret\n"


def test_a_link_swapped_into_the_parent_chain_is_not_followed(ws: Path, outside: Path) -> None:
    """As if ``sub`` had been a folder when the path was checked, and a link out when it was opened."""
    (ws / "sub").symlink_to(outside)
    target = edit.Target(ws.resolve(), ("sub", "new", "x.txt"), "sub/new/x.txt")
    with (
        pytest.raises(ToolError, match="changed while it was being opened"),
        edit.folder(target, create=True),
    ):
        pass
    assert not (outside / "new").exists()


def test_write_file_refuses_a_folder_git_files_and_the_workspace_itself(ws: Path) -> None:
    (ws / "docs").mkdir()
    (ws / ".git" / "hooks").mkdir(parents=True)
    with pytest.raises(ToolError, match="is a directory"):
        write_file(ws, "docs", "x")
    with pytest.raises(ToolError, match=re.escape("inside .git")):
        write_file(ws, ".git/hooks/pre-commit", "#!/bin/sh\ncurl evil\n")
    with pytest.raises(ToolError, match="the workspace itself"):
        write_file(ws, ".", "x")
    assert not (ws / ".git" / "hooks" / "pre-commit").exists()


def test_a_prepared_write_has_the_hashes_before_and_after_and_writes_nothing_until_written(ws: Path) -> None:
    (ws / "a.txt").write_bytes(b"old\n")
    prepared = edit.prepare_write(ws, "a.txt", "new\n")
    assert (prepared.before_sha256, prepared.after_sha256) == (sha(b"old\n"), sha(b"new\n"))
    assert (ws / "a.txt").read_bytes() == b"old\n"
    assert prepared.write() == WriteOutcome("a.txt", 4, sha(b"old\n"), sha(b"new\n"))
    assert (ws / "a.txt").read_bytes() == b"new\n"
    fresh = edit.prepare_write(ws, "deep/er/b.txt", "b\n")
    assert fresh.before_sha256 is None and not (ws / "deep").exists()  # no folder made to look


@pytest.mark.parametrize("theirs", [b"theirs\n", None], ids=["changed", "deleted"])
def test_a_file_changed_after_the_write_was_computed_is_a_conflict_and_keeps_the_other_content(
    ws: Path, theirs: bytes | None
) -> None:
    (ws / "a.txt").write_bytes(b"old\n")
    prepared = edit.prepare_write(ws, "a.txt", "mine\n")
    if theirs is None:
        (ws / "a.txt").unlink()
    else:
        (ws / "a.txt").write_bytes(theirs)
    with pytest.raises(ToolError, match=re.escape(f"'a.txt' was {edit.CONFLICT}")):
        prepared.write()
    assert os.listdir(ws) == ([] if theirs is None else ["a.txt"])  # no temporary file either
    if theirs is not None:
        assert (ws / "a.txt").read_bytes() == theirs


def test_a_file_created_by_someone_else_after_the_write_found_none_is_not_overwritten(ws: Path) -> None:
    prepared = edit.prepare_write(ws, "sub/a.txt", "mine\n")
    (ws / "sub").mkdir()
    (ws / "sub" / "a.txt").write_bytes(b"theirs\n")
    with pytest.raises(ToolError, match=re.escape(f"'sub/a.txt' was {edit.CONFLICT}")):
        prepared.write()
    assert (ws / "sub" / "a.txt").read_bytes() == b"theirs\n"


def test_the_hash_is_checked_right_before_the_rename_after_the_temporary_file_is_written(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Someone writes while the temporary file is being synced: the rename does not happen."""
    (ws / "a.txt").write_bytes(b"old\n")
    real = os.fsync
    synced: list[int] = []

    def someone_writes_meanwhile(fd: int) -> None:
        real(fd)
        if not synced:
            (ws / "a.txt").write_bytes(b"theirs\n")
        synced.append(fd)

    monkeypatch.setattr(os, "fsync", someone_writes_meanwhile)
    with pytest.raises(ToolError, match=re.escape(f"'a.txt' was {edit.CONFLICT}")):
        write_file(ws, "a.txt", "mine\n")
    assert synced and (ws / "a.txt").read_bytes() == b"theirs\n"
    assert os.listdir(ws) == ["a.txt"]


def test_current_sha256_is_the_files_hash_now_or_none_and_checks_the_path(ws: Path, outside: Path) -> None:
    (ws / "a.txt").write_bytes(b"a\n")
    (ws / "docs").mkdir()
    assert edit.current_sha256(ws, "a.txt") == sha(b"a\n")
    assert edit.current_sha256(ws, "missing.txt") is None
    assert edit.current_sha256(ws, "no/such/folder.txt") is None
    with pytest.raises(ToolError, match="is a directory"):
        edit.current_sha256(ws, "docs")
    with pytest.raises(OutsideWorkspace):
        edit.current_sha256(ws, "../outside/secret.txt")


def test_write_file_refuses_content_over_the_limit(ws: Path) -> None:
    with pytest.raises(ToolError, match=f"at most {MAX_WRITE_BYTES}"):
        write_file(ws, "big.txt", "x" * (MAX_WRITE_BYTES + 1))
    assert not (ws / "big.txt").exists()


# --- apply_patch -----------------------------------------------------------------------------------

TEN = "".join(f"line {n}\n" for n in range(1, 11))


def test_apply_patch_changes_creates_and_deletes_files_in_one_patch(ws: Path) -> None:
    tree(ws, {"a.txt": TEN, "src/b.py": "def f():\n    return 1\n", "old.txt": "bye\nnow\n"})
    before = {name: (ws / name).read_bytes() for name in ("a.txt", "src/b.py", "old.txt")}
    outcome = apply_patch(
        ws,
        "diff --git a/a.txt b/a.txt\n"
        "--- a/a.txt\n+++ b/a.txt\n"
        "@@ -1,3 +1,3 @@\n line 1\n-line 2\n+LINE 2\n line 3\n"
        "@@ -8,3 +8,4 @@\n line 8\n line 9\n line 10\n+line 11\n"
        "--- a/src/b.py\n+++ b/src/b.py\n"
        "@@ -1,2 +1,2 @@\n def f():\n-    return 1\n+    return 2\n"
        "--- /dev/null\n+++ b/new/c.md\n"
        "@@ -0,0 +1,2 @@\n+# C\n+made by a patch\n"
        "--- a/old.txt\n+++ /dev/null\n"
        "@@ -1,2 +0,0 @@\n-bye\n-now\n",
    )
    assert (ws / "a.txt").read_text(encoding="utf-8") == TEN.replace("line 2\n", "LINE 2\n") + "line 11\n"
    assert (ws / "src" / "b.py").read_text(encoding="utf-8") == "def f():\n    return 2\n"
    assert (ws / "new" / "c.md").read_text(encoding="utf-8") == "# C\nmade by a patch\n"
    assert not (ws / "old.txt").exists()
    assert [(c.path, c.change, c.added, c.removed) for c in outcome.files] == [
        ("a.txt", "modified", 2, 1),
        ("src/b.py", "modified", 1, 1),
        ("new/c.md", "created", 2, 0),
        ("old.txt", "deleted", 0, 2),
    ]
    hashes = {c.path: (c.before_sha256, c.after_sha256) for c in outcome.files}
    assert hashes["a.txt"] == (sha(before["a.txt"]), sha((ws / "a.txt").read_bytes()))
    assert hashes["src/b.py"] == (sha(before["src/b.py"]), sha((ws / "src" / "b.py").read_bytes()))
    assert hashes["new/c.md"] == (None, sha(b"# C\nmade by a patch\n"))
    assert hashes["old.txt"] == (sha(before["old.txt"]), None)
    assert outcome.text() == (
        "patched 4 files:\n  modified a.txt (+2 -1)\n  modified src/b.py (+1 -1)\n"
        "  created new/c.md (+2 -0)\n  deleted old.txt (+0 -2)"
    )
    assert sorted(os.listdir(ws)) == ["a.txt", "new", "src"]  # no temporary file left


def test_a_hunk_that_does_not_apply_leaves_every_file_unchanged(ws: Path) -> None:
    tree(ws, {"a.txt": TEN, "b.txt": TEN, "gone.txt": "x\n"})
    before = {p.name: p.read_bytes() for p in ws.iterdir()}
    with pytest.raises(ToolError) as caught:
        apply_patch(
            ws,
            "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n-line 1\n+LINE 1\n line 2\n"
            "--- /dev/null\n+++ b/fresh.txt\n@@ -0,0 +1 @@\n+fresh\n"
            "--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
            "--- a/b.txt\n+++ b/b.txt\n@@ -1,2 +1,2 @@\n-line 1\n+LINE 1\n line 2\n"
            "@@ -7,3 +7,3 @@ the second hunk\n line 7\n-line eight\n+LINE 8\n line 9\n",
        )
    message = str(caught.value)
    assert message.startswith(
        "the patch does not apply: 'b.txt', hunk 2 of 2 (@@ -7,3 +7,3 @@ the second hunk) does not match the "
        "file: line 8 is 'line 8' where the hunk has 'line eight'"
    )
    assert message.endswith("nothing was changed")
    assert {p.name: p.read_bytes() for p in ws.iterdir()} == before  # fresh.txt not made, gone.txt kept


def test_a_hunk_found_a_few_lines_off_applies_and_says_so(ws: Path) -> None:
    (ws / "a.txt").write_text("new 1\nnew 2\nnew 3\n" + TEN, encoding="utf-8")
    outcome = apply_patch(
        ws,
        "--- a/a.txt\n+++ b/a.txt\n"
        "@@ -4,3 +4,3 @@\n line 4\n-line 5\n+LINE 5\n line 6\n"
        "@@ -9,2 +9,2 @@\n line 9\n-line 10\n+LINE 10\n",
    )
    text = (ws / "a.txt").read_text(encoding="utf-8")
    assert text == "new 1\nnew 2\nnew 3\n" + TEN.replace("line 5\n", "LINE 5\n").replace(
        "line 10\n", "LINE 10\n"
    )
    assert outcome.files[0].offsets == ((1, 3), (2, 3))
    assert "hunk 1 applied 3 lines below where its header says" in outcome.text()


def test_a_hunk_found_above_where_its_header_says_applies_too(ws: Path) -> None:
    (ws / "a.txt").write_text(TEN, encoding="utf-8")
    outcome = apply_patch(ws, "--- a/a.txt\n+++ b/a.txt\n@@ -7,2 +7,2 @@\n line 5\n-line 6\n+LINE 6\n")
    assert outcome.files[0].offsets == ((1, -2),)
    assert "LINE 6\n" in (ws / "a.txt").read_text(encoding="utf-8")


def test_a_hunk_too_far_from_its_header_does_not_apply(ws: Path) -> None:
    (ws / "a.txt").write_text("pad\n" * (MAX_HUNK_OFFSET + 1) + TEN, encoding="utf-8")
    with pytest.raises(ToolError, match=f"not found within {MAX_HUNK_OFFSET} lines"):
        apply_patch(ws, "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n-line 1\n+LINE 1\n line 2\n")


def test_context_must_match_exactly(ws: Path) -> None:
    (ws / "a.py").write_text("def f():\n    return 1\n", encoding="utf-8")
    with pytest.raises(ToolError, match="does not match the file"):
        apply_patch(ws, "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n def f():\n-  return 1\n+  return 2\n")


def test_a_crlf_file_stays_crlf(ws: Path) -> None:
    (ws / "dos.txt").write_bytes(b"one\r\ntwo\r\nthree\r\n")
    outcome = apply_patch(
        ws, "--- a/dos.txt\n+++ b/dos.txt\n@@ -1,3 +1,4 @@\n one\n-two\n+TWO\n three\n+four\n"
    )
    assert (ws / "dos.txt").read_bytes() == b"one\r\nTWO\r\nthree\r\nfour\r\n"
    assert outcome.files[0].after_sha256 == sha(b"one\r\nTWO\r\nthree\r\nfour\r\n")


def test_a_crlf_patch_applies_to_an_lf_file_which_stays_lf(ws: Path) -> None:
    (ws / "unix.txt").write_bytes(b"one\ntwo\n")
    apply_patch(ws, "--- a/unix.txt\r\n+++ b/unix.txt\r\n@@ -1,2 +1,2 @@\r\n one\r\n-two\r\n+TWO\r\n")
    assert (ws / "unix.txt").read_bytes() == b"one\nTWO\n"


def test_a_missing_newline_at_the_end_is_kept_or_added_as_the_patch_says(ws: Path) -> None:
    (ws / "a.txt").write_bytes(b"a\nb")
    apply_patch(
        ws, "--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,3 @@\n a\n-b\n\\ No newline at end of file\n+b\n+c\n"
    )
    assert (ws / "a.txt").read_bytes() == b"a\nb\nc\n"
    apply_patch(ws, "--- a/a.txt\n+++ b/a.txt\n@@ -2,2 +2,2 @@\n b\n-c\n+d\n\\ No newline at end of file\n")
    assert (ws / "a.txt").read_bytes() == b"a\nb\nd"


def test_a_byte_order_mark_and_bytes_that_are_not_utf8_are_kept(ws: Path) -> None:
    (ws / "a.txt").write_bytes(b"\xef\xbb\xbfone\ncaf\xe9\nthree\n")
    apply_patch(ws, "--- a/a.txt\n+++ b/a.txt\n@@ -3 +3 @@\n-three\n+THREE\n")
    assert (ws / "a.txt").read_bytes() == b"\xef\xbb\xbfone\ncaf\xe9\nTHREE\n"


def test_a_patch_without_prefixes_or_inside_a_fence_applies(ws: Path) -> None:
    (ws / "a.txt").write_text("x\n", encoding="utf-8")
    apply_patch(ws, "```diff\n--- a.txt\n+++ a.txt\n@@ -1 +1 @@\n-x\n+y\n```\n")
    assert (ws / "a.txt").read_text(encoding="utf-8") == "y\n"


def test_a_file_patched_twice_in_one_patch_gets_both(ws: Path) -> None:
    (ws / "a.txt").write_text("x\n", encoding="utf-8")
    outcome = apply_patch(
        ws, "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-x\n+y\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-y\n+z\n"
    )
    assert (ws / "a.txt").read_text(encoding="utf-8") == "z\n"
    assert len(outcome.files) == 1 and outcome.files[0].before_sha256 == sha(b"x\n")


def test_apply_patch_refuses_paths_that_lead_outside(ws: Path, outside: Path) -> None:
    (ws / "out").symlink_to(outside)
    for path in ("../outside/secret.txt", str(outside / "secret.txt"), "out/secret.txt"):
        with pytest.raises(OutsideWorkspace):
            apply_patch(ws, f"--- {path}\n+++ {path}\n@@ -1 +1 @@\n-top secret\n+pwned\n")
    for path in ("../outside/new.txt", "out/new.txt", "out/deeper/new.txt"):
        with pytest.raises(OutsideWorkspace):
            apply_patch(ws, f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+pwned\n")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text(encoding="utf-8") == "top secret\n"


def test_a_patch_that_creates_a_file_there_already_or_keeps_lines_of_one_it_deletes_is_refused(
    ws: Path,
) -> None:
    (ws / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(ToolError, match=re.escape("creates 'a.txt', which exists already")):
        apply_patch(ws, "--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1 @@\n+one\n")
    with pytest.raises(ToolError, match=re.escape("deletes 'a.txt', but its hunks leave 1 of its lines")):
        apply_patch(ws, "--- a/a.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-one\n")
    with pytest.raises(ToolError, match=re.escape("changes 'b.txt', which does not exist")):
        apply_patch(ws, "--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-one\n+two\n")
    assert (ws / "a.txt").read_text(encoding="utf-8") == "one\ntwo\n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("just some words\n", "the patch changes no file"),
        ("--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n-one\n+ONE\n", "Hunk is shorter than expected"),
        ("--- a/a.txt\n+++ b/c.txt\n@@ -1 +1 @@\n-one\n+ONE\n", "renames and copies are not supported"),
        ("--- a/.git/config\n+++ b/.git/config\n@@ -1 +1 @@\n-x\n+y\n", "inside .git"),
    ],
)
def test_a_patch_that_cannot_be_applied_as_it_is_written_is_a_tool_error(
    ws: Path, text: str, says: str
) -> None:
    (ws / "a.txt").write_text("one\ntwo\n", encoding="utf-8")
    with pytest.raises(ToolError, match=says):
        apply_patch(ws, text)
    assert (ws / "a.txt").read_text(encoding="utf-8") == "one\ntwo\n"


def test_a_failed_write_puts_back_the_files_already_written(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree(ws, {"a.txt": "a\n", "b.txt": "b\n"})
    real = patch.replace_atomically
    writes: list[str] = []

    def second_fails(fd: int, target: edit.Target, data: bytes, **options: Any) -> None:
        writes.append(target.path)
        if len(writes) == 3:  # a new file, a.txt, then b.txt
            raise ToolError(f"{target.asked!r} cannot be written: no space left on device")
        real(fd, target, data, **options)

    monkeypatch.setattr(patch, "replace_atomically", second_fails)
    with pytest.raises(ToolError, match=r"'b\.txt' cannot be written.*had been written and were put back"):
        apply_patch(
            ws,
            "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+new\n"
            "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+A\n"
            "--- a/b.txt\n+++ b/b.txt\n@@ -1 +1 @@\n-b\n+B\n",
        )
    assert (ws / "a.txt").read_text(encoding="utf-8") == "a\n" and (ws / "b.txt").read_text(
        encoding="utf-8"
    ) == "b\n"
    assert not (ws / "new.txt").exists()


def test_a_file_changed_after_the_patch_read_it_is_not_overwritten(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ws / "a.txt").write_text("a\n", encoding="utf-8")
    real = patch._State.read

    def read_then_someone_writes(target: edit.Target) -> patch._State:
        state = real(target)
        (ws / "a.txt").write_text("changed by someone else\n", encoding="utf-8")
        return state

    monkeypatch.setattr(patch._State, "read", staticmethod(read_then_someone_writes))
    with pytest.raises(ToolError, match=re.escape(f"'a.txt' was {edit.CONFLICT}; nothing was changed")):
        apply_patch(ws, "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+A\n")
    assert (ws / "a.txt").read_text(encoding="utf-8") == "changed by someone else\n"
    assert os.listdir(ws) == ["a.txt"]  # no temporary file left


def test_prepare_patch_gives_each_files_hashes_before_and_after_and_writes_nothing(ws: Path) -> None:
    tree(ws, {"a.txt": "a\n", "gone.txt": "bye\n"})
    prepared = patch.prepare_patch(
        ws,
        "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+A\n"
        "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+new\n"
        "--- a/gone.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n",
    )
    assert [(f.path, f.before_sha256, f.after_sha256) for f in prepared.files] == [
        ("a.txt", sha(b"a\n"), sha(b"A\n")),
        ("new.txt", None, sha(b"new\n")),
        ("gone.txt", sha(b"bye\n"), None),
    ]
    assert sorted(os.listdir(ws)) == ["a.txt", "gone.txt"] and (ws / "a.txt").read_text() == "a\n"
    assert prepared.write().files == prepared.files
    assert sorted(os.listdir(ws)) == ["a.txt", "new.txt"] and (ws / "a.txt").read_text() == "A\n"


@pytest.mark.parametrize(
    ("someone", "patch_text"),
    [
        ("a.txt", "--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+A\n"),
        ("new.txt", "--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+new\n"),
        ("a.txt", "--- a/a.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-a\n"),
    ],
    ids=["modified", "created", "deleted"],
)
def test_a_patch_prepared_then_written_over_by_someone_else_is_a_conflict_and_keeps_their_file(
    ws: Path, someone: str, patch_text: str
) -> None:
    (ws / "a.txt").write_text("a\n", encoding="utf-8")
    prepared = patch.prepare_patch(ws, patch_text)
    (ws / someone).write_text("theirs\n", encoding="utf-8")
    with pytest.raises(ToolError, match=re.escape(f"{someone!r} was {edit.CONFLICT}")):
        prepared.write()
    assert (ws / someone).read_text(encoding="utf-8") == "theirs\n"
    assert not [name for name in os.listdir(ws) if name.startswith(edit.TEMP_PREFIX)]


lines_strategy = st.lists(st.sampled_from(["a", "b", "c", "", "  x", "d = 1", "é"]), max_size=30)


@settings(max_examples=60)
@given(old=lines_strategy, new=lines_strategy, context=st.integers(min_value=0, max_value=3))
def test_any_diff_that_difflib_makes_applies_back_to_the_new_text(
    old: list[str], new: list[str], context: int
) -> None:
    old_text = "".join(line + "\n" for line in old)
    new_text = "".join(line + "\n" for line in new)
    diff = "".join(
        difflib.unified_diff(
            old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            "a/f.txt",
            "b/f.txt",
            n=context,
        )
    )
    with tempfile.TemporaryDirectory() as where:
        root = Path(where)
        (root / "f.txt").write_text(old_text, encoding="utf-8")
        if diff:
            apply_patch(root, diff)
        assert (root / "f.txt").read_text(encoding="utf-8") == new_text
