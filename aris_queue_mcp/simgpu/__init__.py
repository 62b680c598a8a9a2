"""A simulated GPU server for tests, demos and benchmarks (standard library only).

:func:`install` writes a sim state directory; the returned environment additions put a faithful fake
``nvidia-smi`` first on ``PATH`` and point it (and :mod:`aris_queue_mcp.simgpu.fake_train`) at that directory.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

BIN_DIR = Path(__file__).resolve().parent / "bin"
"""Directory holding the fake ``nvidia-smi`` as a plain script (to copy to another host); ``install`` writes
a faster copy into the sim directory and puts that on ``PATH``."""

FAKE_TRAIN = Path(__file__).resolve().parent / "fake_train.py"
"""Path of the fake training script (runnable as a plain script)."""

DEFAULT_NAME = "NVIDIA H100 80GB HBM3"


def gpu_uuid(sim_dir: Path, index: int) -> str:
    """A stable, real-looking GPU UUID derived from the sim directory and index."""
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"simgpu:{sim_dir}:{index}"))


def install(
    sim_dir: Path,
    *,
    gpus: int = 4,
    memory_total_mib: int = 81559,
    foreign: Sequence[dict] = (),
    na: Sequence[int] = (),
    driver_failure: bool = False,
    baseline_used_mib: int = 3,
    name: str = DEFAULT_NAME,
) -> dict[str, str]:
    """Write ``config.json`` for a simulated server and return env additions (``SIMGPU_DIR``, ``PATH``).

    ``foreign`` entries ``{"gpu", "mib", "start", "end"}`` are memory held by processes outside the queue
    between ``start`` and ``end`` seconds after now (``end`` None = forever); ``na`` lists GPUs whose memory
    reads ``[N/A]``; ``driver_failure`` makes ``nvidia-smi`` fail like a broken driver.
    """
    sim_dir = Path(sim_dir)
    (sim_dir / "alloc").mkdir(parents=True, exist_ok=True)
    config = {
        "gpus": [
            {
                "name": name,
                "uuid": gpu_uuid(sim_dir, i),
                "memory_total_mib": memory_total_mib,
                "baseline_used_mib": baseline_used_mib,
                "na": i in set(na),
            }
            for i in range(gpus)
        ],
        "foreign": [dict(f) for f in foreign],
        "epoch": time.time(),
        "driver_failure": driver_failure,
    }
    write_config(sim_dir, config)
    bin_dir = sim_dir / "bin"
    write_nvidia_smi(bin_dir / "nvidia-smi")
    path = os.environ.get("PATH", "")
    return {"SIMGPU_DIR": str(sim_dir), "PATH": f"{bin_dir}{os.pathsep}{path}" if path else str(bin_dir)}


def write_nvidia_smi(target: Path) -> None:
    """Write the fake ``nvidia-smi`` with this interpreter (and ``-S``) in its shebang.

    The real one is a native binary that answers in tens of milliseconds; ``#!/usr/bin/env python3`` may go
    through a version-manager shim and site-packages start-up that cost five times that, which would make
    the simulated GPUs slow down exactly the scheduling latency the benchmarks measure.
    """
    source = (Path(__file__).resolve().parent / "nvidia_smi.py").read_text(encoding="utf-8")
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    interpreter = sys.executable if sys.executable and " " not in sys.executable else "/usr/bin/env python3"
    flag = " -S" if not interpreter.startswith("/usr/bin/env") else ""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(f"#!{interpreter}{flag}\n{body}", encoding="utf-8")
    tmp.chmod(0o755)
    os.replace(tmp, target)


def read_config(sim_dir: Path) -> dict:
    """The current ``config.json`` of a sim directory."""
    return json.loads((Path(sim_dir) / "config.json").read_text(encoding="utf-8"))


def write_config(sim_dir: Path, config: dict) -> None:
    """Replace ``config.json`` atomically (tests flip ``driver_failure``/``na`` while a queue runs)."""
    path = Path(sim_dir) / "config.json"
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(json.dumps(config, indent=1), encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["BIN_DIR", "FAKE_TRAIN", "gpu_uuid", "install", "read_config", "write_config", "write_nvidia_smi"]
