"""Control requests (``retry``, ``cancel``, ``drain``): applying them, and getting them applied.

The same :func:`apply_request` runs inside the scheduler (requests arrive through the ``control/`` inbox) and
inside the command itself when no scheduler runs (it then holds the run lock while it applies). Either way
there is one writer of the state. :func:`submit` is the command's side: apply locally or post and wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import deque
from typing import Any, Callable, Dict, List, Optional

from . import defaults, runner, store, views
from .errors import TimeoutError_, UnknownJobError
from .spec import RunSpec
from .states import RETRYABLE, TERMINAL, Job, JobState, transition

S = JobState
CancelRunning = Callable[[Job, float], None]
"""Stops a running job's processes (the scheduler: TERM now, KILL later; a command: TERM, wait, KILL)."""


def children_map(spec: RunSpec) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for j in spec.jobs:
        for d in j.depends_on:
            out.setdefault(d, []).append(j.id)
    return out


def check_jobs(spec: RunSpec, ids: List[str]) -> None:
    unknown = [j for j in ids if j not in spec.by_id]
    if unknown:
        raise UnknownJobError(f"unknown job id(s): {', '.join(unknown[:10])}; `status --jobs` lists the ids")


def apply_request(st: store.Store, req: Dict[str, Any], now: float, cancel_running: CancelRunning) -> tuple:
    """Apply one request to the jobs of ``st``; return ``(answer, journal records)``. The caller appends the
    records. ``req``: ``{"op": "retry", "jobs": [...], "stuck": bool, "failed": bool}``,
    ``{"op": "cancel", "jobs": [...]}`` (no jobs = the whole queue) or ``{"op": "drain"}``."""
    op = req.get("op")
    records: List[Dict[str, Any]] = [{"event": "control", "t": now, "op": op, "request": req.get("id")}]
    if op == "retry":
        return _retry(st, req, now, records), records
    if op == "cancel":
        return _cancel(st, req, now, records, cancel_running), records
    if op == "drain":
        return {"ok": True, "state": "draining"}, records
    return {"ok": False, "error": "usage", "message": f"unknown control op {op!r}"}, []


def _retry(st: store.Store, req: Dict[str, Any], now: float, records: List[Dict[str, Any]]) -> Dict[str, Any]:
    ids = list(req.get("jobs") or [])
    check_jobs(st.spec, ids)
    if req.get("stuck") or req.get("failed"):
        want = {S.STUCK} | ({S.FAILED_OOM, S.FAILED_OTHER} if req.get("failed") else set())
        ids += [j.id for j in st.jobs.values() if j.status in want and j.id not in ids]
    retried, skipped = [], []
    for jid in ids:
        job = st.jobs[jid]
        if job.status not in RETRYABLE:
            skipped.append({"id": jid, "reason": f"job is {job.status.value}"})
            continue
        records.append(transition(job, S.PENDING, "retry requested", now, **_reset()))
        retried.append(jid)
    # Dependents blocked by a retried job get their chance again (a still-failed other parent re-blocks them).
    kids = children_map(st.spec)
    queue = deque(retried)
    while queue:
        for kid in kids.get(queue.popleft(), []):
            job = st.jobs[kid]
            if job.status == S.BLOCKED:
                records.append(transition(job, S.PENDING, "dependency retried", now, **_reset()))
                queue.append(kid)
    return {"ok": True, "retried": retried, "skipped": skipped}


def _reset() -> Dict[str, Any]:
    return {
        "oom_failures": 0,
        "other_failures": 0,
        "lost": 0,
        "retry_at": None,
        "signature": None,
        "last_lines": [],
    }


def _cancel(
    st: store.Store,
    req: Dict[str, Any],
    now: float,
    records: List[Dict[str, Any]],
    cancel_running: CancelRunning,
) -> Dict[str, Any]:
    ids = list(req.get("jobs") or [])
    check_jobs(st.spec, ids)
    whole = not ids
    targets = list(st.jobs) if whole else ids
    cancelled, skipped = [], []
    for jid in targets:
        job = st.jobs[jid]
        if job.status in TERMINAL:
            if not whole:
                skipped.append({"id": jid, "reason": f"job is {job.status.value}"})
            continue
        if job.status == S.RUNNING:
            cancel_running(job, now)
        records.append(transition(job, S.CANCELLED, "cancelled by request", now, retry_at=None, ended_at=now))
        cancelled.append(jid)
    return {"ok": True, "cancelled": cancelled, "skipped": skipped, "whole_queue": whole}


