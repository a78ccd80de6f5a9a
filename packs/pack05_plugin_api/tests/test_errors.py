"""The error hierarchy (core/errors.py)."""

from __future__ import annotations

import pytest
from core.errors import (
    CapabilityError,
    ManifestError,
    PermissionDenied,
    PluginError,
    RegistryError,
    StagingError,
    UnknownPlugin,
)


def test_hierarchy_lets_callers_catch_broadly_or_precisely() -> None:
    for cls in (ManifestError, RegistryError, StagingError, PermissionDenied, CapabilityError):
        assert issubclass(cls, PluginError)
    assert issubclass(ManifestError, ValueError) and issubclass(CapabilityError, ValueError)
    assert issubclass(UnknownPlugin, RegistryError) and issubclass(UnknownPlugin, LookupError)


def test_manifest_error_lists_every_problem() -> None:
    one = ManifestError(["id: missing (required)"], source="m.json")
    assert str(one) == "m.json: invalid manifest: id: missing (required)"
    two = ManifestError(["a: x", "b: y"])
    assert two.problems == ["a: x", "b: y"]
    assert str(two) == "invalid manifest (2 problems):\n  - a: x\n  - b: y"
    assert ManifestError([]).problems == ["invalid manifest"]


def test_staging_error_has_a_reason() -> None:
    err = StagingError("symlink 'x' -> '/etc' is absolute", source="pkg")
    assert err.reason == "symlink 'x' -> '/etc' is absolute" and str(err).startswith("pkg: ")


def test_permission_denied_names_plugin_and_capabilities() -> None:
    err = PermissionDenied("acme.echo", ["network", "gpu", "network"], "not granted")
    assert err.plugin_id == "acme.echo" and err.capabilities == ["gpu", "network"]
    assert err.capability == "gpu" and str(err) == "acme.echo: not granted"
    assert PermissionDenied("a.b", [], "x").capability is None


def test_unknown_plugin_message() -> None:
    assert str(UnknownPlugin("acme.echo", "2.0")) == "unknown plugin: acme.echo 2.0"
    err = UnknownPlugin("acme.echo", "2.0", staged={"1.1": {}, "1.0": {}})
    assert str(err) == "acme.echo has no staged version 2.0 (staged: 1.0, 1.1)"
    assert err.staged == ["1.0", "1.1"] and err.version == "2.0"
    with pytest.raises(LookupError):
        raise UnknownPlugin("acme.echo")
