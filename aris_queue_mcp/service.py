"""The operations behind the MCP tools and the CLI, as plain functions on :class:`QueueService`.

Flow: manifest → grid → run spec → (registry, deploy) → agent; later calls reach the agent of a recorded run
through ``client``. Nothing here knows about MCP or argparse; errors are ``ArisQueueError`` subclasses whose
messages say what to do next.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from . import deploy
from .client import AgentClient
from .errors import AgentError, ArisQueueError, TransportError
from .manifest import Manifest, load_manifest
from .models import (
    ACTIVE_STATES,
    ATTENTION_STATES,
    CancelResult,
    DrainResult,
    ExpandResult,
    GpuStatus,
    JobPreview,
    LaunchResult,
    LogTail,
    QueueStatus,
    RetryResult,
    RunInfo,
    RunList,
    SummaryResult,
    queue_over,
)
from .preconditions import PreconditionReport
from .preconditions import check_preconditions as _check_preconditions
from .runs import RunRecord, RunRegistry, utc_now_iso
from .runspec import RunSpec, build_run_spec, manifest_target
from .summary import next_call_hint, render_summary
from .transport import TransportPool
from .transport.base import Transport

ProgressFn = Callable[[float, float, str], None]

DEFAULT_REMOTE_ROOT = "~/.aris_queue"
"""Agent root on a host when no run or manifest names one (gpu_status on a bare target)."""

EXPAND_PAGE = 200
"""Jobs listed by expand_grid / a dry run before the list is truncated."""

LIST_CAP = 100
"""Job ids listed in a retry/cancel result; counts give the whole number (a 10,000-job cancel stays small)."""

REFRESH_TIMEOUT = 15.0
"""Seconds list_runs(refresh=True) waits for each run's agent."""

_LAUNCH_STEPS = 8.0


