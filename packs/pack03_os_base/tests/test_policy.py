"""Policy validation: every problem reported at once, with its place; nothing else raised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sandbox.errors import PolicyError
from sandbox.policy import load_policy, parse_policy, policy_from_json


def _valid(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "plugin_id": "acme.echo",
        "granted": ["network"],
        "data_dir": str(tmp_path / "data"),
        "read_paths": [str(tmp_path)],
        "limits": {"cpu_seconds": 5, "memory_bytes": 64 * 1024 * 1024, "processes": 8},
        "allow_degraded": False,
        "uid": 61000,
        "gid": 61000,
    }
    doc.update(changes)
    return doc


def test_a_valid_policy_parses(tmp_path: Path) -> None:
    pol = parse_policy(_valid(tmp_path))
    assert pol.plugin_id == "acme.echo"
    assert pol.granted == frozenset({"network"})
    assert pol.denied() == ["fs-read", "fs-write", "gpu", "io"]
    assert pol.limits["processes"] == 8
    assert pol.to_json()["data_dir"] == str(tmp_path / "data")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param({"granted": ["netwrk"]}, "granted[0]: unknown capability 'netwrk' (known:",
                     id="typo-capability"),
        pytest.param({"granted": ["io", "io"]}, "granted[1]: 'io' listed twice", id="duplicate"),
        pytest.param({"granted": "network"}, "granted: expected a list", id="granted-not-list"),
        pytest.param({"plugin_id": "../../x"}, "plugin_id: expected letters", id="id-traversal"),
        pytest.param({"plugin_id": "a/b"}, "plugin_id: expected letters", id="id-slash"),
        pytest.param({"data_dir": "data"}, "data_dir: expected an absolute path", id="relative"),
        pytest.param({"data_dir": "/"}, "data_dir: '/' is a system directory", id="root-dir"),
        pytest.param({"data_dir": "/etc"}, "is a system directory", id="etc-dir"),
        pytest.param({"data_dir": "/proc/1"}, "is a system directory", id="proc"),
        pytest.param({"read_paths": ["/nonexistent-aurora"]}, "read_paths[0]: '/nonexistent",
                     id="missing-read-path"),
        pytest.param({"read_paths": ["rel"]}, "read_paths[0]: expected an absolute path",
                     id="relative-read-path"),
        pytest.param({"limits": {"cpu_seconds": 0}}, "limits.cpu_seconds: expected an integer >= 1",
                     id="zero-cpu"),
        pytest.param({"limits": {"processes": True}}, "limits.processes: expected an integer",
                     id="bool-limit"),
        pytest.param({"limits": {"memory_bytes": 1024}}, "limits.memory_bytes: expected an "
                     "integer >= 16777216", id="tiny-memory"),
        pytest.param({"limits": {"cpu": 1}}, "limits.cpu: unknown limit", id="unknown-limit"),
        pytest.param({"allow_degraded": "yes"}, "allow_degraded: expected true or false",
                     id="degraded-string"),
        pytest.param({"extra": 1}, "extra: unknown key", id="unknown-key"),
        pytest.param({"uid": 0}, "uid: 0 is root: a plugin never runs as root", id="uid-root"),
        pytest.param({"gid": 0}, "gid: 0 is root", id="gid-root"),
        pytest.param({"uid": 65534}, "uid: 65534 is 'nobody'", id="uid-nobody"),
        pytest.param({"gid": 65534}, "gid: 65534 is 'nobody'", id="gid-nobody"),
        pytest.param({"uid": -1}, "uid: expected an integer 1..4294967294", id="uid-negative"),
        pytest.param({"uid": 4294967295}, "uid: expected an integer 1..4294967294",
                     id="uid-no-id"),
        pytest.param({"gid": "61000"}, "gid: expected an integer", id="gid-string"),
        pytest.param({"uid": True}, "uid: expected an integer", id="uid-bool"),
        pytest.param({"limits": {"cpu_cores": 0}}, "limits.cpu_cores: expected a number of cores",
                     id="zero-cores"),
        pytest.param({"limits": {"cpu_cores": "1"}}, "limits.cpu_cores: expected a number",
                     id="string-cores"),
        pytest.param({"limits": {"cpu_cores": True}}, "limits.cpu_cores: expected a number",
                     id="bool-cores"),
    ],
)  # fmt: skip
def test_each_mistake_is_named_with_its_place(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(_valid(tmp_path, **change))
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    doc = _valid(tmp_path, granted=["netwrk"], data_dir="rel", limits={"processes": -1})
    del doc["plugin_id"]
    with pytest.raises(PolicyError) as err:
        parse_policy(doc)
    places = [p.split(":")[0] for p in err.value.problems]
    assert places == ["plugin_id", "granted[0]", "data_dir", "limits.processes"]


@pytest.mark.parametrize("key", ["uid", "gid"])
def test_a_policy_without_its_host_ids_is_invalid(tmp_path: Path, key: str) -> None:
    doc = _valid(tmp_path)
    del doc[key]
    with pytest.raises(PolicyError) as err:
        parse_policy(doc)
    assert any(p.startswith(f"{key}: missing") for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("cores", [1, 0.5, 2.25])
def test_cpu_cores_takes_whole_and_fractional_cores(tmp_path: Path, cores: float) -> None:
    pol = parse_policy(_valid(tmp_path, limits={"cpu_cores": cores}))
    assert pol.limits["cpu_cores"] == cores
    assert (pol.uid, pol.gid) == (61000, 61000)


def test_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PolicyError, match="exists and is not a directory"):
        parse_policy(_valid(tmp_path, data_dir=str(tmp_path / "file")))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("{not json", "not valid JSON", id="broken-json"),
        pytest.param("[]", "expected a JSON object, found an array", id="array"),
        pytest.param(b"\xff\xfe", "not valid JSON", id="not-utf8"),
    ],
)
def test_unreadable_policy_files(tmp_path: Path, content: str | bytes, expected: str) -> None:
    path = tmp_path / "policy.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(PolicyError, match=expected) as err:
        load_policy(str(path))
    assert str(path) in str(err.value)


def test_missing_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(str(tmp_path / "absent.json"))


def test_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(_valid(tmp_path)))
    assert load_policy(str(path)) == parse_policy(_valid(tmp_path))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
_keys = st.sampled_from(
    ["plugin_id", "granted", "data_dir", "read_paths", "limits", "allow_degraded", "uid", "gid"]
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.dictionaries(_keys, _json) | _json)
def test_any_document_is_accepted_or_refused_with_policy_error(doc: object) -> None:
    """Hostile input never crashes the validator with anything but a PolicyError."""
    try:
        pol = parse_policy(doc)
    except PolicyError as exc:
        assert exc.problems
    else:
        assert pol.data_dir.startswith("/")


def test_a_validated_policy_is_rebuilt_from_its_json(tmp_path: Path) -> None:
    """The fork server validates once and hands its child the policy as JSON."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps(_valid(tmp_path, granted=["network", "io"], allow_degraded=True)))
    policy = load_policy(str(path))
    rebuilt = policy_from_json(json.loads(json.dumps(policy.to_json())))
    assert rebuilt == policy
    assert rebuilt.granted == frozenset({"network", "io"}) and rebuilt.allow_degraded
