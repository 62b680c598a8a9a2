"""The service end to end on this machine: LocalTransport, the real agent, the simulated GPUs."""

from __future__ import annotations

import itertools
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from aris_queue_mcp.errors import ArisQueueError, ManifestError
from aris_queue_mcp.service import QueueService

from .helpers import attempt_headers, launches_per_attempt, manifest, train_cmd, wait_finished, wait_until


def _phased(tmp_path: Path, **fields: object) -> dict:
    return manifest(
        "demo",
        root=tmp_path / "remote",
        cwd=tmp_path / "work",
        phases=[
            {
                "name": "train",
                "grid": {"seed": [1, 2, 3]},
                "template": {
                    "id": "t_s${seed}",
                    "cmd": train_cmd(output="out/t_s${seed}.json"),
                    "output_check": "out/t_s${seed}.json",
                },
            },
            {
                "name": "eval",
                "depends_on": ["train"],
                "jobs": [{"id": "eval_all", "cmd": "echo evaluated", "gpus_per_job": 0}],
            },
        ],
        **fields,
    )


def test_expand_grid_pages_a_big_grid(service: QueueService, tmp_path: Path) -> None:
    m = manifest(
        "big",
        root=tmp_path / "r",
        cwd=tmp_path,
        grid={"seed": list(range(30)), "n": [1, 2]},
        template={"cmd": "echo ${seed} ${n}"},
    )
    res = service.expand_grid(m, limit=5)
    assert (res.total, res.jobs_shown, res.truncated, res.per_phase) == (60, 5, True, {"": 60})
    assert res.target == "local" and res.jobs[0].cmd == "echo 0 1"
    last = service.expand_grid(m, offset=55, limit=10)
    assert (last.jobs_shown, last.truncated, last.offset) == (5, False, 55)


def test_manifest_errors_propagate(service: QueueService) -> None:
    with pytest.raises(ManifestError):
        service.expand_grid("project: x\njobs: 3\n")


def test_dry_run_launches_nothing(service: QueueService, tmp_path: Path, local_sim: Path) -> None:
    res = service.launch_queue(_phased(tmp_path), dry_run=True)
    assert res.status == "dry_run" and res.total_jobs == 4 and res.plan is not None
    assert res.plan.per_phase == {"train": 3, "eval": 1}
    assert res.preconditions is not None and res.preconditions.blocked_count == 0
    assert service.list_runs().runs == [] and not (tmp_path / "remote").exists()


def test_local_run_to_completion(service: QueueService, tmp_path: Path, local_sim: Path) -> None:
    (tmp_path / "work").mkdir()
    steps: list[tuple[float, float, str]] = []
    res = service.launch_queue(_phased(tmp_path), progress=lambda d, t, m: steps.append((d, t, m)))
    assert res.status == "started" and res.total_jobs == 4 and res.agent_pid
    assert steps and steps[-1][0] == steps[-1][1] and all(a[0] <= b[0] for a, b in itertools.pairwise(steps))

    st = wait_finished(service, res.run_id)
    assert st.counts.get("completed") == 4, st
    assert "summarize" in st.next_call_hint

    run_dir = Path(res.remote_run_dir or "")
    for d in (tmp_path / "remote", tmp_path / "remote" / "runs", run_dir):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    assert stat.S_IMODE((run_dir / "spec.json").stat().st_mode) == 0o600
    local = tmp_path / "experiment_queue" / res.run_id
    assert {p.name for p in local.iterdir()} >= {"manifest.yaml", "spec.json", "run.json"}
    assert json.loads((local / "spec.json").read_text())["run_id"] == res.run_id

    log = service.tail_log(res.run_id, "t_s1", lines=20)
    assert attempt_headers("\n".join(log.lines), "t_s1") == 1

    summary = service.summarize(res.run_id)
    assert Path(summary.path) == local / "summary.md" and summary.markdown == Path(summary.path).read_text()
    assert (
        "| train | 3 | 3 | 100% | 0 |" in summary.markdown and "| eval | 1 | 1 | 100% |" in summary.markdown
    )

    runs = service.list_runs(refresh=True).runs
    assert [r.run_id for r in runs] == [res.run_id] and runs[0].counts == {"completed": 4}
    gpus = service.gpu_status(run_id=res.run_id)
    assert len(gpus.gpus) == 2 and gpus.error is None and gpus.host == "local"
    assert service.queue_status().run_id == res.run_id  # no run id: the latest run
    t0 = time.monotonic()
    same = service.queue_status(res.run_id, wait_s=0.5, since_seq=st.seq)
    assert same.changed is False and same.seq == st.seq and time.monotonic() - t0 < 5


