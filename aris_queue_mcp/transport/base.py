"""The small interface every transport implements: run a command, upload a file, read a file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class CommandResult:
    """What a finished command gave back."""

    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@runtime_checkable
class Transport(Protocol):
    """A host we can run commands on. ``label`` names the host in every error message."""

    label: str

    def run(self, argv: list[str], *, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run ``argv`` (never through a local shell; over SSH each word is quoted) and wait for it.

        Raises ``TransportError`` if the host cannot be reached or the command outlives ``timeout``.
        A non-zero exit is not an error here: it is in ``CommandResult.exit_code``.
        """
        ...

    def put_file(self, local_path: str, remote_path: str, *, mode: int = 0o600) -> None:
        """Upload a file atomically (temp name, then rename) and set its mode."""
        ...

    def read_file(self, remote_path: str) -> bytes:
        """Read a whole file; raises ``TransportError`` (naming host and path) if it is missing."""
        ...

    def home(self) -> str:
        """The absolute home directory of the login user on that host."""
        ...

    def close(self) -> None:
        """Release connections; the transport may be used again (it reconnects)."""
        ...
