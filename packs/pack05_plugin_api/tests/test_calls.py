"""Calls out of plugins (a manifest's ``calls``), granted exactly like capabilities.

A version whose manifest says ``calls: ["acme.greeter/greet"]`` requests the grant
``call:acme.greeter/greet``, kept in the record's ``granted`` list beside capabilities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import plugins
import pytest
from core.audit import read_audit
from core.capabilities import is_call_grant, requested_grants
from core.errors import CapabilityError, PermissionDenied, RegistryError
from core.permissions import check_grants, load_policy, request_permissions, update_policy
from core.registry import PluginRegistry, record_problems

from pack05_testlib import make_manifest, write_package

GREET = "call:acme.greeter/greet"
SHOUT = "call:acme.greeter/shout"


def caller(version: str = "1.0.0", calls: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return make_manifest(
        id="acme.caller",
        version=version,
        permissions=kw.pop("permissions", []),
        calls=["acme.greeter/greet"] if calls is None else calls,
        **kw,
    )


@pytest.fixture
def reg(tmp_path: Path) -> PluginRegistry:
    return PluginRegistry(tmp_path / "plugins", actor="tester")


def audit(reg: PluginRegistry) -> list[tuple[str, Any]]:
    return [(e["action"], e.get("capabilities")) for e in read_audit(reg.audit_path)]


# -- the vocabulary ------------------------------------------------------------------------


def test_a_calls_entry_requests_its_call_grant() -> None:
    manifest = caller(permissions=["network"], calls=["acme.greeter/greet", "b.c/d"])
    assert requested_grants(manifest) == ["call:acme.greeter/greet", "call:b.c/d", "network"]
    assert requested_grants(make_manifest(permissions=[])) == []


@pytest.mark.parametrize(
    "name",
    [
        "call:",
        "call:../../x",
        "call:acme.greeter",
        "call:acme/greet",  # an id has two segments at least
        "call:acme.greeter/",
        "call:acme.greeter/Greet",
        "call:acme.greeter/greet\n",
        "call:acme.greeter/greet/x",
        "call: acme.greeter/greet",
        "CALL:acme.greeter/greet",
        "call:acme.greeter/" + "g" * 65,
        "call:" + "a." * 200 + "b/greet",
        "acme.greeter/greet",  # the manifest's spelling is not a grant
        "",
    ],
)
def test_malformed_call_grants_are_refused_with_their_place(name: str) -> None:
    assert not is_call_grant(name)
    with pytest.raises(CapabilityError) as info:
        check_grants(["network", name])
    message = str(info.value)
    assert message.startswith("capabilities[1]: ")
    assert len(message) < 300  # a huge name is cut short


def test_check_grants_accepts_capabilities_and_calls() -> None:
    assert check_grants(["network", GREET]) == ["network", GREET]


# -- registry: pending, enable, grant, revoke, rollback -----------------------------------


def test_deny_by_default_and_enable_names_the_missing_call_grant(reg: PluginRegistry) -> None:
    status = reg.register_version(caller(), ["main.py"])
    assert status["missing"] == [GREET] and status["granted"] == []
    with pytest.raises(PermissionDenied) as info:
        reg.enable("acme.caller")
    assert info.value.capabilities == [GREET]
    assert f"plugins.py grant acme.caller {GREET}" in str(info.value)
    assert reg.grant("acme.caller", [GREET]) == [GREET]
    assert reg.enable("acme.caller")
    record = reg.get("acme.caller")
    assert record is not None and record["granted"] == [GREET] and record["enabled"]
    assert ("grant", [GREET]) in audit(reg)


def test_granting_a_call_the_manifest_does_not_ask_for_is_refused(reg: PluginRegistry) -> None:
    reg.register_version(caller(permissions=["network"]), ["main.py"])
    with pytest.raises(CapabilityError) as info:
        reg.grant("acme.caller", [SHOUT])
    assert str(info.value) == (f"acme.caller does not request {SHOUT} (requests: {GREET}, network)")
    record = reg.get("acme.caller")
    assert record is not None and record["granted"] == []


@pytest.mark.parametrize("name", ["call:../../x", "call:", "call:" + "x" * 100_000])
def test_grant_and_revoke_refuse_malformed_names(reg: PluginRegistry, name: str) -> None:
    reg.register_version(caller(), ["main.py"])
    before = reg.path.read_bytes()
    for verb in (reg.grant, reg.revoke):
        with pytest.raises(CapabilityError) as info:
            verb("acme.caller", [name])
        assert len(str(info.value)) < 300
    assert reg.path.read_bytes() == before


def test_revoking_a_needed_call_disables_the_plugin(reg: PluginRegistry) -> None:
    reg.register_version(caller(), ["main.py"])
    reg.grant("acme.caller", [GREET])
    reg.enable("acme.caller")
    assert reg.revoke("acme.caller", [GREET]) == {"revoked": [GREET], "disabled": True}
    record = reg.get("acme.caller")
    assert record is not None and record["granted"] == [] and not record["enabled"]
    actions = audit(reg)
    assert ("revoke", [GREET]) in actions and actions[-1][0] == "disable"
    # revoking what is not granted changes nothing and writes nothing
    before = reg.path.read_bytes()
    assert reg.revoke("acme.caller", [GREET]) == {"revoked": [], "disabled": False}
    assert reg.path.read_bytes() == before


def test_a_new_version_asking_for_a_new_call_waits_until_granted(reg: PluginRegistry) -> None:
    reg.register_version(caller(), ["main.py"])
    reg.grant("acme.caller", [GREET])
    reg.enable("acme.caller")
    v2 = caller("2.0.0", calls=["acme.greeter/greet", "acme.greeter/shout"])
    status = reg.register_version(v2, ["main.py"])
    assert status["pending_version"] == "2.0.0" and status["active_version"] == "1.0.0"
    assert status["missing"] == [SHOUT]
    with pytest.raises(PermissionDenied, match=SHOUT):
        reg.enable("acme.caller")
    record = reg.get("acme.caller")
    assert record is not None and record["active_version"] == "1.0.0" and record["enabled"]
    reg.grant("acme.caller", [SHOUT])  # requested by the pending version: grantable
    reg.enable("acme.caller")
    record = reg.get("acme.caller")
    assert record is not None and record["active_version"] == "2.0.0"
    assert record["pending_version"] is None
    # revoking the new call disables 2.0.0; rolling back to 1.0.0 needs no SHOUT
    assert reg.revoke("acme.caller", [SHOUT])["disabled"] is True
    assert reg.rollback("acme.caller") == "1.0.0"
    assert reg.enable("acme.caller")


def test_a_version_asking_for_fewer_calls_is_taken_at_once(reg: PluginRegistry) -> None:
    reg.register_version(caller(), ["main.py"])
    reg.grant("acme.caller", [GREET])
    reg.enable("acme.caller")
    status = reg.register_version(caller("1.1.0", calls=[]), ["main.py"])
    assert status["active"] and status["pending_version"] is None and status["missing"] == []


def test_rollback_of_an_enabled_plugin_to_a_version_with_an_ungranted_call_is_refused(
    reg: PluginRegistry,
) -> None:
    reg.register_version(caller("1.0.0", calls=["acme.greeter/shout"]), ["main.py"])
    reg.register_version(caller("2.0.0", calls=[]), ["main.py"])
    reg.enable("acme.caller")
    with pytest.raises(PermissionDenied, match=SHOUT):
        reg.rollback("acme.caller", "1.0.0")
    record = reg.get("acme.caller")
    assert record is not None and record["active_version"] == "2.0.0"


# -- the policy ----------------------------------------------------------------------------


def test_blocking_a_call_withdraws_it_and_refuses_grant_and_enable(reg: PluginRegistry) -> None:
    reg.register_version(caller(), ["main.py"])
    reg.grant("acme.caller", [GREET])
    reg.enable("acme.caller")
    policy = update_policy(reg.plugins_dir, block=[GREET], actor="tester")
    assert GREET in policy.blocked and load_policy(reg.plugins_dir).blocked == {GREET}
    record = reg.get("acme.caller")
    assert record is not None and record["granted"] == [] and not record["enabled"]
    assert ("revoke", [GREET]) in audit(reg)
    with pytest.raises(PermissionDenied, match="blocked by policy"):
        reg.grant("acme.caller", [GREET])
    with pytest.raises(PermissionDenied, match="blocked by policy"):
        reg.enable("acme.caller")
    assert request_permissions("acme.caller", [GREET], plugins_dir=reg.plugins_dir) == {
        "allowed": [],
        "blocked": [GREET],
    }
    update_policy(reg.plugins_dir, clear=[GREET])
    reg.grant("acme.caller", [GREET])
    assert request_permissions("acme.caller", [GREET], plugins_dir=reg.plugins_dir) == {
        "allowed": [GREET],
        "blocked": [],
    }


def test_an_allowed_call_is_granted_when_staged(reg: PluginRegistry) -> None:
    update_policy(reg.plugins_dir, allow=[GREET])
    status = reg.register_version(caller(), ["main.py"])
    assert status["granted"] == [GREET] and status["missing"] == []
    assert audit(reg)[-2:] == [("register", None), ("grant", [GREET])]


@pytest.mark.parametrize("bad", ["call:../../x", "call:", "call:" + "x" * 10_000, 7])
def test_a_policy_file_with_a_bad_call_grant_is_refused(reg: PluginRegistry, bad: Any) -> None:
    reg.plugins_dir.mkdir(parents=True)
    (reg.plugins_dir / "permissions.json").write_text(json.dumps({"blocked": [bad]}))
    with pytest.raises(RegistryError) as info:
        load_policy(reg.plugins_dir)
    assert "blocked[0]" in str(info.value) and len(str(info.value)) < 500
    with pytest.raises(CapabilityError):
        update_policy(reg.plugins_dir, block=[bad])


# -- what the registry file may hold -------------------------------------------------------


def _record(**overrides: Any) -> dict[str, Any]:
    manifest = caller()
    record: dict[str, Any] = {
        "enabled": False,
        "active_version": "1.0.0",
        "pending_version": None,
        "granted": [GREET],
        "versions": {
            "1.0.0": {"path": "packages/acme.caller/1.0.0", "manifest": manifest, "digest": None}
        },
    }
    record.update(overrides)
    return record


def test_a_record_may_hold_call_grants() -> None:
    assert record_problems("acme.caller", _record()) == []
    assert record_problems("acme.caller", _record(granted=["network", GREET, SHOUT])) == []


@pytest.mark.parametrize(
    ("granted", "expected"),
    [
        (["call:../../x"], "granted[0]: 'call:../../x' is not call:<plugin id>/<function>"),
        (["network", "call:"], "granted[1]: 'call:' is not call:<plugin id>/<function>"),
        ([GREET, GREET], f"granted[1]: {GREET} granted twice"),
        ([None], "granted[0]: unknown capability None"),
        (["call:" + "x" * 1_000_000], "granted[0]: 'call:xxx"),
        ("network", "granted: expected an array"),
    ],
)
def test_hostile_granted_lists_are_refused_with_their_place(granted: Any, expected: str) -> None:
    problems = record_problems("acme.caller", _record(granted=granted))
    assert len(problems) == 1 and problems[0].startswith(expected)
    assert len(problems[0]) < 300


def test_many_bad_grants_make_a_short_message() -> None:
    problems = record_problems("acme.caller", _record(granted=["call:"] * 10_000))
    assert 1 <= len(problems) <= 5


@pytest.mark.parametrize("calls", ["acme.greeter/greet", ["../../x"], [3], ["a.b/c\n"]])
def test_a_stored_manifest_with_bad_calls_is_refused(calls: Any) -> None:
    record = _record()
    record["versions"]["1.0.0"]["manifest"]["calls"] = calls
    problems = record_problems("acme.caller", record)
    assert len(problems) == 1 and problems[0].startswith("versions['1.0.0'].manifest.calls: ")


def test_a_registry_file_with_a_bad_call_grant_is_an_error_naming_it(
    reg: PluginRegistry,
) -> None:
    reg.plugins_dir.mkdir(parents=True)
    doc = {
        "schema": "aurora-plugin-registry-v1",
        "plugins": {"acme.caller": _record(granted=["call:../../x" + "y" * 100_000])},
    }
    reg.path.write_text(json.dumps(doc))
    with pytest.raises(RegistryError) as info:
        reg.list()
    message = str(info.value)
    assert "record 'acme.caller': granted[0]: 'call:../../xyy" in message
    assert len(message) < 1000
    with pytest.raises(RegistryError):
        reg.grant("acme.caller", [GREET])


def test_the_registry_schema_accepts_what_the_code_writes(reg: PluginRegistry) -> None:
    import jsonschema

    schema_path = Path(__file__).resolve().parent.parent / "schemas" / "plugin-registry-v1.json"
    schema = json.loads(schema_path.read_text())
    reg.register_version(caller(permissions=["network"]), ["main.py"])
    reg.grant("acme.caller", [GREET, "network"])
    jsonschema.validate(json.loads(reg.path.read_text()), schema)
    bad = json.loads(reg.path.read_text())
    bad["plugins"]["acme.caller"]["granted"] = ["call:../../x"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# -- the command line ----------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = plugins.main([*argv, "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    view = dict(doc["result"] or {})
    view.update(ok=doc["ok"], exit=doc["exit"], error=doc["error"])
    return code, view, err


def test_cli_story(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = str(tmp_path / "plugins")
    manifest = caller(
        permissions=["network"],
        functions={"hello": {}},
        activation="on-call",
        idle_seconds=30,
        health={"interval_s": 5},
    )
    pkg = write_package(tmp_path / "pkg", manifest)
    code, doc, _ = run(capsys, "stage", str(pkg), "--data", data)
    assert code == 0 and doc["missing"] == [GREET, "network"]
    code, doc, err = run(capsys, "enable", "acme.caller", "--data", data)
    assert code == plugins.EXIT_DENIED and GREET in doc["error"]["capabilities"]
    assert f"grant acme.caller {GREET} network" in err
    code, doc, err = run(capsys, "grant", "acme.caller", SHOUT, "--data", data)
    assert code == plugins.EXIT_INVALID
    assert f"acme.caller does not request {SHOUT} (requests: {GREET}, network)" in err
    code, doc, err = run(capsys, "grant", "acme.caller", "call:../../x", "--data", data)
    assert code == plugins.EXIT_INVALID and "Traceback" not in err
    assert "'call:../../x' is not call:<plugin id>/<function>" in err
    code, doc, _ = run(capsys, "grant", "acme.caller", GREET, "--data", data)
    assert code == 0 and doc["granted"] == [GREET]

    code, doc, _ = run(capsys, "show", "acme.caller", "--data", data)
    assert code == 0 and doc["requested"] == [GREET, "network"]
    assert doc["granted"] == [GREET] and doc["missing"] == ["network"]
    assert doc["calls"] == {"requested": [GREET], "granted": [GREET], "missing": [], "blocked": []}
    assert doc["protocol"] == {
        "functions": ["hello"],
        "activation": "on-call",
        "idle_seconds": 30,
        "health": {"interval_s": 5, "timeout_s": 2, "failures": 3},
    }
    assert plugins.main(["show", "acme.caller", "--data", data]) == 0
    text = capsys.readouterr()[0]
    assert f"calls: requested {GREET}; granted {GREET}; missing -" in text
    assert "functions: hello; activation on-call (idle 30 s); health every 5 s" in text

    run(capsys, "grant", "acme.caller", "network", "--data", data)
    code, _, _ = run(capsys, "enable", "acme.caller", "--data", data)
    assert code == 0
    assert plugins.main(["list", "--data", data]) == 0
    lines = capsys.readouterr()[0].splitlines()
    assert len(lines) == 1 and "granted=network calls=1/1" in lines[0]

    code, doc, _ = run(capsys, "revoke", "acme.caller", GREET, "--data", data)
    assert code == 0 and doc["revoked"] == [GREET] and doc["disabled"] is True
    assert plugins.main(["list", "--data", data]) == 0
    line = capsys.readouterr()[0]
    assert f"calls=0/1 missing={GREET}" in line and "disabled" in line

    code, doc, _ = run(capsys, "policy", "--block", GREET, "--data", data)
    assert code == 0 and doc["blocked"] == [GREET] and doc["calls"] == {GREET: "blocked"}
    assert plugins.main(["policy", "--data", data]) == 0
    assert f"{GREET} blocked" in capsys.readouterr()[0]
    code, doc, _ = run(capsys, "show", "acme.caller", "--data", data)
    assert doc["blocked"] == [GREET] and doc["calls"]["blocked"] == [GREET]
    code, doc, err = run(capsys, "grant", "acme.caller", GREET, "--data", data)
    assert code == plugins.EXIT_DENIED and "blocked by policy" in err
    code, doc, err = run(capsys, "policy", "--block", "call:", "--data", data)
    assert code == plugins.EXIT_INVALID and "block[0]: 'call:' is not" in err
    actions = [e["action"] for e in read_audit(Path(data) / "audit.log")]
    assert actions.count("grant") == 2 and actions.count("revoke") == 1
    assert actions[-1] == "policy"


def test_show_of_a_plugin_without_protocol_keys(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = str(tmp_path / "plugins")
    pkg = write_package(tmp_path / "pkg", make_manifest(permissions=[]))
    assert plugins.main(["stage", str(pkg), "--data", data]) == 0
    capsys.readouterr()
    code, doc, _ = run(capsys, "show", "acme.echo", "--data", data)
    assert code == 0 and doc["calls"]["requested"] == [] and doc["requested"] == []
    assert doc["protocol"]["activation"] == "always" and doc["protocol"]["idle_seconds"] is None
    assert plugins.main(["show", "acme.echo", "--data", data]) == 0
    text = capsys.readouterr()[0]
    assert "calls:" not in text and "functions: -; activation always; health every 10 s" in text
    assert plugins.main(["list", "--data", data]) == 0
    assert "calls=" not in capsys.readouterr()[0]
