"""The agent's one exception tree; each error carries a protocol error code (docs/protocol.md §4)."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_ALREADY_RUNNING = 3


class AgentError(Exception):
    """An error the command line reports as ``{"ok": false, "error": code, "message": ...}``."""

    code = "internal"
    exit_code = EXIT_ERROR

    def __init__(self, message: str, code: str | None = None, **extra: object) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.extra = extra

    def to_json(self) -> dict:
        out = {"ok": False, "error": self.code, "message": str(self)}
        out.update(self.extra)
        return out


class UsageError(AgentError):
    """Bad command line."""

    code = "usage"
    exit_code = EXIT_USAGE


class BadSpecError(AgentError):
    """``spec.json`` is missing fields, has the wrong format/version, or is inconsistent."""

    code = "bad_spec"


class NoRunDirError(AgentError):
    """The run directory (or its spec) does not exist."""

    code = "no_run_dir"


class UnknownJobError(AgentError):
    """A job id that the run spec does not contain."""

    code = "unknown_job"


class AlreadyRunningError(AgentError):
    """Another scheduler holds the run's lock."""

    code = "already_running"
    exit_code = EXIT_ALREADY_RUNNING


class NotRunningError(AgentError):
    """The command needs a running scheduler and there is none."""

    code = "not_running"


class TimeoutError_(AgentError):
    """The scheduler did not answer a control request in time."""

    code = "timeout"


class InvalidTransition(AgentError):
    """A state change the transition table does not allow (a bug, never user input)."""

    code = "internal"
