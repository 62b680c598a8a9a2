"""Figure 4: what following a run costs an agent — MCP calls and bytes returned.

The teacher -> student example (``examples/teacher_student.yaml``, 2 teachers then 6 students matched on
N; its own durations and settings) runs to completion on simulated GPUs through the real MCP server
(``create_server``) and the real ``mcp`` client, in memory, twice:

- ``attention``: ``launch_queue``, then ``queue_status(run_id, wait_s=300, until="attention")`` until the
  queue is finished (the flow the server's instructions describe: it returns when a job fails, gets stuck
  or is blocked, or when the queue ends);
- ``wait``: ``launch_queue``, then ``queue_status(run_id, wait_s=300, since_seq=<last seq>)``, returning at
  every state change;
- ``poll``: ``launch_queue``, then ``queue_status(run_id)`` every ``poll_s`` seconds (30 s in the full run).

Counted per call: the UTF-8 bytes of the text content (what a model reads) and of the structured content
(JSON).
``notice_delay_s`` is how long after the scheduler's finish the client learned the run was done.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import Client

from aris_queue_mcp.server import create_server

from .common import ACTIVE, REPO, Row, cancel_everything, check_mode, fmt, sim_gpus, workdir

POLL_S = {"tiny": 1.0, "quick": 5.0, "full": 30.0}
WAIT_S = 300
EXAMPLE = REPO / "examples" / "teacher_student.yaml"


def _example(root: Path) -> Path:
    """The example manifest, unchanged but for where it runs (a scratch cwd and agent root) and
    PYTHONPATH so its ``python -m aris_queue_mcp.simgpu.fake_train`` finds the package."""
    m = yaml.safe_load(EXAMPLE.read_text())
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    m["cwd"] = str(work)
    m["remote_root"] = str(root / "agent_root")
    m["python"] = sys.executable
    m.setdefault("env", {})["PYTHONPATH"] = str(REPO)
    path = work / "teacher_student.yaml"
    path.write_text(yaml.safe_dump(m, sort_keys=False))
    return path


def _size(result: Any) -> tuple[int, int]:
    text = sum(len(c.text.encode()) for c in result.content if getattr(c, "type", "") == "text")
    structured = len(json.dumps(result.structured_content).encode()) if result.structured_content else 0
    return text, structured


def _done(s: dict[str, Any]) -> bool:
    counts = s.get("counts") or {}
    agent = s.get("agent") or {}
    return not any(counts.get(k) for k in ACTIVE) and bool(s.get("finished_at") or not agent.get("alive"))


async def _follow(root: Path, how: str, poll_s: float) -> dict[str, Any]:
    server = create_server(root / "project")
    calls: list[dict[str, Any]] = []

    async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        t = time.perf_counter()
        r = await c.call_tool(name, args)
        text, structured = _size(r)
        calls.append(
            {"tool": name, "text_bytes": text, "structured_bytes": structured, "s": time.perf_counter() - t}
        )
        if r.is_error:
            raise RuntimeError(f"{name} failed: {r.content}")
        return r.structured_content or {}

    async with Client(server) as c:
        try:
            launched = await call("launch_queue", {"manifest": str(_example(root))})
            run_id = launched["run_id"]
            t_launch = time.time()
            s: dict[str, Any] = {}
            while True:
                if how == "attention":
                    args: dict[str, Any] = {"run_id": run_id, "wait_s": WAIT_S, "until": "attention"}
                    if s:
                        args["since_seq"] = s["seq"]
                elif how == "wait":
                    args = {"run_id": run_id, "wait_s": WAIT_S}
                    if s:
                        args["since_seq"] = s["seq"]
                else:
                    if s:
                        await anyio.sleep(poll_s)
                    args = {"run_id": run_id}
                s = await call("queue_status", args)
                if _done(s):
                    break
                if time.time() - t_launch > 600:
                    raise TimeoutError("the example did not finish in 600 s")
            t_known = time.time()
        finally:
            runs = await c.call_tool("list_runs", {})
            for run in (runs.structured_content or {}).get("runs", []):
                await c.call_tool("cancel_job", {"run_id": run["run_id"]})
    counts = s.get("counts") or {}
    finished = s.get("finished_at")
    return {
        "calls": len(calls),
        "calls_by_tool": {t: sum(1 for x in calls if x["tool"] == t) for t in {x["tool"] for x in calls}},
        "text_bytes": sum(x["text_bytes"] for x in calls),
        "structured_bytes": sum(x["structured_bytes"] for x in calls),
        "approx_tokens": sum(x["text_bytes"] for x in calls) // 4,
        "status_text_bytes_max": max(
            (x["text_bytes"] for x in calls if x["tool"] == "queue_status"), default=0
        ),
        "completed": counts.get("completed", 0),
        "total": s.get("total"),
        "run_s": round(finished - (s.get("started_at") or finished), 3) if finished else None,
        "notice_delay_s": round(t_known - finished, 3) if finished else None,
        "seq_at_end": s.get("seq"),
    }


def run(mode: str = "full", base: Path | None = None) -> dict[str, Any]:
    """Follow the example both ways; return calls and bytes of each."""
    poll_s = POLL_S[check_mode(mode)]
    warnings.filterwarnings("ignore", category=UserWarning, module="mcp")
    out: dict[str, Any] = {"example": "examples/teacher_student.yaml", "wait_s": WAIT_S, "poll_s": poll_s}
    with workdir(base, "callcost") as root:
        for how in ("attention", "wait", "poll"):
            sub = root / how
            with sim_gpus(sub, 4):
                try:
                    out[how] = anyio.run(_follow, sub, how, poll_s)
                finally:
                    from aris_queue_mcp.service import QueueService

                    svc = QueueService(sub / "project")
                    cancel_everything(svc)
                    svc.close()
    out["note"] = (
        "wait mode returns at every journal change, so its call count grows with the number of state "
        "changes (not with time) and the client learns of the finish at once; polling costs one call per "
        "poll_s of run time and learns of the finish up to poll_s late"
    )
    return out


def rows(d: dict[str, Any]) -> list[Row]:
    a, w, p = d["attention"], d["wait"], d["poll"]
    return [
        (
            f"4. MCP cost, teacher->student example, wait_s={d['wait_s']}, until=attention",
            f"{a['calls']} calls, {fmt(a['text_bytes'])} B text (~{fmt(a['approx_tokens'])} tok), "
            f"finish known after {fmt(a['notice_delay_s'])} s",
            "",
            "",
        ),
        (
            f"4. MCP cost, same, wait_s={d['wait_s']}, returning at every change",
            f"{w['calls']} calls, {fmt(w['text_bytes'])} B text (~{fmt(w['approx_tokens'])} tok), "
            f"finish known after {fmt(w['notice_delay_s'])} s",
            "",
            "",
        ),
        (
            f"4. MCP cost, same, polling every {d['poll_s']:g} s",
            f"{p['calls']} calls, {fmt(p['text_bytes'])} B text (~{fmt(p['approx_tokens'])} tok), "
            f"finish known after {fmt(p['notice_delay_s'])} s",
            "",
            "",
        ),
    ]
