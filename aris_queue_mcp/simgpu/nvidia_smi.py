#!/usr/bin/env python3
"""A faithful fake ``nvidia-smi`` backed by a simulated GPU state directory (``$SIMGPU_DIR``).

Self-contained on purpose (standard library only, no imports from the rest of the package) so the file can
be copied onto a remote ``PATH`` as ``nvidia-smi``; ``bin/nvidia-smi`` is a link to it. ``fake_train``
imports the accounting helpers (:func:`load_config`, :func:`gpu_usage`) from here so both agree on what a GPU
holds.
State directory layout::

    config.json      {"gpus": [{"name", "uuid", "memory_total_mib", "baseline_used_mib", "na"}],
                      "foreign": [{"gpu", "mib", "start", "end"}], "epoch": <unix time>,
                      "driver_failure": bool}
    alloc/<pid>.json {"gpus": {"<index>": mib}, "start": "<proc start ticks>"} of running fake jobs
    lock             flock taken by fake jobs while they check and allocate memory

Output formats copy the real tool: ``--query-gpu=... --format=csv[,noheader][,nounits]`` rows are joined
by ``", "``; memory of a GPU marked ``"na"`` reads ``[N/A]``; a driver failure prints the real message and
exits 9; an unknown field prints ``Field "x" is not a valid field to query.`` and exits 2.
"""

from __future__ import annotations

import json
import os
import sys
import time

DRIVER_FAILURE_TEXT = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running.\n"
)

# field -> (header, unit or None)
GPU_FIELDS = {
    "index": ("index", None),
    "uuid": ("uuid", None),
    "name": ("name", None),
    "memory.used": ("memory.used [MiB]", "MiB"),
    "memory.total": ("memory.total [MiB]", "MiB"),
    "memory.free": ("memory.free [MiB]", "MiB"),
    "utilization.gpu": ("utilization.gpu [%]", "%"),
    "pci.bus_id": ("pci.bus_id", None),
    "driver_version": ("driver_version", None),
}
APP_FIELDS = {
    "pid": ("pid", None),
    "used_memory": ("used_gpu_memory [MiB]", "MiB"),
    "used_gpu_memory": ("used_gpu_memory [MiB]", "MiB"),
    "gpu_uuid": ("gpu_uuid", None),
    "process_name": ("process_name", None),
    "name": ("process_name", None),
}
DRIVER_VERSION = "550.54.15"


def sim_dir() -> str:
    """The simulated GPU state directory from ``$SIMGPU_DIR``."""
    d = os.environ.get("SIMGPU_DIR")
    if not d:
        sys.stderr.write("simgpu: SIMGPU_DIR is not set\n")
        raise SystemExit(9)
    return d


def load_config(directory: str) -> dict:
    """Read ``config.json`` of a sim directory."""
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks (field 22 of /proc/<pid>/stat), or None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def live_allocations(directory: str) -> list[tuple[int, int, int]]:
    """``(pid, gpu index, MiB)`` of every fake job still alive; allocations of dead pids are ignored."""
    out: list[tuple[int, int, int]] = []
    adir = os.path.join(directory, "alloc")
    try:
        names = sorted(os.listdir(adir))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            pid = int(name[:-5])
            with open(os.path.join(adir, name), encoding="utf-8") as f:
                rec = json.load(f)
        except (ValueError, OSError):
            continue
        start = proc_start(pid)
        if start is None or (rec.get("start") and rec["start"] != start):
            continue
        for gpu, mib in rec.get("gpus", {}).items():
            out.append((pid, int(gpu), int(mib)))
    return out


def gpu_usage(directory: str, config: dict, now: float | None = None) -> list[int]:
    """Used MiB of every simulated GPU: baseline + active foreign load + live fake-job allocations."""
    now = time.time() if now is None else now
    gpus = config["gpus"]
    used = [int(g.get("baseline_used_mib", 0)) for g in gpus]
    elapsed = now - float(config.get("epoch", now))
    for fl in config.get("foreign", []):
        end = fl.get("end")
        active = float(fl.get("start", 0)) <= elapsed and (end is None or elapsed < float(end))
        if active and 0 <= int(fl["gpu"]) < len(gpus):
            used[int(fl["gpu"])] += int(fl["mib"])
    for _pid, gpu, mib in live_allocations(directory):
        if 0 <= gpu < len(gpus):
            used[gpu] += mib
    return [min(u, int(g["memory_total_mib"])) for u, g in zip(used, gpus)]  # noqa: B905 - runs on Python 3.8 too


