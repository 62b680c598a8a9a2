"""Reading a manifest: YAML/JSON parsing, pydantic errors turned into field paths, then validation.

``load`` is what :func:`aris_queue_mcp.manifest.load_manifest` runs: it collects every problem (types,
unknown keys with a did-you-mean, structure, grid expansion, dependencies) into one ``ManifestError``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import AliasChoices, BaseModel, ValidationError

from aris_queue_mcp.errors import FieldError, ManifestError
from aris_queue_mcp.manifest import Manifest, semantic_errors, suggest, value_preview
from aris_queue_mcp.preconditions import PRECONDITION_TYPES


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
        return FieldError(path, f"must be a mapping of key: value, got {value_preview(err.get('input'))}")
    return FieldError(path, f"{msg[:1].lower()}{msg[1:]} (got {value_preview(err.get('input'))})")


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


def load(source: str | os.PathLike[str] | Mapping[str, Any], *, base_dir: Path | None = None) -> Manifest:
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
