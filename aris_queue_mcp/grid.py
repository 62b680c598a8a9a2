"""Grid x template, explicit jobs and phases → the explicit, fully rendered job list of the run spec.

Rules (see also docs/protocol.md):
- A grid expands as the cartesian product in key order, last key fastest.
- ``${var}`` substitutes grid values in id, cmd, args, output_check, env, depends_on and priority; an args
  or priority value that is exactly ``${var}`` keeps the value's type (a priority must end up a number).
  ``$${`` writes a literal ``${``; ``${GPU}`` is left for the agent.
  Precondition paths also accept the legacy ``{var}``.
- A template without ``id`` gets ``<phase or 'job'>_<k1><v1>_<k2><v2>...``, characters outside
  ``[A-Za-z0-9._-]`` replaced by ``-`` (e.g. ``train_teachers_N384``).
- Args render as ``--key value`` (value shell-quoted); ``true`` → ``--key``; ``false``/``null`` → omitted;
  a list → ``--key a b``. They follow ``cmd`` or ``default_cmd``.
- Jobs come out in a dependency-respecting order that is otherwise the manifest order.
"""

from __future__ import annotations

import heapq
import itertools
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aris_queue_mcp.errors import FieldError, ManifestError
from aris_queue_mcp.manifest import (
    ID_MAX_LEN,
    ID_RE,
    RESERVED_VARS,
    JobEntry,
    Manifest,
    Phase,
    Template,
    parse_number,
    render_prelude,
    resolve_cwd,
    scalar_text,
    suggest,
)
from aris_queue_mcp.preconditions import DiskFreePrecondition, PathPrecondition, Precondition
from aris_queue_mcp.runspec import JobSpec

__all__ = ["ExpandedJob", "derive_id", "expand_detailed", "expand_jobs", "render_args", "substitute"]

_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_PLACEHOLDER_LEGACY = re.compile(r"\$\$\{|\$\{([^}]*)\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WHOLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_ERRORS = 200  # beyond this a list of errors stops helping


@dataclass
class ExpandedJob:
    """A job of the run spec plus what it came from (for preconditions and error messages)."""

    spec: JobSpec
    vars: dict[str, Any]
    origin: str
    preconditions: list[Precondition] = field(default_factory=list)


def substitute(
    text: str, variables: dict[str, Any], on_unknown: Callable[[str], None], *, legacy: bool = False
) -> str:
    """Replace ``${var}`` (with ``legacy`` also a known ``{var}``); unknown names go to ``on_unknown``."""

    def repl(m: re.Match[str]) -> str:
        whole = m.group(0)
        if whole == "$${":
            return "${"
        name = m.group(1)
        if name is None:  # legacy {var}: only known names, other braces may be literal text
            legacy_name = m.group(2)
            return scalar_text(variables[legacy_name]) if legacy_name in variables else whole
        if name in RESERVED_VARS:
            return whole
        if name in variables:
            return scalar_text(variables[name])
        on_unknown(name)
        return whole

    return (_PLACEHOLDER_LEGACY if legacy else _PLACEHOLDER).sub(repl, text)


def render_args(args: dict[str, Any]) -> str:
    """``--key value`` pairs, each value shell-quoted."""
    parts = []
    for key, value in args.items():
        if value is False or value is None:
            continue
        if value is True:
            parts.append(f"--{key}")
        elif isinstance(value, list):
            parts.append(" ".join([f"--{key}", *(shlex.quote(scalar_text(v)) for v in value)]))
        else:
            parts.append(f"--{key} {shlex.quote(scalar_text(value))}")
    return " ".join(parts)


def derive_id(phase: str | None, point: dict[str, Any]) -> str:
    """The id of a grid point when the template names none."""
    raw = "_".join([phase or "job", *(f"{k}{scalar_text(v)}" for k, v in point.items())])
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)


