"""The file tools (actors/veronica/files.py): list and read, never outside the workspace.

The functions alone; then Veronica answering requests on a real nats-server (refusals as notes,
malformed requests as error replies); then the whole system, where the notes reach the model."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from tests.fakellm import FakeLLM, text_of
from tests.system import NatsServer, System, stream_messages
from victoria.actors.agent.workflow import OBSERVATION_CHARS, clipped
from victoria.actors.veronica import files
from victoria.actors.veronica.actor import Veronica
from victoria.actors.veronica.files import (
    MAX_LIST,
    MAX_READ_BYTES,
    list_directory,
    read_file,
    resolve_inside,
    scan_directory,
)
from victoria.errors import OutsideWorkspace, ToolError
from victoria.events import subjects
from victoria.events.codec import encode, files_reply_decoder
from victoria.events.contracts import FilesReply, FilesRequest
from victoria.runtime import connection, streams
from victoria.runtime.config import Config


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
    assert text == (
        "[truncated: the file has 100 bytes; only line 1 is shown, cut at 10 bytes; read on with offset=2]\n"
        "     1\t" + "x" * 10
    )


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


# --- special files: devices, sockets, pipes --------------------------------------------------------


def make_device(path: Path) -> None:
    """A character device like /dev/null (1, 3) or /dev/zero (1, 5); skips where mknod is not allowed."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    except (PermissionError, AttributeError) as exc:
        pytest.skip(f"cannot make a device node here: {exc}")


def test_a_device_node_inside_the_workspace_is_refused_as_not_a_regular_file(ws: Path) -> None:
    make_device(ws / "zero")
    with pytest.raises(ToolError, match=r"refused: 'zero' is a character device file, not a regular file"):
        read_file(ws, "zero")
    with pytest.raises(ToolError, match="not a directory"):
        list_directory(ws, "zero")


def test_a_symlink_to_dev_zero_is_refused_because_it_points_out(ws: Path) -> None:
    (ws / "zero").symlink_to("/dev/zero")
    with pytest.raises(OutsideWorkspace, match="outside the workspace"):
        read_file(ws, "zero")
    assert "zero" not in list_directory(ws)


