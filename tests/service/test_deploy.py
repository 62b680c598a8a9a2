"""deploy: a deterministic zipapp, uploaded once per hash, into 0700 directories; old Pythons refused."""

from __future__ import annotations

import stat
import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from aris_queue_mcp import deploy
from aris_queue_mcp.client import AgentClient
from aris_queue_mcp.errors import DeployError
from aris_queue_mcp.transport import LocalTransport


def test_zipapp_is_deterministic_and_clean(tmp_path: Path) -> None:
    data, sha = deploy.build_agent_zipapp()
    again = deploy._build_zip(deploy._package_dir())
    assert again == data
    names = zipfile.ZipFile(BytesIO(data)).namelist()
    assert names[0] == "__main__.py" and "remote_agent/__main__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert len(sha) == 64


def test_ensure_agent_uploads_once(tmp_path: Path) -> None:
    t = LocalTransport()
    root = tmp_path / "root"
    seen: list[str] = []
    first = deploy.ensure_agent(t, str(root), progress=lambda d, n, m: seen.append(m))
    assert first.uploaded and Path(first.archive).is_file() and first.python_version.startswith("3.")
    assert (Path(first.path) / "__main__.py").is_file()  # unpacked, so Python caches its bytecode
    assert list(Path(first.path).rglob("*.pyc"))
    assert any("uploading" in m for m in seen)
    mtime = Path(first.archive).stat().st_mtime_ns
    second = deploy.ensure_agent(t, str(root))
    assert not second.uploaded and second.path == first.path
    assert Path(first.archive).stat().st_mtime_ns == mtime
    assert [p.name for p in root.glob("agent-*.pyz")] == [Path(first.archive).name]
    for d in (root, root / "runs"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert AgentClient(t, first.path).version()["ok"] is True


def test_run_dir_is_private(tmp_path: Path) -> None:
    t = LocalTransport()
    install = deploy.ensure_agent(t, str(tmp_path / "root"))
    run_dir = deploy.create_run_dir(t, install, "r-1", '{"x": 1}\n')
    assert stat.S_IMODE(Path(run_dir).stat().st_mode) == 0o700
    assert stat.S_IMODE((Path(run_dir) / "spec.json").stat().st_mode) == 0o600
    with pytest.raises(DeployError):
        deploy.create_run_dir(t, install, "../evil", "{}")


def test_old_python_is_refused_with_host_and_version(tmp_path: Path) -> None:
    fake = tmp_path / "python3.6"
    fake.write_text("#!/bin/sh\necho 3.6.9\n")
    fake.chmod(0o755)
    with pytest.raises(DeployError) as ei:
        deploy.ensure_agent(LocalTransport(label="old-box"), str(tmp_path / "root"), str(fake))
    assert "old-box" in str(ei.value) and "3.6.9" in str(ei.value) and "python:" in str(ei.value)


def test_missing_python_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="cannot run"):
        deploy.ensure_agent(LocalTransport(), str(tmp_path / "root"), str(tmp_path / "no-python"))


def test_relative_remote_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeployError, match="absolute"):
        deploy.expand_remote_path(LocalTransport(), "relative/root")
    assert deploy.expand_remote_path(LocalTransport(), "~/x") == str(Path.home() / "x")
