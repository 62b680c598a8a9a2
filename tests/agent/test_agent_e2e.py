"""The agent end to end: real subprocesses, the simulated GPU, tiny durations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from remote_agent import runner
from remote_agent.spec import load_spec
from tests.fixtures.simgpu import (
    agent,
    history,
    job,
    make_run,
    pid_alive,
    status,
    train_cmd,
    wait_for,
)


def run_fg(run_dir: Path, timeout: float = 60.0) -> dict:
    res = agent("run", "--run-dir", str(run_dir), timeout=timeout)
    assert res.rc == 0, res
    return res.out


def detach(run_dir: Path, cleanup: list) -> dict:
    cleanup.append(run_dir)
    res = agent("run", "--run-dir", str(run_dir), "--detach")
    assert res.rc == 0, res
    return res.out


def jobs_by_id(run_dir: Path) -> dict:
    out = status(run_dir, "--jobs", "--limit", "1000")
    return {j["id"]: j for j in out["jobs"]}


def status_when(run_dir: Path, pred, what: str, timeout: float = 30.0) -> dict:
    """Poll the status digest until ``pred(digest)`` holds; return that digest."""

    def check():
        s = status(run_dir)
        return s if pred(s) else None

    return wait_for(check, timeout=timeout, what=what)


def wait_state(run_dir: Path, state: str, timeout: float = 30.0) -> dict:
    """Wait until the scheduler has exited in ``state``."""
    return status_when(
        run_dir, lambda s: s["agent"]["state"] == state and not s["agent"]["alive"], f"agent {state}", timeout
    )


def gate(name: str) -> str:
    """A command that waits until the file ``name`` (in the job's cwd) exists: tests decide when jobs end."""
    return f"while [ ! -e {name} ]; do sleep 0.02; done"


def test_version():
    res = agent("version")
    assert res.rc == 0 and res.out["ok"] and res.out["version"] == "0.1.0" and res.out["python"]


def test_queue_completes_with_glob_outputs_prefix_ids_and_compound_commands(simgpu, tmp_path):
    jobs = [
        # s1 lasts several poll intervals: time alone never fails a running job.
        job(
            "s1",
            train_cmd(duration=0.8, output="ckpt/s1/model_final.json"),
            output_check="ckpt/s1/model_*.json",
        ),
        job("s10", train_cmd(output="ckpt/s10/model_final.json"), output_check="ckpt/s10/model_*.json"),
        job("s100", train_cmd(output="ckpt/s100/model_final.json"), output_check="ckpt/s1*/model_*.json"),
        job(
            "comp",
            'echo "outer=$CUDA_VISIBLE_DEVICES" && bash -c "echo inner=\\$CUDA_VISIBLE_DEVICES" '
            "&& " + train_cmd(output="comp.json"),
            output_check="comp.json",
            depends_on=["s1"],
        ),
        job("cpu", "echo cpu=[$CUDA_VISIBLE_DEVICES]", gpus_per_job=0),
    ]
    run_dir = make_run(tmp_path, jobs)
    out = run_fg(run_dir)
    assert out["state"] == "finished" and out["counts"]["completed"] == 5, out
    js = jobs_by_id(run_dir)
    assert all(j["attempts"] == 1 and j["exit_code"] == 0 for j in js.values())
    snap = json.loads((run_dir / "queue_state.json").read_text())
    outputs = {j["id"]: j["outputs"] for j in snap["jobs"]}
    assert outputs["s1"] == ["ckpt/s1/model_final.json"] and outputs["s10"] == ["ckpt/s10/model_final.json"]
    # Each job's log holds its own attempt only, although the ids are prefixes of each other.
    for jid in ("s1", "s10", "s100"):
        lines = (run_dir / "logs" / f"{jid}.log").read_text().splitlines()
        assert [ln for ln in lines if ln.startswith("====")] == [lines[0]] and f" {jid} attempt 1 " in lines[
            0
        ]
        assert f"job={jid} attempt=1" in "\n".join(lines)
    comp = (run_dir / "logs" / "comp.log").read_text()
    gpu = js["comp"]["gpus"][0]
    assert f"outer={gpu}\ninner={gpu}\n" in comp
    assert json.loads((tmp_path / "work" / "comp.json").read_text())["cuda_visible_devices"] == str(gpu)
    assert "cpu=[]" in (run_dir / "logs" / "cpu.log").read_text()
    st = status(run_dir)
    assert st["agent"]["state"] == "finished" and st["finished_at"] and st["eta_s"] == 0.0


def test_a_freed_slot_is_reused_at_once(simgpu, tmp_path):
    # One GPU and a long poll interval: only the reaction to the child's exit can start b quickly.
    jobs = [job("a", train_cmd(duration=0.3)), job("b", train_cmd(duration=0.1))]
    run_dir = make_run(tmp_path, jobs, gpus=[0], poll_interval=5.0)
    run_fg(run_dir)
    ev = history(run_dir)
    a_done = next(e["t"] for e in ev if e["job"] == "a" and e["to"] == "completed")
    b_start = next(e["t"] for e in ev if e["job"] == "b" and e["to"] == "running")
    assert 0 <= b_start - a_done < 1.0


def test_oom_then_delayed_retry_completes_once_memory_frees(simgpu, tmp_path):
    # A foreign process holds 60 GB of GPU 0 for the first 1.5 s; the threshold lets the queue try anyway.
    jobs = [job("a", train_cmd(mem_mib=30000, duration=0.1), oom_retry={"delay": 0.4, "max_attempts": 20})]
    run_dir = make_run(tmp_path, jobs, gpus=[0], gpu_free_threshold_mib=81559)
    simgpu.update(foreign=[{"gpu": 0, "mib": 60000, "start": 0, "end": 1.5}])
    run_fg(run_dir)
    a = jobs_by_id(run_dir)["a"]
    assert a["status"] == "completed" and a["attempts"] >= 2
    moves = [(e["from"], e["to"]) for e in history(run_dir, "a")]
    assert ("running", "failed_oom") in moves and moves[-1] == ("running", "completed")
    ev = history(run_dir, "a")
    fail_t = next(e["t"] for e in ev if e["to"] == "failed_oom")
    retry_t = next(e["t"] for e in ev if e["from"] == "failed_oom")
    assert retry_t - fail_t >= 0.4 - 0.01
    assert "torch.OutOfMemoryError: CUDA out of memory" in (run_dir / "logs" / "a.log").read_text()


def test_max_attempts_make_stuck_and_dependents_blocked(simgpu, tmp_path):
    jobs = [
        job("big", train_cmd(mem_mib=90000), oom_retry={"delay": 0.0, "max_attempts": 2}),
        job("child", depends_on=["big"]),
        job("grandchild", depends_on=["child"]),
        job("free"),
    ]
    run_dir = make_run(tmp_path, jobs)
    out = run_fg(run_dir)
    assert out["counts"] == {
        "pending": 0,
        "running": 0,
        "completed": 1,
        "failed_oom": 0,
        "failed_other": 0,
        "stuck": 1,
        "blocked": 2,
        "cancelled": 0,
    }
    js = jobs_by_id(run_dir)
    assert js["big"]["attempts"] == 2 and "2/2" in js["big"]["reason"]
    assert js["child"]["reason"] == "dependency big is stuck" and js["child"]["attempts"] == 0
    assert js["grandchild"]["reason"] == "dependency child is blocked"
    fail = status(run_dir)["failures"]
    assert fail[0]["signature"] == "torch.OutOfMemoryError" and fail[0]["jobs"] == ["big"]
    assert any("CUDA out of memory" in ln for ln in fail[0]["last_lines"])


def test_na_gpus_are_skipped_and_reported(simgpu, tmp_path):
    simgpu.update(na=[0, 1, 2])
    run_dir = make_run(tmp_path, [job("a")])
    run_fg(run_dir)
    assert jobs_by_id(run_dir)["a"]["gpus"] == [3]
    g = {x["index"]: x for x in status(run_dir)["gpus"]}
    assert not g[0]["usable"] and "[N/A]" in g[0]["reason"] and g[3]["usable"]


def test_missing_nvidia_smi_stalls_gpu_jobs_only(simgpu, tmp_path, cleanup_run_dirs):
    simgpu.hide_nvidia_smi()
    run_dir = make_run(tmp_path, [job("gpu"), job("cpu", "echo hi", gpus_per_job=0)])
    detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: jobs_by_id(run_dir)["cpu"]["status"] == "completed", what="cpu job")
    st = status_when(run_dir, lambda s: s["gpu_error"] and s.get("waiting"), "gpu_error in status")
    assert st["gpu_error"] == "nvidia-smi not found on PATH" and st["counts"]["pending"] == 1
    assert st["agent"]["alive"] and st.get("waiting") == {"gpu_error": 1}
    res = agent("cancel", "--run-dir", str(run_dir))
    assert res.rc == 0 and res.out["cancelled"] == ["gpu"] and res.out["agent_running"] is True
    assert wait_state(run_dir, "finished")["counts"]["cancelled"] == 1


