"""``aris-queue``: the same operations as the MCP tools, for people at a terminal.

Human-readable output by default, ``--json`` for machines. A thin wrapper over ``QueueService``: it parses
arguments, calls one operation and prints the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from . import __version__, textview
from .errors import ArisQueueError, ManifestError
from .models import QueueStatus
from .service import QueueService

WAIT_SLICE_S = 30.0
"""Seconds one status call of ``launch --wait`` / ``status --follow`` blocks on the host for a change."""

JSON_JOB_LIMIT = 100_000
"""Job rows ``status --json`` returns when no --limit is given: all of them for any realistic queue."""


def follow(svc: QueueService, run_id: str, on_change: Callable[[QueueStatus], None]) -> QueueStatus:
    """Block until the run's queue is done, calling ``on_change`` with each new digest."""
    s = svc.queue_status(run_id)
    on_change(s)
    while not s.over:
        s = svc.queue_status(run_id, wait_s=WAIT_SLICE_S, since_seq=s.seq)
        if s.changed is not False:
            on_change(s)
    return s


def _progress_line(s: QueueStatus) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {textview.counts_line(s.counts)}", flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aris-queue",
        description="Run batches of ML experiments on GPU servers (or this machine) from a manifest.",
    )
    p.add_argument("--version", action="version", version=f"aris-queue {__version__}")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--project-dir", help="where experiment_queue/ lives (default: ARIS_PROJECT_DIR or cwd)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        return c

    c = cmd("expand", "expand a manifest into its job list (runs nothing)")
    c.add_argument("manifest", help="manifest file (YAML or JSON)")
    c.add_argument("--offset", type=int, default=0)
    c.add_argument("--limit", type=int, default=50)

    c = cmd("check", "evaluate the manifest's preconditions on its host")
    c.add_argument("manifest")

    c = cmd("launch", "deploy and start a queue (detached); prints the run id")
    c.add_argument("manifest")
    c.add_argument("--dry-run", action="store_true", help="show what would run; launch nothing")
    c.add_argument("--force", action="store_true", help="start a new run even if this manifest runs already")
    c.add_argument(
        "--ignore-preconditions", action="store_true", help="launch although some jobs are blocked"
    )
    c.add_argument("--wait", action="store_true", help="follow the queue until it is done, then summarize")
    c.add_argument(
        "--simulate-gpus",
        type=int,
        metavar="N",
        help="local runs only: run against N simulated 80 GB GPUs (a fake nvidia-smi), to try a manifest "
        "on a machine without GPUs",
    )

    c = cmd("resume", "restart the scheduler of an existing run (adopts running jobs)")
    c.add_argument("run_id")
    c.add_argument("--wait", action="store_true", help="follow the queue until it is done")

    c = cmd("status", "digest of a run (latest when RUN_ID is omitted)")
    c.add_argument("run_id", nargs="?")
    c.add_argument("--jobs", action="store_true", help="list job rows")
    c.add_argument("--state", action="append", help="with --jobs: only this state (repeatable)")
    c.add_argument("--phase", help="with --jobs: only this phase")
    c.add_argument("--offset", type=int, default=0)
    c.add_argument("--limit", type=int, help="rows per page (default 50; with --json all jobs)")
    c.add_argument("--wait", type=float, default=0, help="wait up to N seconds for the next change")
    c.add_argument("--since-seq", type=int, help="with --wait: the seq of the status you last saw")
    c.add_argument(
        "--until",
        choices=["change", "attention", "finished"],
        default="change",
        help="with --wait: return on any change (default), when a job needs attention, or when finished",
    )
    c.add_argument("--follow", action="store_true", help="print each change until the queue is done")

    c = cmd("retry", "move a job (or all stuck/failed jobs) back to pending")
    c.add_argument("run_id")
    c.add_argument("job", nargs="?")
    c.add_argument("--stuck", action="store_true", help="retry every stuck job")
    c.add_argument("--failed", action="store_true", help="retry every failed or stuck job")

    c = cmd("cancel", "cancel a job, or the whole queue with --all (running jobs are killed)")
    c.add_argument("run_id")
    c.add_argument("job", nargs="?")
    c.add_argument("--all", action="store_true", help="cancel the whole queue")

    c = cmd("drain", "start no new jobs; let running ones finish")
    c.add_argument("run_id")

    c = cmd("logs", "last lines of a job's log")
    c.add_argument("run_id")
    c.add_argument("job")
    c.add_argument("--tail", type=int, default=50)
    c.add_argument("--attempt", type=int)

    c = cmd("runs", "runs launched from this project, newest first")
    c.add_argument("--refresh", action="store_true", help="ask each host for the live state")

    c = cmd("gpus", "GPUs on a host as the scheduler sees them")
    c.add_argument("host", nargs="?", help='"local" or an ssh target (default: the latest run\'s host)')
    c.add_argument("--run", dest="run_id", help="the host of this run")

    c = cmd("summarize", "write and print summary.md of a run")
    c.add_argument("run_id", nargs="?")

    c = cmd("demo", "run a demo queue on this machine with simulated GPUs (no GPU or server needed)")
    c.add_argument("--dir", default=".demo", help="scratch directory for the demo (default: .demo)")
    return p


