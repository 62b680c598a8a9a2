"""AgentClient: argv built word by word, JSON answers parsed, errors named with the host."""

from __future__ import annotations

import json

import pytest

from aris_queue_mcp.client import AgentClient, parse_agent_output
from aris_queue_mcp.errors import AgentError
from aris_queue_mcp.transport.base import CommandResult


class RecordingTransport:
    """Test double at the point where commands leave the process: records argv, answers a fixed result."""

    label = "gpu-box"

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        self.calls: list[tuple[list[str], float]] = []

    def run(self, argv: list[str], *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        self.calls.append((argv, timeout))
        return self.result


def _ok(**data: object) -> CommandResult:
    return CommandResult(0, json.dumps({"ok": True, **data}) + "\n", "")


def test_status_argv_and_wait_timeout() -> None:
    t = RecordingTransport(_ok(seq=3))
    c = AgentClient(t, "/r/agent.pyz", python="/opt/py", timeout=10)  # type: ignore[arg-type]
    assert (
        c.status(
            "/r/runs/x",
            jobs=True,
            states=["stuck", "pending"],
            phase="train",
            offset=5,
            limit=7,
            wait=20,
            since_seq=2,
        )["seq"]
        == 3
    )
    argv, timeout = t.calls[0]
    assert argv == [
        "/opt/py",
        "-S",
        "/r/agent.pyz",
        "status",
        "--run-dir",
        "/r/runs/x",
        "--jobs",
        "--state",
        "stuck",
        "--state",
        "pending",
        "--phase",
        "train",
        "--offset",
        "5",
        "--limit",
        "7",
        "--wait",
        "20",
        "--since-seq",
        "2",
    ]
    assert timeout == 50


def test_other_commands_argv() -> None:
    t = RecordingTransport(_ok())
    c = AgentClient(t, "a.pyz")  # type: ignore[arg-type]
    c.retry("D", stuck=True)
    c.retry("D", ["j1", "j2"])
    c.cancel("D")
    c.logs("D", "j1", tail=10, attempt=2)
    c.gpus(threshold_mib=300)
    c.history("D", job="j1")
    c.run_detached("D")
    c.drain("D")
    assert [a[3:] for a, _ in t.calls] == [
        ["retry", "--run-dir", "D", "--stuck"],
        ["retry", "--run-dir", "D", "j1", "j2"],
        ["cancel", "--run-dir", "D"],
        ["logs", "--run-dir", "D", "j1", "--tail", "10", "--attempt", "2"],
        ["gpus", "--threshold", "300"],
        ["history", "--run-dir", "D", "--job", "j1"],
        ["run", "--run-dir", "D", "--detach"],
        ["drain", "--run-dir", "D"],
    ]


def test_job_ids_that_look_like_options_are_refused() -> None:
    c = AgentClient(RecordingTransport(_ok()), "a.pyz")  # type: ignore[arg-type]
    with pytest.raises(AgentError, match="invalid job id"):
        c.cancel("D", ["--all"])


def test_ok_false_becomes_agent_error_with_host() -> None:
    res = CommandResult(1, json.dumps({"ok": False, "error": "unknown_job", "message": "no job zz"}), "")
    with pytest.raises(AgentError) as ei:
        parse_agent_output(res, host="gpu-box")
    assert ei.value.code == "unknown_job" and "gpu-box" in str(ei.value) and "no job zz" in str(ei.value)


def test_stray_output_is_tolerated() -> None:
    res = CommandResult(0, "Welcome to the cluster!\n" + json.dumps({"ok": True, "v": 1}) + "\n", "warn\n")
    assert parse_agent_output(res)["v"] == 1


def test_non_json_output_is_an_error() -> None:
    with pytest.raises(AgentError) as ei:
        parse_agent_output(CommandResult(1, "Traceback...\n", "boom"), host="h", command="status")
    assert ei.value.code == "bad_output" and "boom" in str(ei.value)


def test_missing_agent_file_is_recognised() -> None:
    res = CommandResult(
        2, "", "python3: can't open file '/r/agent-x.pyz': [Errno 2] No such file or directory"
    )
    with pytest.raises(AgentError) as ei:
        parse_agent_output(res, host="h")
    assert ei.value.code == "agent_missing"