def test_launching_twice_returns_the_running_run(
    service: QueueService, tmp_path: Path, local_sim: Path
) -> None:
    m = manifest(
        "twice", root=tmp_path / "remote", cwd=tmp_path, jobs=[{"id": "slow", "cmd": train_cmd(duration=30)}]
    )
    first = service.launch_queue(m)
    second = service.launch_queue(m)
    assert (second.status, second.run_id, second.remote_run_dir) == (
        "already_running",
        first.run_id,
        first.remote_run_dir,
    )
    assert len(service.list_runs().runs) == 1
    cancelled = service.cancel_job(first.run_id)
    assert cancelled.cancelled == ["slow"]
    st = wait_finished(service, first.run_id)
    assert st.counts.get("cancelled") == 1


def test_launching_again_after_the_scheduler_died_resumes_instead_of_duplicating(
    service: QueueService, tmp_path: Path, local_sim: Path
) -> None:
    jobs = [{"id": f"j{i}", "cmd": train_cmd(duration=1.0)} for i in range(3)]
    m = manifest("relaunch", root=tmp_path / "remote", cwd=tmp_path, max_parallel=1, jobs=jobs)
    first = service.launch_queue(m)
    st = wait_until(service, first.run_id, lambda s: s.counts.get("running") == 1)
    assert st.agent.pid
    os.kill(st.agent.pid, signal.SIGKILL)
    wait_until(service, first.run_id, lambda s: not s.agent.alive)
    again = service.launch_queue(m)
    assert (again.status, again.run_id) == ("resumed", first.run_id)
    assert len(service.list_runs().runs) == 1
    st = wait_finished(service, first.run_id)
    assert st.counts.get("completed") == 3
    assert launches_per_attempt(Path(first.remote_run_dir or "")) == {(f"j{i}", 1): 1 for i in range(3)}


def test_blocked_preconditions_stop_the_launch(
    service: QueueService, tmp_path: Path, local_sim: Path
) -> None:
    m = manifest(
        "pre",
        root=tmp_path / "remote",
        cwd=tmp_path,
        preconditions=[{"type": "path_exists", "path": "data/missing.bin"}],
        jobs=[{"id": "needs_data", "cmd": "true", "gpus_per_job": 0}],
    )
    with pytest.raises(ArisQueueError) as ei:
        service.launch_queue(m)
    assert "needs_data" in str(ei.value) and "ignore_preconditions=true" in str(ei.value)
    assert service.list_runs().runs == []
    res = service.launch_queue(m, ignore_preconditions=True)
    assert res.status == "started"
    wait_finished(service, res.run_id)


def test_retry_of_a_stuck_job_restarts_the_exited_scheduler(
    service: QueueService, tmp_path: Path, local_sim: Path
) -> None:
    m = manifest(
        "retry",
        root=tmp_path / "remote",
        cwd=tmp_path,
        jobs=[{"id": "needs_flag", "cmd": "test -f flag.txt", "gpus_per_job": 0}],
    )
    res = service.launch_queue(m)
    st = wait_finished(service, res.run_id)
    assert st.counts.get("stuck") == 1 and not st.agent.alive
    assert "retry_job" in st.next_call_hint and "stuck" in st.next_call_hint
    (tmp_path / "flag.txt").write_text("ok")
    retry = service.retry_job(res.run_id, stuck=True)
    assert retry.retried == ["needs_flag"] and retry.agent_restarted and retry.agent_pid
    st = wait_finished(service, res.run_id)
    assert st.counts.get("completed") == 1
    with pytest.raises(ArisQueueError, match="job_id"):
        service.retry_job(res.run_id)


