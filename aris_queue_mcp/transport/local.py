"""This machine as a transport: commands run as subprocesses (never through a shell); files are local."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile

from ..errors import TransportError
from .base import CommandResult


class LocalTransport:
    """Run commands and move files on the local machine. Used when a host's ``ssh`` is ``local`` or absent."""

    def __init__(self, label: str = "local") -> None:
        self.label = label

    def __repr__(self) -> str:
        return f"LocalTransport(label={self.label!r})"

    def run(self, argv: list[str], *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` directly (no shell) and wait at most ``timeout`` seconds for it."""
        if not argv:
            raise TransportError(f"{self.label}: empty command")
        cmd = shlex.join(argv)
        try:
            # A new session makes the command the leader of its own process group, so a timeout can kill
            # everything it started, not just the first process.
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise TransportError(f"{self.label}: cannot start {cmd}: {exc.strerror or exc}") from exc
        try:
            out, err = proc.communicate(input=stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            # Children of the killed group may still hold the pipes open; do not wait on them forever.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            raise TransportError(f"{self.label}: command timed out after {timeout:g}s: {cmd}") from None
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        return CommandResult(
            exit_code=proc.returncode,
            stdout=out.decode("utf-8", errors="replace"),
            stderr=err.decode("utf-8", errors="replace"),
        )

    def put_file(self, local_path: str, remote_path: str, *, mode: int = 0o600) -> None:
        """Copy ``local_path`` to ``remote_path`` atomically (temp file in the same dir, then rename)."""
        dest = os.path.expanduser(remote_path)
        directory = os.path.dirname(os.path.abspath(dest))
        try:
            with open(local_path, "rb") as src:
                data = src.read()
        except OSError as exc:
            raise TransportError(
                f"{self.label}: cannot read local file {local_path}: {exc.strerror}"
            ) from exc
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        except OSError as exc:
            raise TransportError(
                f"{self.label}: cannot write to {directory}: {exc.strerror}; does the directory exist?"
            ) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, dest)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise TransportError(f"{self.label}: cannot write {dest}: {exc.strerror}") from exc
        except BaseException:
            _unlink_quietly(tmp)
            raise

    def read_file(self, remote_path: str) -> bytes:
        """Read a whole local file (``~`` is expanded)."""
        path = os.path.expanduser(remote_path)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise TransportError(f"{self.label}: no such file: {path}") from None
        except OSError as exc:
            raise TransportError(f"{self.label}: cannot read {path}: {exc.strerror}") from exc

    def home(self) -> str:
        """The current user's home directory (``$HOME``)."""
        return os.path.expanduser("~")

    def close(self) -> None:
        """Nothing to release."""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        # Already gone, or (rarely) the group changed hands: kill at least the process we started.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
