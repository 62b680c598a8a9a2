"""Shared pieces of the end-to-end tests: manifests that run the fake trainer, and waiting for a queue."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from aris_queue_mcp.models import QueueStatus
from aris_queue_mcp.service import QueueService
from aris_queue_mcp.simgpu import FAKE_TRAIN

ACTIVE = ("pending", "running", "failed_oom", "failed_other")


def train_cmd(
    mem_mib: int = 2000, duration: float = 0.2, *, alloc_after: float = 0.0, output: str | None = None
) -> str:
    """The fake trainer bound to the job's GPUs (the agent fills ${GPU})."""
    cmd = f"CUDA_VISIBLE_DEVICES=${{GPU}} {sys.executable} {FAKE_TRAIN}"
    cmd += f" --mem-mib {mem_mib} --duration {duration}"
    if alloc_after:
        cmd += f" --alloc-after {alloc_after}"
    if output:
        cmd += f" --output {output}"
    return cmd


def manifest(
    project: str, *, root: Path | str, cwd: Path | str, ssh: str = "local", **fields: Any
) -> dict[str, Any]:
    """A manifest mapping with test-speed scheduling (poll 0.1 s, short grace, short OOM delay)."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    m: dict[str, Any] = {
        "project": project,
        "ssh": ssh,
        "cwd": str(cwd),
        "remote_root": str(root),
        "python": sys.executable,
        "poll_interval": 0.1,
        "kill_grace": 0.5,
        "oom_retry": {"delay": 0.3, "max_attempts": 3},
    }
    m.update(fields)
    return m


def wait_finished(svc: QueueService, run_id: str, timeout: float = 30.0) -> QueueStatus:
    """Follow the run with status --wait until no job is active; fail with the last digest on timeout."""
    deadline = time.monotonic() + timeout
    st = svc.queue_status(run_id)
    while time.monotonic() < deadline:
        if not any(st.counts.get(s) for s in ACTIVE) and (st.finished_at or not st.agent.alive):
            return st
        st = svc.queue_status(run_id, wait_s=1, since_seq=st.seq)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s: {st.model_dump_json(indent=1)}")


def wait_until(svc: QueueService, run_id: str, predicate: Any, timeout: float = 15.0) -> QueueStatus:
    """Poll the digest until ``predicate(status)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        st = svc.queue_status(run_id, include_jobs=True, limit=1000)
        if predicate(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout}s: {st.model_dump_json(indent=1)}")
        time.sleep(0.05)


def launches_per_attempt(run_dir: Path) -> dict[tuple[str, int], int]:
    """How often the journal records a process launch for each (job, attempt)."""
    out: dict[tuple[str, int], int] = {}
    for line in (run_dir / "journal.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "launch":
            key = (rec["job"], rec["attempt"])
            out[key] = out.get(key, 0) + 1
    return out


def attempt_headers(log_text: str, job: str) -> int:
    """How many attempts a job log says were started (one header line each)."""
    return sum(1 for line in log_text.splitlines() if line.startswith(f"==== aris-queue: {job} attempt "))
