"""``aris-queue demo``: a real queue in local mode on four simulated GPUs (no GPU, no server).

It shows what the tool is for: a grid expanded from a manifest, jobs packed onto free GPUs in parallel, a CUDA
OOM (another "user" briefly holds memory on every GPU) retried after a delay, students that wait only for the
teacher of the same size, and the run's summary. Everything runs for real (agent, wrapper, logs, state files);
only ``nvidia-smi`` and the training script are simulated.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from . import simgpu, textview
from .cli import follow
from .models import QueueStatus
from .service import QueueService

OOM_WINDOW_S = 2.5
"""Seconds after the launch until which a foreign process holds 450 MiB on every GPU (below the threshold)."""

OOM_RETRY_DELAY_S = 3.5
"""Delay before the OOM retry; longer than the window so the retry fits."""


def demo_manifest(train: str, remote_root: Path) -> str:
    """The demo's manifest: two teachers, six students matched on N, tiny durations."""
    # The N=512 teacher needs 159 MiB per unit of N (81,408 MiB): it fits an idle 80 GB GPU but not one on
    # which another process holds 450 MiB, so its first attempt dies of CUDA OOM and the retry succeeds.
    return f"""\
project: aris_demo
ssh: local
cwd: .
remote_root: {remote_root}
gpus: auto
gpu_free_threshold_mib: 500
poll_interval: 0.2
oom_retry: {{delay: {OOM_RETRY_DELAY_S}, max_attempts: 3}}
timeout: 300
phases:
  - name: teachers
    grid: {{N: [256, 512]}}
    template:
      id: teacher_N${{N}}
      cmd: >-
        {train} --mem-mib $(( ${{N}} * 159 )) --alloc-after 0.3 --duration 1.5
        --output ckpt/teacher_N${{N}}.pt
      output_check: ckpt/teacher_N${{N}}.pt
  - name: students
    depends_on: teachers
    match: [N]
    grid: {{N: [256, 512], seed: [1, 2, 3]}}
    template:
      id: student_N${{N}}_s${{seed}}
      cmd: {train} --mem-mib 20000 --duration 1.0 --output results/student_N${{N}}_seed${{seed}}.json
      output_check: results/student_N${{N}}_seed${{seed}}.json
"""


def run_demo(directory: str | os.PathLike[str] = ".demo", *, project_dir: str | None = None) -> int:
    """Run the demo queue to completion in ``directory``; returns 0 when every job completed."""
    root = Path(directory).resolve()
    if root.exists():
        shutil.rmtree(root)
    (root / "work").mkdir(parents=True)
    # Held from before the launch until OOM_WINDOW_S after it (the clock restarts once the launch returns),
    # so the first attempt of the big teacher meets it however long the launch takes on a loaded machine.
    foreign = [{"gpu": i, "mib": 450, "start": -3600, "end": OOM_WINDOW_S} for i in range(4)]
    os.environ.update(simgpu.install(root / "gpus", gpus=4, foreign=foreign))
    train = f"{shlex.quote(sys.executable)} {shlex.quote(str(simgpu.FAKE_TRAIN))}"
    manifest_path = root / "work" / "demo.yaml"
    manifest_path.write_text(demo_manifest(train, root / "agent_home"), encoding="utf-8")

    svc = QueueService(project_dir or root)
    try:
        print(f"== aris-queue demo: 4 simulated 80 GB GPUs, manifest {manifest_path}\n")
        plan = svc.expand_grid(str(manifest_path), limit=8)
        print(textview.expand(plan) + "\n")
        launched = svc.launch_queue(str(manifest_path))
        config = simgpu.read_config(root / "gpus")
        simgpu.write_config(root / "gpus", {**config, "epoch": time.time()})
        print(textview.launch(launched) + "\n")
        print("== following the queue (each line is a state change):")
        final = follow(svc, launched.run_id, _print_change)
        print()
        print(textview.status(final) + "\n")
        first = svc.tail_log(launched.run_id, "teacher_N512", lines=3, attempt=1)
        print("== teacher_N512, end of attempt 1 (the OOM the queue retried):")
        print("\n".join(f"  {ln}" for ln in first.lines) + "\n")
        summary = svc.summarize(launched.run_id)
        print(summary.markdown)
        print(f"(summary written to {summary.path}; the run's files are in {root})")
        return 0 if final.counts.get("completed") == final.total else 1
    finally:
        svc.close()


def _print_change(s: QueueStatus) -> None:
    running = ", ".join(f"{j.id}@gpu{','.join(map(str, j.gpus))}" for j in s.running)
    line = f"  {textview.counts_line(s.counts)}"
    if running:
        line += f"   running: {running}"
    print(line, flush=True)
