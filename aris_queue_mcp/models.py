"""Results of the service operations; they double as the MCP tools' output schemas.

Models that mirror agent output (``docs/protocol.md`` §4) ignore fields they do not know, so a newer
agent that adds fields does not break an older MCP side.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .preconditions import PreconditionReport

ACTIVE_STATES = ("pending", "running", "failed_oom", "failed_other")
"""States in which a job still changes without anyone acting (it runs, waits to run, or awaits its retry)."""

ATTENTION_STATES = ("failed_oom", "failed_other", "stuck", "blocked")
"""States that deserve a look: a failure (retried or not) or a job that will not start."""


def queue_over(counts: dict[str, int], scheduler_alive: bool) -> bool:
    """True when nothing will change without a person: no active job, or no scheduler to move them."""
    return not any(counts.get(k) for k in ACTIVE_STATES) or not scheduler_alive


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- expand / plan


class JobPreview(_Model):
    """One job of an expanded grid, as it will be sent to the agent."""

    id: str = Field(description="Job id, unique in the run.")
    phase: str | None = Field(
        default=None, description="Phase name, or null when the manifest has no phases."
    )
    cmd: str = Field(description="Fully rendered command; only ${GPU} is left for the agent.")
    depends_on: list[str] = Field(default_factory=list, description="Ids of jobs that must complete first.")
    output_check: str | None = Field(
        default=None, description="Glob (relative to cwd) that must exist after."
    )
    gpus_per_job: int = Field(default=1, description="GPUs this job needs (0 = CPU job).")


class ExpandResult(_Model):
    """The explicit job list a manifest expands to (what launch_queue would run), paged for huge grids."""

    project: str = Field(description="Project name from the manifest.")
    target: str = Field(description='Where the jobs would run: "local" or the ssh target.')
    total: int = Field(description="Number of jobs in the whole grid.")
    per_phase: dict[str, int] = Field(description='Jobs per phase ("" for jobs without a phase).')
    jobs: list[JobPreview] = Field(description="The jobs shown (a page of the grid).")
    offset: int = Field(default=0, description="Index of the first job shown.")
    jobs_shown: int = Field(description="How many jobs are in `jobs`.")
    truncated: bool = Field(
        description="True when more jobs exist than shown: call again with a larger offset."
    )


# --- agent digest


class AgentInfo(_Model):
    """The remote scheduler process of a run."""

    alive: bool = Field(default=False, description="True when the scheduler holds the run lock right now.")
    pid: int | None = Field(default=None, description="Scheduler process id on the host.")
    state: str | None = Field(
        default=None, description="starting | running | draining | finished | stopped (null: never started)."
    )
    heartbeat_at: float | None = Field(default=None, description="Last heartbeat, Unix seconds.")
    version: str | None = Field(default=None, description="Agent version.")


class RunningJob(_Model):
    """A job running now."""

    id: str = Field(description="Job id.")
    phase: str | None = Field(default=None, description="Phase name.")
    gpus: list[int] = Field(default_factory=list, description="GPU indices given to the job.")
    attempt: int | None = Field(default=None, description="Attempt number (1 = first try).")
    started_at: float | None = Field(default=None, description="Start of this attempt, Unix seconds.")
    elapsed_s: float | None = Field(default=None, description="Seconds since the attempt started.")


class FailureGroup(_Model):
    """Failed jobs grouped by the error signature found in their logs."""

    signature: str = Field(description='Error signature, e.g. "torch.OutOfMemoryError" or "exit 1".')
    count: int = Field(description="Jobs with this signature.")
    states: dict[str, int] = Field(default_factory=dict, description="How many of them are in each state.")
    jobs: list[str] = Field(default_factory=list, description="Up to 5 job ids.")
    last_lines: list[str] = Field(default_factory=list, description="Last log lines of one of them.")


class GpuInfo(_Model):
    """One GPU as read by nvidia-smi on the host."""

    index: int = Field(description="GPU index.")
    uuid: str | None = Field(default=None, description="GPU UUID.")
    name: str | None = Field(default=None, description="Model name.")
    memory_used_mib: int | None = Field(default=None, description="Memory in use, MiB.")
    memory_total_mib: int | None = Field(default=None, description="Total memory, MiB.")
    usable: bool | None = Field(default=None, description="Whether the scheduler may place a job on it now.")
    reason: str | None = Field(default=None, description="Why it is not usable (or who holds it).")


class JobRow(_Model):
    """One job's state in the queue."""

    id: str = Field(description="Job id.")
    phase: str | None = Field(default=None, description="Phase name.")
    status: str = Field(
        description="pending|running|completed|failed_oom|failed_other|stuck|blocked|cancelled."
    )
    attempts: int = Field(default=0, description="Attempts started so far.")
    gpus: list[int] | None = Field(default=None, description="GPUs of the current/last attempt.")
    exit_code: int | None = Field(default=None, description="Exit code of the last attempt.")
    reason: str | None = Field(default=None, description="Why the job is in this state.")
    started_at: float | None = Field(default=None, description="Start of the last attempt, Unix seconds.")
    ended_at: float | None = Field(default=None, description="End of the last attempt, Unix seconds.")
    outputs: list[str] | None = Field(default=None, description="Result files found by output_check, if any.")


