"""Launching attempts and watching their processes: wrapper scripts, process groups, exit files, adoption.

Each attempt runs ``wrappers/<job>.<n>.sh`` in its own session (so its process group is the job), started as a
child of the agent (``process``) or inside ``screen``/``tmux``. The wrapper

1. claims the attempt by creating ``exits/<job>.<n>.pid`` with ``O_EXCL`` (bash ``noclobber``) and exits
   at once if it already exists: a restarted agent creates that file itself before declaring an attempt lost,
   so an attempt is either adopted (its pid is in the file) or provably never runs its command;
2. appends the header line and all output to ``logs/<job>.log``;
3. changes to ``cwd``, exports ``CUDA_VISIBLE_DEVICES``, ``ARIS_JOB_ID``, ``ARIS_ATTEMPT``, ``ARIS_RUN_DIR``
   and the job's env, runs the prelude lines (a failing one exits 98) and the command in a child ``bash -c``
   so that ``exit N`` or a compound command inside it still leaves the wrapper to write
   ``exits/<job>.<n>.exit`` atomically (temp file + ``mv``).

Every value derived from the spec is ``shlex.quote``d.

A process is identified by pid plus ``<boot id>:<start ticks>`` (``/proc/<pid>/stat`` field 22), so a pid
reused after a crash or reboot is never mistaken for a job.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import List, Optional, Tuple

from . import defaults
from .scheduler import PRELUDE_EXIT, PRELUDE_MARK
from .spec import JobSpec

_BOOT_ID: Optional[str] = None


class LaunchError(Exception):
    """The attempt could not be started (e.g. screen/tmux missing); it fails with this reason."""


# --------------------------------------------------------------------------- processes


def boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = "noboot"
    return _BOOT_ID


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after its last ')' are fixed.
    return data[data.rfind(")") + 2 :].split()


def proc_start(pid: int) -> Optional[str]:
    """``<boot id>:<start ticks>`` of a live process, None when it is gone or a zombie."""
    f = _stat_fields(pid)
    if not f or f[0] in ("Z", "X"):
        return None
    return f"{boot_id()}:{f[19]}"


def proc_start_wall(start: str) -> Optional[float]:
    """Unix time at which a process with ``proc_start`` value ``start`` began (None when not of this boot)."""
    bid, _, ticks = start.rpartition(":")
    if bid != boot_id():
        return None
    try:
        with open("/proc/stat", encoding="ascii") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith("btime"))
        return btime + int(ticks) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError):
        return None


def alive(pid: Optional[int], start: Optional[str]) -> bool:
    """True when ``pid`` runs and is the process that started at ``start`` (not a reused pid)."""
    return bool(pid) and start is not None and proc_start(int(pid)) == start  # type: ignore[arg-type]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def has_leftovers(pid: int) -> bool:
    """True when a job's wrapper (``pid``, its process group leader) is gone but processes of its group live
    on, e.g. data-loader workers orphaned when the OOM killer took the wrapper. Only checked when no process
    with that pid exists: a pid number in use as a process group id is not handed out again, so a live group
    whose leader is gone is still the job's."""
    return not os.path.exists(f"/proc/{pid}") and group_alive(pid)


# --------------------------------------------------------------------------- files of an attempt


def attempt_path(run_dir: str, kind: str, job: str, attempt: int) -> str:
    """``exits/<job>.<n>.exit``, ``exits/<job>.<n>.pid`` or ``wrappers/<job>.<n>.sh``."""
    if kind == "wrapper":
        return os.path.join(run_dir, "wrappers", f"{job}.{attempt}.sh")
    return os.path.join(run_dir, "exits", f"{job}.{attempt}.{kind}")


def log_path(run_dir: str, job: str) -> str:
    return os.path.join(run_dir, "logs", f"{job}.log")


