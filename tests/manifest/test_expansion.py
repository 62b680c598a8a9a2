"""Grid expansion: order, typing, rendering, ids, phases, dependencies, cwd and prelude."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from aris_queue_mcp.grid import derive_id, expand_detailed, expand_jobs, render_args
from aris_queue_mcp.manifest import load_manifest, render_prelude, resolve_cwd

ROOT = Path(__file__).resolve().parents[2]


def jobs_of(text: str, **kw):
    return expand_jobs(load_manifest(text, **kw))


def test_grid_sweep_example_expands_to_36_in_product_order() -> None:
    jobs = expand_jobs(load_manifest(ROOT / "examples" / "grid_sweep.yaml"))
    assert len(jobs) == 36
    assert len({j.id for j in jobs}) == 36
    # Key order seed, N, n_train; the last key varies fastest.
    assert [j.id for j in jobs[:4]] == ["s42_N64_n1000", "s42_N64_n5000", "s42_N64_n20000", "s42_N128_n1000"]
    assert jobs[-1].id == "s201_N512_n20000"
    assert jobs[0].cmd.endswith("--output results/grid_sweep_s42_N64_n1000.json")
    assert jobs[0].output_check == "results/grid_sweep_s42_N64_n1000.json"
    assert jobs[0].cwd == str(ROOT / "examples")


def test_teacher_student_match_links_same_n_only() -> None:
    jobs = expand_jobs(load_manifest(ROOT / "examples" / "teacher_student.yaml"))
    by_id = {j.id: j for j in jobs}
    assert [j.id for j in jobs[:2]] == ["teacher_N384", "teacher_N512"]
    assert by_id["student_N384_s42"].depends_on == ["teacher_N384"]
    assert by_id["student_N512_s201"].depends_on == ["teacher_N512"]
    assert by_id["teacher_N384"].output_check == "checkpoints/teacher_N384.pt"
    assert by_id["student_N384_s42"].output_check == "figures/distill_N384_*_seed42.json"
    assert by_id["student_N384_s42"].phase == "distill_students"


def test_phase_without_match_depends_on_every_job() -> None:
    jobs = jobs_of(
        """
project: p
phases:
  - name: a
    grid: {N: [1, 2]}
    template: {cmd: "echo ${N}"}
  - name: b
    depends_on: [a]
    jobs: [{id: final, cmd: echo done}]
"""
    )
    assert [j.id for j in jobs] == ["a_N1", "a_N2", "final"]
    assert jobs[2].depends_on == ["a_N1", "a_N2"]


def test_exact_placeholder_keeps_type_and_args_render_quoted() -> None:
    m = load_manifest(
        """
project: p
default_cmd: python train.py
grid: {seed: [1, 2], name: ["a b"], flag: [true, false], lr: [0.001]}
template:
  args:
    seed: "${seed}"
    tag: "run-${seed}"
    name: "${name}"
    fast: "${flag}"
    lr: "${lr}"
    layers: [1, "${seed}"]
"""
    )
    detailed = expand_detailed(m)
    assert detailed[0].vars == {"seed": 1, "name": "a b", "flag": True, "lr": 0.001}
    assert detailed[0].spec.cmd == (
        "python train.py --seed 1 --tag run-1 --name 'a b' --fast --lr 0.001 --layers 1 1"
    )
    assert detailed[1].spec.cmd == "python train.py --seed 1 --tag run-1 --name 'a b' --lr 0.001 --layers 1 1"
    assert detailed[0].spec.id == "job_seed1_namea-b_flagtrue_lr0.001"


def test_render_args_rules() -> None:
    assert render_args({"a": True, "b": False, "c": None, "d": [1, "x y"], "e": "$(rm -rf /)"}) == (
        "--a --d 1 'x y' --e '$(rm -rf /)'"
    )
    assert shlex.split(render_args({"q": "it's"})) == ["--q", "it's"]


def test_grid_without_template_uses_default_cmd_with_grid_args() -> None:
    jobs = jobs_of("project: p\ndefault_cmd: python x.py\ngrid: {seed: [1, 2]}\n")
    assert [(j.id, j.cmd) for j in jobs] == [
        ("job_seed1", "python x.py --seed 1"),
        ("job_seed2", "python x.py --seed 2"),
    ]


def test_gpu_placeholder_and_escape_survive() -> None:
    jobs = jobs_of(
        """
project: p
grid: {N: [8]}
template: {cmd: "CUDA=${GPU} run --n ${N} --home $${HOME}"}
"""
    )
    assert jobs[0].cmd == "CUDA=${GPU} run --n 8 --home ${HOME}"


def test_derived_id_sanitizes() -> None:
    assert derive_id("train_teachers", {"N": 384}) == "train_teachers_N384"
    assert derive_id(None, {"path": "a/b c", "x": 1.5}) == "job_patha-b-c_x1.5"


def test_explicit_job_fields_and_inheritance() -> None:
    jobs = jobs_of(
        """
project: p
gpus_per_job: 2
timeout: 100
env: {A: 1, B: x}
default_cmd: python d.py
phases:
  - name: ph
    env: {B: y}
    timeout: 50
    jobs:
      - {id: j1, args: {seed: 3}, env: {C: "${seed}"}, expected_output: "out_${seed}.json"}
      - {id: j2, cmd: "echo hi", gpus_per_job: 0, timeout: 5, depends_on: j1}
