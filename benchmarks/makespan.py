"""Figure 2: makespan against the lower bound, and against a barrier-per-wave policy, on the same durations.

Two grids run for real (service, agent, simulated GPUs, default settings) with job lengths drawn from a seeded
lognormal: ``independent`` (all jobs ready at once) and ``two_phase`` (each student waits for one teacher).
The durations used everywhere below are the ones the jobs really took: ``end - start`` from each job's own
stamps (fake_train's interpreter start-up included). From them:

- lower bound = max(total work / GPUs, longest dependency chain);
- measured makespan = last job end - first job start (and, stricter, from the scheduler's start);
- ``greedy_sim``: list scheduling in spec order with zero overhead (what a perfect instant scheduler that does
  not know durations achieves: the part of the ratio that is the tail, not our overhead);
- ``wave_barrier_sim``: waves of one job per GPU in spec order, the next wave starts when the whole wave is
  done (phase 2 starts after phase 1), as wave-based scripts do.

Each grid also runs a second time with ``priority`` hints from the manifest (``*_priority``): the planned
duration of a job plus the longest planned chain after it, which is what a user who knows that bigger models
train longer would write (e.g. ``priority: "${N}"``). The scheduler then starts long jobs first, and the
greedy simulation of those rows uses the same priority order.
"""

from __future__ import annotations

import heapq
import random
from pathlib import Path
from typing import Any

from .common import Row, check_mode, fmt, run_jobs_locally, stamped_cmd, verdict, workdir

SIZES = {
    "tiny": {"gpus": 2, "independent": 6, "teachers": 2, "students": 4, "median": 0.3, "sigma": 0.5},
    "quick": {"gpus": 8, "independent": 32, "teachers": 8, "students": 24, "median": 1.0, "sigma": 0.5},
    "full": {"gpus": 8, "independent": 64, "teachers": 16, "students": 48, "median": 3.0, "sigma": 0.6},
}
GOAL_RATIO = 1.05
SEED = 20261204


def _durations(rng: random.Random, n: int, median: float, sigma: float) -> list[float]:
    # Clipped so one freak draw cannot dominate a short benchmark; the clip applies before the run, so the
    # bound and the simulations still use the durations the jobs actually took.
    return [round(min(5 * median, max(0.2, median * rng.lognormvariate(0.0, sigma))), 3) for _ in range(n)]


def grids(mode: str) -> dict[str, list[dict]]:
    """The two grids' manifest job entries (ids in spec order, ``cmd``, ``depends_on``)."""
    size = SIZES[check_mode(mode)]
    rng = random.Random(SEED)
    ind = _durations(rng, size["independent"], size["median"], size["sigma"])
    t_d = _durations(rng, size["teachers"], size["median"], size["sigma"])
    s_d = _durations(rng, size["students"], size["median"], size["sigma"])
    independent = [{"id": f"j{i:03d}", "cmd": stamped_cmd(d)} for i, d in enumerate(ind)]
    teachers = [{"id": f"teacher{i:02d}", "cmd": stamped_cmd(d)} for i, d in enumerate(t_d)]
    students = [
        {"id": f"student{i:03d}", "cmd": stamped_cmd(d), "depends_on": [teachers[i % len(teachers)]["id"]]}
        for i, d in enumerate(s_d)
    ]
    # Priority hints: planned duration plus the longest planned chain after the job.
    after = [
        max((s_d[i] for i in range(len(s_d)) if i % len(t_d) == t), default=0.0) for t in range(len(t_d))
    ]
    ind_p = [dict(j, priority=d) for j, d in zip(independent, ind, strict=True)]
    tea_p = [dict(j, priority=round(d + a, 3)) for j, d, a in zip(teachers, t_d, after, strict=True)]
    stu_p = [dict(j, priority=d) for j, d in zip(students, s_d, strict=True)]
    return {
        "independent": independent,
        "two_phase": teachers + students,
        "independent_priority": ind_p,
        "two_phase_priority": tea_p + stu_p,
    }


GRIDS = ("independent", "two_phase", "independent_priority", "two_phase_priority")
PRIORITY_GRIDS = ("independent_priority", "two_phase_priority")


def start_order(jobs: list[dict]) -> list[str]:
    """The agent's start order: priority (highest first), then spec order."""
    ranked = sorted(enumerate(jobs), key=lambda p: (-float(p[1].get("priority", 0.0)), p[0]))
    return [j["id"] for _, j in ranked]


def list_schedule(order: list[str], dur: dict[str, float], deps: dict[str, list[str]], slots: int) -> float:
    """Makespan of greedy list scheduling in ``order`` (a ready job takes any free slot; no overhead)."""
    t, free, finished = 0.0, slots, {}
    pending = list(order)
    running: list[tuple[float, str]] = []
    while pending or running:
        for j in list(pending):
            if free == 0:
                break
            if all(d in finished for d in deps.get(j, [])):
                heapq.heappush(running, (t + dur[j], j))
                pending.remove(j)
                free -= 1
        if not running:
            raise ValueError("unsatisfiable dependencies")
        t, j = heapq.heappop(running)
        finished[j] = t
        free += 1
        while running and running[0][0] <= t:
            finished[heapq.heappop(running)[1]] = t
            free += 1
    return t


