"""The local run registry: ``experiment_queue/<run_id>/`` under the project directory.

Each run keeps ``manifest.yaml`` (the manifest text as given), ``spec.json`` (the run spec sent to the agent),
``run.json`` (a :class:`RunRecord`: where the run lives and how to reach its agent) and later ``summary.md``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from .errors import ArisQueueError, RunNotFoundError

REGISTRY_DIRNAME = "experiment_queue"
"""Name of the registry directory under the project directory."""

PROJECT_DIR_ENV = "ARIS_PROJECT_DIR"
"""Environment variable naming the project directory (default: the current working directory)."""

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunRecord(BaseModel):
    """What the MCP side remembers about a run (``run.json``)."""

    run_id: str = Field(description="Run id.")
    project: str = Field(description="Project name.")
    target: str = Field(description='"local" or the ssh target.')
    remote_root: str = Field(description="Expanded agent root on the host (holds agent-*.pyz and runs/).")
    remote_run_dir: str = Field(description="Run directory on the host.")
    agent_path: str | None = Field(default=None, description="Path of the deployed agent zipapp.")
    agent_sha256: str | None = Field(default=None, description="sha256 of the deployed agent zipapp.")
    python: str = Field(default="python3", description="Python used to run the agent on the host.")
    manifest_sha256: str = Field(description="sha256 of the manifest text.")
    total_jobs: int = Field(default=0, description="Jobs in the run.")
    created_at: str = Field(description="ISO 8601 UTC.")
    launched_at: str | None = Field(default=None, description="When the scheduler was first started.")
    resumed_at: list[str] = Field(default_factory=list, description="Every later scheduler restart.")
    local: bool = Field(default=False, description="True when the run lives on this machine.")


def utc_now_iso() -> str:
    """The current time as ``2026-12-04T15:43:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe file name; raise ``ArisQueueError`` otherwise."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.match(run_id) or ".." in run_id:
        raise ArisQueueError(
            f"invalid run id {run_id!r}: use letters, digits, '.', '_' and '-' (as list_runs shows them)"
        )
    return run_id


def default_project_dir() -> Path:
    """``$ARIS_PROJECT_DIR`` if set, else the current working directory."""
    env = os.environ.get(PROJECT_DIR_ENV)
    return Path(env).expanduser() if env else Path.cwd()


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that a reader never sees half of it (temp file, fsync, rename)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class RunRegistry:
    """Runs recorded under ``<project_dir>/experiment_queue/``."""

    def __init__(self, project_dir: Path | str | None = None) -> None:
        self.project_dir = Path(project_dir).expanduser() if project_dir else default_project_dir()
        self.root = self.project_dir / REGISTRY_DIRNAME

    def run_dir(self, run_id: str) -> Path:
        """Local directory of a run (the id is validated first)."""
        return self.root / validate_run_id(run_id)

    def create(self, record: RunRecord, manifest_text: str, spec_json: str) -> Path:
        """Record a new run; fails if the id is taken."""
        d = self.run_dir(record.run_id)
        try:
            d.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise ArisQueueError(f"run {record.run_id} already exists in {self.root}") from None
        write_atomic(d / "manifest.yaml", manifest_text)
        write_atomic(d / "spec.json", spec_json)
        self.save(record)
        return d

    def save(self, record: RunRecord) -> None:
        """Write ``run.json`` of an existing run."""
        write_atomic(self.run_dir(record.run_id) / "run.json", record.model_dump_json(indent=2) + "\n")

    def load(self, run_id: str) -> RunRecord:
        """The record of ``run_id``; ``RunNotFoundError`` (listing known ids) when there is none."""
        path = self.run_dir(run_id) / "run.json"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            known = [r.run_id for r in self.list()][:10]
            hint = f"known runs: {', '.join(known)}" if known else "there are no runs yet: call launch_queue"
            raise RunNotFoundError(f"no run {run_id!r} in {self.root}; {hint}") from None
        try:
            return RunRecord.model_validate_json(text)
        except ValidationError as exc:
            raise ArisQueueError(
                f"{path} is damaged ({exc.error_count()} problems); fix or delete it"
            ) from exc

    def spec_json(self, run_id: str) -> str:
        """The run spec recorded for ``run_id``."""
        return (self.run_dir(run_id) / "spec.json").read_text(encoding="utf-8")

    def list(self) -> list[RunRecord]:
        """All readable runs, newest first."""
        if not self.root.is_dir():
            return []
        records = []
        for child in self.root.iterdir():
            if not _RUN_ID_RE.match(child.name) or not (child / "run.json").is_file():
                continue
            try:
                records.append(
                    RunRecord.model_validate_json((child / "run.json").read_text(encoding="utf-8"))
                )
            except (OSError, ValidationError):
                continue  # a damaged entry must not hide the others
        records.sort(key=lambda r: (r.created_at, r.run_id), reverse=True)
        return records

    def latest(self) -> RunRecord:
        """The newest run; ``RunNotFoundError`` when there is none."""
        runs = self.list()
        if not runs:
            raise RunNotFoundError(f"no runs in {self.root} yet: call launch_queue first")
        return runs[0]

    def find_by_manifest_sha(self, sha256: str) -> list[RunRecord]:
        """Runs launched from exactly this manifest text, newest first."""
        return [r for r in self.list() if r.manifest_sha256 == sha256]

    def remove(self, run_id: str) -> None:
        """Forget a run (its local directory only; nothing on the host is touched)."""
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def write_summary(self, run_id: str, markdown: str) -> Path:
        """Write ``summary.md`` of a run and return its path."""
        path = self.run_dir(run_id) / "summary.md"
        write_atomic(path, markdown)
        return path
