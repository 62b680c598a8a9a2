"""Read the run spec (``spec.json``, docs/protocol.md §1) into dataclasses; clear ``bad_spec`` errors."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from . import defaults
from .errors import BadSpecError, NoRunDirError

FORMAT = "aris-queue-runspec"
VERSION = 1
JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
LAUNCHERS = ("process", "screen", "tmux")


@dataclass(frozen=True)
class RetryPolicy:
    """How often (``max_attempts`` failures of this kind make the job stuck) and after what delay to retry."""

    delay: float
    max_attempts: int


@dataclass(frozen=True)
class JobSpec:
    """One job as the manifest layer rendered it; the agent only substitutes ``${GPU}``."""

    id: str
    cmd: str
    cwd: str
    phase: Optional[str] = None
    env: Dict[str, str] = field(default_factory=dict)
    prelude: List[str] = field(default_factory=list)
    output_check: Optional[str] = None
    depends_on: List[str] = field(default_factory=list)
    gpus_per_job: int = 1
    timeout: Optional[float] = None
    oom_retry: RetryPolicy = RetryPolicy(120.0, 3)
    retry: RetryPolicy = RetryPolicy(0.0, 1)
    priority: float = 0.0
    """Higher starts first among ready jobs; ties keep the spec order."""


@dataclass(frozen=True)
class QueueSpec:
    """Queue-wide settings."""

    gpus: Union[str, List[int]] = "auto"
    """``"auto"`` (every GPU nvidia-smi lists), a list of indices, or ``[]`` for CPU-only slots."""
    max_parallel: Optional[int] = None
    gpu_free_threshold_mib: int = defaults.GPU_FREE_THRESHOLD_MIB
    poll_interval: float = defaults.POLL_INTERVAL
    kill_grace: float = defaults.KILL_GRACE
    launcher: str = defaults.LAUNCHER
    oom_signatures: List[str] = field(default_factory=list)

    @property
    def cpu_only(self) -> bool:
        return isinstance(self.gpus, list) and not self.gpus


@dataclass(frozen=True)
class RunSpec:
    """The whole run spec; ``jobs`` keeps the spec's (dependency-respecting) order."""

    run_id: str
    project: str
    queue: QueueSpec
    jobs: List[JobSpec]
    created_at: Optional[str] = None

    def job(self, job_id: str) -> JobSpec:
        return self.by_id[job_id]

    @property
    def by_id(self) -> Dict[str, JobSpec]:
        cache = self.__dict__.get("_by_id")
        if cache is None:
            cache = {j.id: j for j in self.jobs}
            object.__setattr__(self, "_by_id", cache)
        return cache

    @property
    def start_rank(self) -> Optional[Dict[str, int]]:
        """Job id -> its place in start order (priority high to low, then spec order), computed once.

        ``None`` when all jobs have the same priority: the start order is then the spec order itself.
        """
        if "_start_rank" not in self.__dict__:
            rank: Optional[Dict[str, int]] = None
            if len({j.priority for j in self.jobs}) > 1:
                order = sorted(range(len(self.jobs)), key=lambda i: (-self.jobs[i].priority, i))
                rank = {self.jobs[i].id: r for r, i in enumerate(order)}
            object.__setattr__(self, "_start_rank", rank)
        return self.__dict__["_start_rank"]


