"""``aris-queue`` as a person or a script uses it: real subprocesses, local mode, simulated GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.helpers import manifest, train_cmd

REPO = Path(__file__).resolve().parents[2]


def cli(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(
        [sys.executable, "-m", "aris_queue_mcp.cli", "--project-dir", str(project), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"aris-queue {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def write_manifest(tmp_path: Path, **fields: Any) -> Path:
    m = manifest("cli_run", root=tmp_path / "remote", cwd=tmp_path / "work", **fields)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(m))
    return path


def test_expand_human_and_json(tmp_path: Path) -> None:
    out = cli(tmp_path, "expand", str(REPO / "examples" / "grid_sweep.yaml")).stdout
    assert "36 jobs" in out
    data = json.loads(cli(tmp_path, "expand", "--json", str(REPO / "examples" / "grid_sweep.yaml")).stdout)
    assert data["total"] == 36


def test_bad_manifest_exit_code_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("project: p\ngrid: {seed: 1}\ntemplate: {cmd: run}\nmax_paralel: 2\n")
    p = cli(tmp_path, "--json", "expand", str(path), check=False)
    assert p.returncode == 2
    errors = json.loads(p.stdout)["errors"]
    paths = {e["path"] for e in errors}
    assert "grid" in paths and "max_paralel" in paths
    assert any("grid.seed must be a list" in e["message"] for e in errors)  # never split into characters
    assert any("max_parallel" in e["message"] for e in errors)


def test_launch_wait_status_json_logs_and_summary(tmp_path: Path, simgpu: Any) -> None:
    jobs = [{"id": f"s{i}", "cmd": train_cmd(duration=0.2, output=f"o/s{i}.json")} for i in (1, 10)]
    jobs.append({"id": "after", "cmd": "echo done", "depends_on": ["s1", "s10"]})
    path = write_manifest(tmp_path, jobs=jobs)
    p = cli(tmp_path, "launch", "--wait", str(path))
    assert "started: run cli_run-" in p.stdout and "## Phases" in p.stdout

    status = json.loads(cli(tmp_path, "status", "--json").stdout)
    assert status["run_id"].startswith("cli_run-")
    assert status["counts"]["completed"] == 3
    assert {(j["id"], j["status"], j["attempts"]) for j in status["jobs"]} == {
        ("s1", "completed", 1),
        ("s10", "completed", 1),
        ("after", "completed", 1),
    }
    run_id = status["run_id"]
    logs = cli(tmp_path, "logs", run_id, "after").stdout
    assert "done" in logs
    assert run_id in cli(tmp_path, "runs").stdout
    assert (tmp_path / "experiment_queue" / run_id / "summary.md").is_file()


def test_cancel_needs_a_job_or_all(tmp_path: Path) -> None:
    p = cli(tmp_path, "cancel", "some-run", check=False)
    assert p.returncode == 1 and "--all" in p.stderr


def test_the_teacher_student_example_runs_on_simulated_gpus(tmp_path: Path) -> None:
    example = tmp_path / "teacher_student.yaml"
    example.write_text((REPO / "examples" / "teacher_student.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home")}
    argv = [
        "--project-dir",
        str(tmp_path),
        "--json",
        "launch",
        str(example),
        "--simulate-gpus",
        "2",
        "--wait",
    ]
    p = subprocess.run(
        [sys.executable, "-m", "aris_queue_mcp.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    final = json.loads(p.stdout[p.stdout.index("\n{") :])  # the launch result, then the final status
    assert final["counts"]["completed"] == 8
    assert len(list((tmp_path / "figures").glob("distill_N*_seed*.json"))) == 6
    assert (tmp_path / "home" / ".aris_queue" / "runs" / final["run_id"]).is_dir()
