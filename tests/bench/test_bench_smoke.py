"""Smoke run of every benchmark family in tiny mode (a few jobs, seconds), so the benchmark code does not rot.

Only the shape of the figures is checked, never a wall-clock value: the figures themselves come from
``python -m benchmarks`` (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.__main__ import FAMILIES, main, run_all, table_rows
from benchmarks.makespan import list_schedule, longest_chain, wave_barrier

pytestmark = pytest.mark.timeout(300)

EXPECTED = {
    "latency": ["reuse_latency_s", "breakdown_s", "gaps_measured", "completed", "met"],
    "makespan": ["independent", "two_phase", "met"],
    "scale": ["sizes", "met"],
    "callcost": ["attention", "wait", "poll"],
    "recovery": ["kill_to_tracked_s", "resume_call_s", "adopted", "lost_attempts", "ok"],
}


def test_schedule_simulations_on_known_durations() -> None:
    order = ["a", "b", "c", "d"]
    dur = {"a": 3.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert list_schedule(order, dur, {}, 2) == 3.0  # b, c, d run on one slot while a runs
    assert wave_barrier(order, dur, {}, 2) == 4.0  # waves (a, b) then (c, d)
    deps = {"c": ["a"], "d": ["b"]}
    assert longest_chain(order, dur, deps) == 4.0
    assert list_schedule(order, dur, deps, 2) == 4.0
    assert wave_barrier(order, dur, deps, 2) == 4.0


def test_every_family_in_tiny_mode(tmp_path: Path) -> None:
    result = run_all("tiny", list(FAMILIES), tmp_path / "keep")
    for name, fields in EXPECTED.items():
        assert "error" not in result[name], result[name].get("traceback")
        for f in fields:
            assert f in result[name], (name, f)
    lat = result["latency"]
    assert lat["completed"] == lat["jobs"] and lat["gaps_measured"] > 0
    assert lat["reuse_latency_s"]["p50"] is not None
    for grid in ("independent", "two_phase"):
        g = result["makespan"][grid]
        assert g["lower_bound_s"] > 0 and g["ratio"] >= 0.9
        assert g["greedy_sim_s"] >= g["lower_bound_s"] - 1e-6
        assert g["wave_barrier_sim_s"] >= g["greedy_sim_s"] - 1e-6
    for size in result["scale"]["sizes"].values():
        for key in ("expand_validate_s", "local", "scheduler", "store"):
            assert key in size
        assert size["local"]["digest_bytes"] > 0 and size["local"]["agent_peak_rss_kib"]
        assert size["store"]["burst"]["journal_bytes_per_transition"] > 0
    for how in ("attention", "wait", "poll"):
        c = result["callcost"][how]
        assert c["completed"] == c["total"] == 8 and c["calls"] >= 2 and c["text_bytes"] > 0
    rec = result["recovery"]
    assert rec["adopted"] == rec["running_at_kill"] and rec["lost_attempts"] == 0
    rows = table_rows(result)
    assert rows and all(len(r) == 4 for r in rows)


def test_command_line_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["--tiny", "--only", "latency", "--out", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["mode"] == "tiny" and "latency" in data
    assert "python -m benchmarks --tiny --only latency" in md.read_text()
    assert "slot reuse latency" in capsys.readouterr().out
