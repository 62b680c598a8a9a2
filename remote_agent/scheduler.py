"""The pure scheduling step and the one place where a job's exit is decided.

:func:`tick` takes the time, the GPU readings and the job records as inputs and returns decisions; it never
reads a clock, a file or a process, so tests step it deterministically. :func:`classify_exit` turns what an
attempt left behind (exit code, log tail, outputs, timeout, loss) into the next state with its reason.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from . import defaults
from .gpus import GpuStatus, Readings, availability
from .spec import JobSpec, RunSpec
from .states import ENDS_DEPENDENTS, Job, JobState

S = JobState

# (name, regex) checked in this order against the last lines of a failed attempt's log; the name groups
# failures in status. The PyTorch exception comes before its message so the more specific name wins.
OOM_SIGNATURES: List[Tuple[str, str]] = [
    ("torch.OutOfMemoryError", r"torch\.(?:cuda\.)?OutOfMemoryError"),
    ("CUDA out of memory", r"CUDA out of memory"),
    ("CUBLAS_STATUS_ALLOC_FAILED", r"CUBLAS_STATUS_ALLOC_FAILED"),
    ("CUDNN_STATUS_ALLOC_FAILED", r"CUDNN_STATUS_(?:ALLOC_FAILED|NOT_ENOUGH_WORKSPACE)"),
    ("cudaErrorMemoryAllocation", r"cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY"),
    ("XLA RESOURCE_EXHAUSTED", r"RESOURCE_EXHAUSTED"),
    ("tf.errors.ResourceExhaustedError", r"ResourceExhaustedError|OOM when allocating tensor"),
    ("NCCL out of memory", r"NCCL (?:WARN|error).*(?:Cuda failure 'out of memory'|out of memory)"),
]
_EXC_RE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Fault))\b")
PRELUDE_EXIT = 98
PRELUDE_MARK = "aris-queue: prelude line"
"""The wrapper's log line when a prelude line fails (it then exits PRELUDE_EXIT)."""


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Launch:
    """Start the next attempt of ``job`` on ``gpus`` (empty for a CPU slot)."""

    job: str
    gpus: Tuple[int, ...]


@dataclass(frozen=True)
class Requeue:
    """A failed job's retry delay has passed: back to pending."""

    job: str
    reason: str


@dataclass(frozen=True)
class Block:
    """A dependency ended stuck, cancelled or blocked: the job will not start."""

    job: str
    reason: str


@dataclass(frozen=True)
class Kill:
    """The running job passed its timeout: SIGTERM its process group (SIGKILL after kill_grace)."""

    job: str
    reason: str


Decision = Union[Launch, Requeue, Block, Kill]


@dataclass
class TickResult:
    """What one tick decided, the GPU view behind it, when to wake at the latest, and whether the queue is
    done (nothing pending, running or waiting for a retry)."""

    decisions: List[Decision]
    gpu_status: List[GpuStatus]
    wake_at: Optional[float]
    done: bool
    waiting: Dict[str, int] = field(default_factory=dict)


def slot_caps(spec: RunSpec, cpu_count: Optional[int] = None) -> Tuple[float, int]:
    """``(cap on running jobs, cap on CPU-slot jobs)``: ``max_parallel`` caps everything; without it GPUs are
    the only limit of GPU jobs and CPU jobs get ``os.cpu_count()`` slots."""
    cpus = cpu_count or os.cpu_count() or 1
    mp = spec.queue.max_parallel
    if mp is not None:
        return float(mp), mp
    return (float(cpus) if spec.queue.cpu_only else float("inf")), cpus


