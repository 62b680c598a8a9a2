"""Journal + snapshot, the lock, nvidia-smi parsing against the simulated GPU, and the launch wrapper."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from remote_agent import defaults, gpus, runner, store
from remote_agent.errors import AlreadyRunningError
from remote_agent.spec import parse_spec
from remote_agent.states import JobState, transition, update
from tests.fixtures.simgpu import job, make_run

S = JobState


def _spec(n, **queue):
    jobs = [{"id": f"j{i}", "cmd": "true", "cwd": "/tmp"} for i in range(n)]
    return parse_spec(
        {"format": "aris-queue-runspec", "version": 1, "run_id": "r", "jobs": jobs, "queue": queue}
    )


# --------------------------------------------------------------------------- store


def test_journal_replays_to_the_same_state_and_snapshot_skips_the_prefix(tmp_path):
    spec = _spec(3)
    st = store.Store(str(tmp_path), spec, writer=True)
    st.append([transition(st.jobs["j0"], S.RUNNING, "launch", 1.0, attempts=1, gpus=[0])])
    st.append([update(st.jobs["j0"], "launch", 1.1, pid=123, proc_start="b:9")])
    st.maybe_snapshot(2.0, force=True)
    st.append([transition(st.jobs["j0"], S.COMPLETED, "exit 0", 3.0, exit_code=0)])
    st.close(4.0)
    snap = json.loads((tmp_path / "queue_state.json").read_text())
    assert snap["seq"] == 3 and snap["journal_offset"] == os.path.getsize(tmp_path / "journal.jsonl")
    # Without the snapshot, a full replay gives the same jobs.
    (tmp_path / "queue_state.json").unlink()
    again = store.Store(str(tmp_path), spec)
    assert again.seq == 3 and again.jobs["j0"].to_dict() == st.jobs["j0"].to_dict()
    assert store.last_seq(str(tmp_path)) == 3


def test_reader_uses_snapshot_then_tail(tmp_path):
    spec = _spec(2)
    st = store.Store(str(tmp_path), spec, writer=True)
    st.append([transition(st.jobs["j0"], S.RUNNING, "launch", 1.0)])
    st.maybe_snapshot(1.0, force=True)
    st.append([transition(st.jobs["j1"], S.CANCELLED, "cancelled", 2.0)])
    # Corrupt the journal prefix covered by the snapshot: a reader must not need it.
    data = (tmp_path / "journal.jsonl").read_bytes()
    first_len = data.index(b"\n") + 1
    (tmp_path / "journal.jsonl").write_bytes(b"x" * (first_len - 1) + b"\n" + data[first_len:])
    r = store.Store(str(tmp_path), spec)
    assert r.jobs["j0"].status == S.RUNNING and r.jobs["j1"].status == S.CANCELLED


def test_torn_last_line_is_ignored_and_cut_by_the_next_writer(tmp_path):
    spec = _spec(1)
    st = store.Store(str(tmp_path), spec, writer=True)
    st.append([transition(st.jobs["j0"], S.RUNNING, "launch", 1.0)])
    st.close()
    (tmp_path / "queue_state.json").unlink()
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"seq": 2, "event": "transition", "job": "j0", "set": {"status": "compl')
    r = store.Store(str(tmp_path), spec)
    assert r.jobs["j0"].status == S.RUNNING and r.seq == 1
    w = store.Store(str(tmp_path), spec, writer=True)
    w.append([transition(w.jobs["j0"], S.COMPLETED, "exit 0", 2.0)])
    w.close()
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(ln)["seq"] for ln in lines] == [1, 2]


def test_snapshot_answers_the_users_jq_query(tmp_path):
    spec = _spec(4)
    st = store.Store(str(tmp_path), spec, writer=True)
    st.append(
        [transition(st.jobs["j0"], S.RUNNING, "l", 1.0), transition(st.jobs["j1"], S.CANCELLED, "c", 1.0)]
    )
    st.close()
    snap = json.loads((tmp_path / "queue_state.json").read_text())
    counts: dict = {}
    for j in snap["jobs"]:
        counts[j["status"]] = counts.get(j["status"], 0) + 1
    assert counts == {"running": 1, "cancelled": 1, "pending": 2}
    jq = shutil.which("jq")
    if jq:
        q = ".jobs | group_by(.status) | map({(.[0].status): length}) | add"
        out = subprocess.run(
            [jq, "-c", q, str(tmp_path / "queue_state.json")], capture_output=True, text=True
        )
        assert json.loads(out.stdout) == counts


def test_ten_thousand_jobs_stay_cheap(tmp_path, monkeypatch):
    monkeypatch.setenv("ARIS_AGENT_TUNABLES", json.dumps({"FSYNC": False}))
    spec = _spec(10_000)
    st = store.Store(str(tmp_path), spec, writer=True)
    t0 = time.monotonic()
    for j in st.jobs.values():  # three transitions per job, snapshots by policy
        st.append([transition(j, S.RUNNING, "l", 1.0, attempts=1)])
        st.append([transition(j, S.COMPLETED, "exit 0", 2.0)])
        st.maybe_snapshot(time.monotonic())
    st.close()
    write_s = time.monotonic() - t0
    t0 = time.monotonic()
    r = store.Store(str(tmp_path), spec)
    read_s = time.monotonic() - t0
    assert all(j.status == S.COMPLETED for j in r.jobs.values())
    # Generous bounds: a per-transition full rewrite would take minutes here.
    assert write_s < 30 and read_s < 5


def test_second_lock_holder_is_refused_with_the_pid(tmp_path):
    a = store.RunLock(str(tmp_path))
    assert a.try_acquire("scheduler")
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]); from remote_agent import store\n"
        "l = store.RunLock(sys.argv[1]); print(l.try_acquire('scheduler'))"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), root], capture_output=True, text=True)
    assert out.stdout.strip() == "False"
    with pytest.raises(AlreadyRunningError) as info:
        b = store.RunLock(str(tmp_path))
        # Same process, different descriptor: flock still conflicts.
        b.acquire("scheduler")
    assert info.value.extra["pid"] == os.getpid()
    a.release()


def test_control_inbox_claim_is_exclusive(tmp_path):
    rid = store.post_request(str(tmp_path), {"op": "drain"})
    assert store.inbox(str(tmp_path)) == [rid]
    assert store.claim_request(str(tmp_path), rid)["op"] == "drain"
    assert store.claim_request(str(tmp_path), rid) is None
    store.answer_request(str(tmp_path), rid, {"ok": True})
    assert store.take_answer(str(tmp_path), rid) == {"ok": True}
    assert store.inbox(str(tmp_path)) == []


# --------------------------------------------------------------------------- gpus


def test_parse_real_formats_and_na():
    text = (
        "0, GPU-aaa, 1234, 81559\n"
        "1, GPU-bbb, [N/A], [N/A]\n"
        "WARNING: infoROM is corrupted at gpu 0000:02:00.0\n"
        "2, GPU-ccc, 12\n"
    )
    got = gpus.parse(text)
    assert got[0] == gpus.GpuReading(0, "GPU-aaa", 1234, 81559)
    assert got[1].error == "nvidia-smi reports memory as [N/A]"
    assert got[2].error.startswith("short line")
    assert len(got) == 3


def test_read_the_simulated_gpu(simgpu):
    simgpu.update(na=[3])
    r = gpus.read(1.0)
    assert r.error is None and [g.index for g in r.gpus] == [0, 1, 2, 3]
    assert r.gpus[0].used_mib == 3 and r.gpus[0].total_mib == 81559 and r.gpus[0].uuid.startswith("GPU-")
    stat = gpus.availability(r, "auto", 500, {1: "s1"})
    assert [(s.index, s.usable) for s in stat] == [(0, True), (1, False), (2, True), (3, False)]
    assert stat[1].reason == "held by job s1" and "[N/A]" in stat[3].reason


def test_read_failures_are_errors_not_exceptions(simgpu):
    simgpu.update(driver_failure=True)
    r = gpus.read(1.0)
    assert r.gpus == [] and "exited 9" in r.error and "NVIDIA-SMI has failed" in r.error
    simgpu.hide_nvidia_smi()
    assert gpus.read(1.0).error == "nvidia-smi not found on PATH"


# --------------------------------------------------------------------------- runner


def _run_attempt(run_dir, js, gpus_=(2,), attempt=1, timeout=20):
    runner.prepare(str(run_dir))
    h = runner.launch(str(run_dir), "r", js, attempt, tuple(gpus_), "process", time.time())
    h.popen.wait(timeout=timeout)
    return runner.read_exit(str(run_dir), js.id, attempt)


def _js(tmp_path, **kw):
    run_dir = make_run(tmp_path, [job("j.1", **kw)])
    from remote_agent.spec import load_spec

    return run_dir, load_spec(str(run_dir)).jobs[0]


def test_wrapper_exports_binding_for_compound_commands_and_records_exit(tmp_path):
    inner = "bash -c 'echo \"b=$CUDA_VISIBLE_DEVICES $ARIS_JOB_ID\"'"
    cmd = f'echo "a=$CUDA_VISIBLE_DEVICES gpu=${{GPU}}" && {inner}; exit 3'
    run_dir, js = _js(tmp_path, cmd=cmd)
    assert _run_attempt(run_dir, js, gpus_=(2, 3)) == 3
    log = (run_dir / "logs" / "j.1.log").read_text().splitlines()
    assert log[0].startswith("==== aris-queue: j.1 attempt 1 started ") and log[0].endswith(" gpus=2,3 ====")
    assert log[1:] == ["a=2,3 gpu=2,3", "b=2,3 j.1"]
    assert oct(os.stat(run_dir / "wrappers" / "j.1.1.sh").st_mode & 0o777) == "0o700"


def test_nothing_from_the_spec_reaches_a_shell_unquoted(tmp_path):
    evil = "$(touch pwned) `touch pwned2` ' \" ; touch pwned3"
    run_dir, js = _js(
        tmp_path, cmd='printf "%s\\n" "$EVIL"', env={"EVIL": evil}, cwd=str(tmp_path / "we ird'dir")
    )
    os.makedirs(js.cwd)
    assert _run_attempt(run_dir, js) == 0
    assert (run_dir / "logs" / "j.1.log").read_text().splitlines()[1] == evil
    assert not list(tmp_path.rglob("pwned*"))


def test_prelude_failure_exits_98_with_a_clear_line(tmp_path):
    run_dir, js = _js(tmp_path, prelude=["export X=1", "false # a comment", "echo never"], cmd="echo ran")
    assert _run_attempt(run_dir, js) == 98
    text = (run_dir / "logs" / "j.1.log").read_text()
    assert "aris-queue: prelude line 2 failed (exit 1): false # a comment" in text and "ran" not in text


def test_attempts_share_one_log_kept_apart_by_headers(tmp_path):
    run_dir, js = _js(tmp_path, cmd='echo "attempt $ARIS_ATTEMPT"')
    _run_attempt(run_dir, js, attempt=1)
    _run_attempt(run_dir, js, attempt=2)
    lines = (run_dir / "logs" / "j.1.log").read_text().splitlines()
    assert [ln for ln in lines if not ln.startswith("====")] == ["attempt 1", "attempt 2"]


def test_pid_file_claim_stops_a_late_wrapper(tmp_path):
    run_dir, js = _js(tmp_path, cmd="touch ran")
    runner.prepare(str(run_dir))
    assert runner.claim_pid_file(str(run_dir), js.id, 1) == (True, None)
    assert _run_attempt(run_dir, js) is None
    assert not (tmp_path / "work" / "ran").exists()
    assert runner.claim_pid_file(str(run_dir), js.id, 1) == (False, None)


def test_process_identity_detects_pid_reuse():
    p = subprocess.Popen(["sleep", "30"])
    try:
        start = runner.proc_start(p.pid)
        assert start and start.startswith(runner.boot_id() + ":")
        assert runner.alive(p.pid, start)
        bid, ticks = start.rsplit(":", 1)
        assert not runner.alive(p.pid, f"{bid}:{int(ticks) + 1}")  # same pid, another process
        assert not runner.alive(p.pid, f"other-boot:{ticks}")
        wall = runner.proc_start_wall(start)
        assert wall is not None and abs(wall - time.time()) < 5
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert runner.proc_start(p.pid) is None


def test_tunables_can_be_overridden(monkeypatch):
    monkeypatch.setenv("ARIS_AGENT_TUNABLES", json.dumps({"MAX_LOST": 5}))
    assert defaults.tunable("MAX_LOST") == 5
    monkeypatch.delenv("ARIS_AGENT_TUNABLES")
    assert defaults.tunable("MAX_LOST") == defaults.MAX_LOST


def test_missing_cwd_fails_the_attempt_with_a_clear_line(tmp_path):
    run_dir, js = _js(tmp_path, cmd="echo never", cwd=str(tmp_path / "does-not-exist"))
    assert _run_attempt(run_dir, js) == 1
    assert "aris-queue: cannot change to directory" in (run_dir / "logs" / "j.1.log").read_text()
