"""Job priority: top level, phase, template and job levels, typed ``${var}`` substitution, clear errors."""

from __future__ import annotations

import pytest

from aris_queue_mcp.errors import FieldError, ManifestError
from aris_queue_mcp.grid import expand_jobs
from aris_queue_mcp.manifest import load_manifest
from aris_queue_mcp.runspec import RunSpec, build_run_spec


def priorities(text: str) -> dict[str, float]:
    return {j.id: j.priority for j in expand_jobs(load_manifest(text))}


def errors_of(text: str) -> list[FieldError]:
    with pytest.raises(ManifestError) as info:
        load_manifest(text)
    return info.value.errors


def test_default_is_zero_for_every_job() -> None:
    assert priorities("project: p\njobs: [{id: a, cmd: x}, {id: b, cmd: y}]\n") == {"a": 0, "b": 0}


def test_precedence_job_and_template_over_phase_over_top_level() -> None:
    got = priorities(
        """
project: p
priority: 1
phases:
  - name: top
    jobs: [{id: t1, cmd: x}, {id: t2, cmd: x, priority: -2.5}]
  - name: ph
    priority: 5
    jobs: [{id: p1, cmd: x}, {id: p2, cmd: x, priority: 7}, {id: p3, cmd: x, priority: 0}]
  - name: grid
    priority: 3
    grid: {N: [64, 384]}
    template: {cmd: "train ${N}", priority: 9}
  - name: grid_default
    priority: 4
    grid: {N: [1]}
    template: {cmd: "train ${N}"}
"""
    )
    assert got == {
        "t1": 1,
        "t2": -2.5,
        "p1": 5,
        "p2": 7,
        "p3": 0,  # an explicit 0 on the job wins over the phase's 5
        "grid_N64": 9,
        "grid_N384": 9,
        "grid_default_N1": 4,
    }


def test_top_level_priority_applies_to_a_plain_grid_and_grid_args() -> None:
    assert priorities("project: p\npriority: 2\ngrid: {N: [1, 2]}\ntemplate: {cmd: x}\n") == {
        "job_N1": 2,
        "job_N2": 2,
    }
    text = "project: p\npriority: 3\ndefault_cmd: python t.py\ngrid: {N: [1]}\n"
    assert priorities(text) == {"job_N1": 3}


def test_exact_placeholder_keeps_the_grid_value_type_and_text_substitutes_to_a_number() -> None:
    jobs = expand_jobs(
        load_manifest(
            """
project: p
grid: {N: [64, 384, 1.5], size: ["10", "2e3"]}
template: {id: "j_${N}_${size}", cmd: "train ${N}", priority: "${N}"}
"""
        )
    )
    assert [j.priority for j in jobs] == [64, 64, 384, 384, 1.5, 1.5]
    got = priorities(
        """
project: p
grid: {N: [64, 384], size: ["10", "2e3"]}
template: {cmd: "train ${N}", priority: "${size}"}
"""
    )
    assert set(got.values()) == {10, 2000}
    # Text around the placeholder is substituted, then read as a number.
    got = priorities('project: p\ngrid: {N: [4, 8]}\ntemplate: {cmd: x, priority: "-${N}"}\n')
    assert got == {"job_N4": -4, "job_N8": -8}
    # A numeric string without placeholders is a number too.
    assert priorities('project: p\njobs: [{id: a, cmd: x, priority: "2.5"}]\n') == {"a": 2.5}


def test_explicit_job_priority_substitutes_its_args() -> None:
    got = priorities(
        """
project: p
default_cmd: python t.py
jobs:
  - {id: small, args: {N: 64}, priority: "${N}"}
  - {id: big, args: {N: 384}, priority: "${N}"}
"""
    )
    assert got == {"small": 64, "big": 384}


def test_priority_goes_into_the_run_spec_and_back() -> None:
    spec = build_run_spec(
        load_manifest('project: p\ngrid: {N: [64, 384]}\ntemplate: {cmd: "t ${N}", priority: "${N}"}\n')
    )
    text = spec.to_json()
    assert '"priority": 384.0' in text
    again = RunSpec.from_json(text)
    assert [j.priority for j in again.jobs] == [64.0, 384.0] and again == spec


def test_non_numeric_substitution_names_path_job_and_value() -> None:
    errs = errors_of(
        """
project: p
phases:
  - name: train
    grid: {N: [64, 384], tag: [big]}
    template: {cmd: "t ${N}", priority: "${tag}"}
"""
    )
    assert len(errs) == 1, errs  # one line for the whole grid, not one per job
    assert errs[0].path == "phases[0].template.priority"
    assert "priority of job 'train_N64_tagbig' must be a number" in errs[0].message
    assert "'big'" in errs[0].message and "(and 1 more jobs)" in errs[0].message


@pytest.mark.parametrize(
    ("snippet", "path", "needle"),
    [
        ('template: {cmd: x, priority: "${flag}"}', "template.priority", "got True from '${flag}'"),
        ('template: {cmd: x, priority: "N${N}"}', "template.priority", "got 'N1'"),
        ("template: {cmd: x, priority: high}", "template.priority", "got 'high'"),
        ("template: {cmd: x, priority: true}", "template.priority", "must be a number"),
        ("template: {cmd: x, priority: [1]}", "template.priority", "must be a number"),
        ("template: {cmd: x, priority: .inf}", "template.priority", "must be a number"),
        ('priority: "${N}"\ntemplate: {cmd: x}', "priority", "works only in a template or job"),
        ("priority: .nan\ntemplate: {cmd: x}", "priority", "must be a number"),
        ("priority: null\ntemplate: {cmd: x}", "priority", "must be a number"),
        ("priority: 1\ntemplate: {cmd: x, priorty: 1}", "template.priorty", "did you mean 'priority'"),
    ],
)
def test_bad_priorities(snippet: str, path: str, needle: str) -> None:
    errs = errors_of(f"project: p\ngrid: {{N: [1], flag: [true]}}\n{snippet}\n")
    assert [e.path for e in errs] == [path], errs
    assert needle in errs[0].message


def test_bad_phase_and_job_priority_paths() -> None:
    errs = errors_of(
        """
project: p
phases:
  - name: a
    priority: fast
    jobs: [{id: j, cmd: x, priority: "${nope}"}]
"""
    )
    paths = {e.path: e.message for e in errs}
    assert "must be a number" in paths["phases[0].priority"]
    errs = errors_of("project: p\njobs: [{id: j, cmd: x, priority: '${nope}'}]\n")
    assert errs[0].path == "jobs[0].priority" and "unknown variable ${nope} in job j" in errs[0].message
