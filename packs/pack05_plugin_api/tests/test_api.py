"""Manifest reading and validation (core/api.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from core.api import MAX_MANIFEST_BYTES, load_manifest, manifest_problems, validate_manifest
from core.errors import ManifestError

from pack05_testlib import make_manifest


def test_valid_manifest_returns_true() -> None:
    assert validate_manifest(make_manifest()) is True


def test_minimal_manifest_needs_no_permissions_or_description() -> None:
    assert validate_manifest(make_manifest(permissions=None, description=None)) is True


def test_every_problem_is_reported_at_once_with_its_place() -> None:
    bad = make_manifest(
        id="../../x",
        name="",
        version="not a version",
        entrypoint="../main.py",
        permissions=["network", "netwrk"],
        colour="red",
    )
    with pytest.raises(ManifestError) as info:
        validate_manifest(bad)
    problems = info.value.problems
    assert isinstance(info.value, ValueError)
    joined = "\n".join(problems)
    assert (
        "permissions[1]: unknown capability 'netwrk' (known: fs-read, fs-write, gpu, io, network)"
        in problems
    )
    assert "colour: unknown key" in joined
    assert joined.count("id:") == 1 and "publisher.name" in joined
    assert "name: must not be empty" in problems
    assert "version:" in joined
    assert "entrypoint:" in joined
    assert len(problems) == 6


def test_missing_required_keys_are_each_named() -> None:
    with pytest.raises(ManifestError) as info:
        validate_manifest({"name": "x"})
    assert set(info.value.problems) == {
        "id: missing (required)",
        "version: missing (required)",
        "entrypoint: missing (required)",
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("id", "acme", id="id-no-publisher"),
        pytest.param("id", "Acme.Echo", id="id-uppercase"),
        pytest.param("id", "../../x", id="id-dotdot"),
        pytest.param("id", "acme/echo", id="id-slash"),
        pytest.param("id", ".acme.echo", id="id-leading-dot"),
        pytest.param("id", "acme..echo", id="id-empty-segment"),
        pytest.param("id", "acme.echo/", id="id-trailing-slash"),
        pytest.param("id", "acme.ec ho", id="id-space"),
        pytest.param("id", "a" * 130 + ".x", id="id-too-long"),
        pytest.param("id", "acme.echo\n", id="id-newline"),
        pytest.param("version", "..", id="version-dotdot"),
        pytest.param("version", "1.0/../../x", id="version-slash"),
        pytest.param("version", "latest", id="version-word"),
        pytest.param("version", " 1.0", id="version-leading-space"),
        pytest.param("version", "1.0.0-", id="version-not-pep440"),
        pytest.param("version", "", id="version-empty"),
        pytest.param("entrypoint", "/etc/passwd", id="entrypoint-absolute"),
        pytest.param("entrypoint", "../main.py", id="entrypoint-dotdot"),
        pytest.param("entrypoint", "bin/../../main.py", id="entrypoint-dotdot-inside"),
        pytest.param("entrypoint", "bin//main.py", id="entrypoint-empty-segment"),
        pytest.param("entrypoint", "bin\\main.py", id="entrypoint-backslash"),
        pytest.param("entrypoint", "", id="entrypoint-empty"),
    ],
)
def test_hostile_or_malformed_values_are_refused_at_their_place(key: str, value: str) -> None:
    problems = manifest_problems(make_manifest(**{key: value}))
    assert problems and all(p.startswith(f"{key}:") for p in problems)


@pytest.mark.parametrize("version", ["1.0.0", "2.1rc1", "1!2.0", "0.1.0.post1", "1.0+local.1"])
def test_pep440_versions_are_accepted(version: str) -> None:
    assert validate_manifest(make_manifest(version=version))


def test_bounded_strings() -> None:
    problems = manifest_problems(make_manifest(name="n" * 101, description="d" * 2001))
    assert sorted(problems) == [
        "description: longer than 2000 characters",
        "name: longer than 100 characters",
    ]


def test_non_mapping_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="expected an object"):
        validate_manifest(["id", "acme.echo"])


def test_yaml_float_version_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("id: acme.echo\nname: Echo\nversion: 1.0\nentrypoint: main.py\n")
    with pytest.raises(ManifestError) as info:
        validate_manifest(load_manifest(path))
    assert info.value.problems == ["version: expected string, found number 1.0 (quote it in YAML)"]


def test_load_json_and_yaml(tmp_path: Path) -> None:
    manifest = make_manifest()
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "manifest.yml").write_text(
        "id: acme.echo\nname: Echo\nversion: '1.0.0'\nentrypoint: main.py\n"
        "description: Echoes its input.\npermissions: [network]\n"
    )
    assert load_manifest(tmp_path / "manifest.json") == manifest
    assert load_manifest(tmp_path / "manifest.yml") == manifest


def test_yaml_error_names_line_and_column_and_never_falls_back_to_json(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    # Valid JSON, but not valid YAML because of the tab: the reference fell back to JSON.
    path.write_text('{"id": "acme.echo",\n\t"name": "x"}\n')
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.problems[0] == "line 2, column 1: a tab (indent with spaces)"
    assert str(path) in str(info.value)


def test_json_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text('{\n  "id": "acme.echo",\n  "name": \n}')
    with pytest.raises(ManifestError, match=r"line 4, column 1: JSON error"):
        load_manifest(path)


def test_yaml_unsafe_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("id: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ManifestError, match="line 1, column 5: could not determine a constructor"):
        load_manifest(path)


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text("a: &x [1, 2]\nb: *x\n")
    with pytest.raises(ManifestError, match="aliases are not allowed"):
        load_manifest(path)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        pytest.param("manifest.json", '{"id": "a.b", "id": "c.d"}', id="json"),
        pytest.param("manifest.yaml", "id: a.b\nid: c.d\n", id="yaml"),
    ],
)
def test_duplicate_keys_are_refused(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ManifestError, match="duplicate key 'id'"):
        load_manifest(path)


def test_manifest_larger_than_64_kib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(make_manifest(description="x" * MAX_MANIFEST_BYTES)))
    with pytest.raises(ManifestError, match="exceeds the limit of 65536"):
        load_manifest(path)


def test_unreadable_and_non_utf8_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.json")
    path = tmp_path / "manifest.json"
    path.write_bytes(b'{"id": "\xff"}')
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(path)


def test_deep_nesting_is_a_manifest_error(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(ManifestError):
        load_manifest(path)


def test_bad_values_are_quoted_shortly() -> None:
    problems = manifest_problems(make_manifest(id="X" * 5000))
    assert len(problems) == 1 and len(problems[0]) < 200
    problems = manifest_problems({**make_manifest(), "k" * 5000: 1, "a\nb": 2})
    assert len(problems) == 2 and all(len(p) < 200 and "\n" not in p for p in problems)