def load_spec(run_dir: str) -> RunSpec:
    """Load and validate ``<run_dir>/spec.json``; ``no_run_dir``/``bad_spec`` errors say what to fix."""
    if not os.path.isdir(run_dir):
        raise NoRunDirError(f"run directory {run_dir} does not exist; create it with the MCP side's launch")
    path = os.path.join(run_dir, "spec.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NoRunDirError(f"{path} is missing: the run directory holds no run spec") from None
    except ValueError as exc:
        raise BadSpecError(f"{path} is not valid JSON: {exc}") from None
    return parse_spec(data)


def _get(d: dict, key: str, kind: Any, where: str, default: Any = ..., nullable: bool = False) -> Any:
    if key not in d or (d[key] is None and default is not ...):
        if default is ...:
            raise BadSpecError(f"spec.json: {where}.{key} is missing")
        return default
    v = d[key]
    if v is None and nullable:
        return None
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (isinstance(v, bool) and kind is not bool):
        raise BadSpecError(f"spec.json: {where}.{key} must be {getattr(kind, '__name__', kind)}, got {v!r}")
    return v


def _policy(d: Any, where: str, default: RetryPolicy) -> RetryPolicy:
    if d is None:
        return default
    if not isinstance(d, dict):
        raise BadSpecError(f"spec.json: {where} must be an object")
    delay = _get(d, "delay", float, where, default.delay)
    attempts = _get(d, "max_attempts", int, where, default.max_attempts)
    if delay < 0 or attempts < 1:
        raise BadSpecError(f"spec.json: {where} needs delay >= 0 and max_attempts >= 1")
    return RetryPolicy(delay, attempts)


def _queue(q: Any) -> QueueSpec:
    if not isinstance(q, dict):
        raise BadSpecError("spec.json: queue must be an object")
    gpus = q.get("gpus", "auto")
    if gpus != "auto" and not (
        isinstance(gpus, list)
        and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
    ):
        raise BadSpecError(f'spec.json: queue.gpus must be "auto" or a list of GPU indices, got {gpus!r}')
    mp = _get(q, "max_parallel", int, "queue", None, nullable=True)
    if mp is not None and mp < 1:
        raise BadSpecError("spec.json: queue.max_parallel must be >= 1 or null")
    launcher = _get(q, "launcher", str, "queue", defaults.LAUNCHER)
    if launcher not in LAUNCHERS:
        raise BadSpecError(
            f"spec.json: queue.launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}"
        )
    sigs = _get(q, "oom_signatures", list, "queue", [])
    for s in sigs:
        try:
            re.compile(s)
        except (re.error, TypeError) as exc:
            raise BadSpecError(f"spec.json: queue.oom_signatures has a bad regex {s!r}: {exc}") from None
    poll = _get(q, "poll_interval", float, "queue", defaults.POLL_INTERVAL)
    if poll <= 0:
        raise BadSpecError("spec.json: queue.poll_interval must be > 0")
    return QueueSpec(
        gpus=list(gpus) if isinstance(gpus, list) else "auto",
        max_parallel=mp,
        gpu_free_threshold_mib=_get(
            q, "gpu_free_threshold_mib", int, "queue", defaults.GPU_FREE_THRESHOLD_MIB
        ),
        poll_interval=poll,
        kill_grace=_get(q, "kill_grace", float, "queue", defaults.KILL_GRACE),
        launcher=launcher,
        oom_signatures=list(sigs),
    )


def _priority(v: Any, where: str) -> float:
    if v is None:
        return 0.0
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            if math.isfinite(v):
                return float(v)
        except OverflowError:  # an int too large for a float
            pass
    raise BadSpecError(f"spec.json: {where}.priority must be a finite number (higher first), got {v!r}")


def _job(d: Any, i: int) -> JobSpec:
    where = f"jobs[{i}]"
    if not isinstance(d, dict):
        raise BadSpecError(f"spec.json: {where} must be an object")
    jid = _get(d, "id", str, where)
    if not JOB_ID_RE.match(jid):
        raise BadSpecError(
            f"spec.json: {where}.id {jid!r} must match [A-Za-z0-9][A-Za-z0-9._-]* (<= 128 chars)"
        )
    where = f"jobs[{i}] ({jid})"
    env = _get(d, "env", dict, where, {})
    if not all(isinstance(k, str) and re.match(r"[A-Za-z_][A-Za-z0-9_]*\Z", k) for k in env):
        raise BadSpecError(f"spec.json: {where}.env keys must be shell variable names")
    prelude = _get(d, "prelude", list, where, [])
    deps = _get(d, "depends_on", list, where, [])
    if not all(isinstance(x, str) for x in prelude + deps):
        raise BadSpecError(f"spec.json: {where}.prelude and depends_on must be lists of strings")
    gpj = _get(d, "gpus_per_job", int, where, 1)
    timeout = _get(d, "timeout", float, where, None, nullable=True)
    if gpj < 0 or (timeout is not None and timeout <= 0):
        raise BadSpecError(f"spec.json: {where} needs gpus_per_job >= 0 and timeout > 0 or null")
    cwd = _get(d, "cwd", str, where)
    if not (cwd.startswith("/") or cwd.startswith("~")):
        raise BadSpecError(f"spec.json: {where}.cwd must be absolute or start with ~, got {cwd!r}")
    priority = _priority(d.get("priority"), where)
    return JobSpec(
        id=jid,
        cmd=_get(d, "cmd", str, where),
        cwd=cwd,
        phase=_get(d, "phase", str, where, None, nullable=True),
        env={k: str(v) for k, v in env.items()},
        prelude=list(prelude),
        output_check=_get(d, "output_check", str, where, None, nullable=True),
        depends_on=list(deps),
        gpus_per_job=gpj,
        timeout=timeout,
        oom_retry=_policy(d.get("oom_retry"), f"{where}.oom_retry", RetryPolicy(120.0, 3)),
        retry=_policy(d.get("retry"), f"{where}.retry", RetryPolicy(0.0, 1)),
        priority=priority,
    )


def parse_spec(data: Any) -> RunSpec:
    """Validate a decoded spec: format/version, field types, unique ids, known and acyclic dependencies."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadSpecError(f'spec.json: "format" must be "{FORMAT}"; is this a run spec?')
    if data.get("version") != VERSION:
        raise BadSpecError(
            f"spec.json: version {data.get('version')!r} is not supported by this agent (it reads version "
            f"{VERSION}); redeploy the agent that matches the MCP side"
        )
    jobs_raw = _get(data, "jobs", list, "spec")
    jobs = [_job(d, i) for i, d in enumerate(jobs_raw)]
    seen: Dict[str, int] = {}
    for i, j in enumerate(jobs):
        if j.id in seen:
            raise BadSpecError(f"spec.json: job id {j.id!r} appears twice (jobs[{seen[j.id]}] and jobs[{i}])")
        seen[j.id] = i
    for j in jobs:
        for dep in j.depends_on:
            if dep not in seen:
                raise BadSpecError(f"spec.json: job {j.id!r} depends on unknown job {dep!r}")
    _check_acyclic(jobs)
    return RunSpec(
        run_id=_get(data, "run_id", str, "spec"),
        project=_get(data, "project", str, "spec", ""),
        queue=_queue(data.get("queue", {})),
        jobs=jobs,
        created_at=data.get("created_at"),
    )


def _check_acyclic(jobs: List[JobSpec]) -> None:
    indeg = {j.id: len(set(j.depends_on)) for j in jobs}
    children: Dict[str, List[str]] = {}
    for j in jobs:
        for dep in set(j.depends_on):
            children.setdefault(dep, []).append(j.id)
    ready = [k for k, v in indeg.items() if v == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for c in children.get(k, []):
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    if done != len(jobs):
        cyc = sorted(k for k, v in indeg.items() if v > 0)[:5]
        raise BadSpecError(f"spec.json: dependency cycle among jobs {cyc}")