def tick(
    now: float,
    readings: Readings,
    jobs: Sequence[Job],
    spec: RunSpec,
    *,
    held: Optional[Dict[int, str]] = None,
    live: Optional[int] = None,
    live_cpu: Optional[int] = None,
    killing: Set[str] = frozenset(),  # type: ignore[assignment]
    dying: Set[str] = frozenset(),  # type: ignore[assignment]
    draining: bool = False,
    cpu_count: Optional[int] = None,
) -> TickResult:
    """Decide what to do now.

    ``held`` maps GPU index -> job for every live process of this queue (including ones being killed);
    ``live``/``live_cpu`` count live processes (default: jobs in state running / running on no GPU);
    ``killing`` are jobs already being killed; ``dying`` are jobs whose earlier attempt still has processes
    being killed: they do not start again until those are gone. Ready jobs start by priority (higher
    first), ties in spec order (``jobs`` is in spec order). The first ready job in that order that needs
    more GPUs than are free reserves the free ones: later GPU jobs wait behind it instead of taking them, so
    a multi-GPU job is not starved by a stream of single-GPU jobs (CPU jobs still start). A job that needs
    more GPUs than the queue has at all is blocked with that reason.
    """
    status = {j.id: j.status for j in jobs}
    if held is None:
        held = {g: j.id for j in jobs if j.status == S.RUNNING for g in j.gpus}
    if live is None:
        live = sum(1 for j in jobs if j.status == S.RUNNING)
    if live_cpu is None:
        live_cpu = sum(1 for j in jobs if j.status == S.RUNNING and not j.gpus)
    decisions: List[Decision] = []
    wake: List[float] = []
    ready: List[str] = []
    for j in jobs:
        st = j.status
        if st in (S.FAILED_OOM, S.FAILED_OTHER):
            if j.retry_at is None or j.retry_at <= now:
                decisions.append(Requeue(j.id, f"retry after {st.value}"))
                status[j.id] = st = S.PENDING
            else:
                wake.append(j.retry_at)
                continue
        if st == S.PENDING:
            js = spec.by_id[j.id]
            bad = next((d for d in js.depends_on if status.get(d) in ENDS_DEPENDENTS), None)
            if bad is not None:
                decisions.append(Block(j.id, f"dependency {bad} is {status[bad].value}"))
                status[j.id] = S.BLOCKED
            elif all(status.get(d) == S.COMPLETED for d in js.depends_on):
                ready.append(j.id)
        elif st == S.RUNNING:
            timeout = spec.by_id[j.id].timeout
            if timeout is not None and j.started_at is not None and j.id not in killing:
                deadline = j.started_at + timeout
                if deadline <= now:
                    decisions.append(Kill(j.id, f"timeout after {timeout:g}s"))
                else:
                    wake.append(deadline)

    rank = spec.start_rank  # computed once per spec; None when all priorities are equal
    if rank is not None:
        ready.sort(key=rank.__getitem__)

    gstat = (
        []
        if spec.queue.cpu_only
        else availability(readings, spec.queue.gpus, spec.queue.gpu_free_threshold_mib, held)
    )
    free = [g.index for g in gstat if g.usable]
    # GPUs the queue could ever use; only trusted when nvidia-smi answered (a failing driver lists none).
    # GPUs of the queue that nvidia-smi lists (capacity: a job needing more can never run), and those of them
    # whose memory it can read (readable: a job needing more cannot run now, e.g. one GPU reads [N/A]; it
    # waits, but reserves nothing, so it cannot hold back the jobs behind it). Unknown while nvidia-smi fails.
    listed = {g.index: g for g in readings.gpus}
    capacity = readable = None
    if not readings.error:
        capacity = sum(1 for g in gstat if g.index in listed)
        readable = sum(1 for g in gstat if g.index in listed and listed[g.index].error is None)
    reserved_for: Optional[str] = None
    cap, cpu_cap = slot_caps(spec, cpu_count)
    waiting: Dict[str, int] = {}
    running = live
    for jid in ready:
        if draining:
            waiting["draining"] = waiting.get("draining", 0) + 1
            continue
        if jid in dying:
            waiting["previous_attempt_dying"] = waiting.get("previous_attempt_dying", 0) + 1
            continue
        if running >= cap:
            waiting["max_parallel"] = waiting.get("max_parallel", 0) + len(ready) - ready.index(jid)
            break
        need = 0 if spec.queue.cpu_only else spec.by_id[jid].gpus_per_job
        if need == 0:
            if live_cpu >= cpu_cap:
                waiting["cpu_slots"] = waiting.get("cpu_slots", 0) + 1
                continue
            decisions.append(Launch(jid, ()))
            live_cpu += 1
        elif capacity is not None and need > capacity:
            decisions.append(Block(jid, f"needs {need} GPUs but the queue has {capacity}"))
            continue
        elif len(free) >= need and reserved_for is None:
            decisions.append(Launch(jid, tuple(free[:need])))
            free = free[need:]
        else:
            key = "gpu_error" if readings.error else "gpus"
            waiting[key] = waiting.get(key, 0) + 1
            if reserved_for is None and readable is not None and need <= readable:
                reserved_for = jid
            continue
        running += 1
    active = (S.PENDING, S.RUNNING, S.FAILED_OOM, S.FAILED_OTHER)
    done = not any(s in active for s in status.values())
    return TickResult(decisions, gstat, min(wake) if wake else None, done, waiting)


# --------------------------------------------------------------------------- exits


@dataclass(frozen=True)
class ExitInfo:
    """What an attempt left behind. ``exit_code`` None means the process vanished without one (lost)."""

    exit_code: Optional[int]
    log_tail: str = ""
    outputs: Sequence[str] = ()
    timed_out: bool = False
    lost_reason: str = "process gone without an exit code"
    launch_error: Optional[str] = None
    """Set when the attempt could not even start (e.g. screen/tmux missing): an ordinary failure."""


