"""The run spec: round trip, identity fields, and clear refusals of other formats and versions."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from aris_queue_mcp.manifest import is_local, load_manifest, manifest_target
from aris_queue_mcp.runspec import (
    SPEC_FORMAT,
    SPEC_VERSION,
    RunSpec,
    RunSpecError,
    build_run_spec,
    new_run_id,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec() -> RunSpec:
    return build_run_spec(load_manifest(ROOT / "examples" / "teacher_student.yaml"))


def test_round_trip(spec: RunSpec) -> None:
    text = spec.to_json()
    again = RunSpec.from_json(text)
    assert again == spec
    assert again.to_json() == text
    data = json.loads(text)
    assert list(data) == [
        "format", "version", "run_id", "project", "created_at", "manifest_sha256", "queue", "jobs",
    ]  # fmt: skip
    assert list(data["jobs"][0]) == [
        "id", "phase", "cmd", "cwd", "env", "prelude", "output_check", "depends_on", "gpus_per_job",
        "priority", "timeout", "oom_retry", "retry",
    ]  # fmt: skip
    assert (data["format"], data["version"]) == (SPEC_FORMAT, SPEC_VERSION)


def test_identity_fields() -> None:
    text = "project: my proj/x\njobs: [{id: a, cmd: x}]\n"
    when = datetime(2026, 12, 4, 16, 43, tzinfo=timezone(timedelta(hours=1)))
    spec = build_run_spec(load_manifest(text), created_at=when)
    assert spec.created_at == "2026-12-04T15:43:00Z"
    assert re.fullmatch(r"my-proj-x-20261204-154300-[0-9a-f]{4}", spec.run_id)
    assert spec.manifest_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert build_run_spec(load_manifest(text), run_id="fixed").run_id == "fixed"


def test_new_run_id_is_a_safe_name() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert re.fullmatch(r"run-20260102-030405-[0-9a-f]{4}", new_run_id("../..", now))
    assert new_run_id("a..b", now).startswith("a.b-")


def test_queue_settings_carried() -> None:
    m = load_manifest(
        "project: p\ngpus: []\ngpus_per_job: 0\nmax_parallel: 3\nlauncher: tmux\npoll_interval: 0.1\n"
        "kill_grace: 0\ngpu_free_threshold_mib: 0\noom_signatures: ['CUDA error: out of memory']\n"
        "jobs: [{id: a, cmd: x}]\n"
    )
    q = build_run_spec(m).queue
    assert (q.gpus, q.max_parallel, q.launcher, q.poll_interval, q.kill_grace) == ([], 3, "tmux", 0.1, 0.0)
    assert q.oom_signatures == ["CUDA error: out of memory"]


def test_target() -> None:
    assert manifest_target(load_manifest("project: p\njobs: [{id: a, cmd: x}]\n")) == "local"
    m = load_manifest("project: p\nssh: me@gpu:2222\njobs: [{id: a, cmd: x}]\n")
    assert (manifest_target(m), is_local(m)) == ("me@gpu:2222", False)
    assert is_local(load_manifest("project: p\nssh: LOCAL\njobs: [{id: a, cmd: x}]\n"))


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(format="other"), "not a run spec"),
        (lambda d: d.update(version=2), "version 2 is not supported"),
        (lambda d: d.pop("version"), "version None is not supported"),
        (lambda d: d["jobs"][0].update(id="bad id"), "invalid run spec"),
        (lambda d: d["jobs"][0].update(extra=1), "invalid run spec"),
        (lambda d: d["jobs"].append(dict(d["jobs"][0])), "appears twice"),
        (lambda d: d["jobs"].reverse(), "not listed before it"),
        (lambda d: d["jobs"][0].update(priority="high"), "jobs.0.priority"),
        (lambda d: d["jobs"][0].update(priority=True), "jobs.0.priority"),
    ],
)
def test_from_json_refuses(spec: RunSpec, mutate, needle: str) -> None:
    data = json.loads(spec.to_json())
    mutate(data)
    with pytest.raises(RunSpecError, match=re.escape(needle)):
        RunSpec.from_json(json.dumps(data))


def test_from_json_not_json() -> None:
    with pytest.raises(RunSpecError, match="not JSON"):
        RunSpec.from_json("{")
    with pytest.raises(RunSpecError, match="not a run spec"):
        RunSpec.from_json("[]")


def test_priority_round_trip_and_a_missing_field_reads_as_zero(spec: RunSpec) -> None:
    data = json.loads(spec.to_json())
    assert {j["priority"] for j in data["jobs"]} == {0.0}
    data["jobs"][0]["priority"] = 7
    data["jobs"][1]["priority"] = -1.5
    again = RunSpec.from_json(json.dumps(data))
    assert [j.priority for j in again.jobs[:2]] == [7.0, -1.5]
    assert RunSpec.from_json(again.to_json()) == again
    del data["jobs"][0]["priority"]  # a version 1 spec written before the field existed
    assert RunSpec.from_json(json.dumps(data)).jobs[0].priority == 0.0