"""
    )
    j1, j2 = jobs
    assert j1.cmd == "python d.py --seed 3"
    assert j1.env == {"A": "1", "B": "y", "C": "3"}
    assert (j1.gpus_per_job, j1.timeout, j1.output_check) == (2, 50, "out_3.json")
    assert (j2.gpus_per_job, j2.timeout, j2.depends_on) == (0, 5, ["j1"])


def test_topological_order_is_stable() -> None:
    jobs = jobs_of(
        """
project: p
jobs:
  - {id: c, cmd: x, depends_on: [b]}
  - {id: a, cmd: x}
  - {id: b, cmd: x, depends_on: [a]}
  - {id: d, cmd: x}
"""
    )
    assert [j.id for j in jobs] == ["a", "b", "c", "d"]


def test_template_depends_on_is_substituted() -> None:
    jobs = jobs_of(
        """
project: p
phases:
  - name: t
    grid: {N: [1, 2]}
    template: {id: "t${N}", cmd: "echo"}
  - name: s
    grid: {N: [2]}
    template: {id: "s${N}", cmd: "echo", depends_on: ["t${N}"]}
"""
    )
    assert jobs[-1].depends_on == ["t2"]


def test_local_cwd_resolution(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    f.write_text("project: p\ncwd: sub\njobs: [{id: a, cmd: x}]\n")
    assert resolve_cwd(load_manifest(f)) == str(tmp_path / "sub")
    f.write_text("project: p\njobs: [{id: a, cmd: x}]\n")
    assert resolve_cwd(load_manifest(str(f))) == str(tmp_path)
    m = load_manifest({"project": "p", "cwd": "/abs/x", "jobs": [{"id": "a", "cmd": "x"}]})
    assert resolve_cwd(m) == "/abs/x"


@pytest.mark.parametrize(
    ("cwd", "expected"),
    [
        (None, "~"),
        ("/srv/p", "/srv/p"),
        ("~/p", "~/p"),
        ("proj/x", "~/proj/x"),
        ("./proj", "~/proj"),
        (".", "~"),
    ],
)
def test_remote_cwd_resolution(cwd: str | None, expected: str) -> None:
    data = {"project": "p", "ssh": "user@host:2222", "jobs": [{"id": "a", "cmd": "x"}]}
    if cwd is not None:
        data["cwd"] = cwd
    assert resolve_cwd(load_manifest(data)) == expected


def test_prelude_rendering() -> None:
    base = {"project": "p", "jobs": [{"id": "a", "cmd": "x"}]}
    assert render_prelude(load_manifest(base)) == []
    m = load_manifest({**base, "conda": "my env", "setup": ["source a", "export B=1"]})
    assert render_prelude(m) == [
        'eval "$(conda shell.bash hook)"',
        "conda activate 'my env'",
        "source a",
        "export B=1",
    ]
    m = load_manifest({**base, "conda": "e", "conda_hook": "/opt/my conda/bin/conda"})
    assert render_prelude(m)[0] == "eval \"$('/opt/my conda/bin/conda' shell.bash hook)\""
    hook = 'eval "$(/x/conda shell.bash hook)"'
    assert render_prelude(load_manifest({**base, "conda": "e", "conda_hook": hook}))[0] == hook


def test_precondition_paths_substitute_both_syntaxes() -> None:
    m = load_manifest(
        """
project: p
preconditions:
  - {type: checkpoint_exists, path: "ckpt/t_N{N}_${seed}.pt"}
  - {type: path_exists, path: "data/{unknown}/x"}
  - {type: command, run: "test -d ${HOME}"}
grid: {N: [1], seed: [7]}
template: {cmd: echo}
"""
    )
    pre = expand_detailed(m)[0].preconditions
    assert pre[0].path == "ckpt/t_N1_7.pt"
    assert pre[1].path == "data/{unknown}/x"
    assert pre[2].run == "test -d ${HOME}"


def test_manifest_keeps_source_and_base_dir(tmp_path: Path) -> None:
    text = "project: p\njobs: [{id: a, cmd: x}]\n"
    m = load_manifest(text, base_dir=tmp_path)
    assert m.source_text == text
    assert m.base_dir == tmp_path.resolve()
    m = load_manifest({"project": "p", "jobs": [{"id": "a", "cmd": "x"}]})
    assert "project: p" in m.source_text


def test_json_file_and_defaults(tmp_path: Path) -> None:
    f = tmp_path / "m.json"
    f.write_text('{"project": "p", "jobs": [{"id": "a", "cmd": "x"}]}')
    m = load_manifest(f)
    assert (m.gpus, m.launcher, m.python, m.remote_root) == ("auto", "process", "python3", "~/.aris_queue")
    assert (m.oom_retry.delay, m.oom_retry.max_attempts, m.retry.max_attempts) == (120.0, 3, 1)
    # A partial policy keeps the other field's default for that kind of failure.
    m = load_manifest({"project": "p", "oom_retry": {"delay": 5}, "jobs": [{"id": "a", "cmd": "x"}]})
    assert (m.oom_retry.delay, m.oom_retry.max_attempts) == (5.0, 3)
