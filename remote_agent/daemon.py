"""The scheduler process: a thin loop around :func:`scheduler.tick`.

Each iteration: reap ended attempts (own children via ``Popen.poll``, adopted/screen/tmux ones by pid + start
time), apply control requests, escalate kills, refresh GPU readings when stale, tick, apply its decisions,
snapshot and heartbeat, then wait. The wait is a ``select`` on a self-pipe fed by
``signal.set_wakeup_fd``, so SIGCHLD (a job ended) and SIGUSR1 (a control request was posted) wake it at once;
its timeout is the nearest of the poll interval, a retry coming due, a timeout deadline and a pending SIGKILL.
A freed slot is therefore reused in the same iteration that notices the exit. Signal handlers only set flags.

GPU readings: re-read every ``poll_interval``; also when the last reading predates the latest job exit (the
freed GPU would otherwise still look busy with our own ended job), and right before launching on a reading
older than ``GPU_READING_MAX_AGE``. A GPU stays held by us while any process of the job that had it lives.
"""

from __future__ import annotations

import errno
import logging
import os
import platform
import select
import signal
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import __version__, control, defaults, gpus, runner, store, views
from .scheduler import Block, ExitInfo, Kill, Launch, Requeue, TickResult, classify_exit, tick
from .spec import RunSpec
from .states import Job, JobState, transition, update

S = JobState
log = logging.getLogger("aris_agent")


