"""The README's main job: ``aris-queue demo`` runs a real local queue on simulated GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_to_completion_with_an_oom_retry_and_a_summary(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home")}
    p = subprocess.run(
        [sys.executable, "-m", "aris_queue_mcp.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "aris_demo: 8 jobs on local" in out  # the grid expansion
    assert "8 jobs: 8 completed" in out
    assert "torch.OutOfMemoryError: CUDA out of memory" in out  # attempt 1 of the big teacher
    assert "| teachers | 2 | 2 | 100% | 1 |" in out  # one OOM retry, in the summary's phase table
    summaries = list((tmp_path / "demo" / "experiment_queue").glob("*/summary.md"))
    assert len(summaries) == 1
    assert not (tmp_path / "home" / ".aris_queue").exists()  # the demo keeps to its own directory
