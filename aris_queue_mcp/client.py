"""Typed calls to the remote agent's commands (``docs/protocol.md`` §4) over a transport.

Every command prints one JSON object on stdout. Stray stderr is ignored; a stdout that holds no JSON
object, or ``{"ok": false}``, becomes an ``AgentError`` naming the host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import AgentError
from .transport.base import CommandResult, Transport

DEFAULT_TIMEOUT = 60.0
"""Seconds a plain agent command may take over the transport."""

WAIT_MARGIN = 30.0
"""Extra seconds granted on top of ``status --wait SEC`` for the connection and the digest itself."""

_TAIL_CHARS = 800


class AgentClient:
    """Run the agent zipapp at ``agent_path`` with ``python`` on ``transport`` and parse its answers."""

    def __init__(
        self, transport: Transport, agent_path: str, python: str = "python3", timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.transport = transport
        self.agent_path = agent_path
        self.python = python
        self.timeout = timeout

    @property
    def host(self) -> str:
        return self.transport.label

    # --- commands

    def version(self) -> dict[str, Any]:
        """``version``: the agent's version, its Python and platform."""
        return self.call(["version"])

    def run_detached(self, run_dir: str) -> dict[str, Any]:
        """``run --detach``: start the scheduler of ``run_dir``; returns once it holds the lock (``pid``)."""
        return self.call(["run", "--run-dir", run_dir, "--detach"])

    def status(
        self,
        run_dir: str,
        *,
        jobs: bool = False,
        states: Iterable[str] | None = None,
        phase: str | None = None,
        offset: int | None = None,
        limit: int | None = None,
        wait: float | None = None,
        since_seq: int | None = None,
    ) -> dict[str, Any]:
        """``status``: the digest; ``jobs`` adds filtered, paged job rows; ``wait`` blocks for changes."""
        args = ["status", "--run-dir", run_dir]
        if jobs:
            args.append("--jobs")
        for s in states or ():
            args += ["--state", s]
        if phase is not None:
            args += ["--phase", phase]
        if offset is not None:
            args += ["--offset", str(int(offset))]
        if limit is not None:
            args += ["--limit", str(int(limit))]
        timeout = self.timeout
        if wait:
            args += ["--wait", _num(wait)]
            timeout = float(wait) + WAIT_MARGIN
        if since_seq is not None:
            args += ["--since-seq", str(int(since_seq))]
        return self.call(args, timeout=timeout)

    def retry(
        self, run_dir: str, jobs: Sequence[str] = (), *, stuck: bool = False, failed: bool = False
    ) -> dict[str, Any]:
        """``retry``: move the given jobs (or all stuck / failed ones) back to pending."""
        args = ["retry", "--run-dir", run_dir]
        if stuck:
            args.append("--stuck")
        if failed:
            args.append("--failed")
        args += _job_args(jobs)
        return self.call(args)

    def cancel(self, run_dir: str, jobs: Sequence[str] = ()) -> dict[str, Any]:
        """``cancel``: cancel the given jobs, or the whole queue when none is given."""
        return self.call(["cancel", "--run-dir", run_dir, *_job_args(jobs)])

    def drain(self, run_dir: str) -> dict[str, Any]:
        """``drain``: start no new jobs; the scheduler exits when the running ones end."""
        return self.call(["drain", "--run-dir", run_dir])

    def logs(
        self, run_dir: str, job: str, *, tail: int | None = None, attempt: int | None = None
    ) -> dict[str, Any]:
        """``logs``: the last lines of a job's log (one attempt, or all)."""
        args = ["logs", "--run-dir", run_dir, *_job_args([job])]
        if tail is not None:
            args += ["--tail", str(int(tail))]
        if attempt is not None:
            args += ["--attempt", str(int(attempt))]
        return self.call(args)

    def gpus(self, threshold_mib: int | None = None) -> dict[str, Any]:
        """``gpus``: the host's GPUs as nvidia-smi reports them."""
        args = ["gpus"]
        if threshold_mib is not None:
            args += ["--threshold", str(int(threshold_mib))]
        return self.call(args)

    def history(self, run_dir: str, job: str | None = None) -> dict[str, Any]:
        """``history``: the state transitions of the run (or of one job)."""
        args = ["history", "--run-dir", run_dir]
        if job is not None:
            args += ["--job", job]
        return self.call(args)

    # --- plumbing

    def call(self, args: list[str], *, timeout: float | None = None) -> dict[str, Any]:
        """Run one agent command and return its JSON object; raise ``AgentError`` on ``ok: false``."""
        # -S: the agent needs only the standard library, and skipping site-packages (.pth files of big
        # environments) takes tens of milliseconds off every call.
        argv = [self.python, "-S", self.agent_path, *args]
        res = self.transport.run(argv, timeout=timeout or self.timeout)
        return parse_agent_output(res, host=self.host, command=args[0] if args else "")


def parse_agent_output(res: CommandResult, *, host: str | None = None, command: str = "") -> dict[str, Any]:
    """The one JSON object of an agent answer; ``AgentError`` for ``ok: false`` or output that is not JSON."""
    data = _find_json_object(res.stdout)
    if data is None:
        err = res.stderr.strip()
        if res.exit_code == 127:
            raise AgentError("no_python", f"cannot run Python on the host: {_tail(err)}", host=host)
        if "can't open file" in err:
            raise AgentError(
                "agent_missing",
                f"the agent file is missing ({_tail(err)}); it is re-deployed by launch_queue or resume",
                host=host,
            )
        raise AgentError(
            "bad_output",
            f"`{command}` exited {res.exit_code} without a JSON answer; stdout: {_tail(res.stdout)!r}; "
            f"stderr: {_tail(err)!r}",
            host=host,
        )
    if data.get("ok") is False:
        raise AgentError(
            str(data.get("error") or "error"), str(data.get("message") or "no message"), host=host
        )
    return data


def _find_json_object(stdout: str) -> dict[str, Any] | None:
    text = stdout.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
        return data if isinstance(data, dict) else None
    except json.JSONDecodeError:
        pass
    # Tolerate a stray line printed before the answer (e.g. by a login script): take the last JSON line.
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return data
    return None


def _job_args(jobs: Iterable[str]) -> list[str]:
    out = []
    for j in jobs:
        if not j or j.startswith("-"):
            raise AgentError("usage", f"invalid job id {j!r}")
        out.append(j)
    return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]