def test_a_unix_socket_inside_the_workspace_is_refused(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ws)  # a socket's path is limited to about 100 bytes: bind by a short name
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("sock")
        server.listen()
        with pytest.raises(ToolError, match=r"refused: 'sock' is a socket, not a regular file"):
            read_file(ws, "sock")
        assert "sock" in list_directory(ws)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_with_a_note_and_is_never_waited_on(ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"refused: 'pipe' is a named pipe \(FIFO\), not a regular file"):
        read_file(ws, "pipe")
    assert time.monotonic() - started < 1.0


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_link_inside_to_a_named_pipe_inside_is_refused_too(ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    (ws / "alias").symlink_to("pipe")
    with pytest.raises(ToolError, match="named pipe"):
        read_file(ws, "alias")


# --- binary and huge files --------------------------------------------------------------------------


def test_a_file_with_nul_bytes_is_binary_and_its_content_is_not_shown(ws: Path) -> None:
    (ws / "data.bin").write_bytes(b"abc\x00def" + b"secret-looking" * 10)
    text = read_file(ws, "data.bin")
    assert text.startswith("'data.bin' is a binary file of 147 bytes; its content is not shown.")
    assert "secret-looking" not in text
    assert "First 16 bytes: 61 62 63 00 64 65 66" in text


def test_a_binary_file_is_named_by_its_kind_when_its_first_bytes_tell(ws: Path) -> None:
    (ws / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    assert read_file(ws, "logo.png").startswith("'logo.png' is a binary file (PNG image) of 272 bytes;")


def test_a_file_mostly_of_bytes_that_are_not_utf8_is_binary(ws: Path) -> None:
    (ws / "noise").write_bytes(bytes(range(128, 256)) * 4)
    assert "is a binary file of 512 bytes" in read_file(ws, "noise")


def test_text_with_a_few_bytes_that_are_not_utf8_is_still_text(ws: Path) -> None:
    (ws / "latin1.txt").write_bytes("Café au lait, s'il vous plaît. ".encode("latin-1") * 20)
    text = read_file(ws, "latin1.txt")
    assert text.startswith("Caf\ufffd au lait")


def test_an_empty_file_reads_as_empty_text(ws: Path) -> None:
    (ws / "empty").touch()
    assert read_file(ws, "empty") == ""


def test_a_huge_file_is_read_only_up_to_the_limit_and_the_note_gives_its_size(ws: Path) -> None:
    size = 8 * 1024**3  # sparse: reading it whole would take minutes and 8 GiB
    with (ws / "huge.log").open("wb") as f:
        f.write(b"line of text\n" * 10_000)
        f.truncate(size)
    started = time.monotonic()
    text = read_file(ws, "huge.log")
    assert time.monotonic() - started < 2.0
    note, _, body = text.partition("\n")
    shown = len(body.splitlines())  # numbered whole lines, as many as fit in MAX_READ_BYTES
    assert note == (
        f"[truncated: the file has {size} bytes; only lines 1-{shown} are shown; read on with offset={shown + 1}]"
    )
    assert body.startswith("     1\tline of text\n     2\tline of text\n")
    assert MAX_READ_BYTES - 20 < len(body.encode()) + 1 <= MAX_READ_BYTES


def test_a_cut_never_splits_a_character_into_a_replacement_sign(ws: Path) -> None:
    (ws / "ru.txt").write_text("я" * 100, encoding="utf-8")  # two bytes each
    text = read_file(ws, "ru.txt", max_bytes=11)
    assert text.splitlines()[1] == "     1\t" + "я" * 5


def test_a_huge_listing_starts_with_a_note_of_how_many_entries_were_left_out(tmp_path: Path) -> None:
    for i in range(MAX_LIST + 34):
        (tmp_path / f"f{i:04d}").touch()
    listing = scan_directory(tmp_path)
    assert len(listing.names) == MAX_LIST
    lines = listing.text().splitlines()
    assert lines[0] == (
        f"[{MAX_LIST} of {MAX_LIST + 34} entries shown; 34 left out. "
        "List a subdirectory, or read a file by its name.]"
    )
    assert lines[1:] == listing.names


def test_a_listing_cut_by_the_callers_own_limit_has_no_note(ws: Path) -> None:
    listing = scan_directory(ws, ".", limit=2)
    assert listing.text() == "A.md\nb.txt"


def test_a_directory_larger_than_the_scan_limit_says_more_than(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_SCAN", 50)
    monkeypatch.setattr(files, "MAX_LIST", 10)
    for i in range(60):
        (tmp_path / f"f{i:04d}").touch()
    assert (
        scan_directory(tmp_path)
        .text()
        .startswith("[10 of more than 50 entries shown; the rest are left out.")
    )


def test_names_that_are_not_utf8_or_hold_a_newline_are_shown_safely(ws: Path) -> None:
    os.close(os.open(os.fsencode(ws) + b"/caf\xe9", os.O_CREAT | os.O_WRONLY, 0o644))
    (ws / "two\nlines").touch()
    names = list_directory(ws)
    assert "caf\ufffd" in names and "two\ufffdlines" in names
    assert all(name.encode("utf-8") for name in names)  # no lone surrogates: they can go on the bus


# --- paths ------------------------------------------------------------------------------------------


def test_a_link_in_the_middle_of_a_path_that_leads_out_is_refused(ws: Path, outside: Path) -> None:
    (ws / "docs" / "up").symlink_to(outside.parent, target_is_directory=True)
    with pytest.raises(OutsideWorkspace, match="a symbolic link on the way leads out"):
        read_file(ws, "docs/up/outside/secret.txt")
    with pytest.raises(OutsideWorkspace):
        list_directory(ws, "docs/up/outside")
    with pytest.raises(OutsideWorkspace):
        read_file(ws, "docs/up/ws/b.txt/../../outside/secret.txt")


def test_a_link_in_the_middle_of_a_path_that_stays_inside_is_fine(ws: Path) -> None:
    (ws / "Zeta" / "back").symlink_to("../docs", target_is_directory=True)
    assert read_file(ws, "Zeta/back/guide.md") == "Привет, мир.\n"


def test_a_missing_workspace_is_named_in_a_tool_error(tmp_path: Path) -> None:
    gone = tmp_path / "no-such-workspace"
    with pytest.raises(ToolError, match=r"the workspace '.*no-such-workspace' does not exist"):
        list_directory(gone)
    with pytest.raises(ToolError, match="does not exist"):
        read_file(gone, "b.txt")


def test_a_workspace_that_is_a_file_is_named_in_a_tool_error(ws: Path) -> None:
    with pytest.raises(ToolError, match=r"the workspace '.*b\.txt' is not a directory"):
        list_directory(ws / "b.txt")
    with pytest.raises(ToolError, match="is not a directory"):
        read_file(ws / "b.txt", "x")


def test_a_path_too_long_is_refused_before_it_reaches_the_filesystem(ws: Path) -> None:
    with pytest.raises(ToolError, match=r"path is too long \(5000 characters; at most 1024\)"):
        read_file(ws, "a/" * 2500)
    with pytest.raises(ToolError, match="has a name longer than 255 bytes"):
        read_file(ws, "docs/" + "n" * 300)


@pytest.mark.parametrize(
    "path", ["C:\\Windows\\win.ini", "c:/Users/x", "D:", "\\\\server\\share\\x", "\\etc\\passwd"]
)
def test_a_windows_drive_or_network_path_is_refused(ws: Path, path: str) -> None:
    with pytest.raises(OutsideWorkspace, match="Windows drive or network path"):
        read_file(ws, path)


@pytest.mark.parametrize("path", ["docs\\guide.md", "..\\..\\etc\\passwd", "docs/..\\.."])
def test_a_backslash_is_refused_with_a_hint_to_use_slashes(ws: Path, path: str) -> None:
    with pytest.raises(ToolError, match="contains a backslash: separate names with '/'"):
        read_file(ws, path)


def test_a_path_through_a_file_says_which_name_is_not_a_directory(ws: Path) -> None:
    with pytest.raises(ToolError, match=r"'b\.txt/x' does not exist: 'b\.txt' is not a directory"):
        read_file(ws, "b.txt/x")


# --- races: a name swapped between the check and the open -------------------------------------------


def swap_after_resolving(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    resolve = files._resolve

    def resolve_then_swap(root: Path, relative: str) -> Path:
        path = resolve(root, relative)
        swap()
        return path

    monkeypatch.setattr(files, "_resolve", resolve_then_swap)


def test_a_file_swapped_for_a_link_out_after_the_check_is_not_followed(
    ws: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def swap() -> None:
        (ws / "b.txt").unlink()
        (ws / "b.txt").symlink_to(outside / "secret.txt")

    swap_after_resolving(monkeypatch, swap)
    with pytest.raises(ToolError, match="changed while it was being opened"):
        read_file(ws, "b.txt")


def test_a_directory_swapped_for_a_link_out_after_the_check_is_not_followed(
    ws: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (outside / "guide.md").write_text("outside guide\n", encoding="utf-8")

    def swap() -> None:
        (ws / "docs").rename(ws / "docs-old")
        (ws / "docs").symlink_to(outside, target_is_directory=True)

    swap_after_resolving(monkeypatch, swap)
    with pytest.raises(ToolError, match="changed while it was being opened"):
        read_file(ws, "docs/guide.md")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_file_swapped_for_a_pipe_between_lstat_and_open_is_caught_by_fstat(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.mkfifo(ws / "pipe")
    real_stat = os.stat

    def stat_then_swap(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)
        if path == "b.txt" and kwargs.get("dir_fd") is not None:
            os.replace(ws / "pipe", ws / "b.txt")  # after lstat said: a regular file
        return result

    monkeypatch.setattr(os, "stat", stat_then_swap)
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"'b\.txt' is a named pipe \(FIFO\), not a regular file"):
        read_file(ws, "b.txt")
    assert time.monotonic() - started < 1.0


# --- the agent's view --------------------------------------------------------------------------------


def test_the_agent_shows_the_model_a_long_result_cut_with_a_note() -> None:
    assert clipped("short") == "short"
    long = "[truncated: the file has 70000 bytes; only the first 65536 are shown]\n" + "x" * 20_000
    shown = clipped(long)
    assert shown.startswith("[truncated: the file has 70000 bytes")  # Veronica's note comes first
    assert shown.endswith(
        f"\n[cut: only the first {OBSERVATION_CHARS} of {len(long)} characters of this result are shown]"
    )


# --- through Veronica on a real nats-server ----------------------------------------------------------


@pytest.fixture
async def veronica(nats_server: NatsServer, ws: Path) -> AsyncIterator[NATS]:
    """Veronica serving ``ws``, and a client connected to the same server."""
    nc = await connection.connect(nats_server.url, name="files-sandbox-test")
    await streams.ensure_streams(nc.jetstream())
    actor = Veronica(nc, Config.from_env({"VICTORIA_WORKSPACE": str(ws), "VICTORIA_INSTANCE": "v-files"}))
    await actor.start()
    yield nc
    await actor.stop()
    await nc.close()


async def ask(nc: NATS, payload: bytes) -> FilesReply:
    msg = await nc.request(subjects.VERONICA_FILES, payload, timeout=5)
    return files_reply_decoder.decode(msg.data)


@pytest.mark.usefixtures("strict_loop")
async def test_veronica_answers_every_refusal_with_a_clear_note_and_never_blocks(
    veronica: NATS, ws: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_device(ws / "zero")
    (ws / "devzero").symlink_to("/dev/zero")
    os.mkfifo(ws / "pipe")
    (ws / "leak").symlink_to(outside, target_is_directory=True)
    (ws / "blob.bin").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(200))
    os.close(os.open(os.fsencode(ws) + b"/caf\xe9", os.O_CREAT | os.O_WRONLY, 0o644))
    monkeypatch.chdir(ws)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind("sock")
        server.listen()
        refused = {
            "zero": "refused: 'zero' is a character device file, not a regular file",
            "devzero": "refused: 'devzero' is outside the workspace (a symbolic link on the way leads out)",
            "pipe": "refused: 'pipe' is a named pipe (FIFO), not a regular file",
            "sock": "refused: 'sock' is a socket, not a regular file",
            "leak/secret.txt": "refused: 'leak/secret.txt' is outside the workspace (a symbolic link",
            "../outside/secret.txt": "refused: '../outside/secret.txt' is outside the workspace",
            "/etc/passwd": "refused: '/etc/passwd' is an absolute path",
            "C:\\boot.ini": "is a Windows drive or network path",
            "x" * 2000: "path is too long",
        }
        for path, note in refused.items():
            reply = await asyncio.wait_for(ask(veronica, encode(FilesRequest(op="read", path=path))), 5)
            assert not reply.ok and reply.error is not None and note in reply.error, (path, reply)
    binary = await ask(veronica, encode(FilesRequest(op="read", path="blob.bin")))
    assert binary.ok and binary.output.startswith("'blob.bin' is a binary file (ELF executable) of 208 bytes")
    listing = await ask(veronica, encode(FilesRequest(op="list", path=".")))
    assert listing.ok and "caf\ufffd" in listing.entries and "leak/" not in listing.entries


@pytest.mark.usefixtures("strict_loop")
async def test_veronica_names_a_task_workspace_that_does_not_exist(veronica: NATS, tmp_path: Path) -> None:
    request = FilesRequest(op="list", path=".", workspace=str(tmp_path / "gone"))
    reply = await ask(veronica, encode(request))
    assert not reply.ok and reply.error is not None and "does not exist" in reply.error
    reply = await ask(veronica, encode(FilesRequest(op="read", path="b.txt", workspace="bad\x00place")))
    assert not reply.ok and reply.error is not None and "the workspace" in reply.error


@pytest.mark.usefixtures("strict_loop")
@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'{"type": "files_request"}',
        b'{"type": "files_request", "op": "delete", "path": "b.txt"}',
        b'{"type": "files_request", "op": "read", "path": 42}',
        b'{"type": "files_request", "op": "read", "path": "b.txt", "workspace": ["/"]}',
        b'{"type": "files_request", "op": "list", "limit": "all"}',
        b'{"type": "services_request"}',
    ],
)
async def test_a_malformed_files_request_gets_an_error_reply_and_veronica_keeps_serving(
    veronica: NATS, payload: bytes
) -> None:
    reply = await ask(veronica, payload)
    assert not reply.ok and reply.error is not None and reply.error.startswith("bad request:")
    after = await ask(veronica, encode(FilesRequest(op="read", path="b.txt")))
    assert (after.ok, after.output) == (True, "bee\n")


# --- the whole system: `victoria up`, a model that calls the tools -----------------------------------


class ToolCallingLLM(FakeLLM):
    """Each step of a task calls the next tool of ``reads``; then it finishes."""

    reads: tuple[tuple[str, str], ...] = (
        ("read_file", "zero"),
        ("read_file", "../../etc/passwd"),
        ("read_file", "logo.png"),
        ("read_file", "huge.log"),
        ("list_directory", "many"),
    )

    def answer(self, messages: list[dict[str, Any]]) -> str:
        system = next((text_of(m) for m in messages if m.get("role") == "system"), "")
        if "carrying out a plan" not in system:
            return super().answer(messages)
        done = sum(1 for m in messages if m.get("role") == "assistant")
        if done < len(self.reads):
            tool, path = self.reads[done]
            return json.dumps({"tool": tool, "args": {"path": path}})
        return json.dumps({"tool": "finish", "args": {"answer": "Looked at the files."}})


@pytest.mark.e2e
def test_refusals_and_cuts_reach_the_model_and_the_task_output_as_notes_not_crashes(
    tmp_path: Path, ws: Path
) -> None:
    make_device(ws / "zero")
    (ws / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with (ws / "huge.log").open("wb") as f:
        f.write(b"log line\n" * 10_000)
        f.truncate(3 * 1024**3)
    (ws / "many").mkdir()
    for i in range(MAX_LIST + 50):
        (ws / "many" / f"entry-{i:04d}.txt").touch()
    fake = ToolCallingLLM().start()
    system = System(tmp_path / "data", env={"VICTORIA_LLM_URL": fake.url, "VICTORIA_WORKSPACE": str(ws)})
    try:
        system.start()
        body = system.run({"goal": "Look at the odd files", "task_type": "agent", "max_steps": 8})
        assert body["status"] == "completed", body
        assert body["output"] == "Looked at the files."
        prompts = fake.prompts_text()
        assert "refused: 'zero' is a character device file, not a regular file" in prompts
        assert "refused: '../../etc/passwd' is outside the workspace" in prompts
        assert "'logo.png' is a binary file (PNG image) of 108 bytes; its content is not shown." in prompts
        assert f"[truncated: the file has {3 * 1024**3} bytes; only lines 1-" in prompts
        assert "characters of this result are shown]" in prompts  # the agent's own cut, noted too
        assert f"[{MAX_LIST} of {MAX_LIST + 50} entries shown; 50 left out." in prompts
        assert "root:" not in prompts

        # A files task shows Veronica's answer itself: a binary file's note is its output...
        body = system.run({"goal": "Read the file 'logo.png'", "task_type": "files"})
        assert body["status"] == "completed", body
        assert body["output"].startswith("'logo.png' is a binary file (PNG image) of 108 bytes")
        # ... and a refusal is the reason the task did the work itself instead.
        body = system.run({"goal": "Read the file 'zero'", "task_type": "files"})
        assert body["status"] == "completed", body
        nats_url = system.bus_url()
        details = [
            e.get("detail", "")
            for e in stream_messages(nats_url, f"victoria.task.*.{body['task_id']}.*")
            if e.get("stage") == "fallback"
        ]
        assert details == [
            "delegation failed: refused: 'zero' is a character device file, not a regular file"
        ]
    finally:
        system.close()  # fails on any traceback in the system's log
        fake.stop()