class QueueStatus(_Model):
    """A compact digest of a run's queue, plus what to do next."""

    run_id: str = Field(description="Run id.")
    project: str | None = Field(default=None, description="Project name.")
    host: str = Field(description="Host the run lives on.")
    seq: int = Field(default=0, description="Journal sequence number; pass as since_seq to wait for changes.")
    agent: AgentInfo = Field(default_factory=AgentInfo, description="The remote scheduler.")
    total: int = Field(default=0, description="Number of jobs.")
    counts: dict[str, int] = Field(default_factory=dict, description="Jobs per state.")
    running: list[RunningJob] = Field(default_factory=list, description="Running jobs (at most 20).")
    running_more: int = Field(default=0, description="Running jobs not listed in `running`.")
    failures: list[FailureGroup] = Field(default_factory=list, description="Failures grouped by signature.")
    gpus: list[GpuInfo] = Field(default_factory=list, description="GPU readings of the host.")
    gpu_error: str | None = Field(default=None, description="Why no GPU could be read, if so.")
    eta_s: float | None = Field(default=None, description="Estimated seconds until the queue is done.")
    started_at: float | None = Field(default=None, description="Run start, Unix seconds.")
    finished_at: float | None = Field(default=None, description="Run end, Unix seconds (null while running).")
    jobs: list[JobRow] | None = Field(default=None, description="Job rows (only with include_jobs).")
    jobs_matching: int | None = Field(
        default=None, description="Jobs matching the filters (with include_jobs)."
    )
    offset: int | None = Field(default=None, description="Offset of the first job row.")
    limit: int | None = Field(default=None, description="Page size of job rows.")
    changed: bool | None = Field(
        default=None, description="With since_seq: true when the queue changed since that seq."
    )
    next_call_hint: str = Field(default="", description="One line: what to do next.")

    @property
    def over(self) -> bool:
        """Nothing will change without a person (see :func:`queue_over`)."""
        return queue_over(self.counts, self.agent.alive)


# --- operations


class LaunchResult(_Model):
    """Outcome of launch_queue or resume."""

    run_id: str = Field(description="Run id (use it in every later call).")
    status: Literal["started", "already_running", "resumed", "dry_run"] = Field(
        description="started: new run; already_running: this manifest runs already; resumed: scheduler "
        "restarted; dry_run: nothing was launched."
    )
    host: str = Field(description="Host the run lives on.")
    remote_run_dir: str | None = Field(default=None, description="Run directory on the host.")
    total_jobs: int = Field(description="Jobs in the run.")
    agent_pid: int | None = Field(default=None, description="Scheduler process id on the host.")
    message: str = Field(description="What happened and what to do next.")
    plan: ExpandResult | None = Field(default=None, description="dry_run only: the expanded jobs.")
    preconditions: PreconditionReport | None = Field(
        default=None, description="dry_run only: the precondition report (host facts, blocked jobs)."
    )


