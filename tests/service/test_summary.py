"""summary.md rendering: key lines of the overview, the phase table, failures, results and timeline."""

from __future__ import annotations

from aris_queue_mcp.models import QueueStatus
from aris_queue_mcp.runs import RunRecord
from aris_queue_mcp.summary import render_summary

T0 = 1_764_862_000.0


def _record() -> RunRecord:
    return RunRecord(
        run_id="demo-1",
        project="demo",
        target="gpu-box",
        remote_root="/r",
        remote_run_dir="/r/runs/demo-1",
        manifest_sha256="x",
        created_at="2026-12-04T15:43:00Z",
    )


def _status() -> QueueStatus:
    jobs = [
        {"id": "t1", "phase": "train", "status": "completed", "attempts": 2, "outputs": ["ckpt/t1.pt"]},
        {"id": "t2", "phase": "train", "status": "completed", "attempts": 1},
        {
            "id": "t3",
            "phase": "train",
            "status": "stuck",
            "attempts": 3,
            "exit_code": 1,
            "reason": "OOM: torch.OutOfMemoryError (3 of 3)",
        },
        {"id": "e1", "phase": "eval", "status": "completed", "attempts": 1},
        {"id": "e3", "phase": "eval", "status": "blocked", "attempts": 0, "reason": "dependency t3 is stuck"},
    ]
    return QueueStatus.model_validate(
        {
            "run_id": "demo-1",
            "project": "demo",
            "host": "gpu-box",
            "seq": 30,
            "total": 5,
            "agent": {"alive": False, "state": "finished"},
            "counts": {"completed": 3, "stuck": 1, "blocked": 1},
            "started_at": T0,
            "finished_at": T0 + 3725,
            "failures": [
                {
                    "signature": "torch.OutOfMemoryError",
                    "count": 1,
                    "states": {"stuck": 1},
                    "jobs": ["t3"],
                    "last_lines": ["torch.OutOfMemoryError: CUDA out of memory."],
                }
            ],
            "jobs": jobs,
        }
    )


def _events() -> list[dict]:
    ev = []

    def add(job: str, frm: str, to: str, t: float, attempt: int = 1) -> None:
        ev.append(
            {
                "seq": len(ev) + 1,
                "t": T0 + t,
                "job": job,
                "from": frm,
                "to": to,
                "attempt": attempt,
                "reason": None,
            }
        )

    add("t1", "pending", "running", 0)
    add("t1", "running", "failed_oom", 5)
    add("t1", "failed_oom", "pending", 6)
    add("t1", "pending", "running", 7, 2)
    add("t1", "running", "completed", 107, 2)
    add("t2", "pending", "running", 0)
    add("t2", "running", "completed", 300)
    add("e1", "pending", "running", 400)
    add("e1", "running", "completed", 410)
    return ev


def test_summary_has_overview_phase_table_and_attention() -> None:
    md = render_summary(_record(), _status(), _events())
    assert md.startswith("# demo: run demo-1\n")
    assert "- **Host:** gpu-box (`/r/runs/demo-1`)" in md
    assert "- **Wall-clock:** 1h 02m" in md
    assert "- **Jobs:** 5 total: completed 3, stuck 1, blocked 1" in md
    assert "| phase | jobs | completed | success % | OOM retries | median duration | max duration |" in md
    # train: 2 of 3 done, one OOM retry; completed attempts took 100 s and 300 s.
    assert "| train | 3 | 2 | 67% | 1 | 3m 20s | 5m 00s |" in md
    assert "| eval | 2 | 1 | 50% | 0 | 10.0s | 10.0s |" in md
    assert "| t3 | train | stuck | 3 | 1 | OOM: torch.OutOfMemoryError (3 of 3) |" in md
    assert "- `torch.OutOfMemoryError`: 1 job(s) (stuck 1), e.g. t3" in md
    assert "- t1: `ckpt/t1.pt`" in md
    assert "## Timeline" in md and "run finished" in md and "t1 ran out of GPU memory" in md


def test_summary_of_a_fresh_run_without_events() -> None:
    status = QueueStatus(run_id="demo-1", host="local", total=0)
    md = render_summary(_record(), status, [])
    assert "- **Finished:** not yet" in md and "## Phases" in md
