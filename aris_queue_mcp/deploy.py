"""Put the agent on a host and start a run's scheduler there.

The agent ships as one zipapp built from the ``remote_agent`` package. Its file name carries its hash
(``agent-<sha[:16]>.pyz``), so a host that has it already is not sent it again, and runs started by
different versions can live side by side. On the host the zipapp is unpacked once into ``agent-<sha[:16]>/``
and byte-compiled: code inside a zip is recompiled at every start, which tripled the cost of each status call.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .client import AgentClient
from .errors import AgentError, DeployError
from .transport.base import Transport

ProgressFn = Callable[[float, float, str], None]
"""Progress callback: ``(done, total, message)``."""

MIN_PYTHON = (3, 8)
"""Oldest Python the agent runs on."""

AGENT_PACKAGE = "remote_agent"

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_MAIN = b"from remote_agent.__main__ import main\nraise SystemExit(main())\n"
_UNSAFE_PATH = re.compile(r"[\x00-\x1f\x7f]")
_cache: tuple[bytes, str] | None = None


@dataclass(frozen=True)
class AgentInstall:
    """Where the agent lives on a host."""

    root: str
    path: str
    """What the interpreter runs: the unpacked agent directory."""
    archive: str
    """The uploaded zipapp it was unpacked from."""
    sha256: str
    python: str
    python_version: str
    uploaded: bool


# --- the zipapp


def build_agent_zipapp() -> tuple[bytes, str]:
    """The agent zipapp and its sha256; deterministic (same sources → same bytes), cached per process."""
    global _cache
    if _cache is None:
        data = _build_zip(_package_dir())
        _cache = (data, hashlib.sha256(data).hexdigest())
    return _cache


def _package_dir() -> Path:
    spec = importlib.util.find_spec(AGENT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DeployError(f"the {AGENT_PACKAGE} package is not installed next to aris_queue_mcp")
    return Path(next(iter(spec.submodule_search_locations)))


def _build_zip(pkg: Path) -> bytes:
    files = sorted(
        p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts and not p.name.startswith(".")
    )
    if not any(p.name == "__main__.py" and p.parent == pkg for p in files):
        raise DeployError(f"{pkg} has no __main__.py: the agent cannot be built")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        _add(zf, "__main__.py", _MAIN)
        for p in files:
            _add(zf, f"{AGENT_PACKAGE}/{p.relative_to(pkg).as_posix()}", p.read_bytes())
    return buf.getvalue()


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # unix, whatever machine builds it, so the bytes do not depend on the builder
    zf.writestr(info, data)


# --- on the host

_PROBE = r"""
mkdir -p "$1/runs" || exit 10
chmod 700 "$1" "$1/runs" || exit 10
v=$("$2" -c 'import sys; print("%d.%d.%d" % tuple(sys.version_info[:3]))' 2>&1) || { echo "$v"; exit 11; }
echo "python=$v"
if [ -f "$4/__main__.py" ]; then echo "agent=unpacked"; elif [ -f "$3" ]; then echo "agent=packed"
else echo "agent=missing"; fi
"""

# Unpack next to the zipapp under a temporary name, then rename: a concurrent deploy of the same hash either
# wins the rename or finds the directory complete. Byte-compiling is best effort (a read-only cache is fine).
_UNPACK = r"""
tmp="$3.tmp.$$"
rm -rf "$tmp"
"$1" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$2" "$tmp" || exit 12
chmod -R go-rwx "$tmp"
"$1" -c 'import os, shutil, sys
try:
    os.rename(sys.argv[1], sys.argv[2])  # fails if it exists, where `mv` would nest the copy inside it
except OSError:
    shutil.rmtree(sys.argv[1], ignore_errors=True)' "$tmp" "$3"
"$1" -m compileall -q "$3" >/dev/null 2>&1
exit 0
"""

_MKRUN = r"""
mkdir -p "$1" || exit 10
chmod 700 "$1" || exit 10
"""


def expand_remote_path(transport: Transport, path: str) -> str:
    """``path`` with a leading ``~`` replaced by the host's home; must end up absolute and printable."""
    check_remote_path(path, transport.label)
    if path == "~" or path.startswith("~/"):
        path = transport.home().rstrip("/") + path[1:]
    if not path.startswith("/"):
        raise DeployError(f"{transport.label}: remote path {path!r} must be absolute or start with '~/'")
    return path.rstrip("/") or "/"


