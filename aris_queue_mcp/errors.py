"""One exception tree for the MCP side. Messages say what was wrong, where, and what to do next."""

from __future__ import annotations

from dataclasses import dataclass


class ArisQueueError(Exception):
    """Base of every error this package raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One problem in a manifest, located by its field path (e.g. ``phases[1].template.cmd``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ManifestError(ArisQueueError):
    """A manifest failed validation; carries every problem found, not just the first."""

    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"manifest has {len(self.errors)} error(s):\n{lines}")


class TransportError(ArisQueueError):
    """A host could not be reached or a command on it failed to run. The message names the host."""


class HostKeyError(TransportError):
    """The host's key is unknown or changed; never silently accepted."""


class DeployError(ArisQueueError):
    """The agent could not be installed or started on the host."""


class AgentError(ArisQueueError):
    """The agent answered with an error (``{"ok": false, ...}``) or with output that is not its JSON."""

    def __init__(self, code: str, message: str, host: str | None = None):
        self.code = code
        self.host = host
        where = f" on {host}" if host else ""
        super().__init__(f"agent error{where} ({code}): {message}")


class RunNotFoundError(ArisQueueError):
    """No run with this id in the local run registry."""
