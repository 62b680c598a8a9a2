"""Preconditions: what must hold on the host before a job may start, and how to check it there."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PathPrecondition(_Strict):
    """A path must exist (relative to the job's cwd; globs allowed; ``${N}``/``{N}`` substituted)."""

    type: Literal["checkpoint_exists", "path_exists"]
    path: str = Field(min_length=1)


class CommandPrecondition(_Strict):
    """A shell command (the user's own text, run in the job's cwd) must exit 0 on the host."""

    type: Literal["command"]
    run: str = Field(min_length=1)


class DiskFreePrecondition(_Strict):
    """At least ``min`` GB must be free on the file system holding ``path`` (default: the job's cwd)."""

    type: Literal["disk_free_gb"]
    min: float = Field(ge=0)
    path: str | None = None


Precondition = Annotated[
    PathPrecondition | CommandPrecondition | DiskFreePrecondition, Field(discriminator="type")
]
PRECONDITION_TYPES = ("checkpoint_exists", "path_exists", "command", "disk_free_gb")