class _Collector:
    """Collects errors; unknown-variable errors are grouped so 1,000 jobs give one line, not 1,000."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []
        self._unknown: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        self._grouped: dict[str, tuple[str, int]] = {}  # path -> (first message, how many)

    def grouped(self, path: str, message: str) -> None:
        """An error repeated for every job of a template: reported once, with how many jobs it hit."""
        first, n = self._grouped.get(path, (message, 0))
        self._grouped[path] = (first, n + 1)

    def add(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def unknown(self, path: str, name: str, job: str, known: list[str]) -> None:
        jobs, _ = self._unknown.setdefault((path, name), ([], known))
        jobs.append(job)

    def all(self) -> list[FieldError]:
        out = list(self.errors)
        for path, (message, n) in self._grouped.items():
            out.append(FieldError(path, message + (f" (and {n - 1} more jobs)" if n > 1 else "")))
        for (path, name), (jobs, known) in self._unknown.items():
            more = f" (and {len(jobs) - 1} more)" if len(jobs) > 1 else ""
            hint = suggest(name, known)
            did = f"did you mean ${{{hint}}}? " if hint else ""
            known_text = ", ".join(known) if known else "none"
            out.append(
                FieldError(
                    path,
                    f"unknown variable ${{{name}}} in job {jobs[0]}{more}; {did}"
                    f"known variables: {known_text}; "
                    f"write $${{{name}}} for a literal ${{{name}}} (e.g. a shell variable)",
                )
            )
        out = list(dict.fromkeys(out))
        if len(out) > MAX_ERRORS:
            out = [*out[:MAX_ERRORS], FieldError("", f"... and {len(out) - MAX_ERRORS} more errors")]
        return out


@dataclass
class _Draft:
    id: str
    id_path: str
    origin: str
    phase_index: int | None
    vars: dict[str, Any]
    spec: dict[str, Any]
    explicit_deps: list[str]
    deps_path: str
    preconditions: list[Precondition]


def _typed(value: Any, variables: dict[str, Any], sub: Callable[[str], str]) -> Any:
    """Substitute inside an args value; a value that is exactly ``${var}`` keeps the variable's type."""
    if isinstance(value, str):
        whole = _WHOLE.fullmatch(value)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]
        return sub(value)
    if isinstance(value, list):
        return [_typed(v, variables, sub) for v in value]
    return value


def _priority(text: str, variables: dict[str, Any], path: str, job: str, col: _Collector) -> int | float:
    """A templated priority after substitution; a value that is exactly ``${var}`` keeps the value's type."""
    unknown: list[str] = []

    def on_unknown(name: str) -> None:
        unknown.append(name)
        col.unknown(path, name, job, sorted(variables))

    whole = _WHOLE.fullmatch(text)
    if whole and whole.group(1) in variables:
        value: Any = variables[whole.group(1)]
    else:
        value = substitute(text, variables, on_unknown)
    if unknown:
        return 0  # already reported as an unknown variable
    number = parse_number(value)
    if number is None:
        col.grouped(
            path,
            f"priority of job {job!r} must be a number (higher starts first), got {value!r} from {text!r}",
        )
        return 0
    return number


def _render_preconditions(
    groups: list[tuple[str, list[Precondition]]], variables: dict[str, Any], job: str, col: _Collector
) -> list[Precondition]:
    out: list[Precondition] = []
    known = sorted(variables)
    for prefix, i, pre in ((p, i, pre) for p, items in groups for i, pre in enumerate(items)):
        if isinstance(pre, PathPrecondition | DiskFreePrecondition) and pre.path:
            path = f"{prefix}preconditions[{i}].path"
            rendered = substitute(
                pre.path, variables, lambda n, p=path: col.unknown(p, n, job, known), legacy=True
            )
            pre = pre.model_copy(update={"path": rendered})
        out.append(pre)  # command text is the user's shell text: ${HOME} there is the shell's business
    return out