def test_kill_9_then_resume_finishes_without_duplicates(
    service: QueueService, tmp_path: Path, local_sim: Path
) -> None:
    jobs = [{"id": f"j{i}", "cmd": train_cmd(duration=1.5)} for i in range(4)]
    res = service.launch_queue(manifest("kill", root=tmp_path / "remote", cwd=tmp_path, jobs=jobs))
    st = wait_until(service, res.run_id, lambda s: s.counts.get("running") == 2)
    assert st.agent.pid
    os.kill(st.agent.pid, signal.SIGKILL)
    st = wait_until(service, res.run_id, lambda s: not s.agent.alive)
    assert "resume(" in st.next_call_hint
    again = service.resume(res.run_id)
    assert again.status == "resumed" and again.agent_pid != st.agent.pid
    assert service.resume(res.run_id).status == "already_running"
    st = wait_finished(service, res.run_id)
    assert st.counts.get("completed") == 4, st
    run_dir = Path(res.remote_run_dir or "")
    for job in ("j0", "j1", "j2", "j3"):
        log = (run_dir / "logs" / f"{job}.log").read_text()
        assert attempt_headers(log, job) == 1, log
    starts = [e for e in _history(service, res.run_id) if e["to"] == "running"]
    assert sorted(e["job"] for e in starts) == ["j0", "j1", "j2", "j3"]
    assert launches_per_attempt(run_dir) == {(j, 1): 1 for j in ("j0", "j1", "j2", "j3")}
    assert len(service.registry.load(res.run_id).resumed_at) == 1


def test_status_digest_of_1000_jobs_stays_compact(
    service: QueueService, tmp_path: Path, local_sim: Path
) -> None:
    m = manifest(
        "huge",
        root=tmp_path / "remote",
        cwd=tmp_path,
        gpus=[],
        max_parallel=25,
        gpus_per_job=0,
        grid={"seed": list(range(1000))},
        template={"cmd": "sleep 20"},
    )
    res = service.launch_queue(m)
    wait_until(service, res.run_id, lambda s: s.counts.get("running", 0) >= 20)
    st = service.queue_status(res.run_id)
    size = len(st.model_dump_json())
    assert st.total == 1000 and size < 6000, size
    page = service.queue_status(res.run_id, include_jobs=True, states=["pending"], offset=10, limit=50)
    assert page.jobs is not None and len(page.jobs) == 50 and page.offset == 10
    assert page.jobs_matching == st.counts["pending"]
    t0 = time.monotonic()
    cancelled = service.cancel_job(res.run_id)
    assert cancelled.cancelled_count == 1000 and len(cancelled.cancelled) == 100  # the answer stays small
    st = wait_finished(service, res.run_id)
    assert st.counts.get("cancelled") == 1000 and time.monotonic() - t0 < 15


def _history(service: QueueService, run_id: str) -> list[dict]:
    record = service.registry.load(run_id)
    return service._client(record).history(record.remote_run_dir)["events"]


def test_drain_then_resume_and_cancel_one_job(service: QueueService, tmp_path: Path, local_sim: Path) -> None:
    jobs = [
        {"id": x, "cmd": cmd, "gpus_per_job": 0}
        for x, cmd in (("a", "sleep 30"), ("b", "true"), ("c", "true"))
    ]
    m = manifest(
        "drain", root=tmp_path / "remote", cwd=tmp_path, gpus=[], gpus_per_job=0, max_parallel=1, jobs=jobs
    )
    res = service.launch_queue(m)
    wait_until(service, res.run_id, lambda s: s.counts.get("running") == 1)
    assert service.drain(res.run_id).state == "draining"
    cancelled = service.cancel_job(res.run_id, "c")
    assert cancelled.cancelled == ["c"] and "job c" in cancelled.message
    assert service.cancel_job(res.run_id, "a").cancelled == ["a"]  # the running one: killed
    st = wait_until(service, res.run_id, lambda s: not s.agent.alive)
    assert st.counts.get("pending") == 1 and "resume(" in st.next_call_hint
    assert service.resume(res.run_id).status == "resumed"
    st = wait_finished(service, res.run_id)
    assert st.counts.get("cancelled") == 2 and st.counts.get("completed") == 1
