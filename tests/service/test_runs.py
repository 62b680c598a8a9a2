"""The local run registry: create, load, list newest first, find by manifest hash, safe ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from aris_queue_mcp.errors import ArisQueueError, RunNotFoundError
from aris_queue_mcp.runs import RunRecord, RunRegistry, validate_run_id


def _record(run_id: str, created: str, sha: str = "abc") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        project="p",
        target="local",
        remote_root="/r",
        remote_run_dir=f"/r/runs/{run_id}",
        manifest_sha256=sha,
        created_at=created,
        local=True,
    )


def test_create_load_list(tmp_path: Path) -> None:
    reg = RunRegistry(tmp_path)
    reg.create(_record("p-1", "2026-01-01T00:00:00Z"), "project: p\n", '{"x": 1}')
    reg.create(_record("p-2", "2026-01-02T00:00:00Z", sha="def"), "project: p\n", "{}")
    d = tmp_path / "experiment_queue" / "p-1"
    assert (d / "manifest.yaml").read_text() == "project: p\n"
    assert (d / "spec.json").read_text() == '{"x": 1}'
    assert reg.load("p-1").remote_run_dir == "/r/runs/p-1"
    assert [r.run_id for r in reg.list()] == ["p-2", "p-1"]
    assert reg.latest().run_id == "p-2"
    assert [r.run_id for r in reg.find_by_manifest_sha("abc")] == ["p-1"]
    assert not list(d.glob(".tmp-*"))


def test_missing_run_lists_known_ids(tmp_path: Path) -> None:
    reg = RunRegistry(tmp_path)
    with pytest.raises(RunNotFoundError, match="launch_queue"):
        reg.latest()
    reg.create(_record("p-1", "2026-01-01T00:00:00Z"), "", "{}")
    with pytest.raises(RunNotFoundError, match="known runs: p-1"):
        reg.load("nope")


def test_create_twice_fails(tmp_path: Path) -> None:
    reg = RunRegistry(tmp_path)
    reg.create(_record("p-1", "2026-01-01T00:00:00Z"), "", "{}")
    with pytest.raises(ArisQueueError, match="already exists"):
        reg.create(_record("p-1", "2026-01-01T00:00:00Z"), "", "{}")


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "-x", "a b", "a\nb", ".hidden", "x" * 200, "a..b"])
def test_unsafe_run_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ArisQueueError, match="invalid run id"):
        validate_run_id(bad)
    with pytest.raises(ArisQueueError):
        RunRegistry(tmp_path).load(bad)


def test_project_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARIS_PROJECT_DIR", str(tmp_path))
    assert RunRegistry().root == tmp_path / "experiment_queue"


def test_damaged_entry_does_not_hide_others(tmp_path: Path) -> None:
    reg = RunRegistry(tmp_path)
    reg.create(_record("p-1", "2026-01-01T00:00:00Z"), "", "{}")
    bad = tmp_path / "experiment_queue" / "p-0"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    assert [r.run_id for r in reg.list()] == ["p-1"]
    with pytest.raises(ArisQueueError, match="damaged"):
        reg.load("p-0")
