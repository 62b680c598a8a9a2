"""The daemon skips a tick whose inputs did not move (an idle 10,000-job queue must not burn CPU)."""

from __future__ import annotations

import itertools

import remote_agent.daemon as daemon_mod
from remote_agent import gpus, store
from remote_agent.daemon import Daemon
from remote_agent.spec import load_spec
from tests.fixtures.simgpu import job, make_run


def test_idle_ticks_are_skipped_until_an_input_moves(simgpu, tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, [job(f"j{i}", "true") for i in range(50)], gpus=[0, 1])
    spec = load_spec(str(run_dir))
    st = store.Store(str(run_dir), spec, writer=True)
    calls = []
    real_tick = daemon_mod.tick
    monkeypatch.setattr(daemon_mod, "tick", lambda *a, **k: calls.append(1) or real_tick(*a, **k))
    now = [1000.0]
    d = Daemon(str(run_dir), spec, st, clock=lambda: now[0])
    used = {0: 70000, 1: 70000}

    def read(t: float) -> gpus.Readings:
        return gpus.Readings([gpus.GpuReading(i, f"GPU-{i}", used[i], 81559) for i in (0, 1)], None, t)

    monkeypatch.setattr(gpus, "read", read)
    try:
        first = d._tick(now[0])
        assert first.decisions == [] and first.waiting == {"gpus": 50}
        for step in range(5):  # memory figures move a little; nothing a tick depends on does
            now[0] += 1.0
            used[0] = 70000 + step
            assert d._tick(now[0]) is first
        assert len(calls) == 1
        used[1] = 3  # GPU 1 frees up: the next tick runs and launches
        now[0] += 1.0
        res = d._tick(now[0])
        assert len(calls) == 2 and [x.job for x in res.decisions] == ["j0"]
    finally:
        st.close()


def test_a_hanging_nvidia_smi_is_asked_less_and_less_often(simgpu, tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, [job("a", "true")], poll_interval=1.0)
    spec = load_spec(str(run_dir))
    st = store.Store(str(run_dir), spec, writer=True)
    now = [1000.0]
    asked: list[float] = []
    ok = [False]

    def read(t: float) -> gpus.Readings:
        asked.append(now[0])
        if ok[0]:
            return gpus.Readings([gpus.GpuReading(0, "GPU-0", 3, 81559)], None, t)
        return gpus.Readings([], "nvidia-smi did not answer within 5s", t, timed_out=True)

    monkeypatch.setattr(gpus, "read", read)
    d = Daemon(str(run_dir), spec, st, clock=lambda: now[0])
    try:
        for _ in range(40):  # 40 s of one-second polls
            res = d._tick(now[0])
            assert res.decisions == []  # the GPU job waits; the loop goes on
            now[0] += 1.0
        gaps = [b - a for a, b in itertools.pairwise(asked)]
        assert gaps[:4] == [2.0, 4.0, 8.0, 16.0] and len(asked) <= 6
        ok[0] = True  # the driver recovers: the next reading after the pause resets the backoff
        while len(asked) < 7:
            d._tick(now[0])
            now[0] += 1.0
        res = d._tick(now[0])
        assert [x.job for x in res.decisions] == ["a"]
    finally:
        st.close()