def check_remote_path(path: str, host: str) -> str:
    """Refuse paths with control characters (they would end up in file names and logs)."""
    if not path or _UNSAFE_PATH.search(path):
        raise DeployError(f"{host}: unsafe remote path {path!r}")
    return path


def ensure_agent(
    transport: Transport, remote_root: str, python: str = "python3", *, progress: ProgressFn | None = None
) -> AgentInstall:
    """Make sure ``<root>/agent-<hash>.pyz`` is on the host, unpacked and running; upload only if missing."""
    host = transport.label
    report = progress or _no_progress
    root = expand_remote_path(transport, remote_root)
    data, sha = build_agent_zipapp()
    archive = f"{root}/agent-{sha[:16]}.pyz"
    path = f"{root}/agent-{sha[:16]}"

    report(0, 3, f"checking {host}: {root}, {python}")
    res = transport.run(["sh", "-c", _PROBE, "sh", root, python, archive, path], timeout=60.0)
    out = res.stdout.strip()
    if res.exit_code == 10:
        raise DeployError(f"{host}: cannot create {root} (mode 0700): {res.stderr.strip() or out}")
    if res.exit_code != 0:
        raise DeployError(
            f"{host}: cannot run {python!r} ({(out or res.stderr).strip()[-300:]}); "
            f"install Python >= {_v(MIN_PYTHON)} or set `python:` in the manifest"
        )
    facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    version = facts.get("python", "?")
    if _parse_version(version) < MIN_PYTHON:
        raise DeployError(
            f"{host}: {python} is Python {version}; the agent needs >= {_v(MIN_PYTHON)}: "
            "set `python:` in the manifest to a newer interpreter"
        )

    uploaded = False
    state = facts.get("agent")
    if state == "missing":
        report(1, 3, f"uploading agent ({len(data) // 1024} KiB) to {host}")
        _upload_bytes(transport, data, archive)
        uploaded = True
    else:
        report(1, 3, f"agent {sha[:16]} already on {host}")
    if state != "unpacked":
        res = transport.run(["sh", "-c", _UNPACK, "sh", python, archive, path], timeout=120.0)
        if res.exit_code != 0:
            raise DeployError(f"{host}: cannot unpack {archive}: {(res.stderr or res.stdout).strip()[-300:]}")

    report(2, 3, f"verifying agent on {host}")
    try:
        AgentClient(transport, path, python).version()
    except AgentError as exc:
        raise DeployError(f"{host}: the agent at {path} does not run: {exc}") from exc
    report(3, 3, f"agent ready on {host}")
    return AgentInstall(
        root=root,
        path=path,
        archive=archive,
        sha256=sha,
        python=python,
        python_version=version,
        uploaded=uploaded,
    )


def create_run_dir(transport: Transport, install: AgentInstall, run_id: str, spec_json: str) -> str:
    """Create ``<root>/runs/<run_id>`` (0700) holding ``spec.json`` (0600); return the directory."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id) or ".." in run_id:
        raise DeployError(f"invalid run id {run_id!r}")
    run_dir = f"{install.root}/runs/{run_id}"
    res = transport.run(["sh", "-c", _MKRUN, "sh", run_dir], timeout=60.0)
    if res.exit_code != 0:
        raise DeployError(f"{transport.label}: cannot create {run_dir}: {(res.stderr or res.stdout).strip()}")
    _upload_bytes(transport, spec_json.encode("utf-8"), f"{run_dir}/spec.json")
    return run_dir


def start_agent(client: AgentClient, run_dir: str) -> int:
    """Start the run's scheduler detached and confirm it is alive; return its pid.

    ``AgentError`` with code ``already_running`` passes through: the caller decides what that means.
    """
    started = client.run_detached(run_dir)
    pid = started.get("pid")
    digest = client.status(run_dir)
    agent = digest.get("agent") or {}
    if not agent.get("alive") and agent.get("state") != "finished":
        raise DeployError(
            f"{client.host}: the scheduler of {run_dir} (pid {pid}) exited right after start; "
            f"read {run_dir}/agent.log on the host"
        )
    return int(pid if pid is not None else agent.get("pid") or 0)


# --- helpers


def _upload_bytes(transport: Transport, data: bytes, remote_path: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix="aris-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        transport.put_file(tmp, remote_path, mode=0o600)
    finally:
        os.unlink(tmp)


def _parse_version(text: str) -> tuple[int, ...]:
    m = re.match(r"(\d+)\.(\d+)", text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _v(t: tuple[int, ...]) -> str:
    return ".".join(map(str, t))


def _no_progress(done: float, total: float, message: str) -> None:
    pass
