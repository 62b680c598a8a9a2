"""Shared pieces of the benchmarks: simulated GPUs in this process's environment, a real sshd on loopback,
job commands that stamp their own start and end, journal/log readers, percentiles and cleanup.

Clocks: every stamp compared across processes is Unix wall time (``time.time()`` in Python, ``date +%s.%N``
in the job shell; both read CLOCK_REALTIME of this one machine). Durations measured inside one process use
``time.perf_counter`` (wall) or ``time.process_time`` (CPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aris_queue_mcp import simgpu
from aris_queue_mcp.service import QueueService
from tests.fixtures.simgpu import pid_alive  # the same process check the tests use

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAIN = str(simgpu.FAKE_TRAIN)
SSHD = "/usr/sbin/sshd"
STAMP = "BENCH"
"""Prefix of the lines a benchmark job prints: ``BENCH start <unix time>`` / ``BENCH end <unix time>``."""

ACTIVE = ("pending", "running", "failed_oom", "failed_other")

# --------------------------------------------------------------------------------------------- modes


MODES = ("tiny", "quick", "full")
"""``tiny``: the smoke test (seconds); ``quick``: about a minute; ``full``: the figures we quote."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


# --------------------------------------------------------------------------------------------- stats


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """n, p50, p95, p99, max and mean of ``values`` (rounded)."""

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, digits)

    return {
        "n": len(values),
        "p50": r(percentile(values, 50)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values) if values else None),
        "mean": r(sum(values) / len(values) if values else None),
    }


# --------------------------------------------------------------------------------------------- environment


@contextlib.contextmanager
def patched_environ(changes: dict[str, str], remove: Sequence[str] = ()) -> Iterator[None]:
    """Apply ``changes`` to ``os.environ`` (agents and jobs started meanwhile inherit them); restore after."""
    saved = dict(os.environ)
    try:
        for key in remove:
            os.environ.pop(key, None)
        os.environ.update(changes)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def sim_gpus(root: Path, gpus: int, **install_kw: Any) -> Iterator[dict[str, str]]:
    """A simulated GPU server in ``root/sim`` whose fake nvidia-smi is first on PATH for this process."""
    env = simgpu.install(root / "sim", gpus=gpus, **install_kw)
    with patched_environ(env, remove=("CUDA_VISIBLE_DEVICES", "ARIS_AGENT_TUNABLES")):
        yield env


@contextlib.contextmanager
def workdir(base: Path | None, name: str) -> Iterator[Path]:
    """``base/name`` (kept) or a temp dir removed afterwards."""
    if base is not None:
        path = Path(base) / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        yield path
        return
    tmp = tempfile.mkdtemp(prefix=f"aris-bench-{name}-")
    try:
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        mem_gib = round(int(kb.split()[1]) / 1024 / 1024, 1)
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "git_commit": commit,
        "sshd": os.path.exists(SSHD),
    }


# --------------------------------------------------------------------------------------------- jobs


def stamped_cmd(duration: float, mem_mib: int = 1000) -> str:
    """A job that stamps its start, runs the fake trainer on its GPU(s) for ``duration`` s, stamps its end.

    The stamps bracket the user's command (fake_train's interpreter start-up included): the GPU is "busy"
    between them and idle outside them.
    """
    train = (
        f"CUDA_VISIBLE_DEVICES=${{GPU}} {shlex.quote(sys.executable)} {shlex.quote(FAKE_TRAIN)} "
        f"--mem-mib {mem_mib} --duration {duration:.3f} --steps 1"
    )
    return (
        f'echo "{STAMP} start $(date +%s.%N)"; {train}; __rc=$?; echo "{STAMP} end $(date +%s.%N)"; '
        "exit $__rc"
    )


def base_manifest(project: str, root: Path, *, ssh: str = "local", **fields: Any) -> dict[str, Any]:
    """A manifest with the product's default scheduling settings (poll 2 s, OOM delay 120 s, ...)."""
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    m: dict[str, Any] = {
        "project": project,
        "ssh": ssh,
        "cwd": str(work),
        "remote_root": str(root / "agent_root") if ssh == "local" else "~/aq_bench",
        "python": sys.executable,
        "kill_grace": 2,
    }
    m.update(fields)
    return m


# --------------------------------------------------------------------------------------------- run dirs


def journal(run_dir: Path | str) -> list[dict]:
    path = Path(run_dir) / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


@dataclass
class Attempt:
    """One job attempt as the run directory records it."""

    job: str
    attempt: int
    gpus: tuple[int, ...]
    start: float | None  # job shell's own stamp (Unix time)
    end: float | None
    launch_t: float | None  # journal: the scheduler's launch intent (Unix time)
    noticed_t: float | None  # journal: the scheduler recorded the attempt's end
    status: str | None


def attempts(run_dir: Path | str) -> list[Attempt]:
    """Every attempt with its journal times and its own start/end stamps from the job log."""
    run_dir = Path(run_dir)
    out: dict[tuple[str, int], Attempt] = {}
    for rec in journal(run_dir):
        if rec.get("event") != "transition":
            continue
        job, n, s = rec["job"], int(rec.get("attempt") or 0), rec.get("set") or {}
        if rec["to"] == "running":
            out[(job, n)] = Attempt(job, n, tuple(s.get("gpus") or ()), None, None, rec["t"], None, None)
        elif rec["from"] == "running" and (job, n) in out:
            out[(job, n)].noticed_t = rec["t"]
            out[(job, n)].status = rec["to"]
    for (job, n), a in out.items():
        starts, ends = _stamps(run_dir / "logs" / f"{job}.log", n)
        a.start, a.end = starts, ends
    return list(out.values())


