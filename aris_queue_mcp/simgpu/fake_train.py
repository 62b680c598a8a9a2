"""A fake training script for the simulated GPU: "allocates" memory on ``CUDA_VISIBLE_DEVICES`` and sleeps.

Runs as ``python -m aris_queue_mcp.simgpu.fake_train`` or as a plain script path. Under a flock on the sim
directory it checks each visible GPU's free memory (total - baseline - active foreign load - live
allocations); when ``--mem-mib`` does not fit it prints a real-looking PyTorch ``torch.OutOfMemoryError``
traceback to stderr and exits 1. Otherwise it records ``alloc/<pid>.json``, prints progress, sleeps
``--duration``, writes ``--output`` (JSON with its arguments and GPU binding), drops its allocation and exits
0. An empty ``CUDA_VISIBLE_DEVICES`` is a CPU run: no memory check.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time

if __package__:
    from . import nvidia_smi as sim
else:  # run as a plain script path: the sibling module is next to this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import nvidia_smi as sim  # type: ignore[no-redef]

GIB = 1024.0


def _oom_traceback(want_mib: int, local_index: int, total_mib: int, free_mib: int) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "/home/user/project/train.py", line 212, in <module>\n'
        "    main(args)\n"
        '  File "/home/user/project/train.py", line 158, in main\n'
        "    loss = model(batch).loss\n"
        '  File "/opt/conda/lib/python3.11/site-packages/torch/nn/modules/module.py", line 1553, in '
        "_wrapped_call_impl\n"
        "    return self._call_impl(*args, **kwargs)\n"
        '  File "/opt/conda/lib/python3.11/site-packages/torch/nn/modules/linear.py", line 117, in forward\n'
        "    return F.linear(input, self.weight, self.bias)\n"
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {want_mib / GIB:.2f} GiB. "
        f"GPU {local_index} has a total capacity of {total_mib / GIB:.2f} GiB of which "
        f"{free_mib / GIB:.2f} GiB is free. "
        # Memory held by other processes shows only as less free memory; this process had allocated nothing.
        "Including non-PyTorch memory, this process has 0 bytes memory in use. Of the allocated memory "
        "0 bytes is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated. "
        "If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
        "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n"
    )


_ERROR_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/home/user/project/train.py", line 212, in <module>\n'
    "    main(args)\n"
    '  File "/home/user/project/train.py", line 97, in main\n'
    "    dataset = load_dataset(args.data)\n"
    '  File "/home/user/project/data.py", line 41, in load_dataset\n'
    '    raise ValueError(f"unknown dataset split {split!r}")\n'
    "ValueError: unknown dataset split 'vaildation'\n"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mem-mib", type=int, default=1000, help="MiB to hold on each visible GPU")
    p.add_argument("--duration", type=float, default=1.0, help="seconds of 'training'")
    p.add_argument("--alloc-after", type=float, default=0.0, help="seconds before allocating (model load)")
    p.add_argument("--output", default=None, help="file to write at the end (relative to cwd)")
    p.add_argument("--fail", choices=["none", "error", "segv"], default="none")
    p.add_argument("--steps", type=int, default=3, help="progress lines to print")
    return p.parse_args(argv)


def visible_gpus() -> list[int]:
    """Indices in ``CUDA_VISIBLE_DEVICES`` ("" = CPU run)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [int(x) for x in raw.split(",") if x.strip()]


def allocate(directory: str, gpus: list[int], mib: int) -> tuple[int, int, int, int] | None:
    """Reserve ``mib`` on every GPU in ``gpus``; return ``(local, index, total, free)`` of one short of it."""
    with open(os.path.join(directory, "lock"), "a+") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        config = sim.load_config(directory)
        usage = sim.gpu_usage(directory, config)
        for local, gpu in enumerate(gpus):
            if gpu >= len(config["gpus"]):
                raise SystemExit(
                    f"RuntimeError: CUDA error: invalid device ordinal (CUDA_VISIBLE_DEVICES={gpu})"
                )
            total = int(config["gpus"][gpu]["memory_total_mib"])
            free = total - usage[gpu]
            if mib > free:
                return local, gpu, total, free
        os.makedirs(os.path.join(directory, "alloc"), exist_ok=True)
        rec = {"gpus": {str(g): mib for g in gpus}, "start": sim.proc_start(os.getpid())}
        path = os.path.join(directory, "alloc", f"{os.getpid()}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(rec, f)
        os.replace(path + ".tmp", path)
    return None


def release(directory: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, "alloc", f"{os.getpid()}.json"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    gpus = visible_gpus()
    directory = os.environ.get("SIMGPU_DIR", "")
    print(
        f"fake_train: pid={os.getpid()} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r} "
        f"job={os.environ.get('ARIS_JOB_ID', '')} attempt={os.environ.get('ARIS_ATTEMPT', '')}",
        flush=True,
    )
    if args.alloc_after > 0:
        time.sleep(args.alloc_after)
    if args.fail == "error":
        sys.stderr.write(_ERROR_TRACEBACK)
        return 1
    if gpus and directory:
        short = allocate(directory, gpus, args.mem_mib)
        if short is not None:
            local, _gpu, total, free = short
            sys.stderr.write(_oom_traceback(args.mem_mib, local, total, free))
            return 1
    # A SIGTERM (timeout, cancel) still drops the allocation, like a CUDA context torn down at exit.
    signal.signal(signal.SIGTERM, lambda *_: (release(directory), os._exit(143)))
    try:
        if args.fail == "segv":
            os.kill(os.getpid(), signal.SIGSEGV)
        steps = max(1, args.steps)
        for step in range(1, steps + 1):
            time.sleep(args.duration / steps)
            print(f"step {step}/{steps} loss={1.0 / step:.4f}", flush=True)
        if args.output:
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
            payload = {
                "args": vars(args),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "job": os.environ.get("ARIS_JOB_ID"),
                "attempt": os.environ.get("ARIS_ATTEMPT"),
                "pid": os.getpid(),
            }
            with open(args.output, "w", encoding="utf-8") as f:
                json.dump(payload, f)
        print("fake_train: done", flush=True)
    finally:
        if directory:
            release(directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
