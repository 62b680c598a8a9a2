"""Every error names its path, says what to write instead, and all of them come at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from aris_queue_mcp.errors import FieldError, ManifestError
from aris_queue_mcp.manifest import load_manifest

JOBS = "jobs: [{id: a, cmd: x}]\n"


def errors_of(source) -> list[FieldError]:
    with pytest.raises(ManifestError) as info:
        load_manifest(source)
    assert info.value.errors, "a ManifestError must carry at least one FieldError"
    return info.value.errors


def one(source) -> FieldError:
    errs = errors_of(source)
    assert len(errs) == 1, errs
    return errs[0]


def test_unknown_keys_with_suggestions_everywhere_and_all_collected() -> None:
    errs = errors_of(
        """
project: x
gpu: [0]
phases:
  - name: a
    grid: {N: [1]}
    template: {cmd: "echo ${N}", outptu_check: x}
    preconditons: []
  - name: b
    jobs: [{id: j, cmd: x, dependson: [a]}]
    preconditions: [{type: command, runn: x}]
"""
    )
    got = {(e.path, e.message) for e in errs}
    assert ("gpu", "unknown key 'gpu'; did you mean 'gpus'?") in got
    typo = "unknown key 'outptu_check'; did you mean 'output_check'?"
    assert ("phases[0].template.outptu_check", typo) in got
    assert ("phases[0].preconditons", "unknown key 'preconditons'; did you mean 'preconditions'?") in got
    assert ("phases[1].jobs[0].dependson", "unknown key 'dependson'; did you mean 'depends_on'?") in got
    assert ("phases[1].preconditions[0].runn", "unknown key 'runn'; did you mean 'run'?") in got


def test_unknown_key_without_close_match_lists_allowed() -> None:
    e = one("project: x\nzzzzqqq: 1\n" + JOBS)
    assert e.path == "zzzzqqq"
    assert "allowed keys:" in e.message and "default_cmd" in e.message


def test_unknown_precondition_type() -> None:
    e = one("project: x\npreconditions: [{type: chekpoint_exists, path: a}]\n" + JOBS)
    assert e.path == "preconditions[0]"
    assert "did you mean 'checkpoint_exists'" in e.message


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("42\n", "top level must be a mapping"),
        (JOBS, "required key 'project'"),
        ("project: x\n", "no jobs"),
        ("project: x\njobs: []\n", "jobs is empty"),
        ("project: x\nphases: []\n", "phases is empty"),
        ("project: x\nphases: [{name: a, jobs: []}]\n", "phases[0].jobs: jobs is empty"),
        ("project: x\njobs: [{id: a}]\n", "needs `cmd:` or `args:`"),
        ("project: x\njobs: [{id: a, args: {s: 1}}]\n", "add `cmd:` or `default_cmd:`"),
        ("project: x\njobs: [{cmd: echo}]\n", "required key 'id'"),
        ("project: x\ntemplate: {cmd: x}\n", "a template needs a grid"),
        ("project: x\ngrid: {a: [1]}\n", "a grid needs a `template:`"),
        ("project: x\ngrid: {a: [1]}\ntemplate: {id: x}\n", "the template needs `cmd:`"),
        ("project: x\ngrid: {a: [1]}\ntemplate: {cmd: x}\n" + JOBS, "give only one of"),
    ],
)
def test_structure_errors(source: str, needle: str) -> None:
    assert needle in str(error_text(source))


def error_text(source: str) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(source)
    return str(info.value)


def test_grid_scalar_is_an_error_not_split_into_characters() -> None:
    e = one("project: x\ngrid: {seed: 42, name: abc}\ntemplate: {cmd: x}\n")
    assert e.path == "grid"
    assert "grid.seed must be a list: write seed: [42]" in e.message
    assert "grid.name must be a list: write name: [abc]" in e.message


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        ("{a: []}", "empty list"),
        ("{GPU: [1]}", "reserved"),
        ("{'a-b': [1]}", "variable name"),
        ("{a: [{x: 1}]}", "strings, numbers"),
        ("{}", "non-empty mapping"),
    ],
)
def test_bad_grids(grid: str, needle: str) -> None:
    assert needle in error_text(f"project: x\ngrid: {grid}\ntemplate: {{cmd: x}}\n")


def test_unknown_variable_names_variable_job_and_path() -> None:
    e = one("project: x\ngrid: {N: [1, 2]}\ntemplate: {id: 'n${N}', cmd: 'run --s ${seed}'}\n")
    assert e.path == "template.cmd"
    assert "unknown variable ${seed} in job n1 (and 1 more)" in e.message
    assert "known variables: N" in e.message and "$${seed}" in e.message


def test_unknown_variable_suggests_close_name() -> None:
    e = one("project: x\ngrid: {seed: [1]}\ntemplate: {cmd: 'run ${sed}'}\n")
    assert "did you mean ${seed}?" in e.message


def test_unknown_variable_in_every_field_is_reported() -> None:
    errs = errors_of(
        """
