"""The manifest users write: pydantic models, loading from YAML/JSON, and errors that name the field path.

``load_manifest`` validates everything (types, unknown keys, structure, grid expansion, dependencies) and
raises one ``ManifestError`` that lists every problem found, each with its path (``phases[1].template.cmd``).
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
import shlex
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from aris_queue_mcp.errors import FieldError, ManifestError
from aris_queue_mcp.preconditions import PRECONDITION_TYPES, Precondition

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
        raise ValueError(f"{_PRIORITY_HINT}, got {_short(value)}{where}")
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


# ---------------------------------------------------------------------------------------------------- errors
def _unwrap(tp: Any) -> list[Any]:
    """The concrete candidate types behind Optional/Union/Annotated."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(tp):
            if arg is not type(None):
                out.extend(_unwrap(arg))
        return out
    return [tp]


def _model_keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        keys.extend(_field_keys(name, info))
    return keys


def _field_keys(name: str, info: Any) -> list[str]:
    alias = info.validation_alias
    return [a for a in alias.choices if isinstance(a, str)] if isinstance(alias, AliasChoices) else [name]


def _models(candidates: list[Any]) -> list[type[BaseModel]]:
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def _resolve(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """Render a pydantic location as ``phases[1].template.cmd`` and find the model found at it (if any)."""
    path = ""
    candidates: list[Any] = [Manifest]
    for part in loc:
        models = _models(candidates)
        if isinstance(part, int):
            path += f"[{part}]"
            candidates = [
                a for c in candidates if typing.get_origin(c) is list for a in _unwrap(typing.get_args(c)[0])
            ]
            continue
        if len(models) > 1:
            # A discriminated union puts the tag into the location: select that model, hide the tag.
            tagged = [
                m
                for m in models
                if "type" in m.model_fields and part in typing.get_args(m.model_fields["type"].annotation)
            ]
            if tagged:
                candidates = tagged
                continue
        path = f"{path}.{part}" if path else str(part)
        if models:
            info = next((i for n, i in models[0].model_fields.items() if part in _field_keys(n, i)), None)
            candidates = _unwrap(info.annotation) if info else []
        else:
            candidates = [
                a for c in candidates if typing.get_origin(c) is dict for a in _unwrap(typing.get_args(c)[1])
            ]
    models = _models(candidates)
    return path, (models[0] if len(models) == 1 else None)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def suggest(word: str, choices: list[str]) -> str | None:
    """The closest known word, for did-you-mean hints."""
    hits = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not hits:
        lowered = {c.lower(): c for c in choices}
        hits = [lowered[word.lower()]] if word.lower() in lowered else []
    return hits[0] if hits else None


def _convert(err: Any) -> FieldError:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        path, _ = _resolve(loc)
        key = str(loc[-1])
        owner = _resolve(loc[:-1])[1]
        keys = _model_keys(owner) if owner else []
        hint = suggest(key, keys)
        where = f"did you mean {hint!r}?" if hint else f"allowed keys: {', '.join(keys)}"
        return FieldError(path, f"unknown key {key!r}; {where}")
    path, _ = _resolve(loc)
    if kind == "missing":
        key = str(loc[-1])
        return FieldError(path, f"required key {key!r} is missing: add `{key}: ...`")
    if kind == "union_tag_invalid":
        tag = str(err.get("ctx", {}).get("tag", ""))
        hint = suggest(tag, list(PRECONDITION_TYPES))
        did = f"did you mean {hint!r}? " if hint else ""
        return FieldError(path, f"unknown type {tag!r}; {did}use one of: {', '.join(PRECONDITION_TYPES)}")
    if kind == "union_tag_not_found":
        return FieldError(path, f"needs a `type:` key, one of: {', '.join(PRECONDITION_TYPES)}")
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return FieldError(path, msg[len("Value error, ") :])
    if kind in ("model_type", "dict_type"):
        return FieldError(path, f"must be a mapping of key: value, got {_short(err.get('input'))}")
    return FieldError(path, f"{msg[:1].lower()}{msg[1:]} (got {_short(err.get('input'))})")


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
class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (PyYAML would silently keep the last one)."""


def _construct_mapping(
    loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, typing.Hashable) and key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key].line + 1})", mark
            )
        if isinstance(key, typing.Hashable):
            seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_text(text: str, *, is_json: bool = False) -> Any:
    if is_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                [FieldError("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
            ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([FieldError("", f"invalid YAML{where}: {problem}")]) from None


def _read_source(source: Any, base_dir: Path | None) -> tuple[Any, str, Path]:
    """(parsed data, text as given, base dir) for any accepted kind of source."""
    if isinstance(source, Mapping):
        data = dict(source)
        return data, yaml.safe_dump(data, sort_keys=False), (base_dir or Path.cwd()).resolve()
    path: Path | None = None
    if isinstance(source, os.PathLike):
        path = Path(source).expanduser()
    elif isinstance(source, str) and "\n" not in source and len(source) < 4096:
        looks_like_path = source.lower().endswith((".yaml", ".yml", ".json"))
        if os.path.isfile(source) or looks_like_path:
            path = Path(source).expanduser()
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ManifestError(
                [FieldError("", f"cannot read manifest file {str(path)!r}: {exc.strerror}")]
            ) from None
        data = _parse_text(text, is_json=path.suffix.lower() == ".json")
        return data, text, (base_dir or path.expanduser().resolve().parent).resolve()
    if not isinstance(source, str):
        raise ManifestError([FieldError("", f"cannot load a manifest from {type(source).__name__}")])
    return _parse_text(source), source, (base_dir or Path.cwd()).resolve()


def load_manifest(
    source: str | os.PathLike[str] | Mapping[str, Any], *, base_dir: Path | None = None
) -> Manifest:
    """Load and fully validate a manifest from YAML/JSON text, a file path, or a mapping.

    Raises ``ManifestError`` listing every problem with its field path.
    """
    data, text, base = _read_source(source, base_dir)
    if data is None or data == {}:
        raise ManifestError(
            [FieldError("", "the manifest is empty: start with `project: <name>` and a jobs/grid")]
        )
    if not isinstance(data, dict):
        raise ManifestError(
            [
                FieldError(
                    "", f"the top level must be a mapping (project:, jobs:, ...), not a {type(data).__name__}"
                )
            ]
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        errors = [_convert(e) for e in exc.errors()]
        raise ManifestError(_dedupe(errors + _semantic_after_pruning(data, exc))) from None
    manifest._source_text = text
    manifest._base_dir = base
    errors = semantic_errors(manifest)
    if errors:
        raise ManifestError(_dedupe(errors))
    from aris_queue_mcp.grid import expand_jobs  # grid needs these models; import late to avoid a cycle

    expand_jobs(manifest)
    return manifest


def _semantic_after_pruning(data: dict[str, Any], exc: ValidationError) -> list[FieldError]:
    """Best effort to report cross-field problems too: drop the invalid values and check the rest.

    Errors at the level of a dropped value (its parent or siblings) are left out: they would only be
    consequences of the drop. Gives up (returns []) when the pruned manifest is still invalid.
    """
    pruned = copy.deepcopy(data)
    parents: set[str] = set()
    for err in exc.errors():
        loc = tuple(err["loc"])
        node: Any = pruned
        for part in loc[:-1]:
            in_dict = isinstance(node, dict) and part in node
            if in_dict or (isinstance(node, list) and isinstance(part, int) and part < len(node)):
                node = node[part]
            elif isinstance(part, str) and isinstance(node, dict):
                continue  # a discriminator tag pydantic put into the location
            else:
                return []
        key = loc[-1] if loc else None
        if not isinstance(node, dict) or not isinstance(key, str):
            return []
        if err["type"] == "missing":
            node[key] = "placeholder"
        else:
            node.pop(key, None)
        if err["type"] != "extra_forbidden":  # dropping an unknown key changes nothing else
            parents.add(_resolve(loc[:-1])[0])
    try:
        manifest = Manifest.model_validate(pruned)
    except ValidationError:
        return []

    def consequence(path: str) -> bool:
        for parent in parents:
            rest = path[len(parent) :] if path.startswith(parent) else None
            if rest is not None and (rest == "" or re.fullmatch(r"\.?[A-Za-z_]+", rest)):
                return True
        return False

    return [e for e in semantic_errors(manifest) if not consequence(e.path)]


def _dedupe(errors: list[FieldError]) -> list[FieldError]:
    return list(dict.fromkeys(errors))