class QueueService:
    """Expand, check, launch and follow runs of the project in ``project_dir``.

    ``pool`` shares connections with the caller; ``ssh_options`` go to every SSH transport opened here
    (e.g. ``ssh_config_path``, ``known_hosts_paths``).
    """

    def __init__(
        self,
        project_dir: Path | str | None = None,
        *,
        pool: TransportPool | None = None,
        ssh_options: dict[str, Any] | None = None,
    ) -> None:
        self.registry = RunRegistry(project_dir)
        self.project_dir = self.registry.project_dir
        self._own_pool = pool is None
        self.pool = pool if pool is not None else TransportPool(**(ssh_options or {}))

    def close(self) -> None:
        """Close the connections this service opened (not those of a pool passed in)."""
        if self._own_pool:
            self.pool.close_all()

    # --- manifest ------------------------------------------------------------------------------------------

    def expand_grid(
        self,
        manifest: str | os.PathLike[str] | Mapping[str, Any],
        *,
        offset: int = 0,
        limit: int = EXPAND_PAGE,
    ) -> ExpandResult:
        """The explicit job list of a manifest (YAML text, a path, or a mapping); nothing runs."""
        m = self._load(manifest)
        return _expand_result(m, build_run_spec(m), offset, limit)

    def check_preconditions(self, manifest: str | os.PathLike[str] | Mapping[str, Any]) -> PreconditionReport:
        """Evaluate the manifest's preconditions on its host: which jobs could start, which are blocked."""
        m = self._load(manifest)
        return _check_preconditions(m, build_run_spec(m), self._transport(manifest_target(m)))

    # --- launch / resume -----------------------------------------------------------------------------------

    def launch_queue(
        self,
        manifest: str | os.PathLike[str] | Mapping[str, Any],
        *,
        dry_run: bool = False,
        force: bool = False,
        ignore_preconditions: bool = False,
        progress: ProgressFn | None = None,
    ) -> LaunchResult:
        """Validate, expand, check, deploy and start a run; return at once (the agent runs detached)."""
        say = _stepper(progress)
        say(0, "validating manifest")
        m = self._load(manifest)
        spec = build_run_spec(m)
        target = manifest_target(m)
        total = len(spec.jobs)
        if dry_run:
            host = self._transport(target)
            report = _check_preconditions(m, spec, host)
            return LaunchResult(
                run_id=spec.run_id,
                status="dry_run",
                host=host.label,
                total_jobs=total,
                plan=_expand_result(m, spec, 0, EXPAND_PAGE),
                preconditions=report,
                message=f"dry run: {total} jobs would run on {host.label}, {report.blocked_count} blocked by "
                "preconditions; nothing was launched. Call launch_queue without dry_run to start.",
            )
        if not force:
            running = self._running_twin(spec.manifest_sha256, progress)
            if running is not None:
                return running

        host = self._transport(target)
        say(1, f"checking preconditions on {host.label}")
        report = _check_preconditions(m, spec, host)
        if report.blocked_count and not ignore_preconditions:
            raise ArisQueueError(_blocked_message(report, host.label))

        say(2, f"preparing {host.label}")
        root = deploy.expand_remote_path(host, m.remote_root)
        record = RunRecord(
            run_id=spec.run_id,
            project=spec.project,
            target=target,
            remote_root=root,
            remote_run_dir=f"{root}/runs/{spec.run_id}",
            python=m.python,
            manifest_sha256=spec.manifest_sha256,
            total_jobs=total,
            created_at=utc_now_iso(),
            local=target == "local",
        )
        self.registry.create(record, m.source_text, spec.to_json())
        try:
            install = deploy.ensure_agent(
                host, root, m.python, progress=lambda d, t, msg: say(2 + 3 * d / t, msg)
            )
            record.agent_path, record.agent_sha256 = install.path, install.sha256
            self.registry.save(record)
            say(5, f"creating {record.remote_run_dir}")
            deploy.create_run_dir(host, install, spec.run_id, spec.to_json())
        except BaseException:
            # Nothing runs yet: forget the run, so that fixing the cause and launching again starts clean.
            self.registry.remove(spec.run_id)
            raise
        say(6, "starting the scheduler")
        try:
            pid = deploy.start_agent(self._client(record), record.remote_run_dir)
        except AgentError as exc:
            # A start request retried after a dropped connection finds the scheduler it already started.
            if exc.code != "already_running":
                raise
            pid = int((self._client(record).status(record.remote_run_dir).get("agent") or {}).get("pid") or 0)
        record.launched_at = utc_now_iso()
        self.registry.save(record)
        say(_LAUNCH_STEPS, f"run {spec.run_id} started on {host.label}")
        return LaunchResult(
            run_id=spec.run_id,
            status="started",
            host=host.label,
            remote_run_dir=record.remote_run_dir,
            total_jobs=total,
            agent_pid=pid,
            message=f"started {total} jobs on {host.label} (scheduler pid {pid}). Follow with "
            f"queue_status(run_id={spec.run_id!r}, wait_s=60).",
        )

    def resume(self, run_id: str, *, progress: ProgressFn | None = None) -> LaunchResult:
        """Restart a recorded run's scheduler (it adopts the jobs it finds); re-deploy the agent if needed."""
        say = _stepper(progress)
        record = self.registry.load(run_id)
        host = self._transport(record.target)
        say(0, f"checking the agent on {host.label}")
        install = deploy.ensure_agent(
            host, record.remote_root, record.python, progress=lambda d, t, msg: say(3 * d / t, msg)
        )
        if (record.agent_path, record.agent_sha256) != (install.path, install.sha256):
            record.agent_path, record.agent_sha256 = install.path, install.sha256
            self.registry.save(record)
        client = self._client(record)
        try:
            digest = client.status(record.remote_run_dir)
        except AgentError as exc:
            if exc.code != "no_run_dir":
                raise
            # The run never got its directory (or it was deleted): rebuild it from the recorded spec.
            deploy.create_run_dir(host, install, run_id, self.registry.spec_json(run_id))
            digest = client.status(record.remote_run_dir)
        base = dict(
            run_id=run_id,
            host=host.label,
            remote_run_dir=record.remote_run_dir,
            total_jobs=digest.get("total", record.total_jobs),
        )
        agent = digest.get("agent") or {}
        if agent.get("alive"):
            return LaunchResult(
                **base,
                status="already_running",
                agent_pid=agent.get("pid"),
                message=f"the scheduler of {run_id} is already running on {host.label}.",
            )
        say(4, "starting the scheduler")
        try:
            pid = deploy.start_agent(client, record.remote_run_dir)
        except AgentError as exc:
            if exc.code != "already_running":
                raise
            return LaunchResult(
                **base,
                status="already_running",
                message=f"another scheduler of {run_id} took the run lock on {host.label}.",
            )
        record.resumed_at.append(utc_now_iso())
        self.registry.save(record)
        say(_LAUNCH_STEPS, "scheduler restarted")
        return LaunchResult(
            **base,
            status="resumed",
            agent_pid=pid,
            message=f"scheduler of {run_id} restarted on {host.label} (pid {pid}); it adopts jobs still "
            f"running and counts vanished ones as lost. Follow with "
            f"queue_status(run_id={run_id!r}, wait_s=60).",
        )

    # --- follow ---------------------------------------------------------------------------------------------

    def queue_status(
        self,
        run_id: str | None = None,
        *,
        include_jobs: bool = False,
        states: Iterable[str] | None = None,
        phase: str | None = None,
        offset: int = 0,
        limit: int = 50,
        wait_s: float = 0,
        since_seq: int | None = None,
        until: WaitUntil = "change",
    ) -> QueueStatus:
        """The run's digest (latest run when ``run_id`` is None).

        ``wait_s`` blocks on the host until something happens after ``since_seq`` (default: now): with
        ``until="change"`` any state change, ``"attention"`` more jobs failed, stuck or blocked than at the
        call's start (without ``since_seq``: any such job), or the queue ending, ``"finished"`` only the queue
        ending. One call instead of a polling loop.
        """
        record = self.registry.load(run_id) if run_id else self.registry.latest()
        states = list(states or [])

        def fetch(wait: float | None, since: int | None, jobs: bool = include_jobs) -> dict[str, Any]:
            return self._agent(
                record,
                lambda c: c.status(
                    record.remote_run_dir,
                    jobs=jobs,
                    states=states,
                    phase=phase,
                    offset=offset if include_jobs else None,
                    limit=limit if include_jobs else None,
                    wait=wait,
                    since_seq=since,
                ),
            )

        if not wait_s or until == "change":
            return self._to_status(record, fetch(wait_s or None, since_seq), since_seq)
        # The waiting rounds read the small digest only (served from the agent's cache); the job table, when
        # asked for, is read once at the end.
        deadline = time.monotonic() + wait_s
        digest = fetch(None, None, jobs=False)
        # Without since_seq the caller has seen nothing yet: jobs that need attention now are news.
        baseline = _attention(digest) if since_seq is not None else 0
        since = since_seq if since_seq is not None else int(digest.get("seq") or 0)
        while not _wait_over(digest, until, baseline) and (left := deadline - time.monotonic()) > 0.05:
            digest = fetch(left, since, jobs=False)
            since = max(since, int(digest.get("seq") or 0))
        if include_jobs:
            digest = fetch(None, None)
        return self._to_status(record, digest, since_seq)

    def tail_log(self, run_id: str, job_id: str, lines: int = 50, attempt: int | None = None) -> LogTail:
        """The last ``lines`` lines of a job's log (one attempt, or the whole log)."""
        record = self.registry.load(run_id)
        data = self._agent(
            record, lambda c: c.logs(record.remote_run_dir, job_id, tail=lines, attempt=attempt)
        )
        return LogTail(run_id=record.run_id, **{"job": job_id, **_strip(data)})

    def list_runs(self, *, refresh: bool = False) -> RunList:
        """Runs of this project, newest first; ``refresh`` asks each run's agent for its live state."""
        infos = []
        for r in self.registry.list():
            info = RunInfo.model_validate(r.model_dump())  # RunInfo keeps the fields it knows
            if refresh:
                try:
                    d = self._agent(r, lambda c, r=r: c.status(r.remote_run_dir), timeout=REFRESH_TIMEOUT)
                    agent = d.get("agent") or {}
                    info.state = (
                        agent.get("state")
                        if agent.get("alive") or not agent.get("state")
                        else (
                            "finished"
                            if d.get("finished_at")
                            else f"{agent.get('state')} (scheduler not running)"
                        )
                    )
                    info.counts = {k: v for k, v in (d.get("counts") or {}).items() if v}
                except ArisQueueError as exc:
                    info.state = f"unreachable: {str(exc).splitlines()[0][:200]}"
            infos.append(info)
        return RunList(project_dir=str(self.project_dir), runs=infos)

    def gpu_status(self, target: str | None = None, run_id: str | None = None) -> GpuStatus:
        """GPUs of ``target`` ("local" or an ssh alias) or of the host of ``run_id`` (default: latest)."""
        record: RunRecord | None = None
        if run_id:
            record = self.registry.load(run_id)
        elif target is None:
            runs = self.registry.list()
            record = runs[0] if runs else None
            target = "local" if record is None else None
        else:
            record = next((r for r in self.registry.list() if r.target == target), None)
        if record is not None:
            data = self._agent(record, lambda c: c.gpus())
            host = self._transport(record.target).label
        else:
            assert target is not None
            t = self._transport(target)
            install = deploy.ensure_agent(t, DEFAULT_REMOTE_ROOT)
            data = AgentClient(t, install.path).gpus()
            host = t.label
        return GpuStatus(host=host, gpus=data.get("gpus") or [], error=data.get("error"))

    def summarize(self, run_id: str | None = None) -> SummaryResult:
        """Write ``experiment_queue/<run_id>/summary.md`` (tables per phase, failures, outputs, timeline)."""
        record = self.registry.load(run_id) if run_id else self.registry.latest()
        status = self._all_jobs_status(record)
        events = self._agent(record, lambda c: c.history(record.remote_run_dir)).get("events") or []
        markdown = render_summary(record, status, events)
        path = self.registry.write_summary(record.run_id, markdown)
        return SummaryResult(run_id=record.run_id, path=str(path), markdown=markdown)

    # --- control --------------------------------------------------------------------------------------------

    def retry_job(
        self, run_id: str, job_id: str | None = None, *, stuck: bool = False, failed: bool = False
    ) -> RetryResult:
        """Move a job (or all stuck / failed ones) back to pending; restart the scheduler if it had exited."""
        if not job_id and not stuck and not failed:
            raise ArisQueueError("retry_job needs job_id, or stuck=true / failed=true to retry a whole group")
        record = self.registry.load(run_id)
        jobs = [job_id] if job_id else []
        data = self._agent(record, lambda c: c.retry(record.remote_run_dir, jobs, stuck=stuck, failed=failed))
        retried, running = list(data.get("retried") or []), bool(data.get("agent_running"))
        pid, restarted = None, False
        if retried and not running:
            try:
                pid = deploy.start_agent(self._client(record), record.remote_run_dir)
                restarted = True
                record.resumed_at.append(utc_now_iso())
                self.registry.save(record)
            except AgentError as exc:
                if exc.code != "already_running":
                    raise
        what = f"{len(retried)} job(s) back to pending" if retried else "nothing retried"
        if restarted:
            what += f"; the scheduler had exited and was restarted (pid {pid})"
        return RetryResult(
            run_id=run_id,
            retried=retried[:LIST_CAP],
            retried_count=len(retried),
            skipped=(data.get("skipped") or [])[:LIST_CAP],
            agent_running=running,
            agent_restarted=restarted,
            agent_pid=pid,
            message=f"{what}. Follow with queue_status(run_id={run_id!r}, wait_s=60).",
        )

    def cancel_job(self, run_id: str, job_id: str | None = None) -> CancelResult:
        """Cancel one job, or the whole queue when ``job_id`` is None (running jobs are killed)."""
        record = self.registry.load(run_id)
        data = self._agent(record, lambda c: c.cancel(record.remote_run_dir, [job_id] if job_id else []))
        cancelled = list(data.get("cancelled") or [])
        scope = f"job {job_id}" if job_id else "the whole queue"
        return CancelResult(
            run_id=run_id,
            cancelled=cancelled[:LIST_CAP],
            cancelled_count=len(cancelled),
            skipped=(data.get("skipped") or [])[:LIST_CAP],
            message=f"cancelled {len(cancelled)} job(s) of {scope}; retry_job can bring them back.",
        )

    def drain(self, run_id: str) -> DrainResult:
        """Start no new jobs; running ones finish, then the scheduler exits."""
        record = self.registry.load(run_id)
        data = self._agent(record, lambda c: c.drain(record.remote_run_dir))
        return DrainResult(
            run_id=run_id,
            state=str(data.get("state") or "draining"),
            message="no new jobs start; running ones finish. resume(run_id) starts pending jobs again.",
        )

    # --- plumbing -------------------------------------------------------------------------------------------

    def _load(self, manifest: str | os.PathLike[str] | Mapping[str, Any]) -> Manifest:
        if _is_path_like(manifest):
            path = Path(os.fspath(manifest)).expanduser()  # type: ignore[arg-type]
            # A relative path names a file of the project, whatever the server's working directory.
            if not path.is_absolute() and (self.project_dir / path).is_file():
                path = self.project_dir / path
            return load_manifest(path)
        return load_manifest(manifest, base_dir=self.project_dir)

    def _transport(self, target: str) -> Transport:
        return self.pool.get(target)

    def _client(self, record: RunRecord, timeout: float | None = None) -> AgentClient:
        if not record.agent_path:
            raise ArisQueueError(
                f"run {record.run_id} was never deployed to {record.target}: "
                f"call resume(run_id={record.run_id!r})"
            )
        client = AgentClient(self._transport(record.target), record.agent_path, record.python)
        if timeout:
            client.timeout = timeout
        return client

    def _agent(
        self, record: RunRecord, call: Callable[[AgentClient], dict[str, Any]], timeout: float | None = None
    ) -> dict[str, Any]:
        """Run ``call`` against the run's agent; re-deploy the agent once if its file vanished."""
        try:
            return call(self._client(record, timeout))
        except AgentError as exc:
            if exc.code != "agent_missing":
                raise
        install = deploy.ensure_agent(self._transport(record.target), record.remote_root, record.python)
        record.agent_path, record.agent_sha256 = install.path, install.sha256
        self.registry.save(record)
        return call(self._client(record, timeout))

    def _to_status(self, record: RunRecord, digest: dict[str, Any], since_seq: int | None) -> QueueStatus:
        status = QueueStatus.model_validate({**_strip(digest), "host": self._transport(record.target).label})
        if not status.run_id:
            status.run_id = record.run_id
        if since_seq is not None:
            status.changed = status.seq > since_seq
        status.next_call_hint = next_call_hint(status)
        return status

    def _all_jobs_status(self, record: RunRecord) -> QueueStatus:
        rows: list[dict[str, Any]] = []
        digest: dict[str, Any] = {}
        while True:
            digest = self._agent(
                record, lambda c: c.status(record.remote_run_dir, jobs=True, offset=len(rows), limit=1000)
            )
            page = digest.get("jobs") or []
            rows.extend(page)
            if not page or len(rows) >= int(digest.get("jobs_matching") or 0):
                break
        digest["jobs"], digest["offset"], digest["limit"] = rows, 0, len(rows)
        return self._to_status(record, digest, None)

    def _running_twin(self, manifest_sha256: str, progress: ProgressFn | None = None) -> LaunchResult | None:
        """The newest recorded run of the same manifest text while it still has work to do.

        Its scheduler alive → that run, ``already_running``. Its scheduler gone (crash, reboot, kill) with
        jobs still pending or running → that run resumed: a second copy would start its jobs twice.
        """
        for record in self.registry.find_by_manifest_sha(manifest_sha256)[:1]:
            if not record.agent_path:
                continue
            try:
                d = self._client(record).status(record.remote_run_dir)
            except (AgentError, TransportError):
                continue
            agent = d.get("agent") or {}
            if d.get("finished_at"):
                continue
            if agent.get("alive"):
                host = self._transport(record.target).label
                return LaunchResult(
                    run_id=record.run_id,
                    status="already_running",
                    host=host,
                    remote_run_dir=record.remote_run_dir,
                    total_jobs=int(d.get("total") or record.total_jobs),
                    agent_pid=agent.get("pid"),
                    message=f"this manifest already runs as {record.run_id} on {host}; nothing new was "
                    "launched. Follow it with queue_status, or pass force=true to start a second run.",
                )
            counts = d.get("counts") or {}
            if any(counts.get(k) for k in ACTIVE_STATES):
                return self.resume(record.run_id, progress=progress)
        return None


