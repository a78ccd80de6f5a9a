"""Registry records: versions, activation, grants, enable/disable, rollback (core/registry.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from core.audit import read_audit
from core.errors import (
    CapabilityError,
    ManifestError,
    PermissionDenied,
    RegistryError,
    UnknownPlugin,
)
from core.permissions import update_policy
from core.registry import PluginRegistry

from pack05_testlib import make_manifest

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "schemas" / "plugin-registry-v1.json").read_text()
)


@pytest.fixture
def reg(plugins_dir: Path) -> PluginRegistry:
    return PluginRegistry(plugins_dir, actor="tester")


def _stage(reg: PluginRegistry, version: str, permissions: list[str], **kw: object) -> dict:
    manifest = make_manifest(version=version, permissions=permissions)
    return reg.register_version(manifest, ["main.py"], **kw)


def test_reference_call_shapes(reg: PluginRegistry) -> None:
    man = {"id": "acme.echo", "name": "Echo", "version": "0.0.1", "entrypoint": "echo.py"}
    assert reg.list() == {}
    assert reg.register(man, ["manifest.json"]) is True
    assert reg.get("acme.echo")["manifest"]["name"] == "Echo"
    assert list(reg.list()) == ["acme.echo"]
    assert reg.enable("acme.echo") is True
    assert reg.disable("acme.echo") is True
    assert reg.unregister("acme.echo") is True
    assert reg.get("acme.echo") is None
    assert reg.enable("acme.echo") is False
    assert reg.disable("acme.echo") is False
    assert reg.unregister("acme.echo") is False


def test_register_validates_the_manifest(reg: PluginRegistry) -> None:
    with pytest.raises(ManifestError):
        reg.register({"id": "../../x", "name": "x", "version": "1", "entrypoint": "m"}, [])
    assert not reg.path.exists()


def test_on_disk_format_matches_the_contract_and_the_schema(reg: PluginRegistry) -> None:
    digest = "sha256:" + "ab" * 32
    reg.register_version(
        make_manifest(), [{"path": "main.py", "sha256": "cd" * 32, "size": 3}], digest=digest
    )
    reg.grant("acme.echo", ["network"])
    reg.enable("acme.echo")
    data = json.loads(reg.path.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["schema"] == "aurora-plugin-registry-v1"
    record = data["plugins"]["acme.echo"]
    assert record["enabled"] is True
    assert record["active_version"] == "1.0.0"
    assert record["granted"] == ["network"]
    version = record["versions"]["1.0.0"]
    assert version["path"] == "packages/acme.echo/1.0.0"
    assert version["manifest"]["entrypoint"] == "main.py"
    assert version["digest"] == digest
    assert version["files"] == [{"path": "main.py", "sha256": "cd" * 32, "size": 3}]
    assert version["staged_at"] and record["registered_at"] and record["updated_at"]


def test_get_returns_a_private_copy_and_list_a_read_only_view(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    reg.get("acme.echo")["versions"].clear()
    listed = reg.list()
    with pytest.raises(TypeError, match="read-only"):
        listed["acme.echo"]["enabled"] = True
    with pytest.raises(TypeError, match="read-only"):
        listed["acme.echo"]["versions"]["1.0.0"]["manifest"]["permissions"].append("gpu")
    with pytest.raises(TypeError, match="read-only"):
        del listed["acme.echo"]
    record = reg.get("acme.echo")
    assert "1.0.0" in record["versions"] and record["enabled"] is False
    assert record["versions"]["1.0.0"]["manifest"]["permissions"] == ["network"]
    # still plain JSON data for callers: serializable, comparable, copyable
    assert json.loads(json.dumps(listed)) == listed
    mutable = copy.deepcopy(listed)
    mutable["acme.echo"]["enabled"] = True
    assert reg.list()["acme.echo"]["enabled"] is False
    # the view follows changes
    reg.grant("acme.echo", ["network"])
    assert reg.list()["acme.echo"]["granted"] == ["network"]
    # read-only too for a new reader, and for one whose first act was a write
    fresh = PluginRegistry(reg.plugins_dir)
    writer = PluginRegistry(reg.plugins_dir)
    writer.disable("acme.echo")
    for other in (fresh, writer):
        files = other.list()["acme.echo"]["versions"]["1.0.0"]["files"]
        with pytest.raises(TypeError, match="read-only"):
            files.append({"path": "x"})
        with pytest.raises(TypeError, match="read-only"):
            other.list()["acme.echo"]["granted"].clear()


def test_the_grant_hint_names_the_command_the_operator_runs(
    reg: PluginRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    _stage(reg, "1.0.0", ["network"])
    monkeypatch.setenv("AURORA_PROG", "aurora plugin")  # what `aurora plugin` sets
    with pytest.raises(PermissionDenied) as info:
        reg.enable("acme.echo")
    assert "grant with: aurora plugin grant acme.echo network" in str(info.value)


def test_enable_refuses_until_every_requested_capability_is_granted(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network", "gpu"])
    with pytest.raises(PermissionDenied) as info:
        reg.enable("acme.echo")
    assert info.value.plugin_id == "acme.echo"
    assert info.value.capabilities == ["gpu", "network"]
    assert "plugins.py grant acme.echo gpu network" in str(info.value)  # run by hand: its own name
    assert reg.grant("acme.echo", ["network"]) == ["network"]
    with pytest.raises(PermissionDenied, match="gpu"):
        reg.enable("acme.echo")
    assert reg.grant("acme.echo", ["gpu"]) == ["gpu"]
    assert reg.enable("acme.echo") is True
    assert reg.get("acme.echo")["enabled"] is True


def test_grant_refuses_unknown_unrequested_and_blocked(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    with pytest.raises(CapabilityError, match="unknown capability 'netwrk'"):
        reg.grant("acme.echo", ["netwrk"])
    with pytest.raises(CapabilityError, match="does not request gpu"):
        reg.grant("acme.echo", ["gpu"])
    with pytest.raises(UnknownPlugin):
        reg.grant("acme.nope", ["network"])
    update_policy(reg.plugins_dir, block=["network"])
    with pytest.raises(PermissionDenied, match="blocked by policy") as info:
        reg.grant("acme.echo", ["network"])
    assert info.value.capability == "network"
    assert reg.get("acme.echo")["granted"] == []


def test_blocking_withdraws_grants_and_disables(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    reg.grant("acme.echo", ["network"])
    reg.enable("acme.echo")
    update_policy(reg.plugins_dir, block=["network"], actor="op")
    record = reg.get("acme.echo")
    assert record["granted"] == [] and record["enabled"] is False
    with pytest.raises(PermissionDenied, match="blocked by policy"):
        reg.enable("acme.echo")


def test_policy_allowed_is_granted_automatically_at_registration(reg: PluginRegistry) -> None:
    update_policy(reg.plugins_dir, allow=["io"])
    status = _stage(reg, "1.0.0", ["io", "network"])
    assert status["granted"] == ["io"] and status["missing"] == ["network"]
    actions = [(e["action"], e.get("by")) for e in read_audit(reg.audit_path)]
    assert ("grant", "policy") in actions


def test_revoke_disables_a_plugin_that_needs_the_capability(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    reg.grant("acme.echo", ["network"])
    reg.enable("acme.echo")
    assert reg.revoke("acme.echo", ["network"]) == {"revoked": ["network"], "disabled": True}
    assert reg.get("acme.echo")["enabled"] is False
    assert reg.revoke("acme.echo", ["network"]) == {"revoked": [], "disabled": False}


def test_new_version_asking_for_more_waits_for_the_operator(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    reg.grant("acme.echo", ["network"])
    reg.enable("acme.echo")
    status = _stage(reg, "2.0.0", ["network", "gpu"])
    assert status["active"] is False and status["missing"] == ["gpu"]
    record = reg.get("acme.echo")
    assert record["active_version"] == "1.0.0" and record["pending_version"] == "2.0.0"
    assert record["enabled"] is True  # the old version keeps running
    with pytest.raises(PermissionDenied, match=r"version 2\.0\.0 requests gpu"):
        reg.enable("acme.echo")
    reg.grant("acme.echo", ["gpu"])
    assert reg.enable("acme.echo") is True
    record = reg.get("acme.echo")
    assert record["active_version"] == "2.0.0" and record["pending_version"] is None


def test_a_newer_version_that_fits_supersedes_a_pending_one(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    reg.grant("acme.echo", ["network"])
    reg.enable("acme.echo")
    assert _stage(reg, "2.0.0", ["network", "gpu"])["pending_version"] == "2.0.0"
    status = _stage(reg, "3.0.0", ["network"])
    assert status["active_version"] == "3.0.0" and status["pending_version"] is None
    reg.rollback("acme.echo", "1.0.0")
    assert reg.get("acme.echo")["pending_version"] is None
    # removing the active version never leaves a pending one at or below the new active
    _stage(reg, "4.0.0", ["network", "io"])
    assert reg.get("acme.echo")["pending_version"] == "4.0.0"
    reg.unregister("acme.echo", "1.0.0")
    record = reg.get("acme.echo")
    assert record["active_version"] == "4.0.0" and record["pending_version"] is None
    assert record["enabled"] is False


def test_new_version_within_grants_becomes_active(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    reg.grant("acme.echo", ["network"])
    reg.enable("acme.echo")
    status = _stage(reg, "1.1.0", ["network"])
    assert status["active"] is True
    assert reg.get("acme.echo")["active_version"] == "1.1.0"
    # an older version staged later is kept for rollback, not activated
    _stage(reg, "0.9.0", [])
    assert reg.get("acme.echo")["active_version"] == "1.1.0"


def test_versions_side_by_side_and_rollback(reg: PluginRegistry) -> None:
    for v in ("1.0.0", "1.1.0", "2.0.0"):
        _stage(reg, v, [])
    assert sorted(reg.get("acme.echo")["versions"]) == ["1.0.0", "1.1.0", "2.0.0"]
    assert reg.get("acme.echo")["active_version"] == "2.0.0"
    assert reg.rollback("acme.echo") == "1.1.0"
    assert reg.rollback("acme.echo") == "1.0.0"
    with pytest.raises(UnknownPlugin, match=r"older than 1\.0\.0"):
        reg.rollback("acme.echo")
    assert reg.rollback("acme.echo", "2.0.0") == "2.0.0"
    with pytest.raises(UnknownPlugin):
        reg.rollback("acme.echo", "9.9")
    actions = [e["action"] for e in read_audit(reg.audit_path)]
    assert actions.count("rollback") == 3


def test_rollback_of_an_enabled_plugin_checks_grants(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["gpu"])
    _stage(reg, "2.0.0", [])
    reg.enable("acme.echo")
    with pytest.raises(PermissionDenied):
        reg.rollback("acme.echo")
    assert reg.get("acme.echo")["active_version"] == "2.0.0"


def test_same_version_with_other_content_needs_replace(reg: PluginRegistry) -> None:
    digest_a, digest_b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert _stage(reg, "1.0.0", [], digest=digest_a)["changed"] is True
    assert _stage(reg, "1.0.0", [], digest=digest_a)["changed"] is False
    with pytest.raises(RegistryError, match="different content"):
        _stage(reg, "1.0.0", [], digest=digest_b)
    assert _stage(reg, "1.0.0", [], digest=digest_b, replace=True)["changed"] is True
    assert reg.get("acme.echo")["versions"]["1.0.0"]["digest"] == digest_b


def test_equal_versions_spelled_differently_are_refused(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", [])
    with pytest.raises(RegistryError, match=r"equals the registered '1\.0\.0'"):
        _stage(reg, "1.0", [])


def test_unregister_one_version_and_the_active_one(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", [])
    _stage(reg, "2.0.0", [])
    reg.enable("acme.echo")
    assert reg.unregister("acme.echo", "3.0") is False
    assert reg.unregister("acme.echo", "2.0.0") is True
    record = reg.get("acme.echo")
    assert record["active_version"] == "1.0.0" and record["enabled"] is False
    assert reg.unregister("acme.echo", "1.0.0") is True
    assert reg.get("acme.echo") is None


def test_every_change_is_audited(reg: PluginRegistry) -> None:
    _stage(reg, "1.0.0", ["network"])
    reg.grant("acme.echo", ["network"])
    reg.enable("acme.echo")
    reg.enable("acme.echo")  # no change, no line
    reg.disable("acme.echo")
    reg.revoke("acme.echo", ["network"])
    reg.unregister("acme.echo")
    entries = read_audit(reg.audit_path)
    assert [e["action"] for e in entries] == [
        "register", "grant", "enable", "disable", "revoke", "unregister",
    ]  # fmt: skip
    for e in entries:
        assert {"time", "actor", "action", "id", "version"} <= set(e)
        assert e["actor"] == "tester" and e["id"] == "acme.echo"
    assert entries[0]["version"] == "1.0.0"


def test_bad_files_and_digest_arguments(reg: PluginRegistry) -> None:
    with pytest.raises(RegistryError, match=r"files\[0\]"):
        reg.register(make_manifest(), [42])
    with pytest.raises(RegistryError, match="digest"):
        reg.register(make_manifest(), [], digest="md5:abc")
    # the right length but not hex would write a registry its own schema rejects
    with pytest.raises(RegistryError, match="digest"):
        reg.register(make_manifest(), [], digest="sha256:" + "Z" * 64)
    assert reg.get("acme.echo") is None
