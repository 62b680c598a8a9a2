"""screen/tmux launchers, and the agent shipped as a zipapp running under Python 3.8."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from aris_queue_mcp.deploy import build_agent_zipapp
from tests.fixtures.simgpu import agent, job, make_run, status, train_cmd, wait_for

# The oldest Python the agent supports; pyenv's build here, else whatever python3.8 is on PATH.
PY38 = next(
    (
        p
        for p in ("/root/.pyenv/versions/3.8.18/bin/python3.8", shutil.which("python3.8"))
        if p and os.path.exists(p)
    ),
    "python3.8",
)


@pytest.fixture
def tmux_env(tmp_path, monkeypatch):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    sock_dir = tmp_path / "tmux"
    sock_dir.mkdir()
    monkeypatch.setenv("TMUX_TMPDIR", str(sock_dir))  # a private tmux server for this test
    monkeypatch.delenv("TMUX", raising=False)
    yield
    subprocess.run(["tmux", "kill-server"], capture_output=True)


def test_tmux_launcher_runs_attachable_sessions_and_cleans_them(simgpu, tmp_path, tmux_env):
    jobs = [
        job("t.1", train_cmd(duration=0.3, output="o.json"), output_check="o.json"),
        job("t.2", "echo gpu=$CUDA_VISIBLE_DEVICES; exit 4", retry={"delay": 0, "max_attempts": 1}),
    ]
    run_dir = make_run(tmp_path, jobs, launcher="tmux", run_id="tm")
    res = agent("run", "--run-dir", str(run_dir))
    assert res.rc == 0, res
    js = {j["id"]: j for j in status(run_dir, "--jobs")["jobs"]}
    assert js["t.1"]["status"] == "completed"
    assert js["t.2"]["status"] == "stuck" and js["t.2"]["exit_code"] == 4
    log = (run_dir / "logs" / "t.2.log").read_text()
    assert f"gpu={js['t.2']['gpus'][0]}" in log
    # Sessions of finished jobs are gone.
    ls = subprocess.run(["tmux", "ls"], capture_output=True, text=True)
    assert "aris-tm" not in ls.stdout


def test_tmux_session_is_attachable_while_the_job_runs(simgpu, tmp_path, tmux_env, cleanup_run_dirs):
    run_dir = make_run(
        tmp_path,
        [job("a", "while [ ! -e go ]; do sleep 0.02; done", gpus_per_job=0)],
        launcher="tmux",
        run_id="tm2",
        gpus=[],
    )
    cleanup_run_dirs.append(run_dir)
    assert agent("run", "--run-dir", str(run_dir), "--detach").rc == 0
    wait_for(lambda: status(run_dir)["counts"]["running"] == 1, what="job running")
    ls = wait_for(
        lambda: (r := subprocess.run(["tmux", "ls"], capture_output=True, text=True)).stdout and r.stdout,
        what="tmux session",
    )
    assert "aris-tm2-a-1" in ls
    (tmp_path / "work" / "go").touch()
    wait_for(lambda: status(run_dir)["agent"]["state"] == "finished", what="finished")


def test_missing_launcher_fails_the_attempt_with_a_clear_reason(simgpu, tmp_path, monkeypatch):
    missing = "screen" if shutil.which("screen") is None else None
    if missing is None:
        pytest.skip("screen is installed here; nothing is missing")
    run_dir = make_run(tmp_path, [job("a", "true", gpus_per_job=0)], launcher="screen", gpus=[])
    assert agent("run", "--run-dir", str(run_dir)).rc == 0
    a = status(run_dir, "--jobs")["jobs"][0]
    assert a["status"] == "stuck" and "launcher 'screen' is not installed" in a["reason"]


def test_screen_launcher(simgpu, tmp_path):
    if shutil.which("screen") is None:
        pytest.skip("screen is not installed")
    run_dir = make_run(
        tmp_path, [job("a", "echo hi-$ARIS_JOB_ID", gpus_per_job=0)], launcher="screen", gpus=[], run_id="sc"
    )
    assert agent("run", "--run-dir", str(run_dir)).rc == 0
    assert status(run_dir, "--jobs")["jobs"][0]["status"] == "completed"
    assert "hi-a" in (run_dir / "logs" / "a.log").read_text()
    ls = subprocess.run(["screen", "-ls"], capture_output=True, text=True)
    assert "aris-sc-a-1" not in ls.stdout


def build_zipapp(dest: Path) -> Path:
    """The very zipapp the MCP side ships (deploy.build_agent_zipapp), written to ``dest``."""
    target = dest / "agent.pyz"
    target.write_bytes(build_agent_zipapp()[0])
    return target


@pytest.mark.skipif(not os.path.exists(PY38), reason="Python 3.8 is not installed")
def test_zipapp_runs_a_queue_under_python_3_8(simgpu, tmp_path):
    pyz = build_zipapp(tmp_path)
    out = subprocess.run([PY38, str(pyz), "version"], capture_output=True, text=True, cwd="/")
    ver = json.loads(out.stdout)
    assert ver["ok"] and ver["python"].startswith("3.8.") and ver["version"] == "0.1.0"
    jobs = [
        job("a", train_cmd(output="a.json"), output_check="a.json"),
        job("b", depends_on=["a"]),
        job("c", "exit 1", gpus_per_job=0),
    ]
    run_dir = make_run(tmp_path, jobs)
    out = subprocess.run(
        [PY38, str(pyz), "run", "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    res = json.loads(out.stdout)
    assert res["ok"] and res["counts"]["completed"] == 2 and res["counts"]["stuck"] == 1, (res, out.stderr)
    st = json.loads(
        subprocess.run(
            [PY38, str(pyz), "status", "--run-dir", str(run_dir), "--jobs"],
            capture_output=True,
            text=True,
            cwd="/",
        ).stdout
    )
    assert {j["id"]: j["status"] for j in st["jobs"]} == {"a": "completed", "b": "completed", "c": "stuck"}
    # A detached start works from the zipapp too (the double fork must not depend on __file__).
    run2 = make_run(tmp_path / "second", [job("x", "true", gpus_per_job=0)], gpus=[])
    out = subprocess.run(
        [PY38, str(pyz), "run", "--run-dir", str(run2), "--detach"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    assert json.loads(out.stdout)["ok"], out
    wait_for(lambda: status(run2)["agent"]["state"] == "finished", what="detached zipapp agent finished")


def test_launcher_not_on_path_raises_launch_error(tmp_path, monkeypatch):
    from remote_agent import runner
    from remote_agent.spec import load_spec

    run_dir = make_run(tmp_path, [job("a", "true")], launcher="screen")
    js = load_spec(str(run_dir)).jobs[0]
    runner.prepare(str(run_dir))
    monkeypatch.setattr(runner.shutil, "which", lambda _name: None)
    with pytest.raises(runner.LaunchError, match="launcher 'screen' is not installed"):
        runner.launch(str(run_dir), "r", js, 1, (0,), "screen", 0.0)


def test_tmux_ids_that_sanitize_alike_get_their_own_sessions(simgpu, tmp_path, tmux_env):
    jobs = [job("a.b", "sleep 0.5", gpus_per_job=0), job("a_b", "sleep 0.5", gpus_per_job=0)]
    run_dir = make_run(tmp_path, jobs, launcher="tmux", run_id="tm3", gpus=[])
    assert agent("run", "--run-dir", str(run_dir)).rc == 0
    rows = {j["id"]: j["status"] for j in status(run_dir, "--jobs")["jobs"]}
    assert rows == {"a.b": "completed", "a_b": "completed"}


def test_a_timeout_under_tmux_is_a_timeout_not_a_loss(simgpu, tmp_path, tmux_env):
    jobs = [job("t", "trap '' TERM; sleep 30", gpus_per_job=0, timeout=0.5)]
    run_dir = make_run(tmp_path, jobs, launcher="tmux", run_id="tm4", gpus=[], kill_grace=0.3)
    assert agent("run", "--run-dir", str(run_dir), timeout=120).rc == 0
    t = status(run_dir, "--jobs")["jobs"][0]
    assert t["status"] == "stuck" and "timeout" in t["reason"] and t["attempts"] == 1


@pytest.mark.skipif(shutil.which("screen") is None, reason="screen is not installed")
def test_ending_a_screen_session_leaves_sessions_whose_names_extend_it(tmp_path, monkeypatch):
    from remote_agent import runner

    short, longer = runner.session_name("R", "t", 1), runner.session_name("R", "t-1", 1)
    (tmp_path / "screens").mkdir(mode=0o700)
    monkeypatch.setenv("SCREENDIR", str(tmp_path / "screens"))  # a private screen socket directory
    for name in (short, longer):
        subprocess.run(["screen", "-dmS", name, "sleep", "30"], check=True)
    try:
        runner.end_session("screen", short)  # `screen -S NAME` matches by prefix: names must not nest
        ls = subprocess.run(["screen", "-ls"], capture_output=True, text=True).stdout
        assert longer in ls and short not in ls
    finally:
        subprocess.run(["screen", "-S", longer, "-X", "quit"], capture_output=True)