def _value(field: str, i: int, gpu: dict, used: int, units: bool) -> str:
    total = int(gpu["memory_total_mib"])
    na = bool(gpu.get("na"))
    unit = GPU_FIELDS[field][1]
    if field == "index":
        return str(i)
    if field == "uuid":
        return gpu["uuid"]
    if field == "name":
        return gpu["name"]
    if field == "pci.bus_id":
        return f"00000000:{0x18 + i:02X}:00.0"
    if field == "driver_version":
        return DRIVER_VERSION
    if na:
        return "[N/A]"
    raw = {"memory.used": used, "memory.total": total, "memory.free": total - used}.get(field)
    if field == "utilization.gpu":
        raw = 100 if used > int(gpu.get("baseline_used_mib", 0)) + 100 else 0
    return f"{raw} {unit}" if units and unit else str(raw)


def _parse_format(fmt: str) -> tuple[bool, bool]:
    parts = [p.strip() for p in fmt.split(",") if p.strip()]
    return "noheader" not in parts, "nounits" not in parts


def query_gpu(fields: list[str], header: bool, units: bool, directory: str) -> str:
    """Rows of ``--query-gpu`` in the real csv format."""
    config = load_config(directory)
    usage = gpu_usage(directory, config)
    lines = []
    if header:
        lines.append(", ".join(GPU_FIELDS[f][0] for f in fields))
    for i, gpu in enumerate(config["gpus"]):
        lines.append(", ".join(_value(f, i, gpu, usage[i], units) for f in fields))
    return "".join(line + "\n" for line in lines)


def query_apps(fields: list[str], header: bool, units: bool, directory: str) -> str:
    """Rows of ``--query-compute-apps``: one per (fake job, GPU) allocation."""
    config = load_config(directory)
    lines = []
    if header:
        lines.append(", ".join(APP_FIELDS[f][0] for f in fields))
    for pid, gpu, mib in live_allocations(directory):
        vals = []
        for f in fields:
            if f == "pid":
                vals.append(str(pid))
            elif f in ("used_memory", "used_gpu_memory"):
                vals.append(f"{mib} MiB" if units else str(mib))
            elif f == "gpu_uuid":
                vals.append(config["gpus"][gpu]["uuid"])
            else:
                vals.append("python")
        lines.append(", ".join(vals))
    return "".join(line + "\n" for line in lines)


def table(directory: str) -> str:
    """A short version of the default human table (enough for eyeballing, not parsed by anyone)."""
    config = load_config(directory)
    usage = gpu_usage(directory, config)
    out = [
        time.strftime("%a %b %d %H:%M:%S %Y"),
        f"NVIDIA-SMI {DRIVER_VERSION}    Driver Version: {DRIVER_VERSION}",
    ]
    for i, gpu in enumerate(config["gpus"]):
        mem = "[N/A]" if gpu.get("na") else f"{usage[i]}MiB / {gpu['memory_total_mib']}MiB"
        out.append(f"|  {i}  {gpu['name']:<28} | {mem:>22} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the subset of nvidia-smi's command line the project uses."""
    args = sys.argv[1:] if argv is None else argv
    directory = sim_dir()
    try:
        config = load_config(directory)
    except (OSError, ValueError):
        sys.stdout.write(DRIVER_FAILURE_TEXT)
        return 9
    if config.get("driver_failure"):
        sys.stdout.write(DRIVER_FAILURE_TEXT)
        return 9
    query, kind, fmt = None, None, "csv"
    for a in args:
        if a.startswith("--query-gpu="):
            query, kind = a.split("=", 1)[1], "gpu"
        elif a.startswith("--query-compute-apps="):
            query, kind = a.split("=", 1)[1], "apps"
        elif a.startswith("--format="):
            fmt = a.split("=", 1)[1]
        elif a in ("-L", "--list-gpus"):
            for i, gpu in enumerate(config["gpus"]):
                sys.stdout.write(f"GPU {i}: {gpu['name']} (UUID: {gpu['uuid']})\n")
            return 0
        else:
            sys.stdout.write(
                'Invalid combination of input arguments. Please run "nvidia-smi -h" for help.\n\n'
            )
            return 2
    if query is None:
        sys.stdout.write(table(directory))
        return 0
    known = GPU_FIELDS if kind == "gpu" else APP_FIELDS
    fields = [f.strip() for f in query.split(",") if f.strip()]
    for f in fields:
        if f not in known:
            sys.stdout.write(f'Field "{f}" is not a valid field to query.\n\n')
            return 2
    header, units = _parse_format(fmt)
    text = (query_gpu if kind == "gpu" else query_apps)(fields, header, units, directory)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
