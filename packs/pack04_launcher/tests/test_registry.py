"""Reading pack05's registry.json through its file contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from launcher.errors import PluginNotFound, RegistryError
from launcher.registry import _inside, get_plugin, read_registry, signature, valid_plugin_id
from launcher_testing import FakeRegistry


def test_contract_example_is_read(fake_registry: FakeRegistry) -> None:
    pkg = fake_registry.add("acme.echo", granted=["network"])
    entry = read_registry(fake_registry.path)["acme.echo"]
    assert entry.enabled and entry.runnable
    assert entry.version == "1.0.0"
    assert entry.granted == ("network",)
    assert entry.package_dir == pkg.resolve()
    assert entry.entrypoint == (pkg / "main.py").resolve()


def test_missing_registry_is_empty(tmp_path: Path) -> None:
    assert read_registry(tmp_path / "registry.json") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("{broken", "not JSON", id="truncated"),
        pytest.param("[]", "expected an object", id="array"),
        pytest.param(
            '{"plugins": {}}', "schema: expected 'aurora-plugin-registry-v1'", id="schema"
        ),
        pytest.param(
            '{"schema": "aurora-plugin-registry-v1", "plugins": []}',
            "plugins: expected an object",
            id="plugins-list",
        ),
        pytest.param(  # pack05 refuses it: the launcher must not run what the last key says
            '{"schema": "aurora-plugin-registry-v1", "plugins": {"a.b": {}, "a.b": {}}}',
            "duplicate",
            id="duplicate-key",
        ),
        pytest.param('{"schema": NaN}', "NaN", id="nan"),
    ],
)
def test_bad_registry_file_names_the_file_and_the_problem(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "registry.json"
    path.write_text(text)
    with pytest.raises(RegistryError) as info:
        read_registry(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_every_problem_of_an_entry_is_reported_with_its_place(
    fake_registry: FakeRegistry,
) -> None:
    fake_registry.add("acme.bad")
    fake_registry.set("acme.bad", enabled="yes", granted=["network", "netwrk"])
    entry = read_registry(fake_registry.path)["acme.bad"]
    assert not entry.runnable
    assert entry.problem is not None
    assert "plugins.acme.bad.enabled: expected true or false, found 'yes'" in entry.problem
    assert (
        "plugins.acme.bad.granted[1]: unknown capability 'netwrk' "
        "(known: fs-read, fs-write, gpu, io, network)" in entry.problem
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("path", "../../../etc", id="path-dotdot"),
        pytest.param("path", "/etc", id="path-absolute"),
        pytest.param("entrypoint", "../../../../bin/sh", id="entry-dotdot"),
        pytest.param("entrypoint", "/bin/sh", id="entry-absolute"),
        pytest.param("entrypoint", "missing.py", id="entry-missing"),
    ],
)
def test_paths_escaping_the_package_are_refused(
    fake_registry: FakeRegistry, field: str, value: str
) -> None:
    fake_registry.add("acme.esc")
    version = fake_registry.doc["plugins"]["acme.esc"]["versions"]["1.0.0"]
    if field == "path":
        version["path"] = value
    else:
        version["manifest"]["entrypoint"] = value
    fake_registry.write()
    entry = read_registry(fake_registry.path)["acme.esc"]
    assert not entry.runnable
    assert (
        entry.problem is not None
        and f"versions.1.0.0.{'path' if field == 'path' else 'manifest.entrypoint'}"
        in entry.problem
    )


def test_symlinked_entrypoint_out_of_the_package_is_refused(
    fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    pkg = fake_registry.add("acme.link")
    outside = tmp_path / "outside.py"
    outside.write_text("print('escaped')")
    (pkg / "main.py").unlink()
    (pkg / "main.py").symlink_to(outside)
    entry = read_registry(fake_registry.path)["acme.link"]
    assert not entry.runnable
    assert entry.problem is not None and "outside" in entry.problem


def test_bad_plugin_id_is_refused(fake_registry: FakeRegistry) -> None:
    fake_registry.add("acme.ok")
    fake_registry.doc["plugins"]["../Evil"] = fake_registry.doc["plugins"]["acme.ok"]
    fake_registry.write()
    entries = read_registry(fake_registry.path)
    assert entries["acme.ok"].runnable
    assert not entries["../Evil"].runnable


def test_enabled_without_active_version_is_not_runnable(fake_registry: FakeRegistry) -> None:
    fake_registry.add("acme.nover")
    fake_registry.set("acme.nover", active_version=None)
    entry = read_registry(fake_registry.path)["acme.nover"]
    assert not entry.runnable and "no active version" in (entry.problem or "")


def test_get_plugin_unknown_raises(fake_registry: FakeRegistry) -> None:
    fake_registry.write()
    with pytest.raises(PluginNotFound, match=r"acme\.none"):
        get_plugin(fake_registry.path, "acme.none")


def test_signature_changes_on_atomic_replace(fake_registry: FakeRegistry) -> None:
    fake_registry.write()
    before = signature(fake_registry.path)
    doc = json.loads(fake_registry.path.read_text())
    fake_registry.doc = doc
    fake_registry.write()  # same content, new inode: still a change to notice
    assert signature(fake_registry.path) != before
    assert signature(fake_registry.path.with_name("nope.json")) is None


@settings(max_examples=200, deadline=None)
@given(rel=st.text(alphabet="ab./\\-_~ \0", max_size=24))
def test_a_resolved_path_never_leaves_its_base(rel: str) -> None:
    base = Path("/srv/plugins/packages/acme.x/1.0.0")
    problems: list[str] = []
    target = _inside(base, rel, "where", problems)
    assert (target is None) == bool(problems)
    if target is not None:
        assert target == base or base in target.parents


@settings(max_examples=200, deadline=None)
@given(plugin_id=st.text(max_size=40))
def test_a_valid_id_is_one_safe_path_component(plugin_id: str) -> None:
    if valid_plugin_id(plugin_id):
        assert "/" not in plugin_id and plugin_id not in (".", "..")
        assert not plugin_id.startswith(".") and "\0" not in plugin_id
        assert plugin_id == plugin_id.lower()


def test_symlink_loop_is_a_problem_not_a_crash(fake_registry: FakeRegistry) -> None:
    pkg = fake_registry.add("acme.loop")
    (pkg / "main.py").unlink()
    (pkg / "main.py").symlink_to(pkg / "main.py")
    entry = read_registry(fake_registry.path)["acme.loop"]
    assert not entry.runnable and "manifest.entrypoint" in (entry.problem or "")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_entry_values = st.fixed_dictionaries(
    {},
    optional={
        "enabled": _json,
        "active_version": _json | st.just("1.0.0"),
        "granted": _json | st.lists(st.sampled_from(["network", "gpu", "x"]), max_size=3),
        "versions": _json
        | st.fixed_dictionaries(
            {"1.0.0": st.fixed_dictionaries({}, optional={"path": _json, "manifest": _json})}
        ),
    },
)


@settings(max_examples=300, deadline=None)
@given(entry=_entry_values | _json)
def test_no_registry_entry_can_crash_the_reader(
    tmp_path_factory: pytest.TempPathFactory, entry: object
) -> None:
    path = tmp_path_factory.mktemp("reg") / "registry.json"
    path.write_text(
        json.dumps({"schema": "aurora-plugin-registry-v1", "plugins": {"acme.fuzz": entry}})
    )
    got = read_registry(path)["acme.fuzz"]
    assert got.runnable is (got.problem is None and got.entrypoint is not None)


def test_a_fifo_in_place_of_the_registry_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    os.mkfifo(path)
    with pytest.raises(RegistryError, match="not a regular file"):
        read_registry(path)