# --------------------------------------------------------------------------- the command's side


def kill_now(run_dir: str, job: Job, grace: float) -> None:
    """Stop a running job's process group synchronously: SIGTERM, wait up to ``grace``, SIGKILL (used without
    a scheduler, e.g. cancel after the scheduler died while jobs kept running). An attempt whose pid was never
    journaled is settled through its pid file first, so it can neither keep running nor start later."""
    pid, start = job.pid, job.proc_start
    if pid is None:
        pid, start = runner.unrecorded_attempt(run_dir, job.id, job.attempts, job.started_at)
    if pid is None or not runner.alive(pid, start):
        return
    pgid = int(pid)
    runner.signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and runner.group_alive(pgid):
        time.sleep(0.05)
    runner.signal_group(pgid, signal.SIGKILL)


def apply_offline(run_dir: str, spec: RunSpec, req: Dict[str, Any]) -> Dict[str, Any]:
    """Apply ``req`` ourselves (the caller holds the run lock): no scheduler runs."""
    st = store.Store(run_dir, spec, writer=True)
    try:
        if req.get("op") == "drain":
            return {"ok": True, "state": "stopped", "agent_running": False}
        grace = spec.queue.kill_grace

        def cancel_running(job: Job, now: float) -> None:
            kill_now(run_dir, job, grace)
            if spec.queue.launcher != "process":
                runner.end_session(
                    spec.queue.launcher, runner.session_name(spec.run_id, job.id, job.attempts)
                )

        now = time.time()
        answer, records = apply_request(st, req, now, cancel_running)
        st.append(records)
        st.maybe_snapshot(now, force=True)
        views.write_digest_cache(run_dir, spec, st)
        answer["agent_running"] = False
        return answer
    finally:
        st.close()


def wake_scheduler(run_dir: str) -> None:
    """SIGUSR1 the scheduler named in agent.json (only if pid and start time match: never a stranger)."""
    info = store.read_agent_json(run_dir)
    pid = info.get("pid")
    if isinstance(pid, int) and runner.alive(pid, info.get("proc_start")):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGUSR1)


def submit(
    run_dir: str, spec: RunSpec, req: Dict[str, Any], timeout: Optional[float] = None
) -> Dict[str, Any]:
    """Get ``req`` applied: by ourselves when no scheduler holds the lock, else through the inbox."""
    timeout = float(defaults.tunable("CONTROL_TIMEOUT")) if timeout is None else timeout
    if req.get("jobs"):
        check_jobs(spec, list(req["jobs"]))
    lock = store.RunLock(run_dir)
    if lock.try_acquire("control"):
        try:
            return apply_offline(run_dir, spec, req)
        finally:
            lock.release()
    rid = store.post_request(run_dir, req)
    wake_scheduler(run_dir)
    deadline = time.monotonic() + timeout
    extended = False
    while True:
        answer = store.take_answer(run_dir, rid)
        if answer is not None:
            answer.setdefault("agent_running", True)
            return answer
        # The scheduler may have exited without reading the inbox: then take the request back and apply it.
        if lock.try_acquire("control"):
            try:
                if store.claim_request(run_dir, rid) is not None:
                    return apply_offline(run_dir, spec, req)
            finally:
                lock.release()
        if time.monotonic() >= deadline:
            withdrawn = store.claim_request(run_dir, rid) is not None
            if withdrawn or extended:
                raise TimeoutError_(
                    f"the scheduler did not answer within {timeout:g}s"
                    + (
                        " (request withdrawn)"
                        if withdrawn
                        else " (it took the request; its effect may still show)"
                    )
                    + "; check `status` and agent.log, then try again"
                )
            extended = True  # the scheduler claimed it at the last moment: its answer is on the way
            deadline = time.monotonic() + 5.0
        time.sleep(0.02)
