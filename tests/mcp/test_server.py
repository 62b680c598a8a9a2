"""The MCP server through the real ``mcp`` client, in memory: schemas, annotations, errors and a whole run."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from aris_queue_mcp.server import create_server
from tests.e2e.helpers import manifest, train_cmd

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
TOOLS = {
    "expand_grid",
    "check_preconditions",
    "launch_queue",
    "queue_status",
    "retry_job",
    "cancel_job",
    "drain_queue",
    "tail_log",
    "list_runs",
    "gpu_status",
    "summarize",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tmp_path: Path, simgpu: Any) -> AsyncIterator[Client]:
    warnings.filterwarnings("ignore", category=UserWarning, module="mcp")
    server = create_server(tmp_path / "project")
    async with Client(server) as c:
        yield c
        runs = await c.call_tool("list_runs", {})
        for run in runs.structured_content["runs"]:  # no scheduler outlives a test
            await c.call_tool("cancel_job", {"run_id": run["run_id"]})


def small_manifest(tmp_path: Path, **fields: Any) -> dict[str, Any]:
    m = manifest("mcp_small", root=tmp_path / "remote", cwd=tmp_path / "work", **fields)
    m.setdefault(
        "grid",
        {"seed": [1, 2, 3]},
    )
    m.setdefault(
        "template",
        {
            "id": "s${seed}",
            "cmd": train_cmd(duration=1.5, output="out/s${seed}.json"),
            "output_check": "out/s${seed}.json",
        },
    )
    return m


async def test_tools_have_schemas_descriptions_and_annotations(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool.description, tool.name
        assert tool.output_schema, f"{tool.name} has no output schema"
        for name, prop in tool.input_schema.get("properties", {}).items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    assert tools["queue_status"].annotations.read_only_hint is True
    assert tools["cancel_job"].annotations.destructive_hint is True
    assert tools["launch_queue"].annotations.read_only_hint is not True


async def test_expand_grid_of_the_example_gives_36_jobs(client: Client) -> None:
    r = await client.call_tool("expand_grid", {"manifest": str(REPO / "examples" / "grid_sweep.yaml")})
    assert not r.is_error
    assert r.structured_content["total"] == 36
    assert len({j["id"] for j in r.structured_content["jobs"]}) == r.structured_content["jobs_shown"]


async def test_malformed_manifest_returns_every_error_with_its_path(client: Client) -> None:
    bad = "project: p\ngrid: {N: 64}\ntemplate: {id: 'x${N}', cmd: 'run ${M}'}\ngpu: [0]\ntimeout: -5\n"
    r = await client.call_tool("expand_grid", {"manifest": bad})
    assert r.is_error
    text = r.content[0].text
    assert "grid.N" in text  # a scalar grid value is an error, never split into characters
    assert "gpu" in text and "did you mean 'gpus'" in text
    assert "timeout" in text


async def test_manifest_as_object_and_bad_argument_types(client: Client, tmp_path: Path) -> None:
    r = await client.call_tool("expand_grid", {"manifest": small_manifest(tmp_path)})
    assert not r.is_error and r.structured_content["total"] == 3
    r = await client.call_tool("expand_grid", {"manifest": small_manifest(tmp_path), "limit": 0})
    assert r.is_error


async def test_a_whole_run_through_mcp(client: Client, tmp_path: Path) -> None:
    m = small_manifest(tmp_path)
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    r = await client.call_tool("launch_queue", {"manifest": m}, progress_callback=on_progress)
    assert not r.is_error, r.content
    launched = r.structured_content
    assert launched["status"] == "started"
    run_id = launched["run_id"]
    assert progress and progress[-1][0] >= progress[0][0]

    again = await client.call_tool("launch_queue", {"manifest": m})
    assert again.structured_content["status"] == "already_running"
    assert again.structured_content["run_id"] == run_id

    # One call waits for the whole queue: no polling loop.
    r = await client.call_tool("queue_status", {"run_id": run_id, "wait_s": 60, "until": "finished"})
    status = r.structured_content
    assert status["counts"]["completed"] == 3, status

    log = await client.call_tool("tail_log", {"run_id": run_id, "job_id": "s2", "lines": 5})
    assert not log.is_error and log.structured_content["lines"]

    summary = (await client.call_tool("summarize", {"run_id": run_id})).structured_content
    assert Path(summary["path"]).is_file() and "mcp_small" in summary["markdown"]

    runs = (await client.call_tool("list_runs", {})).structured_content["runs"]
    assert [x["run_id"] for x in runs] == [run_id]

    gpus = (await client.call_tool("gpu_status", {"run_id": run_id})).structured_content
    assert len(gpus["gpus"]) == 4 and gpus["error"] is None


async def test_errors_tell_the_model_what_to_do(client: Client, tmp_path: Path) -> None:
    r = await client.call_tool("queue_status", {"run_id": "no-such-run"})
    assert r.is_error and "no-such-run" in r.content[0].text
    r = await client.call_tool("tail_log", {"run_id": "../../etc", "job_id": "x"})
    assert r.is_error
    r = await client.call_tool("launch_queue", {})
    assert r.is_error and "manifest" in r.content[0].text


async def test_stuck_job_retry_and_cancel(client: Client, tmp_path: Path) -> None:
    m = manifest(
        "mcp_retry",
        root=tmp_path / "remote",
        cwd=tmp_path / "work",
        retry={"delay": 0, "max_attempts": 1},
        jobs=[
            {"id": "bad", "cmd": "echo boom >&2; exit 3"},
            {"id": "child", "cmd": "true", "depends_on": ["bad"]},
            {"id": "slow", "cmd": "sleep 30"},
        ],
    )
    run_id = (await client.call_tool("launch_queue", {"manifest": m})).structured_content["run_id"]
    calls = 0
    status: dict[str, Any] = {}
    while not (status.get("counts", {}).get("stuck") == 1 and status["counts"].get("blocked") == 1):
        args = {"run_id": run_id, "wait_s": 30, "until": "attention"}
        status = (await client.call_tool("queue_status", args)).structured_content
        calls += 1
        assert calls < 4, status
    assert status["counts"]["stuck"] == 1 and status["counts"]["blocked"] == 1
    assert any("bad" in f["jobs"] for f in status["failures"])
    assert "retry_job" in status["next_call_hint"]

    retried = (await client.call_tool("retry_job", {"run_id": run_id, "stuck": True})).structured_content
    assert retried["retried"] == ["bad"]

    cancelled = (
        await client.call_tool("cancel_job", {"run_id": run_id, "job_id": "slow"})
    ).structured_content
    assert cancelled["cancelled"] == ["slow"]
    rows = (
        await client.call_tool(
            "queue_status", {"run_id": run_id, "include_jobs": True, "states": ["cancelled"]}
        )
    ).structured_content["jobs"]
    assert [j["id"] for j in rows] == ["slow"]
    assert json.dumps(rows)