class SkippedJob(_Model):
    """A job a control command did not touch, and why."""

    id: str = Field(description="Job id.")
    reason: str = Field(description="Why it was skipped.")


class RetryResult(_Model):
    """Outcome of retry_job."""

    run_id: str = Field(description="Run id.")
    retried: list[str] = Field(description="Jobs moved back to pending (at most 100 listed).")
    retried_count: int = Field(default=0, description="How many jobs were moved back to pending.")
    skipped: list[SkippedJob] = Field(default_factory=list, description="Jobs not retried, with reasons.")
    agent_running: bool = Field(description="Whether a scheduler was running when the retry was applied.")
    agent_restarted: bool = Field(
        default=False, description="True when the scheduler had exited and was restarted."
    )
    agent_pid: int | None = Field(default=None, description="Pid of the restarted scheduler.")
    message: str = Field(description="What happened and what to do next.")


class CancelResult(_Model):
    """Outcome of cancel_job."""

    run_id: str = Field(description="Run id.")
    cancelled: list[str] = Field(description="Jobs cancelled; running ones are killed (at most 100 listed).")
    cancelled_count: int = Field(default=0, description="How many jobs were cancelled.")
    skipped: list[SkippedJob] = Field(default_factory=list, description="Jobs not cancelled, with reasons.")
    message: str = Field(description="What happened.")


class DrainResult(_Model):
    """Outcome of drain: no new jobs start; running ones finish."""

    run_id: str = Field(description="Run id.")
    state: str = Field(description='Scheduler state, normally "draining".')
    message: str = Field(description="What happens now.")


class LogTail(_Model):
    """The end of one job's log."""

    run_id: str = Field(description="Run id.")
    job: str = Field(description="Job id.")
    path: str | None = Field(default=None, description="Log file on the host.")
    attempt: int | None = Field(default=None, description="Attempt shown (null: the whole log).")
    lines: list[str] = Field(description="Last lines of the log.")
    truncated: bool = Field(default=False, description="True when earlier lines were left out.")


class RunInfo(_Model):
    """One run of the local registry."""

    run_id: str = Field(description="Run id.")
    project: str = Field(description="Project name.")
    target: str = Field(description='"local" or the ssh target.')
    remote_run_dir: str = Field(description="Run directory on the host.")
    created_at: str = Field(description="When the run was created (ISO 8601, UTC).")
    launched_at: str | None = Field(default=None, description="When the scheduler was first started.")
    total_jobs: int | None = Field(default=None, description="Jobs in the run.")
    state: str | None = Field(
        default=None, description="With refresh: scheduler state, or 'unreachable: ...' when the host failed."
    )
    counts: dict[str, int] | None = Field(default=None, description="With refresh: jobs per state.")


class RunList(_Model):
    """Runs of the local registry, newest first."""

    project_dir: str = Field(description="Directory holding experiment_queue/.")
    runs: list[RunInfo] = Field(description="Runs, newest first.")


class GpuStatus(_Model):
    """GPUs of a host as the agent sees them."""

    host: str = Field(description="Host read.")
    gpus: list[GpuInfo] = Field(description="One entry per GPU.")
    error: str | None = Field(default=None, description="Why nvidia-smi gave nothing, if so.")


class SummaryResult(_Model):
    """The markdown report of a run, also written to experiment_queue/<run_id>/summary.md."""

    run_id: str = Field(description="Run id.")
    path: str = Field(description="Local path of summary.md.")
    markdown: str = Field(description="The report.")
