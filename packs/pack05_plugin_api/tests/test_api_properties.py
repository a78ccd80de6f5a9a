"""Property tests of manifest reading and validation (core/api.py): only ManifestError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypothesis")  # a dev dependency; the rest of the suite runs without it

from core.api import load_manifest, validate_manifest
from core.errors import ManifestError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(["id", "name", "version", "entrypoint", "description", "permissions"])
_values: st.SearchStrategy[Any] = st.one_of(
    _json,
    st.sampled_from(["acme.echo", "1.0.0", "main.py", "../x", "/abs", "network", "netwrk"]),
    st.lists(st.sampled_from(["network", "gpu", "io", "netwrk", 3]), max_size=4),
)
# What YAML can also produce: non-string keys, dates, bytes, tuples.
_odd = st.dates() | st.binary(max_size=4) | st.tuples(st.integers()) | st.frozensets(st.integers())
_manifests = (
    st.dictionaries(_keys | st.text(max_size=8), _values | _odd, max_size=8)
    | st.dictionaries(st.integers() | st.none() | st.booleans() | _keys, _values, max_size=4)
    | _json
)


@settings(max_examples=300, deadline=None, database=None)
@given(_manifests)
def test_validate_never_raises_anything_but_manifest_error(data: Any) -> None:
    try:
        assert validate_manifest(data) is True
    except ManifestError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode), st.booleans())
def test_load_never_raises_anything_but_manifest_error(
    tmp_path: Path, raw: bytes, yaml_: bool
) -> None:
    path = tmp_path / ("manifest.yaml" if yaml_ else "manifest.json")
    path.write_bytes(raw)
    try:
        data = load_manifest(path)
        validate_manifest(data)
    except ManifestError as exc:
        assert exc.problems