def _stamps(log: Path, attempt: int) -> tuple[float | None, float | None]:
    start = end = None
    current = 0
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("==== aris-queue: ") and " attempt " in line:
                current = int(line.split(" attempt ", 1)[1].split()[0])
            elif line.startswith(f"{STAMP} ") and current == attempt:
                kind, value = line.split()[1:3]
                if kind == "start":
                    start = float(value)
                elif kind == "end":
                    end = float(value)
    return start, end


# --------------------------------------------------------------------------------------------- processes


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident memory (VmHWM, KiB) of a live process from /proc/<pid>/status."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        text = Path(f"/proc/{pid}/status").read_text()
        return int(next(ln for ln in text.splitlines() if ln.startswith("VmHWM:")).split()[1])
    return None


def wait_finished(svc: QueueService, run_id: str, timeout: float) -> Any:
    """Follow a run with status --wait until nothing is active and the scheduler finished."""
    deadline = time.monotonic() + timeout
    st = svc.queue_status(run_id)
    while time.monotonic() < deadline:
        if not any(st.counts.get(s) for s in ACTIVE) and (st.finished_at or not st.agent.alive):
            return st
        st = svc.queue_status(run_id, wait_s=2, since_seq=st.seq)
    raise TimeoutError(f"run {run_id} did not finish within {timeout:g}s: counts {st.counts}")


def cancel_everything(svc: QueueService) -> None:
    """Cancel every run of ``svc`` whose scheduler lives and kill leftover agents and jobs (best effort)."""
    for record in svc.registry.list():
        with contextlib.suppress(Exception):
            st = svc.queue_status(record.run_id)
            if st.agent.alive:
                svc.cancel_job(record.run_id)
        kill_run_dir_processes(Path(record.remote_run_dir))


def kill_run_dir_processes(run_dir: Path) -> None:
    """SIGKILL the scheduler and job process groups a run directory names, if still alive."""
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((run_dir / "agent.json").read_text())
        pid = info.get("pid")
        if pid and pid_alive(pid) and str(run_dir) in _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
    for rec in journal(run_dir) if run_dir.exists() else []:
        pid = (rec.get("set") or {}).get("pid")
        if pid and pid_alive(pid) and str(run_dir) in _cmdline(pid):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --------------------------------------------------------------------------------------------- sshd


class Loopback:
    """A real OpenSSH sshd on 127.0.0.1 (``tests/fixtures/sshd.py``'s ``SshServer``) with fresh keys."""

    def __init__(self, base: Path, remote_env: dict[str, str]) -> None:
        from tests.fixtures.sshd import SSH_KEYGEN, SshServer

        keys = base / "keys"
        keys.mkdir(parents=True, exist_ok=True)
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(
                [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(keys / name)],
                check=True,
                capture_output=True,
            )
        srv = base / "srv"
        srv.mkdir(parents=True, exist_ok=True)
        self.server = SshServer(srv, keys, remote_env=remote_env, extra_path=None)

    @property
    def alias(self) -> str:
        return self.server.alias

    def options(self) -> dict[str, Any]:
        return {
            "ssh_config_path": self.server.ssh_config,
            "known_hosts_paths": [self.server.known_hosts],
            "connect_timeout": 5,
        }

    def __enter__(self) -> Loopback:
        self.server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()


def sshd_available() -> bool:
    return os.path.exists(SSHD) and shutil.which("ssh-keygen") is not None


def fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    """A table cell: numbers rounded, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


Row = tuple[str, str, str, str]
"""(figure, measured, goal, verdict) of the printed table."""


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


# --------------------------------------------------------------------------------------------- whole runs


@dataclass
class LocalRun:
    """A finished local run: its attempts, run directory, and the scheduler's start/finish (Unix time)."""

    run_id: str
    run_dir: Path
    attempts: list[Attempt]
    launch_called_at: float
    agent_started_at: float | None
    finished_at: float | None
    counts: dict[str, int]


def run_jobs_locally(root: Path, project: str, jobs: list[dict], gpus: int, timeout: float) -> LocalRun:
    """Launch ``jobs`` (manifest job entries) through ``QueueService`` on ``gpus`` simulated GPUs with the
    product's default scheduling settings, wait until the run finished, and read back every attempt."""
    with sim_gpus(root, gpus):
        svc = QueueService(root / "project")
        try:
            m = base_manifest(project, root, jobs=jobs)
            t0 = time.time()
            res = svc.launch_queue(m)
            st = wait_finished(svc, res.run_id, timeout)
            run_dir = Path(svc.registry.load(res.run_id).remote_run_dir)
            started = next(
                (
                    r["t"]
                    for r in journal(run_dir)
                    if r.get("event") == "agent" and r.get("state") == "running"
                ),
                None,
            )
            return LocalRun(
                res.run_id, run_dir, attempts(run_dir), t0, started, st.finished_at, dict(st.counts)
            )
        finally:
            cancel_everything(svc)
            svc.close()