def test_timeout_kills_the_whole_process_group(simgpu, tmp_path):
    work = tmp_path / "work"
    cmd = "sleep 60 & echo $! > bg.pid; trap '' TERM; sleep 60"  # ignores SIGTERM: needs the SIGKILL
    run_dir = make_run(tmp_path, [job("t", cmd, gpus_per_job=0, timeout=0.5)], gpus=[], kill_grace=0.3)
    t0 = time.monotonic()
    run_fg(run_dir)
    assert time.monotonic() - t0 < 15
    t = jobs_by_id(run_dir)["t"]
    assert t["status"] == "stuck" and "timeout after 0.5s" in t["reason"]
    bg = int((work / "bg.pid").read_text())
    wait_for(lambda: not pid_alive(bg), timeout=5, what="background child killed")


def test_second_agent_is_refused(simgpu, tmp_path, cleanup_run_dirs):
    run_dir = make_run(tmp_path, [job("a", gate("go"))])
    started = detach(run_dir, cleanup_run_dirs)
    for extra in ([], ["--detach"]):
        res = agent("run", "--run-dir", str(run_dir), *extra)
        assert res.rc == 3 and res.out["error"] == "already_running", res
        assert str(started["pid"]) in res.out["message"]
    assert status(run_dir)["agent"]["alive"]
    agent("cancel", "--run-dir", str(run_dir))
    wait_state(run_dir, "finished")


