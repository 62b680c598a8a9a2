"""next_call_hint: one line that tells the caller what to do next."""

from __future__ import annotations

from typing import Any

from aris_queue_mcp.models import QueueStatus
from aris_queue_mcp.summary import next_call_hint


def _status(counts: dict[str, int], *, alive: bool = True, state: str = "running", **kw: Any) -> QueueStatus:
    return QueueStatus.model_validate(
        {
            "run_id": "r1",
            "host": "h",
            "seq": 7,
            "counts": counts,
            "total": sum(counts.values()),
            "agent": {"alive": alive, "state": state},
            **kw,
        }
    )


def test_running_queue_says_how_to_wait() -> None:
    hint = next_call_hint(_status({"running": 2, "pending": 3}, eta_s=600))
    assert hint.startswith("2 running, 3 pending, ETA ~10min") and "since_seq=7" in hint


def test_dead_scheduler_says_resume() -> None:
    hint = next_call_hint(_status({"running": 1}, alive=False, state="running"))
    assert "resume(run_id='r1')" in hint


def test_oom_stuck_says_retry_when_memory_is_free() -> None:
    failures = [
        {"signature": "exit 1", "count": 1, "states": {"failed_other": 1}, "jobs": ["a"]},
        {"signature": "torch.OutOfMemoryError", "count": 3, "states": {"stuck": 3}, "jobs": ["b"]},
    ]
    hint = next_call_hint(
        _status({"stuck": 3, "completed": 4}, alive=False, state="finished", failures=failures)
    )
    assert hint.startswith(
        "3 job(s) stuck with torch.OutOfMemoryError: call retry_job(run_id='r1', stuck=true)"
    )
    assert "memory is free" in hint


def test_other_stuck_says_read_the_log_first() -> None:
    failures = [{"signature": "ValueError", "count": 1, "states": {"stuck": 1}, "jobs": ["b"]}]
    hint = next_call_hint(_status({"stuck": 1, "running": 1}, failures=failures))
    assert "tail_log(run_id='r1', job_id='b')" in hint and "1 running" in hint


def test_finished_says_summarize() -> None:
    assert "summarize(run_id='r1')" in next_call_hint(
        _status({"completed": 5}, alive=False, state="finished")
    )
    assert "blocked" in next_call_hint(_status({"completed": 1, "blocked": 2}, alive=False, state="finished"))


def test_draining() -> None:
    assert next_call_hint(_status({"running": 1, "pending": 2}, state="draining")).startswith("draining")
