"""The MCP server: thin tool wrappers over :class:`~aris_queue_mcp.service.QueueService`.

Each tool validates its arguments (pydantic, from the signature), delegates to one service call and returns
the service's pydantic model, so clients see input and output schemas. Every error the model should read is
raised as ``ToolError`` with text that says what went wrong and what to call next. Logging goes to stderr:
stdout carries the protocol.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from . import __version__
from .errors import ArisQueueError, ManifestError
from .models import (
    CancelResult,
    DrainResult,
    ExpandResult,
    GpuStatus,
    LaunchResult,
    LogTail,
    QueueStatus,
    RetryResult,
    RunList,
    SummaryResult,
)
from .preconditions import PreconditionReport
from .service import QueueService, WaitUntil

log = logging.getLogger("aris_queue_mcp")

T = TypeVar("T")

INSTRUCTIONS = """\
aris-queue runs batches of ML experiments (grids of seeds x sizes, teacher -> student phases) on a GPU server
over SSH, or on this machine ("ssh: local"). A detached scheduler on the host packs jobs onto free GPUs,
retries CUDA OOM failures after a delay, chains phases and survives disconnects.
Typical flow: expand_grid (check the job list) -> check_preconditions -> launch_queue (returns run_id) ->
queue_status(run_id, wait_s=600, until="attention") until done (no polling loop needed) -> retry_job for stuck
jobs -> summarize. tail_log shows a job's output; cancel_job stops jobs; gpu_status shows a host's GPUs.
"""

ManifestArg = Annotated[
    str | dict[str, Any],
    Field(
        description="The manifest: YAML text, a path to a .yaml/.json file (relative to the project dir), "
        "or the manifest as an object. Keys: project, ssh, cwd, jobs | grid+template | phases, gpus, ..."
    ),
]
RunIdArg = Annotated[str, Field(description="Run id returned by launch_queue (see list_runs).")]
OptionalRunIdArg = Annotated[
    str | None, Field(description="Run id; omit for the most recent run of this project.")
]

READ_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True
)
LOCAL_ONLY = ToolAnnotations(
    read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
)


def _tool_error(exc: ArisQueueError) -> ToolError:
    if isinstance(exc, ManifestError):
        lines = "\n".join(f"- {e}" for e in exc.errors)
        return ToolError(
            f"The manifest has {len(exc.errors)} error(s); fix them all and call again:\n{lines}"
        )
    return ToolError(str(exc))


def _call(fn: Callable[[], T]) -> T:
    """Run one service call, turning our errors into tool errors the model can read and act on."""
    try:
        return fn()
    except ArisQueueError as exc:
        raise _tool_error(exc) from exc
    except ValueError as exc:  # argument checks below the service (e.g. a malformed run id)
        raise ToolError(f"invalid argument: {exc}") from exc


def _progress_bridge(ctx: Context | None) -> Callable[[float, float, str], None] | None:
    """A progress callback usable from the worker thread that runs a blocking service call."""
    if ctx is None:
        return None

    def report(done: float, total: float, message: str) -> None:
        try:
            anyio.from_thread.run(ctx.report_progress, done, total, message)
        except Exception:  # progress is best effort; never fail a launch because a notification failed
            log.debug("progress notification failed", exc_info=True)

    return report


def create_server(
    project_dir: Path | str | None = None,
    *,
    ssh_options: dict[str, Any] | None = None,
    service: QueueService | None = None,
) -> MCPServer:
    """Build the MCP server; ``project_dir`` holds ``experiment_queue/`` (default: ARIS_PROJECT_DIR, cwd)."""
    svc = service or QueueService(project_dir, ssh_options=ssh_options)
    mcp = MCPServer("aris-queue", instructions=INSTRUCTIONS, version=__version__)

    @mcp.tool(annotations=LOCAL_ONLY)
    def expand_grid(
        manifest: ManifestArg,
        offset: Annotated[int, Field(ge=0, description="Index of the first job to list.")] = 0,
        limit: Annotated[int, Field(ge=1, le=1000, description="How many jobs to list.")] = 50,
    ) -> ExpandResult:
        """Expand a manifest into its explicit job list (ids, commands, dependencies); runs nothing.

        Returns counts per phase and a page of jobs, or every validation error with its field path.
        """
        return _call(lambda: svc.expand_grid(manifest, offset=offset, limit=limit))

    @mcp.tool(annotations=READ_ONLY)
    def check_preconditions(manifest: ManifestArg) -> PreconditionReport:
        """Evaluate the manifest's preconditions on its host: which jobs are ready, which are blocked and why.

        Also reports host facts: python3 version, GPUs seen, whether cwd exists, free disk.
        """
        return _call(lambda: svc.check_preconditions(manifest))

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=True))
    async def launch_queue(
        ctx: Context,
        manifest: Annotated[
            str | dict[str, Any] | None,
            Field(description="The manifest (YAML text, a path, or an object). Omit with resume_run_id."),
        ] = None,
        dry_run: Annotated[bool, Field(description="Only show what would run; launch nothing.")] = False,
        force: Annotated[
            bool, Field(description="Start a new run even if this manifest's run is still active.")
        ] = False,
        ignore_preconditions: Annotated[
            bool, Field(description="Launch even when preconditions block some jobs.")
        ] = False,
        resume_run_id: Annotated[
            str | None,
            Field(description="Restart the scheduler of this existing run (after a crash, reboot or drain)."),
        ] = None,
    ) -> LaunchResult:
        """Validate, deploy the agent to the host and start the queue detached; returns run_id at once.

        Launching the same manifest while its run is active returns that run (status already_running)
        unless force=true. With resume_run_id, restarts that run's scheduler: running jobs are adopted,
        finished ones recorded, none started twice. Follow with queue_status(run_id, wait_s=...).
        """
        progress = _progress_bridge(ctx)
        if resume_run_id:
            rid = resume_run_id
            return await anyio.to_thread.run_sync(lambda: _call(lambda: svc.resume(rid, progress=progress)))
        if manifest is None:
            raise ToolError(
                "launch_queue needs a manifest (YAML text, a path or an object), or resume_run_id."
            )
        m = manifest
        return await anyio.to_thread.run_sync(
            lambda: _call(
                lambda: svc.launch_queue(
                    m,
                    dry_run=dry_run,
                    force=force,
                    ignore_preconditions=ignore_preconditions,
                    progress=progress,
                )
            )
        )

    @mcp.tool(annotations=READ_ONLY)
    def queue_status(
        run_id: OptionalRunIdArg = None,
        wait_s: Annotated[
            float,
            Field(
                ge=0,
                le=600,
                description="Wait up to this many seconds for the next state change (with since_seq) "
                "instead of polling in a loop.",
            ),
        ] = 0,
        since_seq: Annotated[
            int | None,
            Field(description="The `seq` of the last status you saw; wait_s waits for a newer one."),
        ] = None,
        until: Annotated[
            WaitUntil,
            Field(
                description="With wait_s: return on any 'change', on 'attention' (a job failed, got stuck "
                "or blocked, or the queue ended), or only when 'finished'. 'attention' or 'finished' cost "
                "the fewest calls."
            ),
        ] = "change",
        include_jobs: Annotated[bool, Field(description="Also list job rows (filtered, paged).")] = False,
        states: Annotated[
            list[str] | None,
            Field(
                description="With include_jobs: only these states (pending, running, completed, failed_oom, "
                "failed_other, stuck, blocked, cancelled)."
            ),
        ] = None,
        phase: Annotated[str | None, Field(description="With include_jobs: only this phase.")] = None,
        offset: Annotated[int, Field(ge=0, description="With include_jobs: first row.")] = 0,
        limit: Annotated[int, Field(ge=1, le=500, description="With include_jobs: rows per page.")] = 50,
    ) -> QueueStatus:
        """A compact digest of a run: counts per state, running jobs (GPU, elapsed), failures grouped by
        error signature with their last log lines, GPU readings and an ETA. Small even for 10,000 jobs."""
        return _call(
            lambda: svc.queue_status(
                run_id,
                include_jobs=include_jobs,
                states=states,
                phase=phase,
                offset=offset,
                limit=limit,
                wait_s=wait_s,
                since_seq=since_seq,
                until=until,
            )
        )

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=True))
    def retry_job(
        run_id: RunIdArg,
        job_id: Annotated[str | None, Field(description="The job to retry; omit with stuck/failed.")] = None,
        stuck: Annotated[bool, Field(description="Retry every stuck job.")] = False,
        failed: Annotated[bool, Field(description="Retry every failed or stuck job.")] = False,
    ) -> RetryResult:
        """Move a job (or all stuck / failed jobs) back to pending, unblocking their dependents.

        Restarts the scheduler if it had exited.
        """
        return _call(lambda: svc.retry_job(run_id, job_id, stuck=stuck, failed=failed))

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True, open_world_hint=True))
    def cancel_job(
        run_id: RunIdArg,
        job_id: Annotated[
            str | None, Field(description="The job to cancel; omit to cancel the WHOLE queue.")
        ] = None,
    ) -> CancelResult:
        """Cancel one job, or the whole queue: running jobs are killed (SIGTERM, then SIGKILL)."""
        return _call(lambda: svc.cancel_job(run_id, job_id))

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=True))
    def drain_queue(run_id: RunIdArg) -> DrainResult:
        """Start no new jobs; running jobs finish, then the scheduler exits (resume with launch_queue)."""
        return _call(lambda: svc.drain(run_id))

    @mcp.tool(annotations=READ_ONLY)
    def tail_log(
        run_id: RunIdArg,
        job_id: Annotated[str, Field(description="The job whose log to read.")],
        lines: Annotated[int, Field(ge=1, le=2000, description="How many last lines.")] = 50,
        attempt: Annotated[
            int | None, Field(ge=1, description="Only this attempt (default: the latest attempt).")
        ] = None,
    ) -> LogTail:
        """The last lines of a job's stdout+stderr."""
        return _call(lambda: svc.tail_log(run_id, job_id, lines=lines, attempt=attempt))

    @mcp.tool(annotations=READ_ONLY)
    def list_runs(
        refresh: Annotated[
            bool, Field(description="Ask each run's host for its live state (slower).")
        ] = False,
    ) -> RunList:
        """The runs launched from this project, newest first."""
        return _call(lambda: svc.list_runs(refresh=refresh))

    @mcp.tool(annotations=READ_ONLY)
    def gpu_status(
        host: Annotated[
            str | None, Field(description='"local", an ~/.ssh/config alias or user@host[:port].')
        ] = None,
        run_id: Annotated[str | None, Field(description="Or: the host of this run.")] = None,
    ) -> GpuStatus:
        """GPUs on a host as the scheduler sees them: memory used/total, which are usable and why not."""
        return _call(lambda: svc.gpu_status(host, run_id))

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=True))
    def summarize(run_id: OptionalRunIdArg = None) -> SummaryResult:
        """Write summary.md for a run (per-phase tables, OOM retries, stuck jobs, result files); return it."""
        return _call(lambda: svc.summarize(run_id))

    return mcp


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aris-queue-mcp``: serve MCP over stdio (or streamable HTTP)."""
    parser = argparse.ArgumentParser(prog="aris-queue-mcp", description="aris-queue MCP server")
    parser.add_argument(
        "--project-dir", help="where experiment_queue/ lives (default: ARIS_PROJECT_DIR or cwd)"
    )
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (streamable-http only)")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port (streamable-http only)")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--version", action="version", version=f"aris-queue-mcp {__version__}")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    server = create_server(args.project_dir)
    if args.transport == "stdio":
        server.run()
    else:
        server.run("streamable-http", host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
