"""Text about a run: `summary.md` (record, job rows, transition history) and the one-line next-call hint."""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from .models import JobRow, QueueStatus
from .runs import RunRecord

STATE_ORDER = (
    "completed",
    "running",
    "pending",
    "failed_oom",
    "failed_other",
    "stuck",
    "blocked",
    "cancelled",
)
"""Order in which job states are listed."""

MAX_ATTENTION_ROWS = 50
"""Stuck/blocked jobs listed before the table is cut."""

MAX_TIMELINE = 20
"""Timeline lines at most."""

_OOM_RE = re.compile(r"out ?of ?memory|\bOOM\b", re.IGNORECASE)


def render_summary(record: RunRecord, status: QueueStatus, events: Iterable[Mapping[str, Any]]) -> str:
    """The markdown report of a run; ``status`` carries all job rows, ``events`` the agent history."""
    events = sorted(events, key=lambda e: (e.get("seq") or 0, e.get("t") or 0))
    jobs = status.jobs or []
    phase_of = {j.id: j.phase or "" for j in jobs}
    durations = _durations(events)
    out: list[str] = [f"# {record.project}: run {record.run_id}", ""]
    out += _overview(record, status, events)
    out += _phase_table(jobs, events, durations, phase_of)
    out += _attention(jobs, status)
    out += _results(jobs)
    out += _timeline(status, events, phase_of)
    return "\n".join(out).rstrip() + "\n"


def _overview(record: RunRecord, status: QueueStatus, events: list[Mapping[str, Any]]) -> list[str]:
    started = status.started_at or _first_t(events)
    finished = status.finished_at
    end = finished or (_last_t(events) if not status.agent.alive else None)
    wall = _fmt_duration(end - started) if started and end else "n/a (still running)"
    counts = ", ".join(f"{s} {status.counts[s]}" for s in _states(status.counts) if status.counts.get(s))
    agent = status.agent.state or "unknown"
    if status.agent.alive:
        agent += f" (pid {status.agent.pid})"
    return [
        f"- **Project:** {record.project}",
        f"- **Run id:** `{record.run_id}`",
        f"- **Host:** {status.host} (`{record.remote_run_dir}`)",
        f"- **Started:** {_fmt_t(started)}",
        f"- **Finished:** {_fmt_t(finished) if finished else 'not yet'}",
        f"- **Wall-clock:** {wall}",
        f"- **Jobs:** {status.total} total: {counts or 'none'}",
        f"- **Scheduler:** {agent}",
        "",
    ]