def test_kill_9_mid_run_then_resume_starts_nothing_twice(simgpu, tmp_path, cleanup_run_dirs):
    jobs = [job("quick", train_cmd(duration=0.3)), job("slow", gate("go") + " && " + train_cmd(duration=0.1))]
    jobs += [job(f"later{i}", train_cmd(duration=0.1)) for i in range(3)]
    run_dir = make_run(tmp_path, jobs, max_parallel=2)
    first = detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: jobs_by_id(run_dir)["slow"]["status"] == "running", what="slow running")
    time.sleep(0.1)
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: not status(run_dir)["agent"]["alive"], what="agent dead")
    slow_pid = jobs_by_id(run_dir)["slow"]
    time.sleep(0.5)  # 'quick' ends while no agent runs: its exit file tells the story
    second = detach(run_dir, cleanup_run_dirs)
    assert second["pid"] != first["pid"]
    (tmp_path / "work" / "go").touch()
    wait_state(run_dir, "finished")
    js = jobs_by_id(run_dir)
    assert all(j["status"] == "completed" and j["attempts"] == 1 for j in js.values()), js
    for jid in js:
        headers = [
            ln for ln in (run_dir / "logs" / f"{jid}.log").read_text().splitlines() if ln.startswith("====")
        ]
        assert len(headers) == 1, (jid, headers)
    assert not any(e["to"] == "pending" for e in history(run_dir))  # nothing lost
    assert slow_pid["status"] == "running"
    log = (run_dir / "agent.log").read_text()
    assert "adopted running attempt 1" in log


