"""The run spec: the versioned JSON contract the remote agent executes unchanged (docs/protocol.md §1)."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aris_queue_mcp.errors import ArisQueueError
from aris_queue_mcp.manifest import (
    ID_MAX_LEN,
    ID_PATTERN,
    Manifest,
    RetryPolicy,
    is_local,
    manifest_target,
)

__all__ = [
    "SPEC_FORMAT",
    "SPEC_VERSION",
    "JobSpec",
    "QueueSettings",
    "RetryPolicy",
    "RunSpec",
    "RunSpecError",
    "build_run_spec",
    "is_local",
    "manifest_target",
    "new_run_id",
]

SPEC_FORMAT = "aris-queue-runspec"
SPEC_VERSION = 1
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class RunSpecError(ArisQueueError, ValueError):
    """A run spec file is not one this version understands, or is internally inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSpec(_Strict):
    """One fully rendered job; only ``${GPU}`` in ``cmd`` is left for the agent."""

    id: str = Field(pattern=ID_PATTERN, max_length=ID_MAX_LEN)
    phase: str | None = None
    cmd: str = Field(min_length=1)
    cwd: str = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    prelude: list[str] = Field(default_factory=list)
    output_check: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    gpus_per_job: int = Field(1, ge=0)
    priority: float = Field(0.0, allow_inf_nan=False, strict=True)
    """Higher starts first among ready jobs; ties keep the job order. A missing field reads as 0."""
    timeout: float | None = Field(None, gt=0)
    oom_retry: RetryPolicy = Field(default_factory=lambda: RetryPolicy(delay=120.0, max_attempts=3))
    retry: RetryPolicy = Field(default_factory=RetryPolicy)


class QueueSettings(_Strict):
    """How the agent schedules the whole queue."""

    gpus: Literal["auto"] | list[int] = "auto"
    max_parallel: int | None = Field(None, ge=1)
    gpu_free_threshold_mib: int = Field(500, ge=0)
    poll_interval: float = Field(2.0, gt=0)
    kill_grace: float = Field(10.0, ge=0)
    launcher: Literal["process", "screen", "tmux"] = "process"
    oom_signatures: list[str] = Field(default_factory=list)


class RunSpec(_Strict):
    """The whole run: identity, queue settings and the ordered job list."""

    format: Literal["aris-queue-runspec"] = SPEC_FORMAT
    version: Literal[1] = SPEC_VERSION
    run_id: str = Field(pattern=ID_PATTERN, max_length=ID_MAX_LEN)
    project: str
    created_at: str
    manifest_sha256: str
    queue: QueueSettings = Field(default_factory=QueueSettings)
    jobs: list[JobSpec]

    @model_validator(mode="after")
    def _consistent(self) -> RunSpec:
        # A hand-edited spec must still be executable: unique ids, dependencies listed before dependents.
        seen: set[str] = set()
        for job in self.jobs:
            if job.id in seen:
                raise ValueError(f"job id {job.id!r} appears twice")
            missing = [d for d in job.depends_on if d not in seen]
            if missing:
                raise ValueError(f"job {job.id!r} depends on {missing}, which are not listed before it")
            seen.add(job.id)
        return self

    def to_json(self) -> str:
        """Stable JSON (field order as in the protocol, jobs in run order, indent 2, trailing newline)."""
        return json.dumps(self.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> RunSpec:
        """Parse a run spec; raises ``RunSpecError`` naming what is wrong (format, version, fields)."""
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunSpecError(
                f"run spec is not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
            ) from None
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise RunSpecError(f"not a run spec: format is {got!r}, expected {SPEC_FORMAT!r}")
        if data.get("version") != SPEC_VERSION:
            raise RunSpecError(
                f"run spec version {data.get('version')!r} is not supported (this side reads version "
                f"{SPEC_VERSION}); rebuild it with the same aris-queue-mcp version as the agent"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()[:20]
            )
            raise RunSpecError(f"invalid run spec: {problems}") from None


def _sanitize(text: str) -> str:
    # runs.py refuses ".." in run ids (path traversal), so collapse dot runs as well.
    cleaned = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9._-]+", "-", text)).strip("-._")
    return cleaned[:64] or "run"


def _utc(now: datetime | None) -> datetime:
    now = now or datetime.now(timezone.utc)
    # A naive time is taken as UTC, so run ids never depend on the machine's time zone.
    return now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)


def new_run_id(project: str, now: datetime | None = None) -> str:
    """``<project>-YYYYMMDD-HHMMSS-<4 hex>`` (UTC), safe as a directory name."""
    return f"{_sanitize(project)}-{_utc(now).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def build_run_spec(
    manifest: Manifest, *, run_id: str | None = None, created_at: datetime | None = None
) -> RunSpec:
    """Expand the manifest into the run spec the agent executes. Raises ``ManifestError`` on problems."""
    from aris_queue_mcp.grid import expand_jobs  # grid imports this module's JobSpec

    now = _utc(created_at)
    queue = QueueSettings(
        gpus=manifest.gpus,
        max_parallel=manifest.max_parallel,
        gpu_free_threshold_mib=manifest.gpu_free_threshold_mib,
        poll_interval=manifest.poll_interval,
        kill_grace=manifest.kill_grace,
        launcher=manifest.launcher,
        oom_signatures=list(manifest.oom_signatures),
    )
    return RunSpec(
        run_id=run_id or new_run_id(manifest.project, now),
        project=manifest.project,
        created_at=now.strftime(_TIME_FORMAT),
        manifest_sha256=hashlib.sha256(manifest.source_text.encode("utf-8")).hexdigest(),
        queue=queue,
        jobs=expand_jobs(manifest),
    )