class Daemon:
    """Runs the queue of ``run_dir`` until it is finished, drained, cancelled or the agent is told to stop."""

    def __init__(self, run_dir: str, spec: RunSpec, st: store.Store, clock: Callable[[], float] = time.time):
        self.run_dir = run_dir
        self.spec = spec
        self.store = st
        self.clock = clock
        self.handles: Dict[str, runner.Handle] = {}
        self.orphans: List[runner.Handle] = []  # processes of cancelled jobs, still dying
        self._digest_seq = -1  # journal seq that digest.json describes
        self._last_tick_key: Optional[Tuple[Any, ...]] = None  # inputs of the last tick (see _tick)
        self._gpu_timeouts = 0  # nvidia-smi calls in a row that hung
        self._gpu_read_after = 0.0  # no reading before this time (backoff after hangs)
        self.readings = gpus.Readings([], "not read yet", 0.0)
        self.last_exit_at = 0.0
        self.state = "starting"
        self.draining = False
        self.cancel_all = False
        self.stop_signal: Optional[int] = None
        self.last_tick: Optional[TickResult] = None
        self._heartbeat_at = 0.0
        self._started_at = clock()
        self._wake_r = self._wake_w = -1
        self.on_started: Optional[Callable[[int], None]] = None
        """Called once the scheduler holds the lock, has recovered and runs (``run --detach`` waits)."""

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.stop_signal = signum
        # SIGCHLD / SIGUSR1: the byte written to the wakeup fd is all that is needed.

    def install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _wait(self, timeout: float) -> None:
        if timeout > 0:
            try:
                select.select([self._wake_r], [], [], timeout)
            except OSError as exc:  # pragma: no cover - EINTR is retried by Python itself
                if exc.errno != errno.EINTR:
                    raise
        while True:
            try:
                if not os.read(self._wake_r, 4096):
                    break
            except (BlockingIOError, InterruptedError):
                break

    # ------------------------------------------------------------------ main loop
    def run(self) -> str:
        """Recover, then loop until done; return the final state (finished | stopped)."""
        runner.prepare(self.run_dir)
        self.install_signals()
        self.recover()
        self._set_state("running")
        if self.on_started is not None:
            self.on_started(os.getpid())
        while True:
            now = self.clock()
            records: List[Dict[str, Any]] = []
            self._reap(now, records)
            self._controls(now, records)
            self._escalate(now)
            self.store.append(records)
            if self.stop_signal is not None:
                log.info("signal %s: exiting, running jobs keep running", self.stop_signal)
                return self._finish("stopped")
            res = self._tick(now)
            busy = self._apply(res, now)
            self.store.maybe_snapshot(now)
            self._refresh_digest()
            self._heartbeat(now)
            live = bool(self.handles or self.orphans)
            if not live and (res.done or self.draining or self.cancel_all):
                # finished: nothing is left to do (also after a whole-queue cancel); stopped: work remains.
                final = "finished" if res.done else "stopped"
                return self._finish(final)
            if not busy:
                self._wait(self._timeout(res, now))

    def _timeout(self, res: TickResult, now: float) -> float:
        t = self.spec.queue.poll_interval
        deadlines = [res.wake_at] + [h.kill_at for h in self._all_handles()]
        for d in deadlines:
            if d is not None:
                t = min(t, d - now)
        return max(0.0, min(t, float(defaults.tunable("HEARTBEAT_EVERY"))))

    def _all_handles(self) -> List[runner.Handle]:
        return list(self.handles.values()) + self.orphans

    def _finish(self, state: str) -> str:
        now = self.clock()
        self._set_state(state)
        self.store.close(now)
        self._refresh_digest()
        return state

    def _refresh_digest(self) -> None:
        """Rewrite digest.json when the journal moved on (one O(jobs) pass per change, like the tick)."""
        if self.store.seq != self._digest_seq:
            views.write_digest_cache(self.run_dir, self.spec, self.store)
            self._digest_seq = self.store.seq

    def _set_state(self, state: str) -> None:
        self.state = state
        now = self.clock()
        self.store.append([{"event": "agent", "t": now, "state": state, "pid": os.getpid()}])
        self._heartbeat(now, force=True)

    # ------------------------------------------------------------------ ticks and decisions
    def _held(self) -> Dict[int, str]:
        return gpus.held_map([(h.job, h.gpus) for h in self._all_handles()])

    def _tick(self, now: float) -> TickResult:
        q = self.spec.queue
        if (
            not q.cpu_only
            and now >= self._gpu_read_after
            and (
                now - self.readings.taken_at >= q.poll_interval or self.readings.taken_at <= self.last_exit_at
            )
        ):
            self._read_gpus()
        # A tick is O(jobs). When none of its inputs moved since a tick that decided nothing, its answer
        # would be the same: skip it (a 10,000-job queue waiting for GPUs would otherwise burn CPU idling).
        key = self._tick_inputs()
        last = self.last_tick
        if (
            last is not None
            and key == self._last_tick_key
            and not last.decisions
            and (last.wake_at is None or now < last.wake_at)
        ):
            if not q.cpu_only:  # keep the memory figures that status shows current (O(GPUs))
                last.gpu_status = gpus.availability(
                    self.readings, q.gpus, q.gpu_free_threshold_mib, self._held()
                )
            return last
        self._last_tick_key = key
        res = self._tick_once(now)
        wants_gpu = any(isinstance(d, Launch) and d.gpus for d in res.decisions)
        if wants_gpu and now - self.readings.taken_at > float(defaults.tunable("GPU_READING_MAX_AGE")):
            self._read_gpus()
            res = self._tick_once(now)
        self.last_tick = res
        return res

    def _read_gpus(self) -> None:
        """Take a reading; after nvidia-smi hangs, wait longer and longer (up to a minute) before asking
        again, so a wedged driver does not block the loop (exits, control requests) on every poll."""
        self.readings = gpus.read(self.clock())
        if self.readings.timed_out:
            self._gpu_timeouts += 1
            pause = min(60.0, self.spec.queue.poll_interval * 2.0**self._gpu_timeouts)
            self._gpu_read_after = self.clock() + pause
            log.warning("%s; next reading in %.0f s", self.readings.error, pause)
        else:
            self._gpu_timeouts, self._gpu_read_after = 0, 0.0

    def _tick_inputs(self) -> Tuple[Any, ...]:
        """What a tick's decisions depend on besides time: job records (journal seq), live processes, control
        flags, and which GPUs could take a job (not their exact memory, which moves all the time)."""
        threshold = self.spec.queue.gpu_free_threshold_mib
        gpu_view = tuple(
            (g.index, g.error is None and g.used_mib is not None and g.used_mib < threshold)
            for g in self.readings.gpus
        )
        handles = tuple(sorted((h.job, h.gpus, bool(h.kill_reason)) for h in self._all_handles()))
        return (self.store.seq, handles, gpu_view, self.readings.error, self.draining, self.cancel_all)

    def _tick_once(self, now: float) -> TickResult:
        handles = self._all_handles()
        return tick(
            now,
            self.readings,
            list(self.store.jobs.values()),
            self.spec,
            held=self._held(),
            live=len(handles),
            live_cpu=sum(1 for h in handles if not h.gpus),
            killing={h.job for h in handles if h.kill_reason},
            dying={h.job for h in self.orphans},
            draining=self.draining or self.cancel_all,
        )

    def _apply(self, res: TickResult, now: float) -> bool:
        """Carry out the decisions; True when something changed (tick again before waiting)."""
        records: List[Dict[str, Any]] = []
        launches = []
        for d in res.decisions:
            job = self.store.jobs[d.job]
            if isinstance(d, Requeue):
                records.append(transition(job, S.PENDING, d.reason, now))
            elif isinstance(d, Block):
                records.append(transition(job, S.BLOCKED, d.reason, now))
            elif isinstance(d, Kill):
                self._kill(self.handles[d.job], "timeout", now)
            elif isinstance(d, Launch):
                launches.append(d)
        self.store.append(records)
        if launches:
            self._launch(launches, now)
        return bool(records or launches)

    def _launch(self, launches: List[Launch], now: float) -> None:
        # The intent (status running, attempt n) is fsynced before the process starts, so a crash in between
        # is seen at restart and resolved through the attempt's pid file (adopt or provably never ran).
        intents = []
        for d in launches:
            job = self.store.jobs[d.job]
            n = job.attempts + 1
            offset = _size(runner.log_path(self.run_dir, d.job))
            intents.append(
                transition(
                    job,
                    S.RUNNING,
                    f"launching attempt {n}",
                    now,
                    attempts=n,
                    gpus=list(d.gpus),
                    pid=None,
                    proc_start=None,
                    started_at=now,
                    ended_at=None,
                    exit_code=None,
                    retry_at=None,
                    log_offset=offset,
                    outputs=[],
                )
            )
        self.store.append(intents)
        done = []
        for d in launches:
            job = self.store.jobs[d.job]
            js = self.spec.by_id[d.job]
            try:
                h = runner.launch(
                    self.run_dir, self.spec.run_id, js, job.attempts, d.gpus, self.spec.queue.launcher, now
                )
            except runner.LaunchError as exc:
                log.warning("job %s: launch failed: %s", d.job, exc)
                dec = classify_exit(
                    job, js, ExitInfo(None, launch_error=str(exc)), now, self.spec.queue.oom_signatures
                )
                done.append(transition(job, dec.to, dec.reason, now, **dec.fields))
                continue
            self.handles[d.job] = h
            rec = update(job, "launch", now, pid=h.pid, proc_start=h.proc_start)
            rec.update(gpus=list(d.gpus), pid=h.pid, proc_start=h.proc_start, log_offset=job.log_offset)
            done.append(rec)
            log.info("job %s: attempt %d started, pid %d, gpus %s", d.job, job.attempts, h.pid, list(d.gpus))
        self.store.append(done)

    def _kill(self, h: runner.Handle, reason: str, now: float) -> None:
        h.kill_reason = reason
        h.kill_at = now + self.spec.queue.kill_grace
        runner.signal_group(h.pid, signal.SIGTERM)

    def _escalate(self, now: float) -> None:
        for h in self._all_handles():
            if h.kill_at is not None and now >= h.kill_at:
                runner.signal_group(h.pid, signal.SIGKILL)
                h.kill_at = None

    # ------------------------------------------------------------------ ends of attempts
    def _reap(self, now: float, records: List[Dict[str, Any]]) -> None:
        for h in list(self.orphans):
            status = h.finished()
            if status is not None:
                self.orphans.remove(h)
                self._cleanup(h, now)
                self.last_exit_at = now
        for jid, h in list(self.handles.items()):
            status = h.finished()
            if status is None:
                continue
            del self.handles[jid]
            records.append(self._finalize(self.store.jobs[jid], h, status, now))
            self._cleanup(h, now)
            self.last_exit_at = now

    def _cleanup(self, h: runner.Handle, now: float) -> None:
        if not h.group_only:
            runner.end_session(h.launcher, h.session)
            self._reap_leftovers(h.job, h.attempt, h.pid, h.gpus, now)

    def _reap_leftovers(
        self, job: str, attempt: int, pgid: int, gpu_ids: Tuple[int, ...], now: float
    ) -> None:
        """Kill what outlived an attempt's wrapper (TERM, then KILL after the grace) and keep its GPUs held
        until the last of it is gone, so the next attempt never shares a GPU with its own predecessor."""
        if not runner.has_leftovers(pgid):
            return
        log.info("job %s: attempt %d left processes behind (group %d); killing them", job, attempt, pgid)
        left = runner.Handle(
            job=job, attempt=attempt, pid=pgid, proc_start=None, gpus=gpu_ids, orphan=True, group_only=True
        )
        self._kill(left, "leftover", now)
        self.orphans.append(left)

    def _finalize(
        self,
        job: Job,
        h: Optional[runner.Handle],
        status: Optional[int],
        now: float,
        lost_reason: Optional[str] = None,
    ) -> Dict[str, Any]:
        """Record how attempt ``job.attempts`` ended (exit file, else the wait status of our own child)."""
        code = runner.read_exit(self.run_dir, job.id, job.attempts)
        why = lost_reason or "process gone without an exit code"
        if code is None and h is not None and h.kill_reason:
            # Killed by us (timeout or cancel) before it could write its exit file: a real end, not a loss.
            # Our own child has a wait status; an adopted or screen/tmux attempt died of our SIGTERM/SIGKILL.
            if h.popen is not None and status is not None:
                code = 128 - status if status < 0 else status
            else:
                code = 128 + int(signal.SIGKILL)
        elif code is None and h is not None and h.popen is not None and status is not None:
            why = (
                f"wrapper ended ({'signal ' + str(-status) if status < 0 else 'exit ' + str(status)}) "
                "without an exit code"
            )
        js = self.spec.by_id[job.id]
        info = ExitInfo(
            code,
            log_tail=runner.read_log_tail(self.run_dir, job.id, job.log_offset) if code is not None else "",
            outputs=runner.find_outputs(js, job.started_at) if code == 0 else (),
            timed_out=h is not None and h.kill_reason == "timeout",
            lost_reason=why,
        )
        dec = classify_exit(job, js, info, now, self.spec.queue.oom_signatures)
        log.info("job %s: attempt %d ended: %s -> %s", job.id, job.attempts, dec.reason, dec.to.value)
        return transition(job, dec.to, dec.reason, now, **dec.fields)

    # ------------------------------------------------------------------ restart
    def recover(self) -> None:
        """Resolve every job the journal says is running: adopt it, finalize it from its exit file, or mark it
        lost. A recorded process of a job that is not running (cancelled, or retried while its cancelled
        attempt was still dying) that still lives is killed, and holds its GPUs until it is gone."""
        now = self.clock()
        records: List[Dict[str, Any]] = []
        launcher = self.spec.queue.launcher
        for job in self.store.jobs.values():
            if job.status != S.RUNNING and job.pid:
                if runner.alive(job.pid, job.proc_start):
                    h = self._handle(job, job.pid, job.proc_start, launcher)
                    h.orphan = True
                    self._kill(h, "cancel", now)
                    self.orphans.append(h)
                elif (job.proc_start or "").startswith(runner.boot_id() + ":"):
                    # The wrapper is gone but processes of its group may live on (they ignored SIGTERM).
                    self._reap_leftovers(job.id, job.attempts, job.pid, tuple(job.gpus), now)
            if job.status != S.RUNNING:
                continue
            pid, start = job.pid, job.proc_start
            if pid is None:
                pid, start = runner.unrecorded_attempt(self.run_dir, job.id, job.attempts, job.started_at)
                if pid is not None:
                    records.append(update(job, "adopt", now, pid=pid, proc_start=start))
            if pid is not None and runner.alive(pid, start):
                self.handles[job.id] = self._handle(job, pid, start, launcher)
                log.info("job %s: adopted running attempt %d (pid %d)", job.id, job.attempts, pid)
                continue
            if pid is not None and start is not None and start.startswith(runner.boot_id() + ":"):
                self._reap_leftovers(job.id, job.attempts, pid, tuple(job.gpus), now)
            reason = "agent restarted and the attempt's process is gone without an exit code"
            if job.pid is not None and start is not None and not start.startswith(runner.boot_id() + ":"):
                reason = "host rebooted while the attempt ran"
            records.append(self._finalize(job, None, None, now, lost_reason=reason))
            self.last_exit_at = now
        self.store.append(records)

    def _handle(self, job: Job, pid: int, start: Optional[str], launcher: str) -> runner.Handle:
        session = (
            runner.session_name(self.spec.run_id, job.id, job.attempts) if launcher != "process" else None
        )
        return runner.Handle(
            job.id, job.attempts, pid, start, tuple(job.gpus), session=session, launcher=launcher
        )

    # ------------------------------------------------------------------ control requests
    def _controls(self, now: float, records: List[Dict[str, Any]]) -> None:
        for rid in store.inbox(self.run_dir):
            req = store.claim_request(self.run_dir, rid)
            if req is None:
                continue
            try:
                answer, recs = control.apply_request(self.store, req, now, self._cancel_running)
            except Exception as exc:  # an answer must always come back, or the command waits in vain
                code = getattr(exc, "code", "internal")
                answer, recs = {"ok": False, "error": code, "message": str(exc)}, []
            if req.get("op") == "drain" and answer.get("ok"):
                self.draining = True
                self.state = "draining"
                recs.append({"event": "agent", "t": now, "state": "draining", "pid": os.getpid()})
            if req.get("op") == "cancel" and answer.get("whole_queue"):
                self.cancel_all = True
            if req.get("op") == "retry" and answer.get("retried") and (self.cancel_all or self.draining):
                # A retry asks for work: it lifts an earlier whole-queue cancel or drain, or the retried
                # jobs would sit pending under a scheduler about to exit while the caller thinks it runs.
                self.cancel_all = self.draining = False
                self.state = "running"
                recs.append({"event": "agent", "t": now, "state": "running", "pid": os.getpid()})
            records.extend(recs)
            # The answer goes out only once its records are durable.
            self.store.append(records)
            del records[:]
            answer["agent_running"] = True
            store.answer_request(self.run_dir, rid, answer)
            self._heartbeat(now, force=True)

    def _cancel_running(self, job: Job, now: float) -> None:
        h = self.handles.pop(job.id, None)
        if h is None:
            return
        h.orphan = True
        self._kill(h, "cancel", now)
        self.orphans.append(h)

    # ------------------------------------------------------------------ agent.json
    def _heartbeat(self, now: float, force: bool = False) -> None:
        if not force and now - self._heartbeat_at < float(defaults.tunable("HEARTBEAT_EVERY")):
            return
        self._heartbeat_at = now
        res = self.last_tick
        info = {
            "pid": os.getpid(),
            "proc_start": runner.proc_start(os.getpid()),
            "host": socket.gethostname(),
            "version": __version__,
            "python": platform.python_version(),
            "run_id": self.spec.run_id,
            "state": self.state,
            "started_at": self._started_at,
            "heartbeat_at": now,
            "poll_interval": self.spec.queue.poll_interval,
            "gpus": [g.to_json() for g in res.gpu_status] if res else [],
            "gpu_error": self.readings.error if not self.spec.queue.cpu_only else None,
            "waiting": res.waiting if res else {},
        }
        store.write_agent_json(self.run_dir, info)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
