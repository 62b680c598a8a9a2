"""The service end to end over SSH: a real sshd on loopback, the real agent, the simulated GPUs."""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aris_queue_mcp import simgpu
from aris_queue_mcp.errors import HostKeyError
from aris_queue_mcp.service import QueueService

from .conftest import cancel_all
from .helpers import attempt_headers, launches_per_attempt, manifest, train_cmd, wait_finished, wait_until


@pytest.fixture
def sim(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    sim_dir = tmp_path / "sim"
    return sim_dir, simgpu.install(sim_dir, gpus=2)


@pytest.fixture
def server(make_sshd: Callable[..., Any], sim: tuple[Path, dict[str, str]]) -> Any:
    """An sshd whose sessions see the simulated GPUs (SIMGPU_DIR, fake nvidia-smi first on PATH)."""
    return make_sshd(remote_env=sim[1])


def _options(server: Any) -> dict[str, Any]:
    return {
        "ssh_config_path": server.ssh_config,
        "known_hosts_paths": [server.known_hosts],
        "connect_timeout": 5,
    }


@pytest.fixture
def ssh_service(tmp_path: Path, server: Any) -> Iterator[QueueService]:
    svc = QueueService(tmp_path, ssh_options=_options(server))
    yield svc
    if server.running:
        cancel_all(svc)
    svc.close()


def _ssh_manifest(tmp_path: Path, project: str, **fields: Any) -> dict[str, Any]:
    (tmp_path / "work").mkdir(exist_ok=True)
    return manifest(project, ssh="gpu-test", root="~/aq", cwd=tmp_path / "work", **fields)


def test_grid_over_ssh_completes_with_one_oom_retry(
    ssh_service: QueueService, server: Any, sim: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    m = _ssh_manifest(
        tmp_path,
        "oom",
        grid={"seed": [1, 2, 3]},
        template={
            "id": "t${seed}",
            "cmd": train_cmd(20000, 0.3, alloc_after=1.5, output="out/t${seed}.json"),
            "output_check": "out/t${seed}.json",
        },
    )
    res = ssh_service.launch_queue(m)
    assert res.status == "started" and res.host == "gpu-test"
    assert res.remote_run_dir == f"{server.remote_home}/aq/runs/{res.run_id}"
    # A foreign process grabs the GPU of the first running job after it was placed, before it allocates.
    st = wait_until(ssh_service, res.run_id, lambda s: bool(s.running and s.running[0].gpus))
    victim = st.running[0]
    cfg = simgpu.read_config(sim[0])
    now = time.time() - cfg["epoch"]
    cfg["foreign"] = [{"gpu": victim.gpus[0], "mib": 70000, "start": now, "end": now + 2.5}]
    simgpu.write_config(sim[0], cfg)

    st = wait_finished(ssh_service, res.run_id, timeout=40)
    assert st.counts.get("completed") == 3, st
    rows = {j.id: j for j in ssh_service.queue_status(res.run_id, include_jobs=True).jobs or []}
    assert rows[victim.id].attempts == 2 and sum(r.attempts for r in rows.values()) == 4
    log = ssh_service.tail_log(res.run_id, victim.id, lines=200, attempt=1)
    assert "torch.OutOfMemoryError" in "\n".join(log.lines)
    summary = ssh_service.summarize(res.run_id)
    assert "| (none) | 3 | 3 | 100% | 1 |" in summary.markdown

    run_dir = Path(res.remote_run_dir or "")
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    agents = list((run_dir.parent.parent).glob("agent-*.pyz"))
    assert len(agents) == 1
    mtime = agents[0].stat().st_mtime_ns
    second = ssh_service.launch_queue(
        _ssh_manifest(tmp_path, "again", jobs=[{"id": "a", "cmd": "true", "gpus_per_job": 0}])
    )
    wait_finished(ssh_service, second.run_id)
    assert (
        list((run_dir.parent.parent).glob("agent-*.pyz")) == agents and agents[0].stat().st_mtime_ns == mtime
    )


def test_scheduler_survives_losing_the_ssh_connection_and_a_kill_9(
    ssh_service: QueueService, server: Any, tmp_path: Path
) -> None:
    jobs = [{"id": f"j{i}", "cmd": train_cmd(duration=1.5)} for i in range(4)]
    res = ssh_service.launch_queue(_ssh_manifest(tmp_path, "survive", jobs=jobs))
    wait_until(ssh_service, res.run_id, lambda s: s.counts.get("running", 0) >= 1)
    ssh_service.close()
    server.stop()  # every connection drops, as on a network loss
    time.sleep(0.5)
    server.start()
    fresh = QueueService(tmp_path, ssh_options=_options(server))
    try:
        # The scheduler kept going without any connection; now it dies hard, and resume picks the run up.
        st = wait_until(fresh, res.run_id, lambda s: s.agent.alive and s.counts.get("running", 0) >= 1)
        assert st.agent.pid
        os.kill(st.agent.pid, signal.SIGKILL)
        wait_until(fresh, res.run_id, lambda s: not s.agent.alive)
        assert fresh.resume(res.run_id).status == "resumed"
        st = wait_finished(fresh, res.run_id, timeout=30)
        assert st.counts.get("completed") == 4, st
        for job in ("j0", "j1", "j2", "j3"):
            lines = fresh.tail_log(res.run_id, job, lines=100).lines
            assert attempt_headers("\n".join(lines), job) == 1
        run_dir = Path(res.remote_run_dir or "")
        assert launches_per_attempt(run_dir) == {(j, 1): 1 for j in ("j0", "j1", "j2", "j3")}
    finally:
        fresh.close()


def test_unknown_host_key_is_refused(tmp_path: Path, server: Any) -> None:
    Path(server.known_hosts).write_text("")
    svc = QueueService(tmp_path, ssh_options=_options(server))
    try:
        with pytest.raises(HostKeyError) as ei:
            svc.launch_queue(_ssh_manifest(tmp_path, "hk", jobs=[{"id": "a", "cmd": "true"}]))
        assert "gpu-test" in str(ei.value) and "ssh-keyscan" in str(ei.value)
        assert svc.list_runs().runs == []
    finally:
        svc.close()