project: x
grid: {N: [1]}
template:
  id: "a${q1}"
  cmd: "run ${q2}"
  args: {x: "${q3}"}
  output_check: "o${q4}"
  env: {E: "${q5}"}
preconditions: [{type: path_exists, path: "p${q6}"}]
"""
    )
    paths = {e.path for e in errs}
    assert paths == {
        "template.id",
        "template.cmd",
        "template.args.x",
        "template.output_check",
        "template.env.E",
        "preconditions[0].path",
    }


def test_duplicate_ids_list_every_collision_and_origin() -> None:
    errs = errors_of(
        """
project: x
phases:
  - name: a
    grid: {N: [1, 2], seed: [1, 2]}
    template: {id: "t${N}", cmd: x}
  - name: b
    jobs: [{id: t1, cmd: x}]
"""
    )
    text = "\n".join(map(str, errs))
    assert "duplicate job id 't1' (3 times)" in text
    assert "duplicate job id 't2' (2 times)" in text
    assert "phases[0].grid (N=1, seed=1)" in text and "phases[0].grid (N=1, seed=2)" in text
    assert "phases[1].jobs[0]" in text


def test_invalid_ids() -> None:
    assert "not valid" in error_text("project: x\njobs: [{id: 'a b', cmd: x}]\n")
    assert "not valid" in error_text("project: x\njobs: [{id: '-a', cmd: x}]\n")
    assert "not valid" in error_text("project: x\ngrid: {n: ['/x']}\ntemplate: {id: '${n}', cmd: x}\n")
    assert "not valid" in error_text(f"project: x\njobs: [{{id: {'a' * 129}, cmd: x}}]\n")


def test_dependency_errors() -> None:
    e = one("project: x\njobs: [{id: alpha, cmd: x}, {id: b, cmd: x, depends_on: [alhpa]}]\n")
    assert e.path == "jobs[1].depends_on"
    assert "job 'b' depends on unknown job 'alhpa'; did you mean 'alpha'?" in e.message


def test_job_cycle_reported_with_members() -> None:
    errs = errors_of(
        """
project: x
jobs:
  - {id: a, cmd: x, depends_on: [c]}
  - {id: b, cmd: x, depends_on: [a]}
  - {id: c, cmd: x, depends_on: [b]}
  - {id: d, cmd: x, depends_on: [d]}
  - {id: e, cmd: x, depends_on: [a]}
"""
    )
    text = "\n".join(map(str, errs))
    assert "dependency cycle: a -> c -> b -> a" in text
    assert "dependency cycle: d -> d" in text
    assert "e ->" not in text  # e only waits behind the cycle; it is not a member


def test_phase_errors() -> None:
    errs = errors_of(
        """
project: x
phases:
  - name: a
    grid: {N: [1]}
    template: {cmd: x}
  - name: a
    depends_on: [b, zz]
    match: [M]
    grid: {N: [1]}
    template: {cmd: x}
  - name: b
    match: [N]
    grid: {N: [1]}
    template: {cmd: x}
  - name: c
    jobs: [{id: q, cmd: x}]
    gpus_per_job: -1
"""
    )
    text = "\n".join(map(str, errs))
    assert "phases[1].name: phase name 'a' is used twice" in text
    assert "phases[1].depends_on: unknown phase 'zz'" in text
    assert "phases[1].match: match key 'M' is not in this phase's grid" in text
    assert "match key 'M' is not in the grid of phase 'b'" in text
    assert "phases[2].match: match needs depends_on" in text
    assert "phases[3].gpus_per_job" in text  # a field error does not hide the cross-field ones


def test_field_errors_and_cross_field_errors_come_together() -> None:
    errs = errors_of("project: x\ngpus: [0]\ngpu: 1\ngpus_per_job: 3\ngrid: {a: [1]}\n")
    assert sorted(e.path for e in errs) == ["gpu", "gpus_per_job", "grid"], errs
    # A dropped invalid value does not cause follow-up noise about its own object.
    errs = errors_of("project: x\ngrid: {a: 1}\ntemplate: {cmd: x}\n")
    assert [e.path for e in errs] == ["grid"]


def test_phase_cycle() -> None:
    e = one(
        """
