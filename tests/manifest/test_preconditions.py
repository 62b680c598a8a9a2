"""Preconditions evaluated on this machine through the real LocalTransport (subprocesses, no shell)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from aris_queue_mcp.manifest import load_manifest
from aris_queue_mcp.preconditions import check_preconditions, shell_path
from aris_queue_mcp.runspec import build_run_spec
from aris_queue_mcp.transport.base import CommandResult
from aris_queue_mcp.transport.local import LocalTransport

ROOT = Path(__file__).resolve().parents[2]


class CountingTransport(LocalTransport):
    """The real local transport, recording every command so tests can count round trips."""

    def __init__(self) -> None:
        super().__init__("testhost")
        self.calls: list[list[str]] = []

    def run(self, argv: list[str], *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        self.calls.append(list(argv))
        return super().run(argv, timeout=timeout, stdin=stdin)


def check(text: str, folder: Path):
    manifest = load_manifest(text, base_dir=folder)
    host = CountingTransport()
    return check_preconditions(manifest, build_run_spec(manifest), host), host


def test_teacher_student_students_wait_for_their_teacher(tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples" / "teacher_student.yaml", tmp_path / "m.yaml")
    manifest = load_manifest(tmp_path / "m.yaml")
    report = check_preconditions(manifest, build_run_spec(manifest), LocalTransport())
    by_id = {j.id: j for j in report.jobs}
    assert report.blocked_count == 0 and report.ready_count == 8
    assert by_id["student_N384_s42"].waits_for == ["teacher_N384"]
    assert by_id["student_N512_s201"].waits_for == ["teacher_N512"]
    assert by_id["teacher_N384"].waits_for == []
    facts = report.host_facts
    assert facts.cwd == str(tmp_path) and facts.cwd_exists is True
    assert facts.python3_version and facts.python3_version[0] == "3"
    assert facts.disk_free_gb is not None and facts.disk_free_gb > 0


def test_missing_and_present_paths_in_one_round_trip(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shard_1.npz").write_text("x")
    report, host = check(
        """
project: p
preconditions:
  - {type: path_exists, path: "data/shard_{n}.npz"}
  - {type: checkpoint_exists, path: "data/*.npz"}
grid: {n: [1, 2, 3]}
template: {cmd: echo}
""",
        tmp_path,
    )
    assert [j.ready for j in report.jobs] == [True, False, False]
    assert report.jobs[1].blocked_reasons == [
        f"path_exists: data/shard_2.npz does not exist (relative to {tmp_path})"
    ]
    assert report.blocked_count == 2
    assert len(host.calls) == 1  # every path of every job in a single host command


def test_many_jobs_cost_one_probe(tmp_path: Path) -> None:
    report, host = check(
        """
project: p
preconditions:
  - {type: checkpoint_exists, path: "ckpt/${a}_${b}.pt"}
  - {type: command, run: "true"}
grid: {a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], b: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}
template: {cmd: echo}
""",
        tmp_path,
    )
    assert report.blocked_count == 100
    assert len(host.calls) == 2  # the probe, and the one distinct command


def test_command_precondition_runs_in_cwd(tmp_path: Path) -> None:
    folder = tmp_path / "my dir"
    folder.mkdir()
    text = "project: p\npreconditions: [{type: command, run: 'test -f marker'}]\njobs: [{id: a, cmd: x}]\n"
    report, host = check(text, folder)
    assert not report.jobs[0].ready
    assert report.jobs[0].blocked_reasons == ["command `test -f marker` failed (exit 1)"]
    assert host.calls[1][:2] == ["bash", "-c"]
    (folder / "marker").write_text("")
    report, _ = check(text, folder)
    assert report.jobs[0].ready


def test_command_failure_reports_last_stderr_line(tmp_path: Path) -> None:
    text = (
        "project: p\npreconditions: [{type: command, run: 'python3 -c \"import no_such_module_xyz\"'}]\n"
        "jobs: [{id: a, cmd: x}]\n"
    )
    report, _ = check(text, tmp_path)
    assert "ModuleNotFoundError" in report.jobs[0].blocked_reasons[0]


def test_disk_free(tmp_path: Path) -> None:
    report, _ = check(
        """
project: p
phases:
  - name: small
    preconditions: [{type: disk_free_gb, min: 0}]
    jobs: [{id: a, cmd: x}]
  - name: huge
    preconditions: [{type: disk_free_gb, min: 1000000000, path: not/yet/made}]
    jobs: [{id: b, cmd: x}]
""",
        tmp_path,
    )
    a, b = report.jobs
    assert a.ready
    assert not b.ready and b.blocked_reasons[0].startswith("disk_free_gb:")
    assert "need 1e+09" in b.blocked_reasons[0]


def test_missing_cwd_blocks_every_job(tmp_path: Path) -> None:
    report, _ = check("project: p\ncwd: nowhere\njobs: [{id: a, cmd: x}, {id: b, cmd: x}]\n", tmp_path)
    assert report.host_facts.cwd_exists is False
    assert report.blocked_count == 2
    assert "does not exist on testhost" in report.jobs[0].blocked_reasons[0]


def test_probe_failure_is_reported_not_raised(tmp_path: Path) -> None:
    text = (
        "project: p\npython: 'false'\npreconditions: [{type: path_exists, path: x}]\n"
        "jobs: [{id: a, cmd: x}]\n"
    )
    report, _ = check(text, tmp_path)
    assert report.host_facts.error and "could not run false on testhost" in report.host_facts.error
    assert not report.jobs[0].ready and "not checked" in report.jobs[0].blocked_reasons[0]


def test_gpu_facts_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0, 1200, 81920\\n1, 3, 81920\\n'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    report, _ = check("project: p\njobs: [{id: a, cmd: x}]\n", tmp_path)
    assert report.host_facts.gpus_seen == ["0, 1200, 81920", "1, 3, 81920"]
    assert report.host_facts.gpu_error is None


def test_no_nvidia_smi_gives_gpu_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate' >&2\nexit 9\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    report, _ = check("project: p\njobs: [{id: a, cmd: x}]\n", tmp_path)
    assert report.host_facts.gpus_seen == []
    assert "NVIDIA-SMI has failed" in (report.host_facts.gpu_error or "")


def test_waits_for_is_transitive_and_glob_aware(tmp_path: Path) -> None:
    report, _ = check(
        """
project: p
jobs:
  - {id: make, cmd: x, output_check: "out/run_*.json"}
  - {id: mid, cmd: x, depends_on: [make]}
  - {id: use, cmd: x, depends_on: [mid]}
  - {id: other, cmd: x}
preconditions: [{type: checkpoint_exists, path: out/run_7.json}]
""",
        tmp_path,
    )
    by_id = {j.id: j for j in report.jobs}
    assert by_id["use"].ready and by_id["use"].waits_for == ["make"]
    assert by_id["mid"].waits_for == ["make"]
    assert not by_id["make"].ready  # a job does not wait for itself
    assert not by_id["other"].ready


def test_shell_path_keeps_home_expansion() -> None:
    assert shell_path("~") == '"$HOME"'
    assert shell_path("~/my dir") == "\"$HOME\"/'my dir'"
    assert shell_path("/a b/$(x)") == "'/a b/$(x)'"