def _emit(args: argparse.Namespace, result: BaseModel, render: Callable[[Any], str]) -> None:
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(render(result))


def _run(args: argparse.Namespace, svc: QueueService) -> int:
    c = args.command
    if c == "expand":
        _emit(args, svc.expand_grid(args.manifest, offset=args.offset, limit=args.limit), textview.expand)
    elif c == "check":
        report = svc.check_preconditions(args.manifest)
        _emit(args, report, textview.preconditions)
        return 1 if report.blocked_count else 0
    elif c in ("launch", "resume"):
        if c == "launch":
            if args.simulate_gpus:
                _simulate_gpus(svc, args.manifest, args.simulate_gpus)
            progress = None if args.json else _launch_progress
            r = svc.launch_queue(
                args.manifest,
                dry_run=args.dry_run,
                force=args.force,
                ignore_preconditions=args.ignore_preconditions,
                progress=progress,
            )
        else:
            r = svc.resume(args.run_id)
        _emit(args, r, textview.launch)
        if args.wait and r.status != "dry_run":
            final = follow(svc, r.run_id, (lambda s: None) if args.json else _progress_line)
            summary = svc.summarize(r.run_id)
            if args.json:
                print(final.model_dump_json(indent=2))
            else:
                print(summary.markdown)
                print(f"(written to {summary.path})")
            return 0 if not _unfinished(final) else 1
    elif c == "status":
        if args.follow:
            final = follow(svc, args.run_id or svc.registry.latest().run_id, _progress_line)
            _emit(args, final, textview.status)
        else:
            # Machines reading --json get the job table too (id, status, attempts), all of it by default.
            rows = args.jobs or args.json
            limit = args.limit if args.limit is not None else (JSON_JOB_LIMIT if args.json else 50)
            s = svc.queue_status(
                args.run_id,
                include_jobs=rows,
                states=args.state,
                phase=args.phase,
                offset=args.offset,
                limit=limit,
                wait_s=args.wait,
                since_seq=args.since_seq,
                until=args.until,
            )
            _emit(args, s, textview.status)
    elif c == "retry":
        _emit(
            args, svc.retry_job(args.run_id, args.job, stuck=args.stuck, failed=args.failed), textview.retry
        )
    elif c == "cancel":
        if not args.job and not args.all:
            raise ArisQueueError("name a JOB to cancel, or pass --all to cancel the whole queue")
        _emit(args, svc.cancel_job(args.run_id, args.job), textview.cancel)
    elif c == "drain":
        _emit(args, svc.drain(args.run_id), lambda r: r.message)
    elif c == "logs":
        _emit(args, svc.tail_log(args.run_id, args.job, lines=args.tail, attempt=args.attempt), textview.logs)
    elif c == "runs":
        _emit(args, svc.list_runs(refresh=args.refresh), textview.runs)
    elif c == "gpus":
        _emit(args, svc.gpu_status(args.host, args.run_id), textview.gpus)
    elif c == "summarize":
        _emit(args, svc.summarize(args.run_id), lambda r: f"{r.markdown}\n(written to {r.path})")
    return 0


def _simulate_gpus(svc: QueueService, manifest: str, count: int) -> None:
    """Point this process (and so the local agent and its jobs) at ``count`` simulated GPUs."""
    from . import simgpu

    plan = svc.expand_grid(manifest, limit=1)
    if plan.target != "local":
        raise ArisQueueError(f"--simulate-gpus is for local runs only; this manifest targets {plan.target}")
    if count < 1:
        raise ArisQueueError("--simulate-gpus needs at least 1 GPU")
    os.environ.update(simgpu.install(svc.project_dir / "experiment_queue" / ".simgpu", gpus=count))


def _unfinished(s: QueueStatus) -> bool:
    return any(s.counts.get(k) for k in ("stuck", "blocked", "failed_oom", "failed_other", "pending"))


def _launch_progress(done: float, total: float, message: str) -> None:
    print(f"  [{int(done)}/{int(total)}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aris-queue``; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo  # the demo pulls in the GPU simulator; keep it off other commands' path

        return run_demo(args.dir, project_dir=args.project_dir)
    svc = QueueService(args.project_dir)
    try:
        return _run(args, svc)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(
                json.dumps(
                    {"ok": False, "errors": [{"path": e.path, "message": e.message} for e in exc.errors]}
                )
            )
        return 2
    except ArisQueueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": type(exc).__name__, "message": str(exc)}))
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted; the queue keeps running on its host (aris-queue status to check).", file=sys.stderr
        )
        return 130
    finally:
        svc.close()


if __name__ == "__main__":
    raise SystemExit(main())
