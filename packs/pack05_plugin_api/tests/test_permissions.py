"""Capability vocabulary, policy file and request_permissions (core/permissions.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from core.audit import read_audit
from core.errors import CapabilityError, RegistryError
from core.permissions import (
    CAPABILITIES,
    POLICY_SCHEMA,
    Policy,
    check_capabilities,
    load_policy,
    request_permissions,
    update_policy,
)
from core.registry import PluginRegistry

from pack05_testlib import make_manifest


def test_vocabulary_is_closed_and_described() -> None:
    assert set(CAPABILITIES) == {"fs-read", "fs-write", "gpu", "io", "network"}
    for cap in CAPABILITIES.values():
        assert cap.description and cap.risk in {"low", "medium", "high"}


def test_unknown_capabilities_are_errors_with_their_place() -> None:
    with pytest.raises(CapabilityError) as info:
        check_capabilities(["network", "netwrk", 3])
    assert isinstance(info.value, ValueError)
    assert (
        "capabilities[1]: unknown capability 'netwrk' (known: fs-read, fs-write, gpu, io, network)"
        in str(info.value)
    )
    assert "capabilities[2]" in str(info.value)


def test_deny_by_default(plugins_dir: Path) -> None:
    assert load_policy(plugins_dir) == Policy()
    assert request_permissions("acme.echo", ["network", "gpu"], plugins_dir=plugins_dir) == {
        "allowed": [],
        "blocked": ["network", "gpu"],
    }
    assert not plugins_dir.exists()


def test_reference_call_shape_uses_the_default_directory() -> None:
    assert request_permissions("acme.echo", ["network"]) == {"allowed": [], "blocked": ["network"]}


def test_only_granted_and_unblocked_capabilities_are_allowed(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    reg.register(make_manifest(permissions=["network", "gpu"]), ["main.py"])
    reg.grant("acme.echo", ["network"])
    result = request_permissions(
        "acme.echo", ["network", "gpu", "io", "bogus"], plugins_dir=plugins_dir
    )
    assert result == {"allowed": ["network"], "blocked": ["gpu", "io", "bogus"]}
    update_policy(plugins_dir, block=["network"])
    assert request_permissions("acme.echo", ["network"], plugins_dir=plugins_dir)["allowed"] == []


def test_policy_file_keeps_reference_keys_and_is_audited(plugins_dir: Path) -> None:
    policy = update_policy(plugins_dir, allow=["io"], block=["network"], actor="op")
    assert policy == Policy(allowed=frozenset({"io"}), blocked=frozenset({"network"}))
    data = json.loads((plugins_dir / "permissions.json").read_text())
    assert data == {"schema": POLICY_SCHEMA, "allowed": ["io"], "blocked": ["network"]}
    update_policy(plugins_dir, allow=["network"])  # moving a name between lists
    assert load_policy(plugins_dir) == Policy(allowed=frozenset({"io", "network"}))
    update_policy(plugins_dir, clear=["io", "network"])
    assert load_policy(plugins_dir) == Policy()
    entries = [e for e in read_audit(plugins_dir / "audit.log") if e["action"] == "policy"]
    assert len(entries) == 3 and entries[0]["actor"] == "op"


def test_reference_policy_file_without_schema_is_read(plugins_dir: Path) -> None:
    plugins_dir.mkdir()
    (plugins_dir / "permissions.json").write_text('{"allowed": ["gpu"], "blocked": ["gpu", "io"]}')
    # blocked wins over allowed
    assert load_policy(plugins_dir) == Policy(blocked=frozenset({"gpu", "io"}))


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{", id="not-json"),
        pytest.param("[]", id="not-object"),
        pytest.param('{"allowed": ["netwrk"]}', id="unknown-capability"),
        pytest.param('{"allowed": "network"}', id="not-a-list"),
        pytest.param('{"allow": []}', id="unknown-key"),
    ],
)
def test_invalid_policy_is_an_error_naming_the_file(plugins_dir: Path, content: str) -> None:
    plugins_dir.mkdir()
    path = plugins_dir / "permissions.json"
    path.write_text(content)
    with pytest.raises(RegistryError, match=str(path)):
        load_policy(plugins_dir)


def test_update_refuses_contradictions_and_unknown_names(plugins_dir: Path) -> None:
    with pytest.raises(CapabilityError, match="set and unset"):
        update_policy(plugins_dir, allow=["io"], block=["io"])
    with pytest.raises(CapabilityError, match="unknown capability"):
        update_policy(plugins_dir, block=["netwrk"])
    assert not (plugins_dir / "permissions.json").exists()