project: x
phases:
  - {name: a, depends_on: b, jobs: [{id: j1, cmd: x}]}
  - {name: b, depends_on: a, jobs: [{id: j2, cmd: x}]}
"""
    )
    assert e.message == "phases depend on each other in a cycle: a -> b -> a"


def test_match_without_partner() -> None:
    e = one(
        """
project: x
phases:
  - {name: t, grid: {N: [1]}, template: {cmd: x}}
  - {name: s, depends_on: t, match: [N], grid: {N: [1, 2]}, template: {cmd: x}}
"""
    )
    assert e.path == "phases[1].match"
    assert "job 's_N2' (N=2) matches no job of phase 't'" in e.message


def test_self_phase_dependency() -> None:
    assert "cannot depend on itself" in error_text(
        "project: x\nphases: [{name: a, depends_on: a, jobs: [{id: j, cmd: x}]}]\n"
    )


@pytest.mark.parametrize(
    ("snippet", "path", "needle"),
    [
        ("gpus: [0, 0]", "gpus", "unique"),
        ("gpus: [-1]", "gpus", ">= 0"),
        ("gpus: all", "gpus", "'auto'"),
        ("gpus: [0]\ngpus_per_job: 2", "gpus_per_job", "more than the 1 GPUs"),
        ("gpus_per_job: -1", "gpus_per_job", "greater than or equal to 0"),
        ("retry: {delay: -1}", "retry.delay", "greater than or equal to 0"),
        ("oom_retry: {max_attempts: 0}", "oom_retry.max_attempts", "greater than or equal to 1"),
        ("gpu_free_threshold_mib: -5", "gpu_free_threshold_mib", "greater than or equal to 0"),
        ("timeout: 0", "timeout", "greater than 0"),
        ("max_parallel: 0", "max_parallel", "greater than or equal to 1"),
        ("poll_interval: 0", "poll_interval", "greater than 0"),
        ("launcher: nohup", "launcher", "'process'"),
        ("oom_signatures: ['(unclosed']", "oom_signatures", "not a valid regex"),
        ("env: {'1BAD': x}", "env", "not a valid shell variable name"),
        ("env: {A: [1]}", "env", "string or number"),
        ("ssh: '-oProxyCommand=evil'", "ssh", "is not a host"),
        ("ssh: 'a b'", "ssh", "is not a host"),
        ("setup: {a: 1}", "setup", "string or a list"),
        ("project: ''", "project", "at least 1 character"),
    ],
)
def test_field_errors(snippet: str, path: str, needle: str) -> None:
    text = snippet if snippet.startswith("project") else "project: x\n" + snippet
    errs = errors_of(text + "\n" + JOBS)
    assert any(e.path == path and needle in e.message for e in errs), errs


def test_output_check_and_alias_together() -> None:
    e = one("project: x\njobs: [{id: a, cmd: x, output_check: a, expected_output: b}]\n")
    assert e.path == "jobs[0]"
    assert "only one of output_check / expected_output" in e.message


def test_bad_args() -> None:
    assert "arg name" in error_text("project: x\ndefault_cmd: p\njobs: [{id: a, args: {'--x': 1}}]\n")
    nested = "project: x\ndefault_cmd: p\njobs: [{id: a, args: {x: {y: 1}}}]\n"
    assert "list of those" in error_text(nested)


def test_yaml_syntax_error_gives_line_and_column() -> None:
    e = one("project: x\njobs:\n  - id: a\n    cmd: [unclosed\n")
    assert e.message.startswith("invalid YAML at line")
    assert "column" in e.message


def test_duplicate_yaml_key_is_an_error() -> None:
    e = one("project: x\nproject: y\n" + JOBS)
    assert "duplicate key 'project'" in e.message and "line 2" in e.message


def test_files(tmp_path: Path) -> None:
    assert "cannot read manifest file" in error_text(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "m.json"
    bad.write_text("{nope")
    assert "invalid JSON at line 1" in error_text(str(bad))


def test_error_message_lists_all_with_paths() -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest("project: x\ngpu: 1\nlauncher: nohup\n" + JOBS)
    text = str(info.value)
    assert text.startswith("manifest has 2 error(s):")
    assert "  - gpu: unknown key" in text and "  - launcher:" in text
