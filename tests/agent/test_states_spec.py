"""The transition table, the one transition function, and run spec validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from remote_agent.errors import BadSpecError, InvalidTransition
from remote_agent.spec import parse_spec
from remote_agent.states import ALLOWED, TERMINAL, Job, JobState, transition

S = JobState
DATA = Path(__file__).resolve().parents[1] / "data"


def test_every_state_has_a_row_and_completed_is_final():
    assert set(ALLOWED) == set(JobState)
    assert ALLOWED[S.COMPLETED] == frozenset()
    assert {S.COMPLETED, S.STUCK, S.BLOCKED, S.CANCELLED} == TERMINAL


def test_transition_records_time_reason_and_attempt():
    job = Job(id="a", attempts=2)
    rec = transition(job, S.RUNNING, "launching attempt 3", 12.5, attempts=3)
    assert job.status == S.RUNNING and job.attempts == 3
    assert rec["from"] == "pending" and rec["to"] == "running" and rec["t"] == 12.5
    assert rec["attempt"] == 3 and rec["set"]["attempts"] == 3
    with pytest.raises(InvalidTransition):
        transition(job, S.BLOCKED, "no", 13.0)


@given(st.lists(st.sampled_from(list(JobState)), max_size=30))
def test_only_table_moves_are_accepted(targets):
    job = Job(id="x")
    for to in targets:
        before = job.status
        if to in ALLOWED[before]:
            transition(job, to, "t", 0.0)
            assert job.status == to
        else:
            with pytest.raises(InvalidTransition):
                transition(job, to, "t", 0.0)
            assert job.status == before


def spec(**over):
    d = {
        "format": "aris-queue-runspec",
        "version": 1,
        "run_id": "r",
        "jobs": [{"id": "a", "cmd": "true", "cwd": "~/p"}],
        "queue": {},
    }
    d.update(over)
    return d


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"format": "other"}, "format"),
        ({"version": 2}, "version 2"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "/"}, {"id": "a", "cmd": "y", "cwd": "/"}]}, "twice"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "/", "depends_on": ["zz"]}]}, "unknown job"),
        (
            {
                "jobs": [
                    {"id": "a", "cmd": "x", "cwd": "/", "depends_on": ["b"]},
                    {"id": "b", "cmd": "x", "cwd": "/", "depends_on": ["a"]},
                ]
            },
            "cycle",
        ),
        ({"jobs": [{"id": "../x", "cmd": "x", "cwd": "/"}]}, "must match"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "relative"}]}, "cwd"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "/", "env": {"A B": "1"}}]}, "env"),
        ({"queue": {"gpus": "all"}}, "queue.gpus"),
        ({"queue": {"launcher": "nohup"}}, "launcher"),
        ({"queue": {"oom_signatures": ["(unclosed"]}}, "bad regex"),
        ({"jobs": [{"id": "a", "cwd": "/"}]}, "cmd is missing"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "/", "priority": "high"}]}, "jobs[0] (a).priority"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "/", "priority": True}]}, "must be a finite number"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "/", "priority": float("nan")}]}, "got nan"),
        ({"jobs": [{"id": "a", "cmd": "x", "cwd": "/", "priority": 10**400}]}, "priority"),
    ],
)
def test_bad_specs_are_named(change, words):
    with pytest.raises(BadSpecError, match=None) as info:
        parse_spec(spec(**change))
    assert words in str(info.value)


def test_defaults_fill_a_minimal_spec():
    s = parse_spec(spec())
    j = s.jobs[0]
    assert (j.gpus_per_job, j.oom_retry.max_attempts, j.retry.max_attempts, j.output_check) == (1, 3, 1, None)
    assert s.queue.gpus == "auto" and s.queue.launcher == "process" and not s.queue.cpu_only
    assert j.priority == 0.0 and s.start_rank is None  # no priorities: start in spec order


def test_priority_is_read_and_the_start_order_computed_once():
    jobs = [
        {"id": "a", "cmd": "x", "cwd": "/"},
        {"id": "b", "cmd": "x", "cwd": "/", "priority": 2},
        {"id": "c", "cmd": "x", "cwd": "/", "priority": None},
        {"id": "d", "cmd": "x", "cwd": "/", "priority": 2.5},
        {"id": "e", "cmd": "x", "cwd": "/", "priority": -1},
    ]
    s = parse_spec(spec(jobs=jobs))
    assert [j.priority for j in s.jobs] == [0.0, 2.0, 0.0, 2.5, -1.0]
    assert isinstance(s.jobs[1].priority, float)
    assert s.start_rank == {"d": 0, "b": 1, "a": 2, "c": 3, "e": 4}
    assert s.start_rank is s.start_rank  # cached on the spec, not rebuilt per tick


@pytest.mark.parametrize("path", sorted(DATA.glob("runspec_*.json")), ids=lambda p: p.name)
def test_shared_example_specs_parse(path):
    data = json.loads(path.read_text())
    s = parse_spec(data)
    assert s.run_id == data["run_id"] and len(s.jobs) == len(data["jobs"])


def test_shared_example_carries_a_priority():
    s = parse_spec(json.loads((DATA / "runspec_remote_demo.json").read_text()))
    assert s.job("both_gpus").priority == 10.0 and s.job("prep").priority == 0.0
    assert s.start_rank is not None and s.start_rank["both_gpus"] == 0
