"""``python -m benchmarks [--quick] [--only latency,makespan,...] [--out PATH] [--markdown PATH]``.

Runs the benchmark families on simulated GPUs (no GPU needed), prints one table and writes every figure as
JSON (default ``benchmarks/results/latest.json``, git-ignored). ``--markdown`` also writes the table with the
machine description as Markdown (how ``benchmarks/RESULTS.md`` is made).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import callcost, latency, makespan, recovery, scale
from .common import REPO, Row, machine

FAMILIES = {
    "latency": latency,
    "makespan": makespan,
    "scale": scale,
    "callcost": callcost,
    "recovery": recovery,
}
DEFAULT_OUT = REPO / "benchmarks" / "results" / "latest.json"


def run_all(mode: str, only: list[str], keep: Path | None = None) -> dict[str, Any]:
    """Run the chosen families in ``mode``; a family that fails records its error and the rest still run."""
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": mode,
            "machine": machine(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        }
    }
    t0 = time.perf_counter()
    for name in only:
        t = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        try:
            result[name] = FAMILIES[name].run(mode, keep)
        except Exception as exc:
            result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(result[name]["traceback"], file=sys.stderr)
        result[name]["elapsed_s"] = round(time.perf_counter() - t, 1)
    result["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
    result["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def table_rows(result: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for name, mod in FAMILIES.items():
        if name not in result:
            continue
        d = result[name]
        if "error" in d:
            out.append((name, f"FAILED: {d['error'][:150]}", "", ""))
        else:
            out.extend(mod.rows(d))
    return out


def render_text(rows: list[Row]) -> str:
    head = ("figure", "measured", "goal", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    widths[1] = min(widths[1], 110)
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def render_markdown(result: dict[str, Any], rows: list[Row], command: str) -> str:
    meta = result["meta"]
    m = meta["machine"]
    lines = [
        "| figure | measured | goal | |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"Measured {meta['date']} ({meta['mode']} run, {meta['elapsed_s']} s) on {m['cpu']}, "
        f"{m['cores']} cores, "
        f"{m['mem_gib']} GiB, {m['os']}, Python {m['python']}, commit {m['git_commit']}; load average "
        f"{meta['loadavg_start'][0]} at start, {meta['loadavg_end'][0]} at end. GPUs simulated "
        "(`aris_queue_mcp.simgpu`). Reproduce with:",
        "",
        "```",
        command,
        "```",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    p.add_argument("--tiny", action="store_true", help="smoke sizes, seconds per family (the test uses it)")
    p.add_argument(
        "--only", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}"
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON output (default {DEFAULT_OUT})")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown here")
    p.add_argument("--keep", type=Path, default=None, help="keep run directories under this folder")
    a = p.parse_args(argv)
    only = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in FAMILIES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(FAMILIES)}")
    mode = "tiny" if a.tiny else "quick" if a.quick else "full"
    result = run_all(mode, only, a.keep)
    rows = table_rows(result)
    print(render_text(rows))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nfigures written to {a.out}")
    if a.markdown:
        cmd = "python -m benchmarks" + {"full": "", "quick": " --quick", "tiny": " --tiny"}[mode]
        if a.only != ",".join(FAMILIES):
            cmd += f" --only {a.only}"
        a.markdown.write_text(render_markdown(result, rows, cmd))
        print(f"table written to {a.markdown}")
    return 1 if any("error" in result[n] for n in only) else 0


if __name__ == "__main__":
    raise SystemExit(main())