def read_exit(run_dir: str, job: str, attempt: int) -> Optional[int]:
    """The exit code the wrapper wrote for this attempt, None when there is none (yet)."""
    try:
        with open(attempt_path(run_dir, "exit", job, attempt), encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def claim_pid_file(run_dir: str, job: str, attempt: int) -> Tuple[bool, Optional[int]]:
    """Decide the fate of an attempt whose pid was never recorded (agent died while launching it).

    Returns ``(True, None)`` when we created the pid file first: the wrapper will refuse to run, the attempt
    is lost for sure. ``(False, pid)`` when the wrapper created it: adopt ``pid`` if alive. ``(False, None)``:
    the file says lost (an earlier restart claimed it) or never got a pid.
    """
    path = attempt_path(run_dir, "pid", job, attempt)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False, read_pid_file(path)
    with os.fdopen(fd, "w") as f:
        f.write("lost\n")
    return True, None


def unrecorded_attempt(
    run_dir: str, job: str, attempt: int, started_at: Optional[float]
) -> Tuple[Optional[int], Optional[str]]:
    """``(pid, start)`` of an attempt whose pid the journal never got (the agent died while launching it),
    settled through its pid file (see :func:`claim_pid_file`); ``(None, None)`` when it never ran or is gone.
    A process older than the attempt is never taken for it."""
    _claimed, pid = claim_pid_file(run_dir, job, attempt)
    start = proc_start(pid) if pid else None
    wall = proc_start_wall(start) if start else None
    if pid is None or wall is None or started_at is None or wall < started_at - 1.0:
        return None, None
    return pid, start


def read_pid_file(path: str, wait: Optional[float] = None) -> Optional[int]:
    """The pid in a wrapper's pid file, waiting briefly while it is created but not yet filled."""
    deadline = time.monotonic() + (defaults.tunable("PID_FILE_WAIT") if wait is None else wait)
    while True:
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            text = ""
        if text == "lost":
            return None
        if text.isdigit():
            return int(text)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def read_log_tail(run_dir: str, job: str, offset: Optional[int], max_bytes: Optional[int] = None) -> str:
    """The end of the attempt's log that starts at byte ``offset`` (at most LOG_TAIL_BYTES)."""
    max_bytes = max_bytes or int(defaults.tunable("LOG_TAIL_BYTES"))
    path = log_path(run_dir, job)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = max(offset or 0, size - max_bytes)
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if start > (offset or 0) and "\n" in text:
        text = text.split("\n", 1)[1]  # drop the partial first line
    return text


def find_outputs(js: JobSpec, started_at: Optional[float]) -> List[str]:
    """Files matching ``output_check`` (glob relative to cwd) modified after the attempt started."""
    if not js.output_check:
        return []
    cwd = os.path.expanduser(js.cwd)
    since = (started_at or 0.0) - float(defaults.tunable("OUTPUT_MTIME_SLACK"))
    found = []
    for p in glob.glob(os.path.join(glob.escape(cwd), js.output_check), recursive=True):
        try:
            if os.path.isfile(p) and os.path.getmtime(p) >= since:
                found.append(os.path.relpath(p, cwd))
        except OSError:
            continue
    return sorted(found)[:100]


# --------------------------------------------------------------------------- the wrapper


def render_cmd(cmd: str, gpus: Tuple[int, ...]) -> str:
    """``cmd`` with ``${GPU}`` replaced by the comma-joined GPU indices (digits and commas: shell-safe)."""
    return cmd.replace("${GPU}", ",".join(str(g) for g in gpus))


def header_line(job: str, attempt: int, gpus: Tuple[int, ...], now: float) -> str:
    iso = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"==== aris-queue: {job} attempt {attempt} started {iso} gpus={','.join(map(str, gpus))} ===="


def wrapper_script(
    run_dir: str, js: JobSpec, attempt: int, gpus: Tuple[int, ...], now: float, tee: bool = False
) -> str:
    """The bash text of the launch wrapper of one attempt (see the module docstring)."""
    q = shlex.quote
    run_dir = os.path.abspath(run_dir)
    inner: List[str] = []
    for i, line in enumerate(js.prelude, 1):
        msg = f"{PRELUDE_MARK} {i} failed (exit $__aris_rc): {line}"
        inner.append(line)
        inner.append(
            f'__aris_rc=$?; if [ "$__aris_rc" -ne 0 ]; then '
            f'printf "%s\\n" {_dq(msg)} >&2; exit {PRELUDE_EXIT}; fi'
        )
    inner.append(render_cmd(js.cmd, gpus))
    exports = {
        "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus),
        "ARIS_JOB_ID": js.id,
        "ARIS_ATTEMPT": str(attempt),
        "ARIS_RUN_DIR": run_dir,
    }
    exports.update(js.env)
    log = log_path(run_dir, js.id)
    # process: all output appended to the log. screen/tmux: also shown in the session (tee), through pipelines
    # so the wrapper waits for tee and the log is complete before the exit file appears.
    redirect = "exec </dev/null" if tee else f"exec </dev/null >>{q(log)} 2>&1"
    sink = f" 2>&1 | tee -a {q(log)}" if tee else ""
    cwd = os.path.expanduser(js.cwd)
    no_cwd = f"aris-queue: cannot change to directory {cwd}"
    lines = [
        "#!/bin/bash",
        f"# aris-queue launch wrapper: job {js.id} attempt {attempt} (generated; do not edit)",
        f"__aris_pid_file={q(attempt_path(run_dir, 'pid', js.id, attempt))}",
        f"__aris_exit_file={q(attempt_path(run_dir, 'exit', js.id, attempt))}",
        "# Claim the attempt; an existing pid file means a restarted agent declared it lost: do not run.",
        'if ! ( set -o noclobber; printf "%s\\n" "$$" > "$__aris_pid_file" ) 2>/dev/null; then exit 0; fi',
        redirect,
        f"printf '%s\\n' {q(header_line(js.id, attempt, gpus, now))}{sink}",
        "__aris_done() {",
        '  printf "%s\\n" "$1" > "$__aris_exit_file.tmp" &&',
        '    mv -f "$__aris_exit_file.tmp" "$__aris_exit_file"',
        '  exit "$1"',
        "}",
        "# A handler (an ignore would be inherited by the command) keeps the wrapper alive to record exits.",
        "trap 'true' TERM INT HUP",
        f"cd -- {q(cwd)} || {{ echo {q(no_cwd)}{sink}; __aris_done 1; }}",
    ]
    lines += [f"export {k}={q(v)}" for k, v in exports.items()]
    lines += [f"/bin/bash -c {q(chr(10).join(inner))}{sink}", '__aris_done "${PIPESTATUS[0]}"', ""]
    return "\n".join(lines)


def _dq(text: str) -> str:
    """Quote ``text`` for bash inside double quotes, keeping ``$__aris_rc`` expandable and nothing else."""
    escaped = re.sub(r'([\\"`$])', r"\\\1", text).replace("\\$__aris_rc", "$__aris_rc")
    return f'"{escaped}"'


# --------------------------------------------------------------------------- launching


@dataclass
class Handle:
    """A live attempt the agent watches: its own child (``popen``) or an adopted / screen / tmux process."""

    job: str
    attempt: int
    pid: int
    proc_start: Optional[str]
    gpus: Tuple[int, ...]
    popen: Optional[subprocess.Popen] = None
    session: Optional[str] = None
    launcher: str = "process"
    kill_reason: Optional[str] = None
    """Why it is being killed (``timeout`` or ``cancel``), None while it runs normally."""
    kill_at: Optional[float] = None
    """When to send SIGKILL if it is still alive."""
    orphan: bool = False
    """Its job no longer counts it (cancelled, or leftovers of an ended attempt): only waiting to die; still
    holds its GPUs."""
    group_only: bool = False
    """Tracks what is left of the process group ``pid`` after its leader ended (see :func:`has_leftovers`)."""
    extra: dict = field(default_factory=dict)

    def finished(self) -> Optional[int]:
        """Wrapper's wait status when it ended (own child: reaped here), else None while alive.

        For processes that are not our children the value is 0 once the process is gone.
        """
        if self.group_only:
            return None if group_alive(self.pid) else 0
        if self.popen is not None:
            return self.popen.poll()
        return None if alive(self.pid, self.proc_start) else 0


def session_name(run_id: str, job: str, attempt: int) -> str:
    """A screen/tmux session name, unique per (run, job, attempt).

    tmux turns '.' and ':' into '_' (so ids ``a.b`` and ``a_b`` would collide) and ``screen -S NAME`` matches
    any session whose name starts with NAME (``t-1`` would match ``t-10-1``): the readable part is followed by
    a hash of the exact triple, of fixed length, so no name is another's prefix or twin.
    """
    digest = hashlib.sha1(f"{run_id}\0{job}\0{attempt}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", f"aris-{run_id}-{job}-{attempt}")
    return f"{readable}-{digest}"


def prepare(run_dir: str) -> None:
    for sub in ("logs", "exits", "wrappers"):
        os.makedirs(os.path.join(run_dir, sub), mode=0o700, exist_ok=True)


def launch(
    run_dir: str, run_id: str, js: JobSpec, attempt: int, gpus: Tuple[int, ...], launcher: str, now: float
) -> Handle:
    """Write the wrapper of ``attempt`` and start it in a new session. Raises LaunchError."""
    path = attempt_path(run_dir, "wrapper", js.id, attempt)
    text = wrapper_script(run_dir, js, attempt, gpus, now, tee=launcher != "process")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError as exc:  # e.g. a full disk: this attempt fails, the scheduler lives on
        raise LaunchError(f"cannot write the wrapper {path}: {exc}") from exc
    if launcher == "process":
        try:
            popen = subprocess.Popen(
                ["/bin/bash", path],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                close_fds=True,
                cwd=run_dir,
            )
        except OSError as exc:
            raise LaunchError(f"cannot start /bin/bash: {exc}") from exc
        return Handle(js.id, attempt, popen.pid, proc_start(popen.pid), gpus, popen=popen)
    tool = shutil.which(launcher)
    if tool is None:
        raise LaunchError(f"launcher {launcher!r} is not installed on this host (not on PATH)")
    name = session_name(run_id, js.id, attempt)
    if launcher == "screen":
        argv = [tool, "-dmS", name, "/bin/bash", path]
    else:
        argv = [tool, "new-session", "-d", "-s", name, "/bin/bash", path]
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=10,
            check=False,
            cwd=run_dir,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"{launcher} failed to start: {exc}") from exc
    if proc.returncode != 0:
        raise LaunchError(f"{launcher} exited {proc.returncode}: {proc.stdout.strip()[:300]}")
    pid = read_pid_file(attempt_path(run_dir, "pid", js.id, attempt), wait=5.0)
    if pid is None:
        end_session(launcher, name)
        raise LaunchError(f"{launcher} session {name} did not start the wrapper within 5s")
    return Handle(js.id, attempt, pid, proc_start(pid), gpus, session=name, launcher=launcher)


def end_session(launcher: str, name: Optional[str]) -> None:
    """Remove a finished job's leftover screen/tmux session (no error when it is already gone)."""
    if not name or launcher not in ("screen", "tmux"):
        return
    tool = shutil.which(launcher)
    if tool is None:
        return
    argv = (
        [tool, "-S", name, "-X", "quit"] if launcher == "screen" else [tool, "kill-session", "-t", "=" + name]
    )
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=5,
            check=False,
        )
