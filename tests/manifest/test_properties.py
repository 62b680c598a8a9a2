"""Property tests: random grids expand to product-size unique ids or fail with a clear ManifestError."""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aris_queue_mcp.errors import ManifestError
from aris_queue_mcp.grid import expand_jobs
from aris_queue_mcp.manifest import load_manifest

# Modest by default to keep the suite fast; ARIS_HYPOTHESIS_EXAMPLES=2000 for a deeper search.
SETTINGS = settings(
    max_examples=int(os.environ.get("ARIS_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s != "GPU")
scalars = st.one_of(
    st.integers(-1000, 10**6),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
)
distinct_values = st.lists(st.integers(0, 10**6), min_size=1, max_size=4, unique=True)
grids = st.dictionaries(names, distinct_values, min_size=1, max_size=4)


@SETTINGS
@given(grids)
def test_grid_expands_to_product_with_unique_ids(grid: dict[str, list[int]]) -> None:
    keys = list(grid)
    template = {
        "id": "j_" + "_".join(f"{k}${{{k}}}" for k in keys),
        "cmd": "run " + " ".join(f"${{{k}}}" for k in keys),
    }
    manifest = load_manifest({"project": "p", "grid": grid, "template": template})
    jobs = expand_jobs(manifest)
    assert len(jobs) == math.prod(len(v) for v in grid.values())
    assert len({j.id for j in jobs}) == len(jobs)
    # Last key fastest: the first two jobs differ only in the last key (when it has 2+ values).
    if len(grid[keys[-1]]) > 1:
        assert jobs[1].cmd.split()[-1] == str(grid[keys[-1]][1])


@SETTINGS
@given(grids)
def test_derived_ids_are_unique_for_distinct_points(grid: dict[str, list[int]]) -> None:
    jobs = expand_jobs(load_manifest({"project": "p", "default_cmd": "run", "grid": grid}))
    assert len({j.id for j in jobs}) == len(jobs) == math.prod(len(v) for v in grid.values())


@SETTINGS
@given(
    st.dictionaries(names, st.one_of(scalars, st.lists(scalars, max_size=3)), min_size=1, max_size=3),
    st.one_of(st.none(), st.text(max_size=12)),
)
def test_any_grid_either_expands_or_fails_clearly(grid: dict, template_id: str | None) -> None:
    template = {"cmd": "run"} if template_id is None else {"cmd": "run", "id": template_id}
    try:
        jobs = expand_jobs(load_manifest({"project": "p", "grid": grid, "template": template}))
    except ManifestError as exc:
        assert exc.errors and all(e.message for e in exc.errors)
        return
    assert len({j.id for j in jobs}) == len(jobs)
    assert len(jobs) == math.prod(len(v) for v in grid.values())


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=6)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(
    ["project", "jobs", "grid", "template", "phases", "gpus", "env", "default_cmd", "cwd", "retry", "setup"]
)


@SETTINGS
@given(st.dictionaries(st.one_of(known_keys, st.text(max_size=6)), json_values, max_size=6))
def test_random_mappings_never_raise_anything_but_manifest_error(data: dict) -> None:
    try:
        load_manifest(data)
    except ManifestError as exc:
        assert exc.errors


@SETTINGS
@given(st.text(max_size=80))
def test_random_text_never_raises_anything_but_manifest_error(text: str) -> None:
    try:
        load_manifest(text + "\n")  # a newline keeps it from being taken for a file name
    except ManifestError as exc:
        assert exc.errors
