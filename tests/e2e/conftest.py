"""Fixtures of the end-to-end tests: a simulated GPU server on this machine and a service that cleans up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aris_queue_mcp import simgpu
from aris_queue_mcp.service import QueueService


@pytest.fixture
def local_sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two simulated GPUs; the agent and its jobs inherit SIMGPU_DIR and the fake nvidia-smi on PATH."""
    sim = tmp_path / "sim"
    for key, value in simgpu.install(sim, gpus=2).items():
        monkeypatch.setenv(key, value)
    return sim


@pytest.fixture
def service(tmp_path: Path) -> Iterator[QueueService]:
    """A service on tmp_path; at teardown active runs are cancelled, so no scheduler outlives a test."""
    svc = QueueService(tmp_path)
    yield svc
    cancel_all(svc)
    svc.close()


def cancel_all(svc: QueueService) -> None:
    for run in svc.registry.list():
        try:
            st = svc.queue_status(run.run_id)
            if st.agent.alive:
                svc.cancel_job(run.run_id)
        except Exception:  # best effort: the test itself reports what went wrong
            pass
