"""Manifest validation: every problem at once, with its place; YAML errors with line and column."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from aurora.errors import ManifestError
from aurora.manifest import load_manifest, parse_yaml
from aurora_testing import PackFactory, manifest_text
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]


def _problems(root: Path) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(root, expected_id=root.name)
    return info.value.problems


def test_valid_manifest_loads(make_pack: PackFactory) -> None:
    root = make_pack(
        "alpha",
        "1.2.0",
        deps=[("beta", ">=0.1,<2")],
        artifacts=[("data.bin", "")],
        files={"data.bin": "x"},
    )
    manifest = load_manifest(root, expected_id="alpha")
    assert manifest.id == "alpha"
    assert manifest.version == "1.2.0"
    assert manifest.dependencies[0].allows("1.5")
    assert not manifest.dependencies[0].allows("2.0")
    assert manifest.artifacts[0].path == "data.bin"
    assert manifest.script("install") == root / "install.sh"


def test_reference_manifests_are_valid() -> None:
    # pack05's manifest is the reference's, unchanged; it must validate as written.
    text = (REPO / "packs/pack05_plugin_api/manifest.yaml").read_text()
    document = parse_yaml(text, "manifest.yaml")
    assert document["pack"]["artifacts"][0]["path"] == "core/api.py"


def _edit(old: str, new: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        path = root / "manifest.yaml"
        text = path.read_text()
        assert old in text, old
        path.write_text(text.replace(old, new, 1))

    return apply


INVALID = [
    pytest.param(
        _edit('    health: "health_check.sh"\n', ""),
        ["pack.entrypoint.health: required"],
        id="missing-health",
    ),
    pytest.param(
        _edit('  name: "Pack alpha"\n', '  name: "Pack alpha"\n  colour: "red"\n'),
        ["pack.colour: unknown key"],
        id="unknown-key",
    ),
    pytest.param(
        _edit('schema_version: "aurora-manifest-v1"', 'schema_version: "v2"'),
        ["schema_version: must be 'aurora-manifest-v1'"],
        id="wrong-schema-version",
    ),
    pytest.param(
        _edit('version: "1.0.0"', "version: 1.0"),
        ["pack.version: expected string, found number 1.0 (quote it in YAML)"],
        id="unquoted-version",
    ),
    pytest.param(
        _edit('version: "1.0.0"', 'version: "one"'),
        ["pack.version: 'one' is not a PEP 440 version"],
        id="bad-version",
    ),
    pytest.param(
        _edit(
            "  dependencies: []\n",
            '  dependencies:\n    - pack_id: "beta"\n      version_constraint: "=>1"\n',
        ),
        ["pack.dependencies[0].version_constraint: '=>1' is not a PEP 440 specifier"],
        id="bad-constraint",
    ),
    pytest.param(
        _edit(
            "  dependencies: []\n",
            '  dependencies:\n    - pack_id: "alpha"\n      version_constraint: ""\n',
        ),
        ["pack.dependencies[0].pack_id: a pack cannot depend on itself"],
        id="self-dependency",
    ),
    pytest.param(
        _edit('id: "alpha"', 'id: "Alpha Pack"'),
        ["pack.id: 'Alpha Pack' is not valid"],
        id="bad-id",
    ),
    pytest.param(
        _edit('id: "alpha"', 'id: "gamma"'),
        ["pack.id: 'gamma' differs from the directory name 'alpha'"],
        id="id-not-dir",
    ),
    pytest.param(
        _edit('install: "install.sh"', 'install: "/bin/true"'),
        ["pack.entrypoint.install: '/bin/true' is an absolute path"],
        id="absolute-path",
    ),
    pytest.param(
        _edit('install: "install.sh"', 'install: "../other/install.sh"'),
        ["pack.entrypoint.install: '../other/install.sh' contains '..'"],
        id="dotdot-path",
    ),
    pytest.param(
        _edit(
            "  artifacts: []\n", '  artifacts:\n    - path: "data/model.bin"\n      sha256: ""\n'
        ),
        ["pack.artifacts[0].path: 'data/model.bin' is in a runtime or cache directory"],
        id="artifact-in-runtime-dir",
    ),
    pytest.param(
        _edit(
            "  artifacts: []\n", '  artifacts:\n    - path: "../pack04/x.bin"\n      sha256: ""\n'
        ),
        ["pack.artifacts[0].path: '../pack04/x.bin' contains '..'"],
        id="artifact-dotdot",
    ),
    pytest.param(
        _edit("  artifacts: []\n", '  artifacts:\n    - path: "/etc/passwd"\n      sha256: ""\n'),
        ["pack.artifacts[0].path: '/etc/passwd' is an absolute path"],
        id="artifact-absolute",
    ),
    pytest.param(
        _edit('stop: "stop.sh"', 'stop: "bin/../stop.sh"'),
        ["pack.entrypoint.stop: 'bin/../stop.sh' contains '..'"],
        id="dotdot-inside",
    ),
    pytest.param(
        _edit('start: "start.sh"', 'start: "nothere.sh"'),
        ["pack.entrypoint.start: 'nothere.sh' not found in the pack"],
        id="missing-script",
    ),
    pytest.param(
        lambda root: (root / "stop.sh").chmod(0o644),
        ["pack.entrypoint.stop: 'stop.sh' is not executable"],
        id="not-executable",
    ),
    pytest.param(
        _edit("  artifacts: []\n", '  artifacts:\n    - path: "core.py"\n      sha256: "XYZ"\n'),
        [
            "pack.artifacts[0].sha256: 'XYZ' is not valid",
            "pack.artifacts[0].path: 'core.py' not found in the pack",
        ],
        id="bad-artifact",
    ),
    pytest.param(
        _edit("    health_check_timeout_seconds: 10", "    health_check_timeout_seconds: 0"),
        ["pack.safety.health_check_timeout_seconds: 0 is less than the minimum of 1"],
        id="zero-timeout",
    ),
    pytest.param(
        _edit("    dry_run_supported: true", '    dry_run_supported: "yes"'),
        ["pack.safety.dry_run_supported: expected boolean, found string 'yes'"],
        id="string-bool",
    ),
]


@pytest.mark.parametrize(("break_it", "expected"), INVALID)
def test_invalid_manifest_names_each_problem(
    make_pack: PackFactory, break_it: Callable[[Path], None], expected: list[str]
) -> None:
    root = make_pack("alpha")
    break_it(root)
    problems = _problems(root)
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)


def test_every_problem_reported_at_once(make_pack: PackFactory) -> None:
    root = make_pack("alpha")
    text = (root / "manifest.yaml").read_text()
    text = (
        text.replace('    health: "health_check.sh"\n', "")
        .replace('version: "1.0.0"', 'version: "nope"')
        .replace('  name: "Pack alpha"\n', '  name: "Pack alpha"\n  extra: 1\n')
    )
    (root / "manifest.yaml").write_text(text)
    problems = _problems(root)
    assert "pack.entrypoint.health: required" in problems
    assert any(p.startswith("pack.extra: unknown key") for p in problems)
    assert any(p.startswith("pack.version: 'nope'") for p in problems)


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("../../etc/passwd", id="symlink-escape"),
        pytest.param("/etc/passwd", id="symlink-absolute"),
    ],
)
def test_symlink_leading_out_is_rejected(make_pack: PackFactory, target: str) -> None:
    root = make_pack("alpha")
    (root / "start.sh").unlink()
    os.symlink(target, root / "start.sh")
    problems = _problems(root)
    assert any(p.startswith("pack.entrypoint.start:") for p in problems), problems
    assert any("(pack tree) start.sh: symlink" in p for p in problems), problems


def test_artifact_symlink_leading_out_is_rejected(make_pack: PackFactory, tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_text("not the pack's")
    root = make_pack("alpha")
    (root / "lib").mkdir()
    os.symlink(outside, root / "lib" / "model.bin")
    text = (root / "manifest.yaml").read_text()
    (root / "manifest.yaml").write_text(
        text.replace(
            "  artifacts: []\n", '  artifacts:\n    - path: "lib/model.bin"\n      sha256: ""\n'
        )
    )
    problems = _problems(root)
    assert (
        "pack.artifacts[0].path: 'lib/model.bin' is a symlink leading out of the pack" in problems
    )


def test_symlink_inside_pack_is_allowed(make_pack: PackFactory) -> None:
    root = make_pack("alpha", files={"bin/real.sh": "x"})
    os.symlink("bin/real.sh", root / "alias.sh")
    assert load_manifest(root).id == "alpha"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("pack:\n  id: [unclosed\n", "line 3, column 1", id="unclosed-flow"),
        pytest.param("pack:\n  id: a\n   name: b\n", "line 3, column 8", id="bad-indent"),
        pytest.param(
            "pack:\n  id: a\n  id: b\n", "line 3, column 3: duplicate key 'id'", id="duplicate-key"
        ),
        pytest.param(
            "a: 'unterminated\n",
            "line 1, column 4: a quoted string is never closed",
            id="unterminated-quote",
        ),
        pytest.param(
            "pack:\n  entrypoint: {install: x\n",
            "line 3, column 1: expected ',' or '}', but got '<stream end>' (while parsing a "
            "flow mapping that began at line 2, column 15)",
            id="unclosed-flow-mapping",
        ),
    ],
)
def test_malformed_yaml_names_line_and_column(
    make_pack: PackFactory, text: str, where: str
) -> None:
    root = make_pack("alpha")
    (root / "manifest.yaml").write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(root)
    assert "malformed YAML" in info.value.message
    assert any(p.startswith(where) for p in info.value.problems), info.value.problems


def test_empty_manifest(make_pack: PackFactory) -> None:
    root = make_pack("alpha")
    (root / "manifest.yaml").write_text("# nothing yet\n")
    assert _problems(root) == [
        "(document): the manifest is empty (expected schema_version and pack)"
    ]


def test_not_a_mapping(make_pack: PackFactory) -> None:
    root = make_pack("alpha")
    (root / "manifest.yaml").write_text("- just\n- a list\n")
    assert _problems(root) == ["(document): expected object, found array ['just', 'a list']"]


@pytest.mark.parametrize(
    ("constraint", "yes", "no"),
    [
        pytest.param(">=0.1.0", "0.1.0", "0.0.9", id="ge"),
        pytest.param("~=1.2", "1.9", "2.0", id="compatible"),
        pytest.param("!=0.3.1", "0.3.2", "0.3.1", id="exclude"),
        pytest.param(">=1,<2", "1.5", "2.0", id="range"),
        pytest.param("", "7.0", None, id="any"),
    ],
)
def test_pep440_constraints(
    make_pack: PackFactory, constraint: str, yes: str, no: str | None
) -> None:
    make_pack("beta")
    root = make_pack("alpha", deps=[("beta", constraint)])
    dep = load_manifest(root).dependencies[0]
    assert dep.allows(yes)
    if no is not None:
        assert not dep.allows(no)


@settings(database=None)
@given(st.text(max_size=40))
def test_any_yaml_text_gives_a_document_or_a_manifest_error(text: str) -> None:
    # The parser never leaks a yaml exception or a traceback-worthy error.
    try:
        parse_yaml(text, "manifest.yaml")
    except ManifestError as exc:
        assert exc.problems


def test_manifest_written_by_factory_round_trips() -> None:
    doc = parse_yaml(manifest_text("alpha", deps=[("b", ">=1")]), "m")
    assert doc["pack"]["dependencies"] == [{"pack_id": "b", "version_constraint": ">=1"}]


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=4),
    ),
    max_leaves=12,
)
_KEYS = [
    "id",
    "name",
    "version",
    "description",
    "entrypoint",
    "dependencies",
    "artifacts",
    "safety",
    "extra",
]


@settings(database=None, max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(_KEYS), _values, max_size=9), st.booleans())
def test_any_document_is_a_manifest_or_a_manifest_error(
    tmp_path_factory: pytest.TempPathFactory, pack: dict[str, object], with_schema: bool
) -> None:
    # Validation of arbitrary input never fails with anything but a ManifestError.
    root = tmp_path_factory.mktemp("alpha")
    document: dict[str, object] = {"pack": pack}
    if with_schema:
        document["schema_version"] = "aurora-manifest-v1"
    (root / "manifest.yaml").write_text(yaml.safe_dump(document))
    try:
        load_manifest(root)
    except ManifestError as exc:
        assert exc.problems
        assert all(isinstance(p, str) and p for p in exc.problems)
