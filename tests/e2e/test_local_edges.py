"""Edges of the service: GPU readings without a run, unreachable hosts, manifest files, unknown jobs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from aris_queue_mcp import simgpu
from aris_queue_mcp.errors import AgentError, RunNotFoundError
from aris_queue_mcp.runs import RunRecord, utc_now_iso
from aris_queue_mcp.service import QueueService

from .helpers import manifest, wait_finished


def test_gpu_status_of_a_bare_target_deploys_the_agent(
    service: QueueService, tmp_path: Path, local_sim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    res = service.gpu_status(target="local")
    assert res.host == "local" and [g.index for g in res.gpus] == [0, 1] and res.error is None
    assert list((tmp_path / "home" / ".aris_queue").glob("agent-*.pyz"))
    cfg = simgpu.read_config(local_sim)
    cfg["driver_failure"] = True
    simgpu.write_config(local_sim, cfg)
    broken = service.gpu_status()  # no runs yet: this machine
    assert broken.gpus == [] and broken.error


def test_unreachable_host_shows_in_list_runs(service: QueueService) -> None:
    service.registry.create(
        RunRecord(
            run_id="far-1",
            project="far",
            target="nobody@127.0.0.1:1",
            remote_root="/r",
            remote_run_dir="/r/runs/far-1",
            agent_path="/r/agent-x.pyz",
            manifest_sha256="x",
            created_at=utc_now_iso(),
        ),
        "project: far\n",
        "{}",
    )
    runs = service.list_runs(refresh=True).runs
    assert runs[0].run_id == "far-1" and (runs[0].state or "").startswith("unreachable:")


def test_launch_from_a_relative_manifest_path(service: QueueService, tmp_path: Path, local_sim: Path) -> None:
    m = manifest(
        "file",
        root=tmp_path / "remote",
        cwd=tmp_path,
        jobs=[{"id": "a", "cmd": "echo hi", "gpus_per_job": 0}],
    )
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    res = service.launch_queue("exp.yaml")  # relative to the project dir, not the process's cwd
    wait_finished(service, res.run_id)
    assert (tmp_path / "experiment_queue" / res.run_id / "manifest.yaml").read_text() == (
        tmp_path / "exp.yaml"
    ).read_text()
    assert service.tail_log(res.run_id, "a").lines[-1] == "hi"
    with pytest.raises(AgentError) as ei:
        service.tail_log(res.run_id, "nope")
    assert ei.value.code == "unknown_job" and ei.value.host == "local"
    with pytest.raises(RunNotFoundError, match=res.run_id):
        service.queue_status("missing-run")


def test_agent_file_deleted_on_the_host_is_redeployed(
    service: QueueService, tmp_path: Path, local_sim: Path
) -> None:
    m = manifest(
        "gone", root=tmp_path / "remote", cwd=tmp_path, jobs=[{"id": "a", "cmd": "true", "gpus_per_job": 0}]
    )
    res = service.launch_queue(m)
    wait_finished(service, res.run_id)
    for f in (tmp_path / "remote").glob("agent-*"):  # the zipapp and its unpacked directory
        shutil.rmtree(f) if f.is_dir() else f.unlink()
    assert service.queue_status(res.run_id).counts.get("completed") == 1
    assert list((tmp_path / "remote").glob("agent-*.pyz"))