def _phase_table(
    jobs: list[JobRow],
    events: list[Mapping[str, Any]],
    durations: dict[str, list[tuple[float, str]]],
    phase_of: dict[str, str],
) -> list[str]:
    by_phase: dict[str, list[JobRow]] = defaultdict(list)
    for j in jobs:
        by_phase[j.phase or ""].append(j)
    ooms = Counter(phase_of.get(str(e.get("job")), "") for e in events if e.get("to") == "failed_oom")
    out = [
        "## Phases",
        "",
        "| phase | jobs | completed | success % | OOM retries | median duration | max duration |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase, rows in by_phase.items():
        done = sum(1 for j in rows if j.status == "completed")
        ended = sum(1 for j in rows if j.status in ("completed", "stuck", "blocked", "cancelled"))
        rate = f"{100 * done / ended:.0f}%" if ended else "n/a"
        secs = [d for j in rows for d, end in durations.get(j.id, []) if end == "completed"]
        if not secs:
            secs = [d for j in rows for d, _ in durations.get(j.id, [])]
        med = _fmt_duration(statistics.median(secs)) if secs else "n/a"
        mx = _fmt_duration(max(secs)) if secs else "n/a"
        out.append(
            f"| {phase or '(none)'} | {len(rows)} | {done} | {rate} | {ooms.get(phase, 0)} | {med} | {mx} |"
        )
    return [*out, ""]


def _attention(jobs: list[JobRow], status: QueueStatus) -> list[str]:
    bad = [j for j in jobs if j.status in ("stuck", "blocked", "failed_oom", "failed_other")]
    if not bad and not status.failures:
        return []
    out = ["## Needs attention", ""]
    if bad:
        out += ["| job | phase | state | attempts | exit | reason |", "|---|---|---|---:|---:|---|"]
        for j in bad[:MAX_ATTENTION_ROWS]:
            exit_code = "" if j.exit_code is None else str(j.exit_code)
            reason = (j.reason or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| {j.id} | {j.phase or ''} | {j.status} | {j.attempts} | {exit_code} | {reason} |")
        if len(bad) > MAX_ATTENTION_ROWS:
            out.append(f"\n... and {len(bad) - MAX_ATTENTION_ROWS} more")
        out.append("")
    for f in status.failures:
        states = ", ".join(f"{k} {v}" for k, v in f.states.items() if v)
        out.append(f"- `{f.signature}`: {f.count} job(s) ({states}), e.g. {', '.join(f.jobs)}")
        if f.last_lines:
            out += ["  ```", *[f"  {line}" for line in f.last_lines], "  ```"]
    return [*out, ""]


def _results(jobs: list[JobRow]) -> list[str]:
    found = [(j.id, o) for j in jobs for o in (j.outputs or [])]
    if not found:
        return []
    out = ["## Result files", ""]
    out += [f"- {job}: `{path}`" for job, path in found[:200]]
    if len(found) > 200:
        out.append(f"- ... and {len(found) - 200} more")
    return [*out, ""]


def _timeline(status: QueueStatus, events: list[Mapping[str, Any]], phase_of: dict[str, str]) -> list[str]:
    lines: list[tuple[float, str]] = []
    starts = [e for e in events if e.get("to") == "running"]
    if status.started_at or starts:
        lines.append((status.started_at or float(starts[0]["t"]), "run started"))
    last_end: dict[str, float] = {}
    for e in events:
        job, to, t = str(e.get("job")), e.get("to"), float(e.get("t") or 0)
        if to in ("completed", "stuck", "blocked", "cancelled"):
            last_end[phase_of.get(job, "")] = t
        if to == "failed_oom":
            lines.append((t, f"{job} ran out of GPU memory (attempt {e.get('attempt')}); retry scheduled"))
        elif to == "stuck":
            lines.append((t, f"{job} stuck: {e.get('reason') or ''}".rstrip(": ")))
    if len(last_end) > 1 or (last_end and "" not in last_end):
        lines += [(t, f"phase {p or '(none)'} ended") for p, t in last_end.items()]
    if status.finished_at:
        lines.append((status.finished_at, "run finished"))
    if not lines:
        return []
    lines.sort(key=lambda x: x[0])
    if len(lines) > MAX_TIMELINE:
        lines = [*lines[: MAX_TIMELINE // 2], (0.0, "..."), *lines[-MAX_TIMELINE // 2 :]]
    out = ["## Timeline", ""]
    out += [f"- {_fmt_t(t) if t else ''} {text}".replace("-  ", "- ") for t, text in lines]
    return [*out, ""]


def _durations(events: list[Mapping[str, Any]]) -> dict[str, list[tuple[float, str]]]:
    """Per job: (seconds, end state) of every attempt, from running → next transition pairs."""
    started: dict[str, float] = {}
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for e in events:
        job, t = str(e.get("job")), e.get("t")
        if t is None:
            continue
        if e.get("to") == "running":
            started[job] = float(t)
        elif e.get("from") == "running" and job in started:
            out[job].append((float(t) - started.pop(job), str(e.get("to"))))
    return out


def _states(counts: Mapping[str, int]) -> list[str]:
    return [*STATE_ORDER, *sorted(set(counts) - set(STATE_ORDER))]


def _first_t(events: list[Mapping[str, Any]]) -> float | None:
    return float(events[0]["t"]) if events and events[0].get("t") is not None else None


def _last_t(events: list[Mapping[str, Any]]) -> float | None:
    return float(events[-1]["t"]) if events and events[-1].get("t") is not None else None


def _fmt_t(t: float | None) -> str:
    if not t:
        return "n/a"
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _fmt_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def next_call_hint(s: QueueStatus) -> str:
    """One line telling the caller what to do next, from the state of the queue."""
    rid = repr(s.run_id)
    c = s.counts
    pending, running = c.get("pending", 0), c.get("running", 0)
    active = pending + running + c.get("failed_oom", 0) + c.get("failed_other", 0)
    stuck, blocked = c.get("stuck", 0), c.get("blocked", 0)
    follow = f"queue_status(run_id={rid}, wait_s=60, since_seq={s.seq})"
    if s.agent.state == "draining" and active:
        return f"draining: {running} running job(s) finish, {pending} wait; resume(run_id={rid}) starts them"
    if active and not s.agent.alive:
        return (
            f"the scheduler is not running ({s.agent.state or 'never started'}) but {active} job(s) are "
            f"unfinished: call resume(run_id={rid})"
        )
    also = f" ({running} running, {pending} pending; follow with {follow})" if active else ""
    if stuck:
        group = next((f for f in s.failures if f.states.get("stuck")), None)
        if group is not None and _OOM_RE.search(group.signature):
            return (
                f"{stuck} job(s) stuck with {group.signature}: call retry_job(run_id={rid}, stuck=true) "
                f"once GPU memory is free (gpu_status shows it){also}"
            )
        job = group.jobs[0] if group and group.jobs else None
        look = (
            f"tail_log(run_id={rid}, job_id={job!r})"
            if job
            else f"queue_status(run_id={rid}, states=['stuck'])"
        )
        sig = f" with {group.signature}" if group else ""
        return (
            f"{stuck} job(s) stuck{sig}: read {look}, fix it, then retry_job(run_id={rid}, stuck=true){also}"
        )
    if active:
        eta = f", ETA ~{_fmt_s(s.eta_s)}" if s.eta_s else ""
        return f"{running} running, {pending} pending{eta}: call {follow} to wait for the next change"
    if blocked:
        return (
            f"finished with {blocked} job(s) blocked by a failed dependency: retry the failed job with "
            f"retry_job(run_id={rid}, job_id=...), or call summarize(run_id={rid})"
        )
    return f"the queue is finished: call summarize(run_id={rid}) for the report"


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}min"
    return f"{seconds / 3600:.1f}h"