# --- helpers ------------------------------------------------------------------------------------------------


WaitUntil = Literal["change", "attention", "finished"]


def _attention(digest: Mapping[str, Any]) -> int:
    """Jobs that need a look (failed, waiting for a retry, stuck or blocked)."""
    counts = digest.get("counts") or {}
    return sum(int(counts.get(k) or 0) for k in ATTENTION_STATES)


def _wait_over(digest: Mapping[str, Any], until: WaitUntil, baseline: int) -> bool:
    if queue_over(digest.get("counts") or {}, bool((digest.get("agent") or {}).get("alive"))):
        return True
    return until == "attention" and _attention(digest) > baseline


def _stepper(progress: ProgressFn | None) -> Callable[[float, str], None]:
    def say(done: float, message: str) -> None:
        if progress is not None:
            progress(done, _LAUNCH_STEPS, message)

    return say


def _is_path_like(source: Any) -> bool:
    """Mirror of how load_manifest tells a file path from YAML text."""
    if isinstance(source, os.PathLike):
        return True
    if not isinstance(source, str) or "\n" in source or len(source) >= 4096:
        return False
    return os.path.isfile(source) or source.lower().endswith((".yaml", ".yml", ".json"))


def _strip(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "ok"}


def _expand_result(m: Manifest, spec: RunSpec, offset: int, limit: int) -> ExpandResult:
    offset, limit = max(0, offset), max(0, limit)
    per_phase = Counter(j.phase or "" for j in spec.jobs)
    page = spec.jobs[offset : offset + limit]
    return ExpandResult(
        project=spec.project,
        target=manifest_target(m),
        total=len(spec.jobs),
        per_phase=dict(per_phase),
        jobs=[
            JobPreview(
                id=j.id,
                phase=j.phase,
                cmd=j.cmd,
                depends_on=list(j.depends_on),
                output_check=j.output_check,
                gpus_per_job=j.gpus_per_job,
            )
            for j in page
        ],
        offset=offset,
        jobs_shown=len(page),
        truncated=offset + len(page) < len(spec.jobs),
    )


def _blocked_message(report: PreconditionReport, host: str) -> str:
    blocked = [j for j in report.jobs if not j.ready and j.blocked_reasons]
    lines = [f"  - {j.id}: {'; '.join(j.blocked_reasons)}" for j in blocked[:10]]
    more = f"\n  ... and {len(blocked) - 10} more" if len(blocked) > 10 else ""
    return (
        f"{report.blocked_count} job(s) are blocked by preconditions on {host}:\n"
        + "\n".join(lines)
        + more
        + "\nFix them, or launch with ignore_preconditions=true."
    )
