"""Figure 3: how cost grows with queue size (100, 1,000, 10,000 jobs).

Real, per size, through ``QueueService``: expand + validate (in process), launch (local, and over SSH to a
real sshd on loopback), ``queue_status`` latency and digest size, the agent's peak memory (VmHWM from
/proc/<pid>/status of the live scheduler, read just before the run is cancelled) and its CPU use while idle
(utime+stime from /proc/<pid>/stat over a window). The jobs never start: a foreign process holds memory on
every simulated GPU for ever, so every job stays pending while the scheduler keeps ticking.

In process, on the same spec: the CPU time of one ``scheduler.tick`` with all jobs pending (no GPU free, and
one GPU free), and the bytes the store writes per state transition (journal + amortized snapshots) and its CPU
time, driven the way the daemon drives it: ``transition``/``update`` records appended per batch, then
``maybe_snapshot`` at each loop wake-up. Two regimes: ``burst`` (a job cycle every 10 ms) and ``sparse`` (a
job cycle every 3 s, wake-ups every 1 s: long jobs, the common case).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aris_queue_mcp.service import QueueService
from remote_agent import gpus as agent_gpus
from remote_agent import store as agent_store
from remote_agent import views
from remote_agent.scheduler import tick
from remote_agent.spec import load_spec
from remote_agent.states import JobState, transition, update
from tests.fixtures.simgpu import wait_for

from .common import (
    Loopback,
    Row,
    base_manifest,
    cancel_everything,
    check_mode,
    fmt,
    percentile,
    sim_gpus,
    sshd_available,
    verdict,
    vm_hwm_kib,
    workdir,
)

SIZES = {"tiny": [20], "quick": [100, 1000], "full": [100, 1000, 10000]}
GPUS = 8
STATUS_CALLS = 10
IDLE_WINDOW_S = {"tiny": 1.0, "quick": 3.0, "full": 5.0}
GOAL_STATUS_SSH_S = 0.100
GOAL_DIGEST_BYTES = 6 * 1024
S = JobState


def _manifest(n: int, root: Path, ssh: str) -> dict[str, Any]:
    a = 10 if n >= 100 else 2
    train = f"CUDA_VISIBLE_DEVICES=${{GPU}} {sys.executable} -c 'import time; time.sleep(600)'"
    return base_manifest(
        f"bench_scale_{n}_{'ssh' if ssh != 'local' else 'local'}",
        root,
        ssh=ssh,
        grid={"seed": list(range(a)), "cfg": list(range(n // a))},
        template={"id": "s${seed}_c${cfg}", "cmd": train + " --seed ${seed} --cfg ${cfg}"},
    )


def _cpu_ticks(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        data = Path(f"/proc/{pid}/stat").read_text()
        fields = data[data.rfind(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])
    return None


def _follow_launched(
    svc: QueueService, m: dict[str, Any], n: int, idle_s: float, breakdown: bool = False
) -> dict[str, Any]:
    """Launch ``m``, then measure status latency/size, idle CPU and peak memory of its agent; cancel it."""
    t0 = time.perf_counter()
    res = svc.launch_queue(m)
    launch_s = time.perf_counter() - t0
    out: dict[str, Any] = {"launch_s": round(launch_s, 4), "run_id": res.run_id}
    pid = int(res.agent_pid or 0)
    # Wait for a tick that read the GPUs (the digest then shows them), so status is measured at steady state.
    wait_for(lambda: svc.queue_status(res.run_id).gpus, timeout=60, what="first GPU reading")
    before, t_before = _cpu_ticks(pid), time.monotonic()
    time.sleep(idle_s)
    after, t_after = _cpu_ticks(pid), time.monotonic()
    if before is not None and after is not None:
        hz = os.sysconf("SC_CLK_TCK")
        out["agent_idle_cpu_pct"] = round(100.0 * (after - before) / hz / (t_after - t_before), 2)
    svc.queue_status(res.run_id)  # warm: connection and page cache
    lat, size = [], 0
    for _ in range(STATUS_CALLS):
        t = time.perf_counter()
        st = svc.queue_status(res.run_id)
        lat.append(time.perf_counter() - t)
        size = len(st.model_dump_json().encode())
    assert st.counts.get("pending") == n, st.counts
    out.update(
        status_p50_s=round(percentile(lat, 50) or 0.0, 4),
        status_p95_s=round(percentile(lat, 95) or 0.0, 4),
        digest_bytes=size,
        digest_tokens=size // 4,
        agent_peak_rss_kib=vm_hwm_kib(pid),
        agent_pid=pid,
    )
    if breakdown:
        rec = svc.registry.load(res.run_id)
        out["status_breakdown"] = _status_breakdown(
            Path(rec.remote_run_dir), rec.python, rec.agent_path or ""
        )
    t = time.perf_counter()
    svc.cancel_job(res.run_id)
    out["cancel_all_s"] = round(time.perf_counter() - t, 4)
    return out


def _tick_costs(run_dir: Path, readings: agent_gpus.Readings, reps: int) -> dict[str, Any]:
    spec = load_spec(str(run_dir))
    st = agent_store.Store(str(run_dir), spec)
    jobs = list(st.jobs.values())
    assert all(j.status == S.PENDING for j in jobs)
    busy = readings
    free = agent_gpus.Readings(
        [
            agent_gpus.GpuReading(g.index, g.uuid, 3 if g.index == 0 else g.used_mib, g.total_mib)
            for g in readings.gpus
        ],
        None,
        readings.taken_at,
    )
    out = {}
    for name, r in (("all_busy", busy), ("one_gpu_free", free)):
        now = time.time()
        t = time.process_time()
        for _ in range(reps):
            res = tick(now, r, jobs, spec)
        cpu = (time.process_time() - t) / reps
        out[f"tick_cpu_ms_{name}"] = round(cpu * 1000, 3)
        out[f"launches_{name}"] = sum(1 for d in res.decisions if type(d).__name__ == "Launch")
    return out


def _transition_costs(run_dir: Path, cycles: int, cycle_s: float, wake_s: float) -> dict[str, Any]:
    """Drive the store like the daemon: per job cycle an intent, a launch update, later its completion."""
    spec = load_spec(str(run_dir))
    st = agent_store.Store(str(run_dir), spec, writer=True)
    jpath, spath = Path(st.journal_path), Path(st.snapshot_path)
    j0 = jpath.stat().st_size if jpath.exists() else 0
    snap_bytes, snaps, transitions, records = 0, 0, 0, 0
    now = time.time()
    ids = [j.id for j in spec.jobs][:cycles]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        for jid in ids:
            job = st.jobs[jid]
            st.append(
                [transition(job, S.RUNNING, "launching attempt 1", now, attempts=1, gpus=[0], started_at=now)]
            )
            st.append([update(job, "launch", now, pid=12345, proc_start="x:1")])
            st.append([transition(job, S.COMPLETED, "exit 0", now, exit_code=0, ended_at=now)])
            transitions, records = transitions + 2, records + 3
            # Loop wake-ups until the next cycle: each one may write the snapshot.
            t = now
            while True:
                if st.maybe_snapshot(t):
                    snaps += 1
                    snap_bytes += spath.stat().st_size
                t += wake_s
                if t >= now + cycle_s:
                    break
            now += cycle_s
    finally:
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        st._fh.close()  # no closing snapshot: it is not part of the steady-state cost
        st._fh = None
    jbytes = jpath.stat().st_size - j0
    return {
        "job_cycles": len(ids),
        "transitions": transitions,
        "journal_bytes_per_transition": round(jbytes / transitions, 1),
        "snapshots_written": snaps,
        "snapshot_bytes_each": spath.stat().st_size if spath.exists() else 0,
        "total_bytes_per_transition": round((jbytes + snap_bytes) / transitions, 1),
        "cpu_ms_per_transition": round(1000 * cpu / transitions, 4),
        "wall_ms_per_transition": round(1000 * wall / transitions, 4),
    }


def _status_breakdown(run_dir: Path, python: str, agent_path: str) -> dict[str, Any]:
    """Where one ``status`` call's time goes: interpreter start, the agent's own start (``version``: imports
    only), and in process on the live run directory: spec load, store load, digest."""

    def cli(argv: list[str]) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        return round(percentile(times, 50) or 0.0, 4)

    t = time.perf_counter()
    spec = load_spec(str(run_dir))
    t_spec = time.perf_counter() - t
    t = time.perf_counter()
    st = agent_store.Store(str(run_dir), spec)
    t_store = time.perf_counter() - t
    t = time.perf_counter()
    views.digest(str(run_dir), spec, st)
    t_digest = time.perf_counter() - t
    return {
        "python_startup_s": cli([python, "-c", "pass"]),
        "agent_version_cmd_s": cli([python, agent_path, "version"]),
        "agent_status_cmd_s": cli([python, agent_path, "status", "--run-dir", str(run_dir)]),
        "load_spec_s": round(t_spec, 4),
        "load_store_s": round(t_store, 4),
        "digest_s": round(t_digest, 4),
        "spec_json_bytes": (run_dir / "spec.json").stat().st_size,
    }


def measure_size(n: int, root: Path, mode: str, ssh: Loopback | None) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": n}
    svc = QueueService(root / "project")
    try:
        m = _manifest(n, root, "local")
        reps = 3 if n <= 1000 else 1
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            plan = svc.expand_grid(m, limit=50)
            times.append(time.perf_counter() - t)
        assert plan.total == n
        out["expand_validate_s"] = round(min(times), 4)
        out["local"] = _follow_launched(svc, m, n, IDLE_WINDOW_S[mode], breakdown=True)
        run_dir = Path(svc.registry.load(out["local"]["run_id"]).remote_run_dir)
        # In-process costs on a copy of the run's spec with every job pending (before the cancel records).
        scratch = root / "scratch"
        scratch.mkdir()
        shutil.copy(run_dir / "spec.json", scratch / "spec.json")
        readings = agent_gpus.read(time.time())
        reps = max(3, min(200, 20000 // n))
        out["scheduler"] = _tick_costs(scratch, readings, reps)
        cycles = 300 if mode == "full" else 60
        burst = _transition_costs(scratch, cycles, 0.01, 0.01)
        shutil.rmtree(scratch)
        scratch.mkdir()
        shutil.copy(run_dir / "spec.json", scratch / "spec.json")
        sparse = _transition_costs(scratch, 20 if mode == "full" else 6, 3.0, 1.0)
        out["store"] = {"burst": burst, "sparse": sparse}
    finally:
        cancel_everything(svc)
        svc.close()
    if ssh is not None:
        svc = QueueService(root / "project_ssh", ssh_options=ssh.options())
        try:
            out["ssh"] = _follow_launched(svc, _manifest(n, root, ssh.alias), n, IDLE_WINDOW_S[mode] / 2)
        finally:
            cancel_everything(svc)
            svc.close()
    return out


def run(mode: str = "full", base: Path | None = None) -> dict[str, Any]:
    """Measure every size; return the figures."""
    sizes = SIZES[check_mode(mode)]
    foreign = [{"gpu": i, "mib": 2000, "start": 0, "end": None} for i in range(GPUS)]
    out: dict[str, Any] = {
        "gpus": GPUS,
        "jobs_wait_because": "a foreign process holds 2000 MiB on every GPU (threshold 500 MiB) for ever",
        "status_calls_per_size": STATUS_CALLS,
        "goal": {"status_ssh_s": GOAL_STATUS_SSH_S, "digest_bytes_at_largest": GOAL_DIGEST_BYTES},
        "sizes": {},
    }
    with workdir(base, "scale") as root, sim_gpus(root, GPUS, foreign=foreign) as env:
        loop: Any = contextlib.nullcontext(None)
        if sshd_available():
            loop = Loopback(root / "sshd", remote_env=env)
        else:
            out["ssh_skipped"] = "/usr/sbin/sshd or ssh-keygen is missing: no SSH figures"
        with loop as ssh:
            for n in sizes:
                out["sizes"][str(n)] = measure_size(n, root / f"n{n}", mode, ssh)
    big = out["sizes"][str(sizes[-1])]
    sizes_ = list(out["sizes"].values())
    ssh_ok = big["ssh"]["status_p50_s"] <= GOAL_STATUS_SSH_S if "ssh" in big else None
    out["met"] = {
        "status_ssh": ssh_ok,
        "digest_size": big["local"]["digest_bytes"] <= GOAL_DIGEST_BYTES,
        "flat_tick_cpu": _flat([s["scheduler"]["tick_cpu_ms_all_busy"] for s in sizes_]),
        "flat_journal_bytes_per_transition": _flat(
            [s["store"]["burst"]["journal_bytes_per_transition"] for s in sizes_]
        ),
        "flat_total_bytes_per_transition_burst": _flat(
            [s["store"]["burst"]["total_bytes_per_transition"] for s in sizes_]
        ),
        "flat_total_bytes_per_transition_sparse": _flat(
            [s["store"]["sparse"]["total_bytes_per_transition"] for s in sizes_]
        ),
        "flat_store_cpu_per_transition": _flat(
            [s["store"]["burst"]["cpu_ms_per_transition"] for s in sizes_]
        ),
    }
    out["flat_means"] = "largest size within 1.5x of the smallest"
    return out


def _flat(vals: list[float], slack: float = 1.5) -> bool:
    return max(vals) <= slack * min(vals)


def rows(d: dict[str, Any]) -> list[Row]:
    sizes = d["sizes"]
    ns = list(sizes)
    big = sizes[ns[-1]]

    def each(f: Any, unit: str = "") -> str:
        return ", ".join(f"{int(n):,}: {fmt(f(sizes[n]), unit)}" for n in ns)

    out: list[Row] = [
        ("3. expand + validate", each(lambda s: s["expand_validate_s"], "s"), "", ""),
        ("3. launch, local", each(lambda s: s["local"]["launch_s"], "s"), "", ""),
        ("3. launch, SSH loopback", each(lambda s: s.get("ssh", {}).get("launch_s"), "s"), "", ""),
        (
            "3. scheduler tick CPU, all pending",
            each(lambda s: s["scheduler"]["tick_cpu_ms_all_busy"], "ms"),
            "flat",
            verdict(d["met"]["flat_tick_cpu"]),
        ),
        (
            "3. journal bytes / transition",
            each(lambda s: s["store"]["burst"]["journal_bytes_per_transition"], "B"),
            "flat",
            verdict(d["met"]["flat_journal_bytes_per_transition"]),
        ),
        (
            "3. state bytes / transition incl. snapshots, burst (100 cycles/s)",
            each(lambda s: s["store"]["burst"]["total_bytes_per_transition"], "B"),
            "flat",
            verdict(d["met"]["flat_total_bytes_per_transition_burst"]),
        ),
        (
            "3. state bytes / transition incl. snapshots, sparse (1 cycle / 3 s)",
            each(lambda s: s["store"]["sparse"]["total_bytes_per_transition"], "B"),
            "flat",
            verdict(d["met"]["flat_total_bytes_per_transition_sparse"]),
        ),
        (
            "3. store CPU / transition, burst",
            each(lambda s: s["store"]["burst"]["cpu_ms_per_transition"], "ms"),
            "flat",
            verdict(d["met"]["flat_store_cpu_per_transition"]),
        ),
        ("3. agent peak RSS (VmHWM)", each(lambda s: s["local"]["agent_peak_rss_kib"] / 1024, "MiB"), "", ""),
        ("3. agent idle CPU", each(lambda s: s["local"]["agent_idle_cpu_pct"], "%"), "", ""),
        (
            "3. queue_status digest",
            each(lambda s: f"{s['local']['digest_bytes']} B / ~{s['local']['digest_tokens']} tok"),
            f"<= {GOAL_DIGEST_BYTES} B at {int(ns[-1]):,}",
            verdict(d["met"]["digest_size"]),
        ),
        ("3. queue_status latency p50, local", each(lambda s: s["local"]["status_p50_s"], "s"), "", ""),
        (
            "3. queue_status latency p50, SSH loopback",
            each(lambda s: s.get("ssh", {}).get("status_p50_s"), "s"),
            f"<= {GOAL_STATUS_SSH_S} s at {int(ns[-1]):,}",
            verdict(d["met"]["status_ssh"]),
        ),
    ]
    bd = big["local"]["status_breakdown"]
    out.append(
        (
            f"3. status time split at {int(ns[-1]):,} (in process)",
            f"agent `status` alone {fmt(bd['agent_status_cmd_s'])} s = interpreter "
            f"{fmt(bd['python_startup_s'])} s + agent imports "
            f"(`version` {fmt(bd['agent_version_cmd_s'])} s) + spec {fmt(bd['load_spec_s'])} s + "
            f"store {fmt(bd['load_store_s'])} s + digest {fmt(bd['digest_s'])} s",
            "",
            "",
        )
    )
    return out