def test_sigterm_leaves_jobs_running_and_restart_adopts_them(simgpu, tmp_path, cleanup_run_dirs):
    run_dir = make_run(tmp_path, [job("a", gate("go") + " && " + train_cmd(duration=0.1))])
    first = detach(run_dir, cleanup_run_dirs)
    a = wait_for(
        lambda: (j := jobs_by_id(run_dir)["a"])["status"] == "running" and j["started_at"] and j,
        what="a running",
    )
    os.kill(first["pid"], signal.SIGTERM)
    st = wait_state(run_dir, "stopped")
    assert st["counts"]["running"] == 1
    pid = json.loads((run_dir / "queue_state.json").read_text())["jobs"][0]["pid"]
    assert pid and pid_alive(pid)
    detach(run_dir, cleanup_run_dirs)
    (tmp_path / "work" / "go").touch()
    wait_state(run_dir, "finished")
    assert jobs_by_id(run_dir)["a"]["attempts"] == 1 and a["attempts"] == 1


def _journal_running(run_dir: Path, jid: str, **fields) -> None:
    """Write the journal of an agent that died while ``jid`` ran (as the store would have)."""
    from remote_agent import store
    from remote_agent.spec import load_spec
    from remote_agent.states import JobState, transition, update

    st = store.Store(str(run_dir), load_spec(str(run_dir)), writer=True)
    j = st.jobs[jid]
    now = time.time()
    st.append(
        [transition(j, JobState.RUNNING, "launching attempt 1", now, attempts=1, gpus=[], started_at=now)]
    )
    if fields:
        st.append([update(j, "launch", now, **fields)])
    st.close()


def test_a_reused_pid_is_not_adopted(simgpu, tmp_path):
    run_dir = make_run(tmp_path, [job("a", "echo ran", gpus_per_job=0)], gpus=[])
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        from remote_agent import runner

        start = runner.proc_start(stranger.pid)
        bid, ticks = start.rsplit(":", 1)
        # The journal names the stranger's pid but another start time: the job's process is gone.
        _journal_running(run_dir, "a", pid=stranger.pid, proc_start=f"{bid}:{int(ticks) - 50}")
        run_fg(run_dir)
        a = jobs_by_id(run_dir)["a"]
        assert a["status"] == "completed" and a["attempts"] == 2
        assert any(e["to"] == "pending" and e["reason"].startswith("lost:") for e in history(run_dir, "a"))
        assert stranger.poll() is None  # never signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_an_attempt_whose_pid_was_never_recorded_is_claimed_and_relaunched(simgpu, tmp_path):
    run_dir = make_run(tmp_path, [job("a", "echo ran >> runs.txt", gpus_per_job=0)], gpus=[])
    _journal_running(run_dir, "a")  # intent written, agent died before the process started
    run_fg(run_dir)
    a = jobs_by_id(run_dir)["a"]
    assert a["status"] == "completed" and a["attempts"] == 2
    assert (tmp_path / "work" / "runs.txt").read_text() == "ran\n"
    # The late wrapper of attempt 1 (if it ever ran now) would find the claimed pid file and do nothing.
    assert (run_dir / "exits" / "a.1.pid").read_text().strip() == "lost"


