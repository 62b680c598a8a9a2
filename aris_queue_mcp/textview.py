"""Human-readable renderings of service results for the terminal (the CLI's default output)."""

from __future__ import annotations

from .models import (
    CancelResult,
    ExpandResult,
    GpuStatus,
    LaunchResult,
    LogTail,
    QueueStatus,
    RetryResult,
    RunList,
)
from .preconditions import PreconditionReport

STATE_ORDER = (
    "running",
    "pending",
    "completed",
    "failed_oom",
    "failed_other",
    "stuck",
    "blocked",
    "cancelled",
)


def duration(seconds: float | None) -> str:
    """``75.2`` → ``1m15s``; ``None`` → ``-``."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def counts_line(counts: dict[str, int]) -> str:
    """``{"completed": 3, "running": 1}`` → ``1 running, 3 completed`` in a fixed state order."""
    parts = [f"{counts[s]} {s}" for s in STATE_ORDER if counts.get(s)]
    parts += [f"{n} {s}" for s, n in counts.items() if s not in STATE_ORDER and n]
    return ", ".join(parts) or "no jobs"


def expand(r: ExpandResult) -> str:
    lines = [f"{r.project}: {r.total} jobs on {r.target}"]
    if len(r.per_phase) > 1 or "" not in r.per_phase:
        lines += [f"  phase {name or '-'}: {n} jobs" for name, n in r.per_phase.items()]
    for j in r.jobs:
        dep = (
            f"  (after {', '.join(j.depends_on[:3])}{'…' if len(j.depends_on) > 3 else ''})"
            if j.depends_on
            else ""
        )
        lines.append(f"  {j.id}{dep}\n      {j.cmd}")
    if r.truncated:
        lines.append(f"  … {r.total - r.offset - r.jobs_shown} more (use --offset/--limit)")
    return "\n".join(lines)


def preconditions(r: PreconditionReport) -> str:
    f = r.host_facts
    lines = [
        f"host facts: {f.model_dump_json(exclude_none=True)}",
        f"{r.ready_count} ready, {r.blocked_count} blocked",
    ]
    for j in r.jobs:
        if not j.ready:
            lines.append(f"  BLOCKED {j.id}: {'; '.join(j.blocked_reasons)}")
        elif j.waits_for:
            lines.append(f"  ready   {j.id} (waits for {', '.join(j.waits_for)})")
    return "\n".join(lines)


def launch(r: LaunchResult) -> str:
    head = f"{r.status}: run {r.run_id} on {r.host} ({r.total_jobs} jobs)"
    if r.agent_pid:
        head += f", scheduler pid {r.agent_pid}"
    out = [head, f"  {r.message}"]
    if r.plan is not None:
        out.append(expand(r.plan))
    if r.preconditions is not None:
        out.append(preconditions(r.preconditions))
    return "\n".join(out)


def status(s: QueueStatus) -> str:
    agent = s.agent
    state = agent.state or "never started"
    alive = f"scheduler {state} (pid {agent.pid})" if agent.alive else f"scheduler not running ({state})"
    lines = [f"run {s.run_id} on {s.host}: {alive}"]
    eta = f"   ETA {duration(s.eta_s)}" if s.eta_s is not None and not s.finished_at else ""
    lines.append(f"  {s.total} jobs: {counts_line(s.counts)}{eta}")
    for j in s.running:
        gpus = ",".join(map(str, j.gpus)) or "cpu"
        lines.append(f"  running {j.id} [gpu {gpus}] attempt {j.attempt} for {duration(j.elapsed_s)}")
    if s.running_more:
        lines.append(f"  … and {s.running_more} more running")
    for f in s.failures:
        states = ", ".join(f"{n} {st}" for st, n in f.states.items())
        lines.append(f"  failure {f.signature} x{f.count} ({states}): {', '.join(f.jobs)}")
        lines += [f"      | {ln}" for ln in f.last_lines[-3:]]
    if s.gpu_error:
        lines.append(f"  GPUs: {s.gpu_error}")
    if s.jobs is not None:
        lines.append(f"  jobs {s.offset or 0}..{(s.offset or 0) + len(s.jobs)} of {s.jobs_matching}:")
        for j in s.jobs:
            why = f"  {j.reason}" if j.reason else ""
            lines.append(f"    {j.id:<32} {j.status:<12} attempts={j.attempts}{why}")
    if s.next_call_hint:
        lines.append(f"  next: {s.next_call_hint}")
    return "\n".join(lines)


def retry(r: RetryResult) -> str:
    lines = [r.message]
    lines += [f"  skipped {s.id}: {s.reason}" for s in r.skipped]
    return "\n".join(lines)


def cancel(r: CancelResult) -> str:
    return "\n".join([r.message] + [f"  skipped {s.id}: {s.reason}" for s in r.skipped])


def logs(r: LogTail) -> str:
    head = f"# {r.job} (attempt {r.attempt or 'all'}) {r.path or ''}"
    return "\n".join([head, *(["…"] if r.truncated else []), *r.lines])


def runs(r: RunList) -> str:
    if not r.runs:
        return f"no runs under {r.project_dir}/experiment_queue"
    lines = []
    for run in r.runs:
        extra = f"  {run.state}" if run.state else ""
        if run.counts:
            extra += f"  ({counts_line(run.counts)})"
        lines.append(f"{run.run_id}  {run.target}  {run.total_jobs} jobs  created {run.created_at}{extra}")
    return "\n".join(lines)


def gpus(g: GpuStatus) -> str:
    lines = [f"GPUs on {g.host}:" if g.gpus else f"no GPUs read on {g.host}"]
    if g.error:
        lines.append(f"  {g.error}")
    for gpu in g.gpus:
        use = "free" if gpu.usable else f"busy: {gpu.reason}" if gpu.reason else "busy"
        mem = f"{gpu.memory_used_mib}/{gpu.memory_total_mib} MiB"
        lines.append(f"  [{gpu.index}] {gpu.name or ''} {mem}  {use}")
    return "\n".join(lines)