def _drafts_for(m: Manifest, phase: Phase | None, pi: int | None, col: _Collector) -> list[_Draft]:
    """All jobs of the top level (``phase`` None) or of one phase, rendered but not yet linked."""
    prefix = f"phases[{pi}]." if pi is not None else ""
    src: Any = phase if phase is not None else m
    default_cmd = ((phase.default_cmd if phase else None) or m.default_cmd or "").strip()
    default_cmd_path = f"{prefix}default_cmd" if phase is not None and phase.default_cmd else "default_cmd"
    pre_groups = [("", list(m.preconditions))] + ([(prefix, list(phase.preconditions))] if phase else [])
    phase_name = phase.name if phase else None
    drafts: list[_Draft] = []

    def make(
        entry: JobEntry | Template | None,
        variables: dict[str, Any],
        origin: str,
        where: str,
        job_id: str | None,
    ) -> None:
        known = sorted(variables)
        label = job_id or origin

        def sub(text: str, path: str) -> str:
            return substitute(text, variables, lambda n: col.unknown(path, n, label, known))

        if job_id is None:  # a template: its id is templated or derived
            if entry is not None and entry.id:
                job_id = sub(entry.id, f"{where}.id")
                label = job_id if "${" not in job_id else origin
            else:
                job_id = derive_id(phase_name, variables)
                label = job_id
        if entry is None:  # a grid without template: the grid values are the args
            args: dict[str, Any] | None = dict(variables)
            cmd = None
        else:
            args = entry.args
            cmd = entry.cmd
        if args is not None:
            args = {
                k: _typed(v, variables, lambda t, k=k: sub(t, f"{where}.args.{k}")) for k, v in args.items()
            }
        base = sub(cmd.strip(), f"{where}.cmd") if cmd else sub(default_cmd, default_cmd_path)
        rendered_args = render_args(args) if args else ""
        full_cmd = f"{base} {rendered_args}" if rendered_args else base
        output_check = entry.output_check if entry else None
        if output_check is not None:
            output_check = sub(output_check, f"{where}.output_check")
        env = dict(m.env)
        env.update(phase.env if phase else {})
        for key, value in (entry.env if entry else {}).items():
            env[key] = sub(value, f"{where}.env.{key}")
        deps = [sub(d, f"{where}.depends_on") for d in (entry.depends_on if entry else [])]

        def pick(name: str) -> Any:
            for level in (entry, phase, m):
                value = getattr(level, name, None) if level is not None else None
                if value is not None:
                    return value
            return None

        spec = {
            "phase": phase_name,
            "cmd": full_cmd,
            "output_check": output_check,
            "env": env,
            "gpus_per_job": pick("gpus_per_job"),
            "priority": pick("priority"),
            "timeout": pick("timeout"),
        }
        if entry is not None and isinstance(entry.priority, str):
            spec["priority"] = _priority(entry.priority, variables, f"{where}.priority", label, col)
        drafts.append(
            _Draft(
                id=job_id,
                id_path=f"{where}.id",
                origin=origin,
                phase_index=pi,
                vars=variables,
                spec=spec,
                explicit_deps=deps,
                deps_path=f"{where}.depends_on",
                preconditions=_render_preconditions(pre_groups, variables, label, col),
            )
        )

    if src.jobs is not None:
        for i, job in enumerate(src.jobs):
            scalars = {k: v for k, v in (job.args or {}).items() if v is not None}
            make(job, scalars, f"{prefix}jobs[{i}]", f"{prefix}jobs[{i}]", job.id)
    elif src.grid is not None:
        keys = list(src.grid)
        for values in itertools.product(*(src.grid[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            shown = ", ".join(f"{k}={scalar_text(v)}" for k, v in point.items())
            make(src.template, point, f"{prefix}grid ({shown})", f"{prefix}template", None)
    return drafts


def _check_ids(drafts: list[_Draft], col: _Collector) -> None:
    by_id: dict[str, list[_Draft]] = {}
    for d in drafts:
        if "${" in d.id:
            continue  # already reported as an unknown variable
        if not ID_RE.fullmatch(d.id) or len(d.id) > ID_MAX_LEN:
            col.add(
                d.id_path,
                f"job id {d.id!r} (from {d.origin}) is not valid: use letters, digits, '.', '_', '-', "
                f"starting with a letter or digit, at most {ID_MAX_LEN} characters",
            )
        by_id.setdefault(d.id, []).append(d)
    for job_id, group in by_id.items():
        if len(group) > 1:
            where = "; ".join(d.origin for d in group)
            col.add(
                group[1].id_path,
                f"duplicate job id {job_id!r} ({len(group)} times), from: {where}; make ids unique "
                "(e.g. put every grid variable into the template id)",
            )


def _phase_cycle(m: Manifest) -> list[str] | None:
    graph = {p.name: list(p.depends_on) for p in m.phases or []}
    cycles = _find_cycles(list(graph), graph.get, stop_at_first=True)
    return cycles[0] if cycles else None


def _find_cycles(
    nodes: list[str], deps_of: Callable[[str], list[str] | None], *, stop_at_first: bool = False
) -> list[list[str]]:
    """Cycles among ``nodes`` (iterative DFS, so 10,000 jobs do not hit the recursion limit)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []
    for start in nodes:
        if start in state:
            continue
        path: list[str] = []
        stack: list[tuple[str, Any]] = [(start, iter(deps_of(start) or []))]
        state[start] = 1
        path.append(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            if child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(deps_of(child) or [])))
            elif state[child] == 1:
                cycles.append([*path[path.index(child) :], child])
                if stop_at_first:
                    return cycles
    return cycles


def _link(m: Manifest, drafts: list[_Draft], col: _Collector) -> dict[str, list[str]]:
    """Dependencies of each job as job ids: explicit ones, then those from phase ``depends_on``/``match``."""
    ids = [d.id for d in drafts]
    known = set(ids)
    deps: dict[str, list[str]] = {d.id: [] for d in drafts}
    for d in drafts:
        for dep in d.explicit_deps:
            if dep in known:
                deps[d.id].append(dep)
            elif "${" not in dep:
                hint = suggest(dep, ids)
                did = f"; did you mean {hint!r}?" if hint else ""
                col.add(d.deps_path, f"job {d.id!r} depends on unknown job {dep!r}{did}")
    phases = m.phases or []
    by_phase: dict[int, list[_Draft]] = {}
    for d in drafts:
        if d.phase_index is not None:
            by_phase.setdefault(d.phase_index, []).append(d)
    index_of = {p.name: i for i, p in enumerate(phases)}
    for pi, phase in enumerate(phases):
        for dep_name in phase.depends_on:
            upstream = by_phase.get(index_of[dep_name], [])
            if not phase.match:
                for d in by_phase.get(pi, []):
                    deps[d.id].extend(u.id for u in upstream)
                continue
            table: dict[tuple[str, ...], list[str]] = {}
            for u in upstream:
                if all(k in u.vars for k in phase.match):
                    table.setdefault(tuple(scalar_text(u.vars[k]) for k in phase.match), []).append(u.id)
            for d in by_phase.get(pi, []):
                missing = [k for k in phase.match if k not in d.vars]
                if missing:
                    col.add(f"phases[{pi}].match", f"job {d.id!r} has no value for match key(s) {missing}")
                    continue
                key = tuple(scalar_text(d.vars[k]) for k in phase.match)
                hits = table.get(key)
                if not hits:
                    shown = ", ".join(f"{k}={v}" for k, v in zip(phase.match, key, strict=True))
                    col.add(
                        f"phases[{pi}].match",
                        f"job {d.id!r} ({shown}) matches no job of phase {dep_name!r}; "
                        f"add those values to {dep_name!r} or drop match",
                    )
                else:
                    deps[d.id].extend(hits)
    return {k: list(dict.fromkeys(v)) for k, v in deps.items()}


def _toposort(drafts: list[_Draft], deps: dict[str, list[str]], col: _Collector) -> list[_Draft]:
    """Kahn's algorithm, always taking the earliest ready job in manifest order."""
    order = {d.id: i for i, d in enumerate(drafts)}
    waiting = {job: len(ds) for job, ds in deps.items()}
    dependents: dict[str, list[str]] = {job: [] for job in deps}
    for job, ds in deps.items():
        for dep in ds:
            dependents[dep].append(job)
    heap = [order[j] for j, n in waiting.items() if n == 0]
    heapq.heapify(heap)
    out: list[_Draft] = []
    while heap:
        d = drafts[heapq.heappop(heap)]
        out.append(d)
        for nxt in dependents[d.id]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(heap, order[nxt])
    if len(out) < len(drafts):
        left = [d.id for d in drafts if waiting[d.id] > 0]
        for cycle in _find_cycles(left, lambda j: [x for x in deps[j] if waiting[x] > 0]):
            first = drafts[order[cycle[0]]]
            col.add(
                first.deps_path, f"dependency cycle: {' -> '.join(cycle)}; remove one of these dependencies"
            )
    return out


def expand_detailed(manifest: Manifest) -> list[ExpandedJob]:
    """Expand with provenance: each run spec job plus its grid values and rendered preconditions.

    Computed once per manifest object (a validated manifest is not changed afterwards).
    """
    if manifest._expanded is not None:
        return list(manifest._expanded)
    col = _Collector()
    drafts: list[_Draft] = []
    if manifest.phases is not None:
        cycle = _phase_cycle(manifest)
        if cycle:
            raise ManifestError(
                [FieldError("phases", f"phases depend on each other in a cycle: {' -> '.join(cycle)}")]
            )
        for pi, phase in enumerate(manifest.phases):
            drafts.extend(_drafts_for(manifest, phase, pi, col))
    else:
        drafts = _drafts_for(manifest, None, None, col)
    _check_ids(drafts, col)
    if col.all():
        raise ManifestError(col.all())
    deps = _link(manifest, drafts, col)
    ordered = _toposort(drafts, deps, col)
    if col.all():
        raise ManifestError(col.all())
    cwd = resolve_cwd(manifest)
    prelude = render_prelude(manifest)
    out = []
    for d in ordered:
        spec = JobSpec(
            id=d.id,
            cwd=cwd,
            prelude=list(prelude),
            depends_on=deps[d.id],
            oom_retry=manifest.oom_retry,
            retry=manifest.retry,
            **d.spec,
        )
        out.append(ExpandedJob(spec=spec, vars=d.vars, origin=d.origin, preconditions=d.preconditions))
    manifest._expanded = out
    return list(out)


def expand_jobs(manifest: Manifest) -> list[JobSpec]:
    """The fully rendered job list of the run spec, in run order.

    Raises ``ManifestError`` listing all problems.
    """
    return [e.spec for e in expand_detailed(manifest)]
