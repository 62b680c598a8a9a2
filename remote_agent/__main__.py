"""The agent's command line (docs/protocol.md §4): every command prints exactly one JSON object on stdout.

Exit status 0 on success, 1 on an error, 2 on a usage error, 3 when another scheduler already runs the queue.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import select
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from . import __version__, defaults, store, views
from .errors import AgentError, UnknownJobError, UsageError
from .spec import RunSpec, load_spec
from .states import JobState


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="agent", description="aris-queue remote agent: runs a queue of jobs on this host.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("version", help="agent version, Python and platform")

    def with_run_dir(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--run-dir", required=True, help="the run directory (holds spec.json)")
        return sp

    sp = with_run_dir("run", "run the scheduler until the queue is finished")
    sp.add_argument(
        "--detach", action="store_true", help="run in the background; return once it holds the lock"
    )
    sp = with_run_dir("status", "the status digest (and job rows with --jobs)")
    sp.add_argument("--jobs", action="store_true")
    sp.add_argument("--state", action="append", default=[], choices=[s.value for s in JobState])
    sp.add_argument("--phase")
    sp.add_argument("--offset", type=int, default=0)
    sp.add_argument("--limit", type=int, default=None)
    sp.add_argument("--wait", type=float, default=0.0, help="block until the journal moves past --since-seq")
    sp.add_argument("--since-seq", type=int, default=None)
    sp = with_run_dir("retry", "move jobs (or all stuck / failed ones) back to pending")
    sp.add_argument("jobs", nargs="*")
    sp.add_argument("--stuck", action="store_true")
    sp.add_argument("--failed", action="store_true")
    sp = with_run_dir("cancel", "cancel jobs, or the whole queue without JOB")
    sp.add_argument("jobs", nargs="*")
    with_run_dir("drain", "start nothing new; the scheduler exits when running jobs end")
    sp = with_run_dir("logs", "the last lines of a job's log")
    sp.add_argument("job")
    sp.add_argument("--tail", type=int, default=None)
    sp.add_argument("--attempt", type=int, default=None)
    sp = sub.add_parser("gpus", help="the GPUs nvidia-smi reports")
    sp.add_argument("--threshold", type=int, default=defaults.GPU_FREE_THRESHOLD_MIB)
    sp = with_run_dir("history", "state transitions of the run")
    sp.add_argument("--job")
    return p


# --------------------------------------------------------------------------- commands


def cmd_version(_a: argparse.Namespace) -> Dict[str, Any]:
    return {
        "ok": True,
        "version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _spec(a: argparse.Namespace) -> RunSpec:
    return load_spec(a.run_dir)


def _setup_logging(run_dir: str) -> None:
    logging.basicConfig(
        filename=os.path.join(run_dir, "agent.log"),
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [%(process)d] %(message)s",
    )


def _counts(st: store.Store) -> Dict[str, int]:
    counts = {s.value: 0 for s in JobState}
    for j in st.jobs.values():
        counts[j.status.value] += 1
    return counts


def run_scheduler(
    run_dir: str, spec: RunSpec, on_started: Optional[Callable[[int], None]] = None
) -> Dict[str, Any]:
    """Take the lock, run the queue to its end, return ``{"state", "counts"}``."""
    from .daemon import Daemon  # only `run` needs the scheduler loop: keep the frequent read commands light

    lock = store.RunLock(run_dir)
    lock.acquire("scheduler", wait=float(defaults.tunable("LOCK_WAIT")))
    try:
        _setup_logging(run_dir)
        logging.getLogger("aris_agent").info(
            "scheduler %s starting on %s (pid %d)", __version__, run_dir, os.getpid()
        )
        st = store.Store(run_dir, spec, writer=True)
        d = Daemon(run_dir, spec, st)
        d.on_started = on_started
        state = d.run()
        logging.getLogger("aris_agent").info("scheduler exiting: %s", state)
        return {"ok": True, "state": state, "counts": _counts(st)}
    finally:
        lock.release()


def cmd_run(a: argparse.Namespace) -> Dict[str, Any]:
    run_dir = os.path.abspath(a.run_dir)
    spec = load_spec(run_dir)
    if a.detach:
        return detach(run_dir, spec)
    return run_scheduler(run_dir, spec)


def detach(run_dir: str, spec: RunSpec) -> Dict[str, Any]:
    """Start the scheduler as a daemon (double fork, setsid, stdio to agent.log and /dev/null, so an SSH exec
    channel closes) and return once it holds the lock, or with its error."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked children
        try:
            os.close(r)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            os.chdir("/")
            devnull = os.open(os.devnull, os.O_RDWR)
            logfd = os.open(os.path.join(run_dir, "agent.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(devnull, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.close(devnull)
            os.close(logfd)
            sys.stdout = sys.stderr = os.fdopen(2, "w", buffering=1)

            def started(apid: int) -> None:
                _notify(w, {"ok": True, "pid": apid, "run_dir": run_dir, "state": "running"})

            try:
                run_scheduler(run_dir, spec, on_started=started)
                code = 0
            except AgentError as exc:
                _notify(w, exc.to_json())
                code = exc.exit_code
            os._exit(code)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    os.close(w)
    os.waitpid(pid, 0)
    data = b""
    deadline = time.monotonic() + float(defaults.tunable("DETACH_TIMEOUT"))
    while time.monotonic() < deadline:
        ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
        if b"\n" in data:
            break
    os.close(r)
    try:
        msg = json.loads(data.decode().splitlines()[0])
    except (ValueError, IndexError):
        raise AgentError(
            f"the detached scheduler did not report that it started; read {run_dir}/agent.log", "internal"
        ) from None
    if not msg.get("ok"):
        exc = AgentError(msg.get("message", "error"), msg.get("error", "internal"))
        if exc.code == "already_running":
            exc.exit_code = 3
        exc.extra = {k: v for k, v in msg.items() if k not in ("ok", "error", "message")}
        raise exc
    return msg


def _notify(fd: int, msg: Dict[str, Any]) -> None:
    try:
        os.write(fd, (json.dumps(msg) + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def cmd_status(a: argparse.Namespace) -> Dict[str, Any]:
    if not os.path.isfile(os.path.join(a.run_dir, "spec.json")):
        _spec(a)  # raises the precise no_run_dir error
    if a.wait and a.wait > 0:
        since = a.since_seq if a.since_seq is not None else store.last_seq(a.run_dir)
        deadline = time.monotonic() + a.wait
        next_alive_check = 0.0
        while store.last_seq(a.run_dir) <= since and time.monotonic() < deadline:
            # Without a scheduler nothing will change: answer now instead of at the deadline.
            if time.monotonic() >= next_alive_check:
                if not views.agent_info(a.run_dir)["alive"]:
                    break
                next_alive_check = time.monotonic() + 0.5
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
    if not a.jobs:
        # The digest alone: served from digest.json when it is current, without parsing the spec or the store.
        cached = views.cached_digest(a.run_dir)
        if cached is not None:
            return cached
    spec = _spec(a)
    st = store.Store(a.run_dir, spec)
    return views.digest(
        a.run_dir,
        spec,
        st,
        jobs=a.jobs,
        states=a.state,
        phase=a.phase,
        offset=max(0, a.offset),
        limit=a.limit,
    )


def _submit(run_dir: str, spec: RunSpec, request: Dict[str, Any]) -> Dict[str, Any]:
    from . import control  # only control commands need it

    return control.submit(run_dir, spec, request)


def cmd_retry(a: argparse.Namespace) -> Dict[str, Any]:
    if not (a.jobs or a.stuck or a.failed):
        raise UsageError("retry needs job ids, --stuck or --failed")
    spec = _spec(a)
    return _submit(a.run_dir, spec, {"op": "retry", "jobs": a.jobs, "stuck": a.stuck, "failed": a.failed})


def cmd_cancel(a: argparse.Namespace) -> Dict[str, Any]:
    spec = _spec(a)
    return _submit(a.run_dir, spec, {"op": "cancel", "jobs": a.jobs})


def cmd_drain(a: argparse.Namespace) -> Dict[str, Any]:
    spec = _spec(a)
    return _submit(a.run_dir, spec, {"op": "drain"})


def cmd_logs(a: argparse.Namespace) -> Dict[str, Any]:
    spec = _spec(a)
    if a.job not in spec.by_id:
        raise UnknownJobError(f"unknown job id {a.job!r}; `status --jobs` lists the ids")
    st = store.Store(a.run_dir, spec)
    tail = int(defaults.tunable("LOGS_TAIL")) if a.tail is None else a.tail
    return views.logs(a.run_dir, st.jobs[a.job], tail, a.attempt)


def cmd_gpus(a: argparse.Namespace) -> Dict[str, Any]:
    return views.gpus_command(a.threshold)


def cmd_history(a: argparse.Namespace) -> Dict[str, Any]:
    spec = _spec(a)
    if a.job is not None and a.job not in spec.by_id:
        raise UnknownJobError(f"unknown job id {a.job!r}")
    return views.history(a.run_dir, a.job)


COMMANDS: Dict[str, Callable[[argparse.Namespace], Dict[str, Any]]] = {
    "version": cmd_version,
    "run": cmd_run,
    "status": cmd_status,
    "retry": cmd_retry,
    "cancel": cmd_cancel,
    "drain": cmd_drain,
    "logs": cmd_logs,
    "gpus": cmd_gpus,
    "history": cmd_history,
}


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; print its JSON answer; return the exit status."""
    try:
        a = build_parser().parse_args(argv)
        if not a.command:
            raise UsageError("no command given; one of: " + ", ".join(COMMANDS))
        out = COMMANDS[a.command](a)
        code = 0
    except AgentError as exc:
        out, code = exc.to_json(), exc.exit_code
    except KeyboardInterrupt:
        out, code = {"ok": False, "error": "internal", "message": "interrupted"}, 1
    except Exception as exc:  # the caller always gets one JSON object, even for a bug
        traceback.print_exc()
        out, code = {"ok": False, "error": "internal", "message": f"{type(exc).__name__}: {exc}"}, 1
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