def wave_barrier(order: list[str], dur: dict[str, float], deps: dict[str, list[str]], slots: int) -> float:
    """Makespan when waves of ``slots`` jobs (spec order, one phase at a time) end with a barrier each."""
    phases: list[list[str]] = []
    level: dict[str, int] = {}
    for j in order:
        level[j] = 1 + max((level[d] for d in deps.get(j, [])), default=-1)
        while len(phases) <= level[j]:
            phases.append([])
        phases[level[j]].append(j)
    total = 0.0
    for jobs in phases:
        for i in range(0, len(jobs), slots):
            total += max(dur[j] for j in jobs[i : i + slots])
    return total


def longest_chain(order: list[str], dur: dict[str, float], deps: dict[str, list[str]]) -> float:
    finish: dict[str, float] = {}
    for j in order:
        finish[j] = dur[j] + max((finish[d] for d in deps.get(j, [])), default=0.0)
    return max(finish.values())


def measure(name: str, jobs: list[dict], gpus: int, root: Path) -> dict[str, Any]:
    r = run_jobs_locally(root / name, f"bench_makespan_{name}", jobs, gpus, timeout=600)
    spec_order, order = [j["id"] for j in jobs], start_order(jobs)
    deps = {j["id"]: list(j.get("depends_on", [])) for j in jobs}
    done = {a.job: a for a in r.attempts if a.status == "completed" and a.start and a.end}
    if len(done) != len(jobs):
        raise RuntimeError(f"{name}: only {len(done)} of {len(jobs)} jobs completed ({r.counts})")
    dur = {j: a.end - a.start for j, a in done.items()}  # type: ignore[operator]
    first = min(a.start for a in done.values())  # type: ignore[type-var]
    last = max(a.end for a in done.values())  # type: ignore[type-var]
    work, chain = sum(dur.values()), longest_chain(spec_order, dur, deps)
    bound = max(work / gpus, chain)
    makespan = last - first
    from_agent = last - r.agent_started_at if r.agent_started_at else None
    # Waves stay in spec order: that is what wave-based scripts do, hints or not.
    greedy, waves = list_schedule(order, dur, deps, gpus), wave_barrier(spec_order, dur, deps, gpus)
    return {
        "jobs": len(jobs),
        "gpus": gpus,
        "total_work_s": round(work, 3),
        "longest_chain_s": round(chain, 3),
        "lower_bound_s": round(bound, 3),
        "makespan_s": round(makespan, 3),
        "ratio": round(makespan / bound, 4),
        "makespan_from_agent_start_s": None if from_agent is None else round(from_agent, 3),
        "ratio_from_agent_start": None if from_agent is None else round(from_agent / bound, 4),
        "greedy_sim_s": round(greedy, 3),
        "greedy_sim_ratio": round(greedy / bound, 4),
        "wave_barrier_sim_s": round(waves, 3),
        "wave_barrier_sim_ratio": round(waves / bound, 4),
        "overhead_vs_greedy_sim": round(makespan / greedy, 4),
        "met": makespan / bound <= GOAL_RATIO,
    }


def run(mode: str = "full", base: Path | None = None) -> dict[str, Any]:
    """Run both grids; return their figures."""
    size = SIZES[check_mode(mode)]
    out: dict[str, Any] = {
        "durations": f"lognormal(median {size['median']} s, sigma {size['sigma']}), seed {SEED}, "
        "clipped to [0.2 s, 5 x median]; bound and simulations use the measured job durations",
        "goal_ratio": GOAL_RATIO,
    }
    with workdir(base, "makespan") as root:
        for name, jobs in grids(mode).items():
            out[name] = measure(name, jobs, size["gpus"], root)
    # The goal is judged with priority hints: without durations no scheduler can avoid the long-job tail.
    out["met"] = all(out[k]["met"] for k in PRIORITY_GRIDS)
    return out


def rows(d: dict[str, Any]) -> list[Row]:
    out = []
    for name in GRIDS:
        g = d.get(name)
        if g is None:
            continue
        how = "priority = expected length" if name.endswith("_priority") else "spec order"
        out.append(
            (
                f"2. makespan / lower bound, {name.removesuffix('_priority')}, {how} "
                f"({g['jobs']} jobs, {g['gpus']} GPUs)",
                f"{fmt(g['ratio'])} (measured {fmt(g['makespan_s'])} s, bound {fmt(g['lower_bound_s'])} s; "
                f"greedy sim {fmt(g['greedy_sim_ratio'])}, "
                f"wave barrier sim {fmt(g['wave_barrier_sim_ratio'])})",
                f"<= {GOAL_RATIO}" if name in PRIORITY_GRIDS else "(reference)",
                verdict(g["met"]) if name in PRIORITY_GRIDS else "",
            )
        )
    return out