@dataclass(frozen=True)
class ExitDecision:
    """The state an attempt's end leads to, with the fields to record on the job."""

    to: JobState
    reason: str
    signature: Optional[str]
    fields: Dict[str, object]


def match_oom(text: str, extra: Sequence[str] = ()) -> Optional[str]:
    """Name of the first OOM signature found in ``text`` (built-ins first, then the spec's extra regexes)."""
    for name, rx in OOM_SIGNATURES:
        if re.search(rx, text):
            return name
    for rx in extra:
        if re.search(rx, text):
            return rx
    return None


def error_signature(code: int, lines: Sequence[str]) -> str:
    """A short name grouping similar non-OOM failures: the last exception name, a signal, or the exit code."""
    if code == PRELUDE_EXIT and any(ln.startswith(PRELUDE_MARK) for ln in lines):
        return "prelude_failed"
    for line in reversed(lines):
        m = _EXC_RE.match(line.strip())
        if m:
            return m.group(1)
    if code > 128:
        try:
            return signal.Signals(code - 128).name
        except ValueError:
            pass
    return f"exit {code}"


def _tail_lines(text: str) -> List[str]:
    return text.splitlines()[-defaults.LOG_TAIL_LINES :]


def classify_exit(
    job: Job, js: JobSpec, info: ExitInfo, now: float, extra_oom: Sequence[str] = ()
) -> ExitDecision:
    """Decide how an attempt ended and what the job becomes (the one place this is decided).

    exit 0 with ``output_check`` matched (or no ``output_check``) -> completed; exit 0 without the output ->
    failed_other; non-zero with an OOM signature in the log tail -> failed_oom; other non-zero or a timeout ->
    failed_other; no exit code -> lost (back to pending, stuck after MAX_LOST). A failure that uses up
    ``max_attempts`` of its kind makes the job stuck instead of waiting for a retry.
    """
    lines = _tail_lines(info.log_tail)
    last = [ln[:300] for ln in lines if ln.strip() and not ln.startswith("==== aris-queue:")]
    last = last[-defaults.FAILURE_LINES :]
    base: Dict[str, object] = {"exit_code": info.exit_code, "ended_at": now, "pid": None, "retry_at": None}
    if info.launch_error is not None:
        return _failure(
            job, js, "other", f"launch failed: {info.launch_error}", "launch_error", base, last, now
        )
    if info.exit_code is None:
        lost = job.lost + 1
        fields = dict(base, lost=lost, signature="lost", last_lines=last)
        max_lost = int(defaults.tunable("MAX_LOST"))
        if lost >= max_lost:
            return ExitDecision(S.STUCK, f"lost {lost} times: {info.lost_reason}", "lost", fields)
        return ExitDecision(S.PENDING, f"lost: {info.lost_reason}", "lost", fields)
    code = info.exit_code
    if info.timed_out:
        return _failure(
            job, js, "other", f"timeout after {js.timeout:g}s (exit {code})", "timeout", base, last, now
        )
    if code == 0:
        if js.output_check and not info.outputs:
            reason = (
                f"exit 0 but no file matches output_check {js.output_check!r} newer than the attempt's start"
            )
            return _failure(job, js, "other", reason, "missing_output", base, last, now)
        fields = dict(base, outputs=list(info.outputs), signature=None, last_lines=[])
        return ExitDecision(S.COMPLETED, "exit 0", None, fields)
    oom = match_oom("\n".join(lines), extra_oom)
    if oom is not None:
        return _failure(job, js, "oom", f"out of memory ({oom}), exit {code}", oom, base, last, now)
    sig = error_signature(code, lines)
    reason = f"exit {code}" + ("" if sig == f"exit {code}" else f" ({sig})")
    return _failure(job, js, "other", reason, sig, base, last, now)


def _failure(
    job: Job,
    js: JobSpec,
    kind: str,
    reason: str,
    sig: str,
    base: Dict[str, object],
    last: List[str],
    now: float,
) -> ExitDecision:
    if kind == "oom":
        n, policy, counter, state = job.oom_failures + 1, js.oom_retry, "oom_failures", S.FAILED_OOM
    else:
        n, policy, counter, state = job.other_failures + 1, js.retry, "other_failures", S.FAILED_OTHER
    fields = dict(base, signature=sig, last_lines=last)
    fields[counter] = n
    if n >= policy.max_attempts:
        return ExitDecision(
            S.STUCK, f"{reason}; {kind} failure {n}/{policy.max_attempts}, giving up", sig, fields
        )
    fields["retry_at"] = now + policy.delay
    return ExitDecision(
        state, f"{reason}; retry {n}/{policy.max_attempts - 1} in {policy.delay:g}s", sig, fields
    )