def test_retry_without_a_scheduler_then_rerun(simgpu, tmp_path):
    flag = tmp_path / "work" / "ok"
    jobs = [job("a", f"test -e {flag}", gpus_per_job=0), job("b", "true", gpus_per_job=0, depends_on=["a"])]
    run_dir = make_run(tmp_path, jobs, gpus=[])
    out = run_fg(run_dir)
    assert out["counts"]["stuck"] == 1 and out["counts"]["blocked"] == 1
    flag.touch()
    res = agent("retry", "--run-dir", str(run_dir), "--stuck")
    assert res.rc == 0 and res.out["retried"] == ["a"] and res.out["agent_running"] is False
    assert jobs_by_id(run_dir)["b"]["status"] == "pending"  # unblocked with its parent
    res = agent("retry", "--run-dir", str(run_dir), "a")
    assert res.out["skipped"] == [{"id": "a", "reason": "job is pending"}]
    assert agent("retry", "--run-dir", str(run_dir), "nope").out["error"] == "unknown_job"
    out = run_fg(run_dir)
    assert out["counts"]["completed"] == 2


def test_cancel_one_running_job_kills_it_and_blocks_dependents(simgpu, tmp_path, cleanup_run_dirs):
    jobs = [job("long", "sleep 30", gpus_per_job=0), job("dep", "true", gpus_per_job=0, depends_on=["long"])]
    jobs.append(job("other", "true", gpus_per_job=0))
    run_dir = make_run(tmp_path, jobs, gpus=[])
    detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: jobs_by_id(run_dir)["long"]["status"] == "running", what="long running")
    res = agent("cancel", "--run-dir", str(run_dir), "long")
    assert res.rc == 0 and res.out["cancelled"] == ["long"] and res.out["agent_running"] is True
    st = wait_state(run_dir, "finished")
    js = jobs_by_id(run_dir)
    assert js["long"]["status"] == "cancelled" and js["dep"]["status"] == "blocked"
    assert js["other"]["status"] == "completed" and st["counts"]["cancelled"] == 1


def test_drain_lets_running_jobs_finish_and_starts_nothing(simgpu, tmp_path, cleanup_run_dirs):
    jobs = [job(f"j{i}", gate("go"), gpus_per_job=0) for i in range(3)]
    run_dir = make_run(tmp_path, jobs, gpus=[], max_parallel=1)
    detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: jobs_by_id(run_dir)["j0"]["status"] == "running", what="j0 running")
    res = agent("drain", "--run-dir", str(run_dir))
    assert res.rc == 0 and res.out["state"] == "draining"
    assert status(run_dir)["agent"]["state"] == "draining"
    (tmp_path / "work" / "go").touch()
    wait_state(run_dir, "stopped")
    js = jobs_by_id(run_dir)
    assert js["j0"]["status"] == "completed" and js["j1"]["status"] == js["j2"]["status"] == "pending"
    res = agent("drain", "--run-dir", str(run_dir))
    assert res.out == {"ok": True, "state": "stopped", "agent_running": False}


def test_status_paging_wait_logs_history_and_gpus(simgpu, tmp_path):
    jobs = [
        job(f"j{i}", f"echo line-$ARIS_JOB_ID; seq 1 {5 + i}", gpus_per_job=0, phase="p" + str(i % 2))
        for i in range(6)
    ]
    run_dir = make_run(tmp_path, jobs, gpus=[])
    before = status(run_dir)
    assert before["seq"] == 0 and before["counts"]["pending"] == 6 and not before["agent"]["alive"]
    run_fg(run_dir)
    page = status(run_dir, "--jobs", "--phase", "p1", "--offset", "1", "--limit", "1")
    assert page["jobs_matching"] == 3 and [j["id"] for j in page["jobs"]] == ["j3"]
    assert status(run_dir, "--jobs", "--state", "pending")["jobs"] == []
    waited = status(run_dir, "--wait", "30", "--since-seq", "999999")  # no scheduler: answers at once
    assert waited["seq"] == before["seq"] + waited["seq"] and not waited["agent"]["alive"]
    quick = status(run_dir, "--wait", "5", "--since-seq", "0")
    assert quick["seq"] > 0
    logs = agent("logs", "--run-dir", str(run_dir), "j2", "--tail", "3").out
    assert logs["lines"] == ["5", "6", "7"] and logs["truncated"] and logs["attempt"] == 1
    full = agent("logs", "--run-dir", str(run_dir), "j0", "--attempt", "1").out
    assert full["lines"][0].startswith("==== aris-queue: j0 attempt 1") and not full["truncated"]
    ev = history(run_dir, "j1")
    assert [(e["from"], e["to"]) for e in ev] == [("pending", "running"), ("running", "completed")]
    assert all(set(e) == {"seq", "t", "job", "from", "to", "reason", "attempt"} for e in ev)
    g = agent("gpus").out
    assert g["error"] is None and len(g["gpus"]) == 4 and g["gpus"][0]["usable"]
    bad = agent("logs", "--run-dir", str(run_dir), "zz")
    assert bad.rc == 1 and bad.out["error"] == "unknown_job"
    usage = agent("status")
    assert usage.rc == 2 and usage.out["error"] == "usage"
    missing = agent("status", "--run-dir", str(tmp_path / "nope"))
    assert missing.rc == 1 and missing.out["error"] == "no_run_dir"


