"""tests/data/runspec_*.json are read by the agent's tests too: they must equal what build_run_spec gives.

Regenerate after a deliberate change with:  ARIS_REGEN_TESTDATA=1 python -m pytest tests/manifest -q
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from aris_queue_mcp.manifest import load_manifest
from aris_queue_mcp.runspec import RunSpec, build_run_spec

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
FIXED_TIME = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Local examples resolve cwd against the manifest's folder; a fixed one keeps the files machine-independent.
FIXED_BASE = Path("/tmp/aris_queue_examples")

REMOTE_MANIFEST = """\
# A remote run with every job-level feature: conda + setup prelude, explicit jobs, job dependencies, priority.
project: remote_demo
ssh: gpu-server
cwd: projects/distill
conda: my_env
conda_hook: /opt/conda/bin/conda
env: {WANDB_MODE: offline, OMP_NUM_THREADS: 4}
setup: |
  source .venv/bin/activate
  export PYTHONUNBUFFERED=1
default_cmd: python run_distill.py --backbone softmax
gpus: [0, 1]
gpus_per_job: 1
max_parallel: 2
launcher: screen
oom_signatures: ["CUBLAS_STATUS_ALLOC_FAILED"]
oom_retry: {delay: 120, max_attempts: 3}
retry: {delay: 5, max_attempts: 2}
timeout: 86400
jobs:
  - id: prep
    cmd: python prepare.py --out data/prepared
    gpus_per_job: 0
    output_check: data/prepared/*.npz
  - id: s200_N64_n50K
    args: {seed: 200, n_hidden: 64, n_train_subset: 50000, fp16: true, debug: false}
    depends_on: [prep]
  - id: both_gpus
    cmd: python run_big.py --devices ${GPU} --tag "it's big"
    gpus_per_job: 2
    priority: 10
    timeout: 3600
    env: {NCCL_DEBUG: INFO}
    depends_on: prep
"""


def _cases() -> dict[str, RunSpec]:
    out = {}
    for name in ("grid_sweep", "teacher_student"):
        manifest = load_manifest(ROOT / "examples" / f"{name}.yaml", base_dir=FIXED_BASE / name)
        out[name] = build_run_spec(manifest, run_id=f"{name}-20260101-000000-0000", created_at=FIXED_TIME)
    remote = load_manifest(REMOTE_MANIFEST)
    run_id = "remote_demo-20260101-000000-0000"
    out["remote_demo"] = build_run_spec(remote, run_id=run_id, created_at=FIXED_TIME)
    return out


@pytest.mark.parametrize("name", ["grid_sweep", "teacher_student", "remote_demo"])
def test_runspec_example_files_are_up_to_date(name: str) -> None:
    spec = _cases()[name]
    path = DATA / f"runspec_{name}.json"
    if os.environ.get("ARIS_REGEN_TESTDATA") == "1":
        path.write_text(spec.to_json(), encoding="utf-8")
    assert path.is_file(), f"{path} missing: run ARIS_REGEN_TESTDATA=1 python -m pytest tests/manifest"
    assert path.read_text(encoding="utf-8") == spec.to_json(), (
        f"{path.name} is stale: regenerate with ARIS_REGEN_TESTDATA=1 python -m pytest tests/manifest"
    )
    assert RunSpec.from_json(path.read_text(encoding="utf-8")) == spec
