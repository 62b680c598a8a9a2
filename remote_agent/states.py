"""Job states, the one table of allowed transitions, and the one function that changes a job's state.

Nothing else assigns ``Job.status``: :func:`transition` checks the move against :data:`ALLOWED`, applies it
and returns the journal record (time, reason, attempt) that the store appends, so the history is complete.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, FrozenSet

from .errors import InvalidTransition


class JobState(str, Enum):
    """The state of one job (docs/protocol.md §3)."""

    PENDING = "pending"
    """Waiting for its dependencies, a free slot, or a retry."""
    RUNNING = "running"
    """An attempt is running (or being launched)."""
    COMPLETED = "completed"
    """Exited 0 and produced its required output. Terminal."""
    FAILED_OOM = "failed_oom"
    """Ran out of GPU memory; waits ``oom_retry.delay`` then goes back to pending."""
    FAILED_OTHER = "failed_other"
    """Failed otherwise (non-zero exit, missing output, timeout); waits ``retry.delay``."""
    STUCK = "stuck"
    """Used up its attempts; needs a person (``retry``). Terminal."""
    BLOCKED = "blocked"
    """A dependency ended stuck, cancelled or blocked; it will not start. Terminal."""
    CANCELLED = "cancelled"
    """Cancelled by request. Terminal."""

    def __str__(self) -> str:
        return self.value


S = JobState
ALLOWED: Dict[JobState, FrozenSet[JobState]] = {
    S.PENDING: frozenset({S.RUNNING, S.BLOCKED, S.CANCELLED}),
    # running -> pending: the attempt was lost (process gone without an exit code).
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED_OOM, S.FAILED_OTHER, S.STUCK, S.PENDING, S.CANCELLED}),
    S.FAILED_OOM: frozenset({S.PENDING, S.CANCELLED}),
    S.FAILED_OTHER: frozenset({S.PENDING, S.CANCELLED}),
    S.STUCK: frozenset({S.PENDING, S.CANCELLED}),
    S.BLOCKED: frozenset({S.PENDING, S.CANCELLED}),
    S.CANCELLED: frozenset({S.PENDING}),
    S.COMPLETED: frozenset(),
}
TERMINAL: FrozenSet[JobState] = frozenset({S.COMPLETED, S.STUCK, S.BLOCKED, S.CANCELLED})
"""States in which a job waits for nothing (only ``retry`` moves stuck/blocked/cancelled back)."""
ENDS_DEPENDENTS: FrozenSet[JobState] = frozenset({S.STUCK, S.CANCELLED, S.BLOCKED})
"""A dependency in one of these states blocks its dependents."""
RETRYABLE: FrozenSet[JobState] = frozenset({S.STUCK, S.FAILED_OOM, S.FAILED_OTHER, S.CANCELLED, S.BLOCKED})
"""States ``retry`` moves back to pending."""


@dataclass
class Job:
    """The mutable record of one job, as kept in the journal and in ``queue_state.json``."""

    id: str
    phase: str | None = None
    status: JobState = JobState.PENDING
    attempts: int = 0
    """Attempts launched so far; attempt n writes ``exits/<id>.<n>.exit``."""
    oom_failures: int = 0
    other_failures: int = 0
    lost: int = 0
    gpus: list = field(default_factory=list)
    pid: int | None = None
    proc_start: str | None = None
    """``<boot_id>:<start ticks>`` of the wrapper, so a reused pid is never mistaken for it."""
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    retry_at: float | None = None
    signature: str | None = None
    """Name of the OOM/error signature of the last failure (grouping in status)."""
    last_lines: list = field(default_factory=list)
    """A few log lines of the last failure."""
    outputs: list = field(default_factory=list)
    log_offset: int | None = None
    """Byte offset in logs/<id>.log where the current attempt starts."""
    updated_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # Hand-rolled (not dataclasses.asdict, which deep-copies): snapshots of 10,000 jobs stay fast.
        d = {name: getattr(self, name) for name in _FIELDS}
        d["status"] = self.status.value
        for name in ("gpus", "last_lines", "outputs"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        job = cls(**{k: v for k, v in d.items() if k in known})
        job.status = JobState(job.status)
        return job

    def apply(self, patch: dict[str, Any]) -> None:
        """Apply a journal ``set`` patch (replay); ``status`` comes back as a JobState."""
        for k, v in patch.items():
            if k == "status":
                v = JobState(v)
            if hasattr(self, k):
                setattr(self, k, v)


_FIELDS = tuple(f.name for f in dataclasses.fields(Job))


def transition(job: Job, to: JobState, reason: str, now: float, **fields: Any) -> dict[str, Any]:
    """Move ``job`` to ``to`` (checked against ALLOWED), set ``fields``, return the journal record.

    The record holds ``from``/``to``/``reason``/``attempt`` for the history and ``set``, the full patch of
    changed fields, so replaying the journal reproduces the job exactly.
    """
    to = JobState(to)
    frm = job.status
    if to not in ALLOWED[frm]:
        raise InvalidTransition(f"job {job.id}: {frm.value} -> {to.value} is not allowed ({reason})")
    patch: dict[str, Any] = dict(fields)
    patch.update({"status": to.value, "reason": reason, "updated_at": now})
    job.apply(patch)
    return {
        "event": "transition",
        "t": now,
        "job": job.id,
        "from": frm.value,
        "to": to.value,
        "reason": reason,
        "attempt": job.attempts,
        "set": patch,
    }


def update(job: Job, event: str, now: float, **fields: Any) -> dict[str, Any]:
    """Change non-state fields of ``job`` (e.g. the pid once launched) and return the journal record."""
    if "status" in fields:
        raise InvalidTransition("status changes go through transition()")
    patch = dict(fields)
    patch["updated_at"] = now
    job.apply(patch)
    return {"event": event, "t": now, "job": job.id, "attempt": job.attempts, "set": patch}
