"""LocalTransport: argv without a shell, timeouts that kill, atomic file writes with modes."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from aris_queue_mcp.errors import TransportError
from aris_queue_mcp.transport import LocalTransport, Transport


def test_is_a_transport() -> None:
    assert isinstance(LocalTransport(), Transport)


def test_run_returns_output_and_exit_code() -> None:
    t = LocalTransport()
    res = t.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (res.exit_code, res.stdout, res.stderr, res.ok) == (3, "out\n", "err\n", False)


def test_stdin_is_passed() -> None:
    assert LocalTransport().run(["cat"], stdin=b"hello").stdout == "hello"


def test_argv_reaches_no_shell(tmp_path: Path) -> None:
    evil = f"$(touch {tmp_path}/pwned); `touch {tmp_path}/pwned2` ; * | && >x"
    res = LocalTransport().run(["printf", "%s", evil])
    assert res.stdout == evil
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    t = LocalTransport(label="here")
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"here: command timed out after 0.5s: sh -c"):
        # The grandchild sleeps too: only killing the whole group stops it from writing the marker.
        t.run(["sh", "-c", f"(sleep 0.7; touch {marker}) & sleep 30"], timeout=0.5)
    assert time.monotonic() - start < 5
    time.sleep(1.0)
    assert not marker.exists()


def test_missing_program_is_a_transport_error() -> None:
    with pytest.raises(TransportError, match="local: cannot start"):
        LocalTransport().run(["/nonexistent/program"])


def test_put_file_is_atomic_and_sets_mode(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"data")
    dest = tmp_path / "dest" / "f.sh"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    t = LocalTransport()
    t.put_file(str(src), str(dest), mode=0o700)
    assert dest.read_bytes() == b"data"
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o700
    assert os.listdir(dest.parent) == ["f.sh"]  # no temp file left behind
    t.put_file(str(src), str(dest))
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600


def test_put_file_expands_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    src = tmp_path / "src"
    src.write_bytes(b"x")
    t = LocalTransport()
    t.put_file(str(src), "~/copied")
    assert t.read_file("~/copied") == b"x"
    assert t.home() == str(tmp_path)


def test_put_file_into_missing_dir_is_a_transport_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(b"x")
    with pytest.raises(TransportError, match="does the directory exist"):
        LocalTransport().put_file(str(src), str(tmp_path / "nope" / "f"))


def test_read_missing_file_names_host_and_path(tmp_path: Path) -> None:
    with pytest.raises(TransportError, match=rf"box: no such file: {tmp_path}/missing"):
        LocalTransport(label="box").read_file(str(tmp_path / "missing"))