def test_retry_while_the_scheduler_runs(simgpu, tmp_path, cleanup_run_dirs):
    flag = tmp_path / "work" / "ok"
    jobs = [
        job("a", f"test -e {flag}", gpus_per_job=0),
        job("b", "true", gpus_per_job=0, depends_on=["a"]),
        job("keepalive", gate("go"), gpus_per_job=0),
    ]
    run_dir = make_run(tmp_path, jobs, gpus=[])
    detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: jobs_by_id(run_dir)["b"]["status"] == "blocked", what="b blocked")
    flag.touch()
    res = agent("retry", "--run-dir", str(run_dir), "--failed")
    assert res.rc == 0 and res.out["retried"] == ["a"] and res.out["agent_running"] is True
    wait_for(lambda: jobs_by_id(run_dir)["b"]["status"] == "completed", what="b completed after retry")
    (tmp_path / "work" / "go").touch()
    st = wait_state(run_dir, "finished")
    assert st["counts"]["completed"] == 3


def test_cancel_after_the_scheduler_died_kills_orphaned_jobs(simgpu, tmp_path, cleanup_run_dirs):
    run_dir = make_run(tmp_path, [job("a", "sleep 60", gpus_per_job=0)], gpus=[], kill_grace=0.2)
    first = detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: jobs_by_id(run_dir)["a"]["status"] == "running", what="a running")
    pid = wait_for(
        lambda: json.loads((run_dir / "queue_state.json").read_text())["jobs"][0]["pid"], what="pid"
    )
    os.kill(first["pid"], signal.SIGKILL)
    wait_for(lambda: not status(run_dir)["agent"]["alive"], what="agent dead")
    assert pid_alive(pid)
    res = agent("cancel", "--run-dir", str(run_dir))
    assert res.rc == 0 and res.out["cancelled"] == ["a"] and res.out["agent_running"] is False
    wait_for(lambda: not pid_alive(pid), timeout=5, what="job killed")
    assert jobs_by_id(run_dir)["a"]["status"] == "cancelled"


