"""The MCP server as a subprocess over stdio, exactly as Claude Code or Cursor start it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.e2e.helpers import manifest, train_cmd

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_stdio_server_runs_a_queue(tmp_path: Path, simgpu: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "aris_queue_mcp.server", "--project-dir", str(tmp_path / "project")],
        env=env,
    )
    m = manifest("stdio_run", root=tmp_path / "remote", cwd=tmp_path / "work")
    m["jobs"] = [{"id": f"j{i}", "cmd": train_cmd(duration=0.2, output=f"o/j{i}.json")} for i in range(3)]
    async with Client(params) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"launch_queue", "queue_status", "summarize"} <= names

        expanded = await client.call_tool("expand_grid", {"manifest": m})
        assert expanded.structured_content["total"] == 3

        launched = await client.call_tool("launch_queue", {"manifest": m})
        assert not launched.is_error, launched.content
        run_id = launched.structured_content["run_id"]

        status: dict[str, Any] = {}
        for _ in range(40):
            status = (
                await client.call_tool("queue_status", {"run_id": run_id, "wait_s": 1})
            ).structured_content
            if status["counts"].get("completed") == 3:
                break
        assert status["counts"]["completed"] == 3

        bad = await client.call_tool("expand_grid", {"manifest": "project: x\njobs: [{id: 'a b', cmd: c}]\n"})
        assert bad.is_error and "jobs[0].id" in bad.content[0].text
    assert (tmp_path / "project" / "experiment_queue" / run_id / "run.json").is_file()
