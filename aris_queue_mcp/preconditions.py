"""Preconditions: what must hold on the host before a job may start, and how to check it there."""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
from collections import deque
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aris_queue_mcp.errors import TransportError

if TYPE_CHECKING:  # manifest.py imports the models above, so these imports must stay type-only
    from aris_queue_mcp.manifest import Manifest
    from aris_queue_mcp.runspec import RunSpec
    from aris_queue_mcp.transport.base import Transport


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PathPrecondition(_Strict):
    """A path must exist (relative to the job's cwd; globs allowed; ``${N}``/``{N}`` substituted)."""

    type: Literal["checkpoint_exists", "path_exists"]
    path: str = Field(min_length=1)


class CommandPrecondition(_Strict):
    """A shell command (the user's own text, run in the job's cwd) must exit 0 on the host."""

    type: Literal["command"]
    run: str = Field(min_length=1)


class DiskFreePrecondition(_Strict):
    """At least ``min`` GB must be free on the file system holding ``path`` (default: the job's cwd)."""

    type: Literal["disk_free_gb"]
    min: float = Field(ge=0)
    path: str | None = None


Precondition = Annotated[
    PathPrecondition | CommandPrecondition | DiskFreePrecondition, Field(discriminator="type")
]
PRECONDITION_TYPES = ("checkpoint_exists", "path_exists", "command", "disk_free_gb")


# ---------------------------------------------------------------------------------------------------- report
class HostFacts(BaseModel):
    """What the host looked like when the preconditions were checked."""

    host: str
    python3_version: str | None = None
    gpus_seen: list[str] = Field(default_factory=list)
    gpu_error: str | None = None
    cwd: str | None = None
    cwd_exists: bool | None = None
    disk_free_gb: float | None = None
    error: str | None = None


class JobPrecondition(BaseModel):
    """One job's verdict: ``ready`` unless something it needs is missing and nothing it waits for makes it."""

    id: str
    ready: bool
    blocked_reasons: list[str] = Field(default_factory=list)
    waits_for: list[str] = Field(default_factory=list)


class PreconditionReport(BaseModel):
    """Per-job verdicts plus host facts."""

    host_facts: HostFacts
    jobs: list[JobPrecondition]
    blocked_count: int
    ready_count: int


# Runs on the host's own Python (3.8+, standard library only). One round trip for every path, disk and GPU
# question, so 1,000 jobs cost one command, not 1,000.
_PROBE = r"""
import json, os, platform, shutil, subprocess, sys, glob
req = json.load(sys.stdin)
def absp(cwd, p):
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.join(os.path.expanduser(cwd), p)
def exists(p):
    if any(c in p for c in "*?["):
        return bool(glob.glob(p))
    return os.path.exists(p)
def free(p):
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return shutil.disk_usage(p).free / 1024.0 ** 3
    except OSError:
        return None
out = {"python": platform.python_version(),
       "cwds": [os.path.isdir(os.path.expanduser(c)) for c in req["cwds"]],
       "paths": [exists(absp(c, p)) for c, p in req["paths"]],
       "disk": [free(absp(c, p)) for c, p in req["disk"]],
       "gpus": [], "gpu_error": None}
try:
    r = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.used,memory.total",
                        "--format=csv,noheader,nounits"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=20)
    if r.returncode == 0:
        out["gpus"] = [l.strip() for l in r.stdout.splitlines() if l.strip()]
    else:
        out["gpu_error"] = (r.stderr or r.stdout).strip()[-300:] or "nvidia-smi exited %d" % r.returncode
except (OSError, subprocess.SubprocessError) as e:
    out["gpu_error"] = "nvidia-smi: %s" % e
print(json.dumps(out))
"""


