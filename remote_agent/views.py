"""Read-only views of a run for the command line: the status digest, job rows, logs and history.

Nothing here takes the run lock or writes a file, so these commands never disturb a running scheduler.
"""

from __future__ import annotations

import os
import re
import socket
import time
from typing import Any, Dict, List, Optional, Sequence

from . import __version__, defaults, gpus, runner, store
from .spec import RunSpec
from .states import Job, JobState

S = JobState


def agent_info(run_dir: str) -> Dict[str, Any]:
    """The scheduler as agent.json describes it, with ``alive`` checked (pid + start time, or heartbeat age
    when it runs on another host sharing the directory over NFS)."""
    info = store.read_agent_json(run_dir)
    pid = info.get("pid")
    if not info:
        return {"alive": False, "pid": None, "state": None, "heartbeat_at": None, "version": __version__}
    if info.get("host") == socket.gethostname():
        is_alive = isinstance(pid, int) and runner.alive(pid, info.get("proc_start"))
    else:
        hb = info.get("heartbeat_at") or 0.0
        is_alive = time.time() - float(hb) < float(defaults.tunable("HEARTBEAT_STALE"))
    if info.get("state") in ("finished", "stopped") and not is_alive:
        is_alive = False
    return {
        "alive": bool(is_alive),
        "pid": pid,
        "state": info.get("state"),
        "heartbeat_at": info.get("heartbeat_at"),
        "version": info.get("version"),
        "host": info.get("host"),
    }


def job_row(j: Job) -> Dict[str, Any]:
    return {
        "id": j.id,
        "phase": j.phase,
        "status": j.status.value,
        "attempts": j.attempts,
        "gpus": j.gpus,
        "exit_code": j.exit_code,
        "reason": j.reason,
        "started_at": j.started_at,
        "ended_at": j.ended_at,
        "outputs": list(j.outputs),
    }


DIGEST_CACHE = "digest.json"
"""The job part of the status digest, written by the lock holder after each change, so that ``status`` on a
10,000-job run reads one small file instead of parsing the spec and replaying the store."""


def job_summary(spec: RunSpec, st: store.Store) -> Dict[str, Any]:
    """The parts of the digest that depend on the job records only (valid for journal sequence ``seq``)."""
    all_jobs = list(st.jobs.values())
    counts = {s.value: 0 for s in S}
    for j in all_jobs:
        counts[j.status.value] += 1
    running = sorted((j for j in all_jobs if j.status == S.RUNNING), key=lambda j: j.started_at or 0.0)
    rmax = int(defaults.tunable("STATUS_RUNNING_MAX"))
    out: Dict[str, Any] = {
        "run_id": spec.run_id,
        "project": spec.project,
        "seq": st.seq,
        "total": len(all_jobs),
        "counts": counts,
        "started_at": st.meta.get("started_at"),
        "finished_at": st.meta.get("finished_at"),
        "eta_s": _eta(all_jobs, counts, spec),
        "running": [
            {"id": j.id, "phase": j.phase, "gpus": j.gpus, "attempt": j.attempts, "started_at": j.started_at}
            for j in running[:rmax]
        ],
        "failures": _failures(all_jobs),
        # What the GPU view needs when no scheduler runs (see _gpu_view).
        "held": {str(g): j.id for j in running for g in j.gpus},
        "queue": {
            "gpus": spec.queue.gpus,
            "threshold": spec.queue.gpu_free_threshold_mib,
            "cpu_only": spec.queue.cpu_only,
        },
    }
    if len(running) > rmax:
        out["running_more"] = len(running) - rmax
    return out


def write_digest_cache(run_dir: str, spec: RunSpec, st: store.Store) -> None:
    """Refresh ``digest.json`` (only the holder of the run lock calls this). A cache: no fsync; readers
    check its ``seq`` against the journal and fall back to the full computation when it is stale."""
    store.atomic_write_json(os.path.join(run_dir, DIGEST_CACHE), job_summary(spec, st), fsync=False)


def cached_digest(run_dir: str) -> Optional[Dict[str, Any]]:
    """The status digest from ``digest.json`` when it matches the journal's last record, else None."""
    cache = store.read_json(os.path.join(run_dir, DIGEST_CACHE))
    if not cache or cache.get("seq") != store.last_seq(run_dir):
        return None
    return _finish_digest(run_dir, cache)


def digest(
    run_dir: str,
    spec: RunSpec,
    st: store.Store,
    *,
    jobs: bool = False,
    states: Sequence[str] = (),
    phase: Optional[str] = None,
    offset: int = 0,
    limit: Optional[int] = None,
) -> Dict[str, Any]:
    """The status digest of docs/protocol.md §4: small for any number of jobs."""
    out = _finish_digest(run_dir, job_summary(spec, st))
    if jobs:
        want = set(states)
        rows = [
            j
            for j in st.jobs.values()
            if (not want or j.status.value in want) and (phase is None or j.phase == phase)
        ]
        limit = int(defaults.tunable("STATUS_LIMIT")) if limit is None else limit
        out["jobs"] = [job_row(j) for j in rows[offset : offset + limit]]
        out["jobs_matching"] = len(rows)
        out["offset"] = offset
        out["limit"] = limit
    return out


