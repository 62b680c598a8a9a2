"""Read and parse ``nvidia-smi``; decide which GPUs are usable and say why the others are not.

A missing or failing ``nvidia-smi`` and ``[N/A]`` values never raise: they become an ``error`` on the reading
(or on one GPU), which the scheduler treats as "not usable now" and status reports.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

from . import defaults

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,memory.used,memory.total", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class GpuReading:
    """One GPU as nvidia-smi reported it; ``error`` says why its numbers are missing (e.g. ``[N/A]``)."""

    index: int
    uuid: str
    used_mib: Optional[int]
    total_mib: Optional[int]
    error: Optional[str] = None


@dataclass(frozen=True)
class Readings:
    """One nvidia-smi call: the GPUs it listed, or ``error`` when it gave nothing usable; ``taken_at`` is
    the (agent clock) time of the call."""

    gpus: List[GpuReading]
    error: Optional[str]
    taken_at: float
    timed_out: bool = False
    """nvidia-smi hung (a wedged driver): the caller backs off instead of blocking on it every poll."""


@dataclass(frozen=True)
class GpuStatus:
    """A GPU as the scheduler sees it: usable for a new job or not, and why."""

    index: int
    uuid: Optional[str]
    used_mib: Optional[int]
    total_mib: Optional[int]
    usable: bool
    reason: Optional[str]

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "uuid": self.uuid,
            "memory_used_mib": self.used_mib,
            "memory_total_mib": self.total_mib,
            "usable": self.usable,
            "reason": self.reason,
        }


def parse(text: str) -> List[GpuReading]:
    """Parse ``index, uuid, memory.used, memory.total`` rows (noheader, nounits); bad rows get an error."""
    out: List[GpuReading] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            index = int(parts[0])
        except (ValueError, IndexError):
            continue  # not a GPU row (a warning line); nothing to attach it to
        if len(parts) < 4:
            out.append(
                GpuReading(index, parts[1] if len(parts) > 1 else "", None, None, f"short line {line!r}")
            )
            continue
        uuid = parts[1]
        try:
            used, total = int(float(parts[2])), int(float(parts[3]))
        except ValueError:
            bad = parts[2] if not _is_num(parts[2]) else parts[3]
            out.append(GpuReading(index, uuid, None, None, f"nvidia-smi reports memory as {bad}"))
            continue
        out.append(GpuReading(index, uuid, used, total))
    return out


def _is_num(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read(now: float, timeout: Optional[float] = None) -> Readings:
    """Run nvidia-smi once. Never raises: a missing binary, a timeout or a failure become ``error``."""
    timeout = defaults.tunable("NVIDIA_SMI_TIMEOUT") if timeout is None else timeout
    try:
        proc = subprocess.run(
            QUERY,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return Readings([], "nvidia-smi not found on PATH", now)
    except subprocess.TimeoutExpired:
        return Readings([], f"nvidia-smi did not answer within {timeout:g}s", now, timed_out=True)
    except OSError as exc:
        return Readings([], f"nvidia-smi could not run: {exc}", now)
    if proc.returncode != 0:
        first = (proc.stdout or "").strip().splitlines()[:1]
        return Readings([], f"nvidia-smi exited {proc.returncode}: {first[0] if first else 'no output'}", now)
    gpus = parse(proc.stdout)
    if not gpus:
        return Readings([], "nvidia-smi listed no GPUs", now)
    return Readings(gpus, None, now)


def availability(
    readings: Readings,
    wanted: Union[str, Sequence[int]],
    threshold_mib: int,
    held: Dict[int, str],
) -> List[GpuStatus]:
    """Every GPU of the queue with ``usable`` and a reason: in ``wanted`` (or any for ``"auto"``), read
    without error, ``memory.used`` below the threshold, and not ``held`` (index -> job id) by this queue.

    A GPU this queue assigned counts as held until that job's process is gone, even before its memory shows.
    """
    by_index = {g.index: g for g in readings.gpus}
    indices: List[int] = sorted(by_index) if wanted == "auto" else list(wanted)
    # Held GPUs stay listed even when nvidia-smi fails, so status shows who holds what.
    if wanted == "auto":
        indices = sorted(set(indices) | set(held))
    out: List[GpuStatus] = []
    for i in indices:
        g = by_index.get(i)
        uuid, used, total = (g.uuid, g.used_mib, g.total_mib) if g else (None, None, None)
        if i in held:
            out.append(GpuStatus(i, uuid, used, total, False, f"held by job {held[i]}"))
        elif g is None:
            why = readings.error or "not listed by nvidia-smi"
            out.append(GpuStatus(i, None, None, None, False, why))
        elif g.error:
            out.append(GpuStatus(i, uuid, None, None, False, g.error))
        elif used is not None and used >= threshold_mib:
            out.append(
                GpuStatus(i, uuid, used, total, False, f"busy: {used} MiB used >= {threshold_mib} MiB")
            )
        else:
            out.append(GpuStatus(i, uuid, used, total, True, None))
    return out


def usable_indices(statuses: Sequence[GpuStatus]) -> List[int]:
    return [s.index for s in statuses if s.usable]


def held_map(pairs: Sequence[tuple]) -> Dict[int, str]:
    """``{gpu: job}`` from ``(job, [gpus])`` pairs."""
    out: Dict[int, str] = {}
    for job, gpus in pairs:
        for g in gpus:
            out[int(g)] = job
    return out


__all__ = [
    "GpuReading",
    "GpuStatus",
    "Readings",
    "availability",
    "held_map",
    "parse",
    "read",
    "usable_indices",
]