def test_leftovers_of_a_lost_attempt_are_killed_before_the_job_runs_again(simgpu, tmp_path, cleanup_run_dirs):
    work = tmp_path / "work"
    # Attempt 1 leaves a worker that ignores SIGTERM (like a data-loader child); the test then kills only the
    # wrapper, as the kernel's OOM killer might. Attempt 2 records whether that worker still lived.
    cmd = (
        'echo "$ARIS_ATTEMPT" >> attempts.txt; '
        'if [ "$ARIS_ATTEMPT" = 1 ]; then '
        "sh -c 'trap \"\" TERM; echo $$ > worker.pid; exec sleep 60' & sleep 60; "
        # attempt 2 records the old worker's state: none, or Z (killed, not yet reaped by init)
        "else cut -d' ' -f3 /proc/$(cat worker.pid)/stat > old_state.txt 2>/dev/null; true; fi"
    )
    run_dir = make_run(tmp_path, [job("w", cmd, gpus_per_job=1)], kill_grace=0.5)
    detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: (work / "worker.pid").exists(), what="attempt 1's worker")
    wrapper = int((run_dir / "exits" / "w.1.pid").read_text())
    os.kill(wrapper, signal.SIGKILL)
    wait_state(run_dir, "finished")
    w = jobs_by_id(run_dir)["w"]
    assert w["status"] == "completed" and w["attempts"] == 2
    assert (work / "attempts.txt").read_text().split() == ["1", "2"]
    assert (work / "old_state.txt").read_text().strip() in ("", "Z", "X")  # the old worker was gone first
    assert not pid_alive(int((work / "worker.pid").read_text()))
    assert any(e["to"] == "pending" and "lost" in e["reason"] for e in history(run_dir, "w"))


def test_status_is_served_from_the_digest_cache_while_it_matches_the_journal(simgpu, tmp_path):
    run_dir = make_run(
        tmp_path, [job("a", "true", gpus_per_job=0), job("b", "exit 3", gpus_per_job=0)], gpus=[]
    )
    run_fg(run_dir)
    full = status(run_dir)
    assert full["counts"]["completed"] == 1 and full["counts"]["stuck"] == 1
    # The cache alone answers: even an unreadable spec does not matter to a plain status.
    spec = (run_dir / "spec.json").read_text()
    (run_dir / "spec.json").write_text("{not json")
    cached = status(run_dir)
    assert {k: v for k, v in cached.items() if k != "agent"} == {
        k: v for k, v in full.items() if k != "agent"
    }
    res = agent("status", "--run-dir", str(run_dir), "--jobs")
    assert res.rc == 1 and res.out["error"] == "bad_spec"  # job rows need the spec and the store
    (run_dir / "spec.json").write_text(spec)
    # A change the cache does not describe yet (seq moved on) falls back to the full computation.
    retried = agent("retry", "--run-dir", str(run_dir), "b")
    assert retried.out["retried"] == ["b"]
    (run_dir / "digest.json").unlink()
    after = status(run_dir)
    assert after["counts"]["pending"] == 1 and after["seq"] > full["seq"]


def test_a_high_priority_job_listed_last_starts_first_when_slots_are_scarce(simgpu, tmp_path):
    jobs = [job(f"j{i}", "true", gpus_per_job=0) for i in range(3)]
    jobs.append(job("urgent", "true", gpus_per_job=0, priority=10))
    run_dir = make_run(tmp_path, jobs, gpus=[], max_parallel=1)
    out = run_fg(run_dir)
    assert out["counts"]["completed"] == 4, out
    started = [e["job"] for e in history(run_dir) if e["to"] == "running"]
    assert started == ["urgent", "j0", "j1", "j2"]


def test_a_non_numeric_priority_is_a_bad_spec_naming_the_job(simgpu, tmp_path):
    run_dir = make_run(tmp_path, [job("a", "true", gpus_per_job=0, priority="high")], gpus=[])
    res = agent("run", "--run-dir", str(run_dir))
    assert res.rc == 1 and res.out["error"] == "bad_spec", res
    assert "jobs[0] (a).priority" in res.out["message"]


def test_a_retry_after_a_whole_queue_cancel_runs_the_job(simgpu, tmp_path, cleanup_run_dirs):
    jobs = [job("a", "trap '' TERM; sleep 30", gpus_per_job=0), job("b", "true", gpus_per_job=0)]
    run_dir = make_run(tmp_path, jobs, gpus=[], kill_grace=1.0, max_parallel=1)
    detach(run_dir, cleanup_run_dirs)
    status_when(run_dir, lambda s: s["counts"]["running"] == 1, "a running")
    assert agent("cancel", "--run-dir", str(run_dir)).out["whole_queue"]
    retried = agent("retry", "--run-dir", str(run_dir), "b").out
    assert retried["retried"] == ["b"] and retried["agent_running"] is True  # the scheduler runs it
    wait_state(run_dir, "finished")
    assert {j["id"]: j["status"] for j in status(run_dir, "--jobs")["jobs"]} == {
        "a": "cancelled",
        "b": "completed",
    }


