"""One short check against a real NVIDIA GPU and a real PyTorch CUDA OOM (for a session lent a GPU machine).

``python -m benchmarks.device_check [--out DIR]`` runs, on this machine, in local mode:

1. the agent's ``gpus`` command on the real ``nvidia-smi`` (the CSV format the simulator imitates);
2. a queue on the real GPU(s): ``fits`` allocates 256 MiB and completes; ``too_big`` asks for more memory than
   the GPU has, dies of a real ``torch.OutOfMemoryError``, is classified ``failed_oom``, retried once after
   1 s and ends ``stuck`` with that signature; ``after`` depends on ``too_big`` and ends ``blocked``.

It prints one JSON object with what it saw and exits 0 when everything matched, 1 otherwise (2 when there is
no GPU or no torch: nothing to check). Needs only this repository and PyTorch with CUDA on the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aris_queue_mcp.client import AgentClient
from aris_queue_mcp.deploy import ensure_agent
from aris_queue_mcp.service import QueueService
from aris_queue_mcp.transport import LocalTransport

ALLOC = "import sys, time, torch; x = torch.empty({n}, dtype=torch.uint8, device='cuda'); time.sleep({s})"


def _manifest(root: Path, total_mib: int) -> dict[str, Any]:
    py = sys.executable
    too_big = (total_mib + 4096) * 1024 * 1024
    return {
        "project": "device_check",
        "ssh": "local",
        "cwd": str(root / "work"),
        "remote_root": str(root / "agent_home"),
        "python": py,
        "gpus": "auto",
        "poll_interval": 0.5,
        "oom_retry": {"delay": 1, "max_attempts": 2},
        "timeout": 300,
        "jobs": [
            {"id": "fits", "cmd": f'{py} -c "{ALLOC.format(n=256 * 1024 * 1024, s=1)}"'},
            {"id": "too_big", "cmd": f'{py} -c "{ALLOC.format(n=too_big, s=0)}"'},
            {"id": "after", "cmd": "true", "depends_on": ["too_big"]},
        ],
    }


def check(root: Path) -> dict[str, Any]:
    """Run both checks under ``root``; return what was seen and whether it matched."""
    out: dict[str, Any] = {}
    local = LocalTransport()
    install = ensure_agent(local, str(root / "agent_home"), sys.executable)
    gpus = AgentClient(local, install.path, sys.executable).gpus()
    out["gpus"] = gpus
    listed = [g for g in gpus.get("gpus") or [] if g.get("memory_total_mib")]
    if not listed:
        out["ok"] = None
        out["why"] = f"no GPU read: {gpus.get('error')}"
        return out
    (root / "work").mkdir(parents=True, exist_ok=True)
    svc = QueueService(root / "project")
    try:
        launched = svc.launch_queue(_manifest(root, max(int(g["memory_total_mib"]) for g in listed)))
        status = svc.queue_status(launched.run_id, wait_s=240, until="finished")
        rows = {j.id: j for j in svc.queue_status(launched.run_id, include_jobs=True).jobs or []}
        oom_tail = svc.tail_log(launched.run_id, "too_big", lines=5, attempt=1).lines
    finally:
        svc.close()
    seen = {jid: (r.status, r.attempts) for jid, r in rows.items()}
    signatures = {f.signature for f in status.failures}
    out.update(
        {
            "run_id": launched.run_id,
            "jobs": seen,
            "failure_signatures": sorted(signatures),
            "too_big_log_tail": oom_tail,
        }
    )
    out["ok"] = (
        seen.get("fits") == ("completed", 1)
        and seen.get("too_big") == ("stuck", 2)
        and seen.get("after", ("",))[0] == "blocked"
        and "torch.OutOfMemoryError" in signatures
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="keep the run here (default: a temporary directory)")
    a = p.parse_args(argv)
    try:
        import torch  # noqa: F401  (only to say clearly when it is missing)
    except ImportError:
        print(json.dumps({"ok": None, "why": "PyTorch is not installed"}))
        return 2
    root = a.out or Path(tempfile.mkdtemp(prefix="aris-device-check-"))
    t0 = time.time()
    try:
        result = check(root)
    finally:
        if a.out is None:
            shutil.rmtree(root, ignore_errors=True)
    result["elapsed_s"] = round(time.time() - t0, 1)
    print(json.dumps(result, indent=1, default=str))
    return 2 if result.get("ok") is None else (0 if result["ok"] else 1)


if __name__ == "__main__":
    raise SystemExit(main())
