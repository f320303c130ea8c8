"""Veronica's tools (actors/veronica/files.py): list and read, never outside the workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from victoria.actors.veronica.files import MAX_LIST, list_directory, read_file, resolve_inside
from victoria.errors import OutsideWorkspace, ToolError


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "b.txt").write_text("bee\n", encoding="utf-8")
    (root / "A.md").write_text("# A\n", encoding="utf-8")
    (root / "c.py").write_text("print('c')\n", encoding="utf-8")
    (root / "docs").mkdir()
    (root / "docs" / "guide.md").write_text("Привет, мир.\n", encoding="utf-8")
    (root / "Zeta").mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.txt").write_text("top secret\n", encoding="utf-8")
    return out


def test_listing_gives_names_sorted_case_insensitively_with_a_slash_on_directories(ws: Path) -> None:
    assert list_directory(ws) == ["A.md", "b.txt", "c.py", "docs/", "Zeta/"]


def test_listing_a_subdirectory_gives_its_names(ws: Path) -> None:
    assert list_directory(ws, "docs") == ["guide.md"]
    assert list_directory(ws, "docs/") == ["guide.md"]


def test_listing_honours_the_limit(ws: Path) -> None:
    assert list_directory(ws, ".", limit=2) == ["A.md", "b.txt"]
    assert list_directory(ws, ".", limit=100) == list_directory(ws)


def test_a_zero_or_negative_limit_means_the_default_cap(ws: Path) -> None:
    assert list_directory(ws, ".", limit=0) == list_directory(ws)
    assert list_directory(ws, ".", limit=-3) == list_directory(ws)


def test_listing_is_capped_at_max_list(tmp_path: Path) -> None:
    for i in range(MAX_LIST + 5):
        (tmp_path / f"f{i:04d}").touch()
    assert len(list_directory(tmp_path)) == MAX_LIST
    assert len(list_directory(tmp_path, limit=MAX_LIST + 5)) == MAX_LIST


def test_an_empty_path_means_the_workspace_root(ws: Path) -> None:
    assert list_directory(ws, "") == list_directory(ws, ".")
    assert list_directory(ws, "   ") == list_directory(ws, ".")


@pytest.mark.parametrize("path", ["..", "../x", "docs/../..", "docs/../../outside/secret.txt"])
def test_a_path_that_climbs_out_of_the_workspace_is_refused(ws: Path, outside: Path, path: str) -> None:
    with pytest.raises(OutsideWorkspace):
        resolve_inside(ws, path)
    with pytest.raises(OutsideWorkspace):
        list_directory(ws, path)
    with pytest.raises(OutsideWorkspace):
        read_file(ws, path)


@pytest.mark.parametrize("path", ["/etc/passwd", "/", "~", "~/x", "~root"])
def test_an_absolute_or_home_path_is_refused(ws: Path, path: str) -> None:
    with pytest.raises(OutsideWorkspace):
        resolve_inside(ws, path)
    with pytest.raises(OutsideWorkspace):
        read_file(ws, path)


def test_an_absolute_path_inside_the_workspace_is_still_refused(ws: Path) -> None:
    with pytest.raises(OutsideWorkspace):
        read_file(ws, str(ws / "b.txt"))


def test_a_path_with_a_nul_byte_is_refused(ws: Path) -> None:
    with pytest.raises(ToolError, match="NUL"):
        read_file(ws, "b.txt\x00.png")
    with pytest.raises(ToolError):
        list_directory(ws, "\x00")


def test_outside_workspace_is_a_tool_error_and_a_permission_error() -> None:
    assert issubclass(OutsideWorkspace, ToolError)
    assert issubclass(OutsideWorkspace, PermissionError)


def test_a_dotdot_that_stays_inside_is_fine(ws: Path) -> None:
    assert read_file(ws, "docs/../b.txt") == "bee\n"


def test_a_symlink_to_a_file_outside_is_refused_for_reading_and_hidden_from_listing(
    ws: Path, outside: Path
) -> None:
    (ws / "leak.txt").symlink_to(outside / "secret.txt")
    with pytest.raises(OutsideWorkspace):
        read_file(ws, "leak.txt")
    assert "leak.txt" not in list_directory(ws)


def test_a_symlink_to_a_directory_outside_is_refused_and_hidden(ws: Path, outside: Path) -> None:
    (ws / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideWorkspace):
        list_directory(ws, "escape")
    with pytest.raises(OutsideWorkspace):
        read_file(ws, "escape/secret.txt")
    names = list_directory(ws)
    assert "escape/" not in names
    assert "escape" not in names


def test_a_symlink_inside_the_workspace_is_fine(ws: Path) -> None:
    (ws / "alias.txt").symlink_to("b.txt")
    (ws / "docs-link").symlink_to("docs", target_is_directory=True)
    assert read_file(ws, "alias.txt") == "bee\n"
    assert list_directory(ws, "docs-link") == ["guide.md"]
    names = list_directory(ws)
    assert "alias.txt" in names
    assert "docs-link/" in names


def test_a_workspace_reached_through_a_symlink_works(ws: Path, tmp_path: Path) -> None:
    link = tmp_path / "ws-link"
    link.symlink_to(ws, target_is_directory=True)
    assert read_file(link, "b.txt") == "bee\n"
    assert list_directory(link) == list_directory(ws)


def test_a_dangling_symlink_is_not_a_readable_file(ws: Path) -> None:
    (ws / "gone.txt").symlink_to("nowhere.txt")
    with pytest.raises(ToolError):
        read_file(ws, "gone.txt")


def test_a_symlink_loop_does_not_break_the_listing(ws: Path) -> None:
    (ws / "loop").symlink_to("loop")
    names = list_directory(ws)
    assert {"A.md", "b.txt", "c.py", "docs/", "Zeta/"} <= set(names)


def test_reading_a_symlink_loop_is_a_tool_error(ws: Path) -> None:
    (ws / "loop").symlink_to("loop")
    with pytest.raises(ToolError):
        read_file(ws, "loop")


def test_reading_gives_the_text_of_the_file(ws: Path) -> None:
    assert read_file(ws, "docs/guide.md") == "Привет, мир.\n"


def test_reading_truncates_at_max_bytes_and_says_so(ws: Path) -> None:
    (ws / "big.txt").write_bytes(b"x" * 100)
    text = read_file(ws, "big.txt", max_bytes=10)
    assert text == "x" * 10 + "\n[truncated at 10 bytes]"


def test_a_file_of_exactly_max_bytes_is_not_marked_truncated(ws: Path) -> None:
    (ws / "exact.txt").write_bytes(b"y" * 10)
    assert read_file(ws, "exact.txt", max_bytes=10) == "y" * 10


def test_bytes_that_are_not_utf8_are_replaced(ws: Path) -> None:
    (ws / "bin.dat").write_bytes(b"ok\xff\xfe")
    assert read_file(ws, "bin.dat") == "ok\ufffd\ufffd"


def test_reading_a_directory_is_a_tool_error(ws: Path) -> None:
    with pytest.raises(ToolError, match="not a file"):
        read_file(ws, "docs")
    with pytest.raises(ToolError):
        read_file(ws, ".")


def test_reading_a_missing_file_is_a_tool_error(ws: Path) -> None:
    with pytest.raises(ToolError):
        read_file(ws, "missing.txt")


def test_listing_a_file_is_a_tool_error(ws: Path) -> None:
    with pytest.raises(ToolError, match="not a directory"):
        list_directory(ws, "b.txt")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_reading_a_named_pipe_is_a_tool_error_and_does_not_block(ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    with pytest.raises(ToolError):
        read_file(ws, "pipe")