def test_status_wait_answers_at_once_when_the_scheduler_is_gone(simgpu, tmp_path, cleanup_run_dirs):
    run_dir = make_run(tmp_path, [job("a", "sleep 30", gpus_per_job=0)], gpus=[])
    started = detach(run_dir, cleanup_run_dirs)
    seq = status_when(run_dir, lambda s: s["counts"]["running"] == 1, "a running")["seq"]
    os.kill(started["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(started["pid"]), what="the scheduler gone")
    # Nothing can change without a scheduler: a 10-minute wait must not block (agent() gives up after 60 s).
    res = agent("status", "--run-dir", str(run_dir), "--wait", "600", "--since-seq", str(seq), timeout=60)
    assert res.rc == 0 and res.out["agent"]["alive"] is False and res.out["seq"] == seq
    agent("cancel", "--run-dir", str(run_dir))  # kills the orphaned job


def test_cancel_without_a_scheduler_stops_an_attempt_whose_pid_was_never_journaled(simgpu, tmp_path):
    run_dir = make_run(tmp_path, [job("a", "sleep 30", gpus_per_job=0)], gpus=[])
    _journal_running(run_dir, "a")  # the launch intent is durable; the agent died before recording the pid
    spec = load_spec(str(run_dir))
    runner.prepare(str(run_dir))
    h = runner.launch(str(run_dir), spec.run_id, spec.by_id["a"], 1, (), "process", time.time())
    try:
        wait_for(lambda: (run_dir / "exits" / "a.1.pid").exists(), what="the wrapper's pid file")
        assert agent("cancel", "--run-dir", str(run_dir), "a").out["cancelled"] == ["a"]
        wait_for(lambda: h.popen.poll() is not None, timeout=10, what="the attempt killed")
    finally:
        runner.signal_group(h.pid, signal.SIGKILL)


def test_an_old_attempt_still_dying_when_the_scheduler_crashes_is_killed_at_restart(
    simgpu, tmp_path, cleanup_run_dirs
):
    work = tmp_path / "work"
    cmd = (
        'if [ "$ARIS_ATTEMPT" = 1 ]; then echo $$ > first.pid; trap "" TERM; sleep 60; '
        # attempt 2 records the state of attempt 1's process (none, or Z: killed, not yet reaped by init)
        "else cut -d' ' -f3 /proc/$(cat first.pid)/stat > old_state.txt 2>/dev/null; true; fi"
    )
    run_dir = make_run(tmp_path, [job("a", cmd, gpus_per_job=0)], gpus=[], kill_grace=5.0)
    first = detach(run_dir, cleanup_run_dirs)
    wait_for(lambda: (work / "first.pid").exists(), what="attempt 1 running")
    agent("cancel", "--run-dir", str(run_dir), "a")  # TERM is ignored: it dies only at the SIGKILL, 5 s on
    assert agent("retry", "--run-dir", str(run_dir), "a").out["retried"] == ["a"]
    os.kill(first["pid"], signal.SIGKILL)  # the scheduler dies while attempt 1 is still dying
    wait_for(lambda: not pid_alive(first["pid"]), what="the scheduler gone")
    detach(run_dir, cleanup_run_dirs)  # restart: attempt 1's process is a leftover and must go first
    wait_state(run_dir, "finished", timeout=60)
    a = status(run_dir, "--jobs")["jobs"][0]
    assert a["status"] == "completed" and a["attempts"] == 2
    assert (work / "old_state.txt").read_text().strip() in ("", "Z", "X")  # never running beside attempt 2