def shell_path(path: str) -> str:
    """A path for a shell command line: quoted, but with a leading ``~`` still meaning the home folder."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _norm(path: str) -> str:
    return os.path.normpath(path) if path else path


def _produced_by(path: str, output_check: str | None) -> bool:
    if not output_check:
        return False
    a, b = _norm(path), _norm(output_check)
    return a == b or fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def check_preconditions(
    manifest: Manifest, spec: RunSpec, host: Transport, *, timeout: float = 30.0
) -> PreconditionReport:
    """Evaluate every job's preconditions on ``host`` and report which jobs are ready, blocked, and why.

    A missing path that a job this one (transitively) depends on will produce (its ``output_check``) does
    not block: the job is ready and ``waits_for`` names the producer. Raises ``TransportError`` only when
    the host cannot be reached at all.
    """
    from aris_queue_mcp.grid import expand_detailed  # grid imports this module's models

    rendered = {e.spec.id: e.preconditions for e in expand_detailed(manifest)}
    jobs = spec.jobs
    cwds = list(dict.fromkeys([j.cwd for j in jobs] or [manifest_cwd(manifest)]))
    path_keys: dict[tuple[str, str], int] = {}
    disk_keys: dict[tuple[str, str], int] = {}
    for job in jobs:
        for pre in rendered.get(job.id, []):
            if isinstance(pre, PathPrecondition):
                path_keys.setdefault((job.cwd, pre.path), len(path_keys))
            elif isinstance(pre, DiskFreePrecondition):
                disk_keys.setdefault((job.cwd, pre.path or "."), len(disk_keys))
    for cwd in cwds:  # the cwd's own free space is a host fact
        disk_keys.setdefault((cwd, "."), len(disk_keys))

    facts = HostFacts(host=host.label, cwd=cwds[0])
    probe: dict[str, Any] | None = None
    request = {"cwds": cwds, "paths": [list(k) for k in path_keys], "disk": [list(k) for k in disk_keys]}
    result = host.run(
        [manifest.python, "-c", _PROBE], timeout=timeout, stdin=json.dumps(request).encode("utf-8")
    )
    try:
        probe = json.loads(result.stdout) if result.ok else None
    except json.JSONDecodeError:
        probe = None
    if probe is None:
        why = _last_line(result.stderr) or _last_line(result.stdout) or f"exit code {result.exit_code}"
        facts.error = f"could not run {manifest.python} on {host.label}: {why}"
    else:
        facts.python3_version = probe["python"]
        facts.gpus_seen = list(probe["gpus"])
        facts.gpu_error = probe["gpu_error"]
        facts.cwd_exists = bool(probe["cwds"][0])
        facts.disk_free_gb = probe["disk"][disk_keys[(cwds[0], ".")]]

    commands: dict[tuple[str, str], str | None] = {}  # (cwd, run) -> None when it passed, else the reason
    for job in jobs:
        for pre in rendered.get(job.id, []):
            if isinstance(pre, CommandPrecondition) and (job.cwd, pre.run) not in commands:
                commands[(job.cwd, pre.run)] = _run_command(host, job.cwd, pre.run, timeout)

    by_id = {j.id: j for j in jobs}
    verdicts = []
    for job in jobs:
        reasons: list[str] = []
        waits: list[str] = []
        if probe is not None and not probe["cwds"][cwds.index(job.cwd)]:
            reasons.append(f"working directory {job.cwd} does not exist on {host.label}")
        for pre in rendered.get(job.id, []):
            if isinstance(pre, PathPrecondition):
                if probe is None:
                    reasons.append(f"{pre.type} {pre.path}: not checked ({facts.error})")
                elif not probe["paths"][path_keys[(job.cwd, pre.path)]]:
                    producers = _producers(job.id, pre.path, by_id)
                    if producers:
                        waits.extend(p for p in producers if p not in waits)
                    else:
                        reasons.append(f"{pre.type}: {pre.path} does not exist (relative to {job.cwd})")
            elif isinstance(pre, DiskFreePrecondition):
                free = probe["disk"][disk_keys[(job.cwd, pre.path or ".")]] if probe is not None else None
                where = pre.path or job.cwd
                if free is None:
                    reasons.append(f"disk_free_gb: could not read free space of {where}")
                elif free < pre.min:
                    reasons.append(f"disk_free_gb: {free:.1f} GB free at {where}, need {pre.min:g}")
            else:
                failed = commands[(job.cwd, pre.run)]
                if failed:
                    reasons.append(failed)
        verdicts.append(
            JobPrecondition(id=job.id, ready=not reasons, blocked_reasons=reasons, waits_for=waits)
        )
    blocked = sum(1 for v in verdicts if not v.ready)
    return PreconditionReport(
        host_facts=facts, jobs=verdicts, blocked_count=blocked, ready_count=len(verdicts) - blocked
    )


def _run_command(host: Transport, cwd: str, run: str, timeout: float) -> str | None:
    """None when ``run`` exits 0 in ``cwd`` on the host, else why it failed."""
    try:
        # The run text is the user's own shell text by design; only the cwd is ours to quote.
        result = host.run(["bash", "-c", f"cd {shell_path(cwd)} && {run}"], timeout=timeout)
    except TransportError as exc:
        return f"command `{run}`: {exc}"
    if result.ok:
        return None
    detail = _last_line(result.stderr) or _last_line(result.stdout)
    return f"command `{run}` failed (exit {result.exit_code})" + (f": {detail}" if detail else "")


def _producers(job_id: str, path: str, by_id: dict[str, Any]) -> list[str]:
    """Jobs this one transitively depends on whose output_check is (or glob-matches) ``path``."""
    found: list[str] = []
    seen: set[str] = set()
    queue = deque(by_id[job_id].depends_on)
    while queue:
        dep = queue.popleft()
        if dep in seen or dep not in by_id:
            continue
        seen.add(dep)
        if _produced_by(path, by_id[dep].output_check):
            found.append(dep)
        queue.extend(by_id[dep].depends_on)
    return found


def manifest_cwd(manifest: Manifest) -> str:
    """The cwd jobs would get (used when the spec has no jobs)."""
    from aris_queue_mcp.manifest import resolve_cwd

    return resolve_cwd(manifest)