def _finish_digest(run_dir: str, summary: Dict[str, Any]) -> Dict[str, Any]:
    """Add what changes with time and not with the journal: liveness, elapsed times, GPU readings."""
    now = time.time()
    out: Dict[str, Any] = {"ok": True, **summary}
    held = {int(g): job for g, job in out.pop("held", {}).items()}
    queue = out.pop("queue")
    for r in out["running"]:
        r["elapsed_s"] = round(now - r["started_at"], 3) if r.get("started_at") else None
    out["agent"] = agent_info(run_dir)
    out.update(_gpu_view(run_dir, queue, out["agent"], held))
    return out


def _eta(all_jobs: List[Job], counts: Dict[str, int], spec: RunSpec) -> Optional[float]:
    left = counts["pending"] + counts["running"] + counts["failed_oom"] + counts["failed_other"]
    if left == 0:
        return 0.0
    durations = [
        j.ended_at - j.started_at for j in all_jobs if j.status == S.COMPLETED and j.ended_at and j.started_at
    ]
    if not durations:
        return None
    parallel = max(1, counts["running"], spec.queue.max_parallel or 0)
    return round(sum(durations) / len(durations) * left / parallel, 1)


def _failures(all_jobs: List[Job]) -> List[Dict[str, Any]]:
    groups: Dict[str, Dict[str, Any]] = {}
    per = int(defaults.tunable("STATUS_GROUP_JOBS"))
    for j in all_jobs:
        if j.status not in (S.FAILED_OOM, S.FAILED_OTHER, S.STUCK):
            continue
        sig = j.signature or "unknown"
        g = groups.setdefault(sig, {"signature": sig, "count": 0, "states": {}, "jobs": [], "last_lines": []})
        g["count"] += 1
        g["states"][j.status.value] = g["states"].get(j.status.value, 0) + 1
        if len(g["jobs"]) < per:
            g["jobs"].append(j.id)
        if not g["last_lines"] and j.last_lines:
            g["last_lines"] = list(j.last_lines)[-per:]
    ordered = sorted(groups.values(), key=lambda g: -g["count"])
    return ordered[: int(defaults.tunable("STATUS_FAILURE_GROUPS"))]


def _gpu_view(
    run_dir: str, queue: Dict[str, Any], agent: Dict[str, Any], held: Dict[int, str]
) -> Dict[str, Any]:
    if queue["cpu_only"]:
        return {"gpus": [], "gpu_error": None}
    if agent.get("alive"):
        info = store.read_agent_json(run_dir)
        return {
            "gpus": info.get("gpus", []),
            "gpu_error": info.get("gpu_error"),
            "waiting": info.get("waiting", {}),
        }
    readings = gpus.read(time.time())
    stat = gpus.availability(readings, queue["gpus"], queue["threshold"], held)
    return {"gpus": [g.to_json() for g in stat], "gpu_error": readings.error}


def gpus_command(threshold: int) -> Dict[str, Any]:
    readings = gpus.read(time.time())
    stat = gpus.availability(readings, "auto", threshold, {})
    return {"ok": True, "gpus": [g.to_json() for g in stat], "error": readings.error}


def history(run_dir: str, job: Optional[str] = None) -> Dict[str, Any]:
    events = []
    for rec, _end in store.iter_journal(os.path.join(run_dir, store.JOURNAL)):
        if rec.get("event") != "transition" or (job is not None and rec.get("job") != job):
            continue
        events.append({k: rec.get(k) for k in ("seq", "t", "job", "from", "to", "reason", "attempt")})
    return {"ok": True, "events": events}


_HEADER = re.compile(rb"^==== aris-queue: (\S+) attempt (\d+) started ")


def logs(run_dir: str, job: Job, tail: int, attempt: Optional[int]) -> Dict[str, Any]:
    """The last ``tail`` lines of one attempt (default: the latest) of a job's log."""
    path = runner.log_path(run_dir, job.id)
    want = attempt if attempt is not None else job.attempts
    out: Dict[str, Any] = {
        "ok": True,
        "job": job.id,
        "path": path,
        "attempt": want,
        "lines": [],
        "truncated": False,
    }
    if not os.path.exists(path):
        return out
    start, end = _attempt_range(path, want, job)
    if start is None:
        out["message"] = f"no attempt {want} in the log"
        return out
    budget = max(tail, 1) * 1024 + 65536  # read only the end of a huge log
    seg_start = max(start, end - budget)
    with open(path, "rb") as f:
        f.seek(seg_start)
        data = f.read(end - seg_start)
    lines = data.decode("utf-8", errors="replace").splitlines()
    if seg_start > start and lines:
        lines = lines[1:]
    out["truncated"] = seg_start > start or len(lines) > tail
    out["lines"] = [ln[:4000] for ln in lines[-tail:]] if tail > 0 else []
    return out


def _attempt_range(path: str, want: int, job: Job) -> tuple:
    size = os.path.getsize(path)
    if want == job.attempts and job.log_offset is not None and job.log_offset <= size:
        return job.log_offset, size  # the current attempt: its start was recorded at launch
    start = None
    pos = 0
    with open(path, "rb") as f:
        for line in f:
            m = _HEADER.match(line)
            if m and m.group(1).decode(errors="replace") == job.id:
                n = int(m.group(2))
                if start is not None and n != want:
                    return start, pos
                if n == want:
                    start = pos
            pos += len(line)
    return start, size
