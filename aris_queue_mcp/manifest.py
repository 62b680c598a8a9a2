"""The manifest users write: pydantic models, loading from YAML/JSON, and errors that name the field path.

``load_manifest`` validates everything (types, unknown keys, structure, grid expansion, dependencies) and
raises one ``ManifestError`` that lists every problem found, each with its path (``phases[1].template.cmd``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from aris_queue_mcp.errors import FieldError
from aris_queue_mcp.preconditions import Precondition

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ID_RE = re.compile(ID_PATTERN[1:-1])  # use with fullmatch
ID_MAX_LEN = 128
VAR_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # use with fullmatch
RESERVED_VARS = frozenset({"GPU"})
LOCAL = "local"


def scalar_text(value: Any) -> str:
    """How a value reads inside a string: YAML-style booleans, lists joined by spaces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(scalar_text(v) for v in value)
    return str(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


# ---------------------------------------------------------------------------------------------------- models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class RetryPolicy(_Strict):
    """How often a job is retried after one kind of failure, and how long to wait first."""

    delay: float = Field(0.0, ge=0)
    max_attempts: int = Field(1, ge=1)


def _to_list_of_str(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"{what} must be a string or a list of strings, e.g. [a, b]")


def _check_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("env must be a mapping of NAME: value, e.g. {WANDB_MODE: offline}")
    out: dict[str, str] = {}
    for key, val in value.items():
        if not isinstance(key, str) or not VAR_RE.fullmatch(key):
            raise ValueError(f"env name {key!r} is not a valid shell variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if not _is_scalar(val):
            raise ValueError(f"env value of {key} must be a string or number, got {type(val).__name__}")
        out[key] = scalar_text(val)
    return out


def _check_id(value: str | None, what: str) -> str | None:
    if value is None or "${" in value:  # templated ids are checked after substitution
        return value
    if not ID_RE.fullmatch(value) or len(value) > ID_MAX_LEN:
        raise ValueError(
            f"{what} {value!r} is not valid: use letters, digits, '.', '_', '-' "
            f"(first a letter or digit, at most {ID_MAX_LEN} characters)"
        )
    return value


def _check_args(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("args must be a mapping of option: value, e.g. {seed: 42, lr: 0.001}")
    for key, val in value.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", key):
            raise ValueError(
                f"arg name {key!r} must be letters, digits, '_', '-', '.' (it renders as --{key})"
            )
        ok = val is None or _is_scalar(val) or (isinstance(val, list) and all(_is_scalar(v) for v in val))
        if not ok:
            raise ValueError(f"arg {key} must be a string, number, boolean or a list of those")
    return dict(value)


def parse_number(value: Any) -> int | float | None:
    """``value`` as a finite int or float (a number, or a string that reads as one); None if it is not one.

    Booleans are not numbers here (YAML ``true`` would otherwise be 1).
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return value if math.isfinite(value) else None
    except OverflowError:  # an int too large for a float
        return None


_PRIORITY_HINT = "priority must be a number (higher starts first; default 0)"


def _check_priority(value: Any) -> int | float | None:
    """A top-level or phase priority: a plain number (``${var}`` is for templates and jobs)."""
    if value is None:
        return None
    number = parse_number(value) if not isinstance(value, str) else None
    if number is None:
        where = "; ${var} works only in a template or job" if isinstance(value, str) and "${" in value else ""
        raise ValueError(f"{_PRIORITY_HINT}, got {value_preview(value)}{where}")
    return number


def _check_top_priority(value: Any) -> int | float:
    number = _check_priority(value)
    if number is None:
        raise ValueError(f"{_PRIORITY_HINT}, got None")
    return number


def _check_job_priority(value: Any) -> int | float | str | None:
    """A job's or template's priority: a number, or text with ``${var}`` that substitutes to one."""
    if isinstance(value, str):
        if "${" in value:
            return value  # checked after substitution
        number = parse_number(value)
        if number is None:
            raise ValueError(f'{_PRIORITY_HINT} or `"${{var}}"` naming a numeric grid value, got {value!r}')
        return number
    return _check_priority(value)


_OUTPUT_CHECK = Field(None, validation_alias=AliasChoices("output_check", "expected_output"))


class _HasOutputCheck(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _one_output_check(cls, data: Any) -> Any:
        if isinstance(data, dict) and "output_check" in data and "expected_output" in data:
            raise ValueError("give only one of output_check / expected_output (they are the same key)")
        return data


class _JobFields(_HasOutputCheck):
    """What an explicit job and a template have in common."""

    cmd: str | None = None
    args: dict[str, Any] | None = None
    output_check: str | None = _OUTPUT_CHECK
    depends_on: list[str] = Field(default_factory=list)
    timeout: float | None = Field(None, gt=0)
    env: dict[str, str] = Field(default_factory=dict)
    gpus_per_job: int | None = Field(None, ge=0)
    priority: int | float | str | None = None

    _v_dep = field_validator("depends_on", mode="before")(lambda v: _to_list_of_str(v, "depends_on"))
    _v_env = field_validator("env", mode="before")(_check_env)
    _v_args = field_validator("args", mode="before")(_check_args)
    _v_priority = field_validator("priority", mode="before")(_check_job_priority)


class JobEntry(_JobFields):
    """One explicit job: an id and either a full ``cmd`` or ``args`` rendered after ``default_cmd``."""

    id: str

    _v_id = field_validator("id")(lambda v: _check_id(v, "job id"))


class Template(_JobFields):
    """What each grid point becomes; ``${var}`` names a grid key."""

    id: str | None = None

    _v_id = field_validator("id")(lambda v: _check_id(v, "template id"))


def _check_grid(value: Any) -> dict[str, list[Any]] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError("grid must be a non-empty mapping of name: [values], e.g. {seed: [1, 2, 3]}")
    problems = []
    for key, vals in value.items():
        if not isinstance(key, str) or not VAR_RE.fullmatch(key):
            problems.append(f"grid key {key!r} must be a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        elif key in RESERVED_VARS:
            problems.append(f"grid key {key!r} is reserved (the agent fills ${{{key}}}); rename it")
        elif not isinstance(vals, list):
            problems.append(f"grid.{key} must be a list: write {key}: [{scalar_text(vals)}]")
        elif not vals:
            problems.append(
                f"grid.{key} is an empty list: it would expand to no jobs; give at least one value"
            )
        elif not all(_is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v)) for v in vals):
            problems.append(f"grid.{key} values must be strings, numbers, booleans or lists of those")
    if problems:
        raise ValueError("; ".join(problems))
    return dict(value)


class Phase(_Strict):
    """A named stage with its own jobs or grid+template; may wait for earlier phases."""

    name: str
    depends_on: list[str] = Field(default_factory=list)
    match: list[str] = Field(default_factory=list)
    jobs: list[JobEntry] | None = None
    grid: dict[str, list[Any]] | None = None
    template: Template | None = None
    default_cmd: str | None = None
    preconditions: list[Precondition] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0)
    gpus_per_job: int | None = Field(None, ge=0)
    priority: int | float | None = None

    _v_name = field_validator("name")(lambda v: _check_id(v, "phase name"))
    _v_dep = field_validator("depends_on", mode="before")(lambda v: _to_list_of_str(v, "depends_on"))
    _v_match = field_validator("match", mode="before")(lambda v: _to_list_of_str(v, "match"))
    _v_env = field_validator("env", mode="before")(_check_env)
    _v_grid = field_validator("grid", mode="before")(_check_grid)
    _v_priority = field_validator("priority", mode="before")(_check_priority)


_OOM_DEFAULT = {"delay": 120.0, "max_attempts": 3}
_RETRY_DEFAULT = {"delay": 0.0, "max_attempts": 1}


def _fill(defaults: dict[str, Any]):
    def fill(value: Any) -> Any:
        return {**defaults, **value} if isinstance(value, dict) else value

    return fill


class Manifest(_Strict):
    """A whole manifest as the user wrote it (after validation). See docs/protocol.md for the run spec."""

    project: str = Field(min_length=1)
    ssh: str = LOCAL
    cwd: str | None = None
    conda: str | None = None
    conda_hook: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    setup: list[str] = Field(default_factory=list)
    default_cmd: str | None = None
    preconditions: list[Precondition] = Field(default_factory=list)
    gpus: Literal["auto"] | list[int] = "auto"
    max_parallel: int | None = Field(None, ge=1)
    gpu_free_threshold_mib: int = Field(500, ge=0)
    gpus_per_job: int = Field(1, ge=0)
    oom_retry: RetryPolicy = Field(default_factory=lambda: RetryPolicy(**_OOM_DEFAULT))
    retry: RetryPolicy = Field(default_factory=lambda: RetryPolicy(**_RETRY_DEFAULT))
    timeout: float | None = Field(None, gt=0)
    priority: int | float = 0
    poll_interval: float = Field(2.0, gt=0)
    kill_grace: float = Field(10.0, ge=0)
    launcher: Literal["process", "screen", "tmux"] = "process"
    oom_signatures: list[str] = Field(default_factory=list)
    remote_root: str = Field("~/.aris_queue", min_length=1)
    python: str = Field("python3", min_length=1)
    jobs: list[JobEntry] | None = None
    grid: dict[str, list[Any]] | None = None
    template: Template | None = None
    phases: list[Phase] | None = None

    _source_text: str = PrivateAttr(default="")
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    # The expansion, computed once: load_manifest expands to validate, and the run spec, the plan and the
    # precondition check all need the same list (10,000 jobs take about a second to expand).
    _expanded: list[Any] | None = PrivateAttr(default=None)

    _v_env = field_validator("env", mode="before")(_check_env)
    _v_grid = field_validator("grid", mode="before")(_check_grid)
    _v_oom = field_validator("oom_retry", mode="before")(_fill(_OOM_DEFAULT))
    _v_retry = field_validator("retry", mode="before")(_fill(_RETRY_DEFAULT))
    _v_priority = field_validator("priority", mode="before")(_check_top_priority)

    @field_validator("setup", mode="before")
    @classmethod
    def _v_setup(cls, value: Any) -> list[str]:
        if isinstance(value, str):
            return [line for line in value.splitlines() if line.strip()]
        return _to_list_of_str(value, "setup")

    @field_validator("ssh")
    @classmethod
    def _v_ssh(cls, value: str) -> str:
        # The target ends up as an ssh argument: a leading '-' would be read as an option.
        if not value or value.startswith("-") or any(c.isspace() for c in value):
            raise ValueError(
                f"ssh {value!r} is not a host: write an ~/.ssh/config alias, user@host[:port], or 'local'"
            )
        return value

    @field_validator("gpus", mode="before")
    @classmethod
    def _v_gpus(cls, value: Any) -> Any:
        if value == "auto":
            return value
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(
                "gpus must be 'auto', a list of GPU indices like [0, 1], or [] for CPU-only slots"
            )
        if any(v < 0 for v in value):
            raise ValueError("GPU indices must be >= 0")
        if len(set(value)) != len(value):
            raise ValueError(f"GPU indices must be unique, got {value}")
        return value

    @field_validator("oom_signatures")
    @classmethod
    def _v_sigs(cls, value: list[str]) -> list[str]:
        for sig in value:
            try:
                re.compile(sig)
            except re.error as exc:
                raise ValueError(f"oom_signatures entry {sig!r} is not a valid regex: {exc}") from None
        return value

    @property
    def source_text(self) -> str:
        """The manifest text as given (a mapping source is dumped as YAML)."""
        return self._source_text

    @property
    def base_dir(self) -> Path:
        """The folder relative paths resolve against in local mode (the manifest file's folder)."""
        return self._base_dir


# ---------------------------------------------------------------------------------------------------- target
def manifest_target(manifest: Manifest) -> str:
    """``"local"`` or the ssh target (config alias or ``user@host[:port]``) the jobs run on."""
    return LOCAL if manifest.ssh.lower() == LOCAL else manifest.ssh


def is_local(manifest: Manifest) -> bool:
    """True when jobs run on this machine."""
    return manifest_target(manifest) == LOCAL


def resolve_cwd(manifest: Manifest) -> str:
    """The jobs' working directory as the run spec carries it (absolute, or ``~...`` on a remote host)."""
    cwd = manifest.cwd
    if is_local(manifest):
        path = Path(os.path.expanduser(cwd)) if cwd else manifest.base_dir
        if not path.is_absolute():
            path = manifest.base_dir / path
        return os.path.normpath(str(path))
    if not cwd:
        return "~"
    if cwd.startswith(("/", "~")):
        return cwd
    rel = cwd[2:] if cwd.startswith("./") else cwd
    return "~" if rel in ("", ".") else f"~/{rel}"


def render_prelude(manifest: Manifest) -> list[str]:
    """Shell lines run before every job: conda activation, then ``setup``."""
    lines: list[str] = []
    if manifest.conda:
        hook = manifest.conda_hook
        if hook and hook.lstrip().startswith("eval"):
            lines.append(hook.strip())
        elif hook:
            lines.append(f'eval "$({shlex.quote(hook)} shell.bash hook)"')
        else:
            lines.append('eval "$(conda shell.bash hook)"')
        lines.append(f"conda activate {shlex.quote(manifest.conda)}")
    lines.extend(manifest.setup)
    return lines


def value_preview(value: Any) -> str:
    """A short repr of a user value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, choices: list[str]) -> str | None:
    """The closest known word, for did-you-mean hints."""
    hits = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not hits:
        lowered = {c.lower(): c for c in choices}
        hits = [lowered[word.lower()]] if word.lower() in lowered else []
    return hits[0] if hits else None


# ---------------------------------------------------------------------------------------------------- checks
def _is_empty(key: str, jobs: Any, phases: Any) -> bool:
    """An empty ``jobs: []`` / ``phases: []`` would silently mean a queue with nothing to do."""
    return (key == "jobs" and jobs == []) or (key == "phases" and phases == [])


def _exactly_one_source(
    where: str, jobs: Any, grid: Any, template: Any, phases: Any, default_cmd: str | None, *, top: bool
) -> list[FieldError]:
    """Structure checks shared by the top level (``top``) and phases."""
    prefix = f"{where}." if where else ""
    given = [k for k, v in (("jobs", jobs), ("grid", grid), ("phases", phases)) if v is not None]
    errors = [
        FieldError(f"{prefix}{k}", f"{k} is empty: list at least one")
        for k in given
        if _is_empty(k, jobs, phases)
    ]
    if not given:
        if template is not None:
            return [FieldError(f"{prefix}template", "a template needs a grid: add `grid: {name: [values]}`")]
        kinds = "jobs:, grid: + template:" + (", or phases:" if top else "")
        return [FieldError(where, f"no jobs: give one of {kinds}")]
    if len(given) > 1:
        kinds = "jobs / grid+template / phases" if top else "jobs / grid+template"
        errors.append(FieldError(where, f"give only one of {kinds}, not {' and '.join(given)}"))
    if template is not None and grid is None:
        errors.append(
            FieldError(f"{prefix}template", "a template needs a grid: add `grid: {name: [values]}`")
        )
    if grid is not None and template is None and not default_cmd:
        errors.append(
            FieldError(f"{prefix}grid", "a grid needs a `template:` (or a `default_cmd:` for the args)")
        )
    if template is not None and not template.cmd and not default_cmd:
        errors.append(FieldError(f"{prefix}template", "the template needs `cmd:` (or set `default_cmd:`)"))
    for i, job in enumerate(jobs or []):
        if job.cmd is None and job.args is None:
            errors.append(FieldError(f"{prefix}jobs[{i}]", f"job {job.id!r} needs `cmd:` or `args:`"))
        elif job.cmd is None and not default_cmd:
            errors.append(
                FieldError(
                    f"{prefix}jobs[{i}]",
                    f"job {job.id!r} gives args but no cmd: add `cmd:` or `default_cmd:`",
                )
            )
    return errors


def _check_gpus_per_job(path: str, value: int | None, gpus: Any) -> list[FieldError]:
    if value is not None and isinstance(gpus, list) and value > len(gpus):
        return [FieldError(path, f"gpus_per_job {value} is more than the {len(gpus)} GPUs listed in gpus")]
    return []


def semantic_errors(m: Manifest) -> list[FieldError]:
    """Cross-field checks that the models alone cannot express."""
    errors = _exactly_one_source("", m.jobs, m.grid, m.template, m.phases, m.default_cmd, top=True)
    errors += _check_gpus_per_job("gpus_per_job", m.gpus_per_job, m.gpus)
    if m.template:
        errors += _check_gpus_per_job("template.gpus_per_job", m.template.gpus_per_job, m.gpus)
    for i, job in enumerate(m.jobs or []):
        errors += _check_gpus_per_job(f"jobs[{i}].gpus_per_job", job.gpus_per_job, m.gpus)
    names = [p.name for p in m.phases or []]
    seen: set[str] = set()
    for i, phase in enumerate(m.phases or []):
        where = f"phases[{i}]"
        if phase.name in seen:
            errors.append(FieldError(f"{where}.name", f"phase name {phase.name!r} is used twice; rename one"))
        seen.add(phase.name)
        errors += _exactly_one_source(
            where, phase.jobs, phase.grid, phase.template, None, phase.default_cmd or m.default_cmd, top=False
        )
        for key, value in (("gpus_per_job", phase.gpus_per_job),):
            errors += _check_gpus_per_job(f"{where}.{key}", value, m.gpus)
        if phase.template:
            errors += _check_gpus_per_job(
                f"{where}.template.gpus_per_job", phase.template.gpus_per_job, m.gpus
            )
        for j, job in enumerate(phase.jobs or []):
            errors += _check_gpus_per_job(f"{where}.jobs[{j}].gpus_per_job", job.gpus_per_job, m.gpus)
        for dep in phase.depends_on:
            if dep == phase.name:
                errors.append(FieldError(f"{where}.depends_on", f"phase {dep!r} cannot depend on itself"))
            elif dep not in names:
                hint = suggest(dep, names)
                did = f"; did you mean {hint!r}?" if hint else f"; phases are: {', '.join(names)}"
                errors.append(FieldError(f"{where}.depends_on", f"unknown phase {dep!r}{did}"))
        if phase.match and not phase.depends_on:
            errors.append(
                FieldError(f"{where}.match", "match needs depends_on: name the phase(s) to match against")
            )
        by_name = {p.name: p for p in m.phases or []}
        for key in phase.match:
            if phase.grid is not None and key not in phase.grid:
                errors.append(FieldError(f"{where}.match", f"match key {key!r} is not in this phase's grid"))
            for dep in phase.depends_on:
                other = by_name.get(dep)
                if other is not None and other.grid is not None and key not in other.grid:
                    errors.append(
                        FieldError(f"{where}.match", f"match key {key!r} is not in the grid of phase {dep!r}")
                    )
    return errors


# ---------------------------------------------------------------------------------------------------- loading
def load_manifest(
    source: str | os.PathLike[str] | Mapping[str, Any], *, base_dir: Path | None = None
) -> Manifest:
    """Load and validate a manifest: YAML/JSON text, a path to a .yaml/.yml/.json file, or a mapping.

    Raises ``ManifestError`` listing every problem with its field path (see ``manifest_load``).
    """
    from aris_queue_mcp.manifest_load import load  # the loader needs these models: import it late

    return load(source, base_dir=base_dir)
