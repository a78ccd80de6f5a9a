"""The JSON Schemas: valid, shipped in the pack, identical to the repository copies."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from core.api import manifest_problems

from pack05_testlib import make_manifest

PACK_ROOT = Path(__file__).resolve().parent.parent
REPO = PACK_ROOT.parent.parent
NAMES = ["plugin-manifest-v1.json", "plugin-registry-v1.json", "plugin-permissions-v1.json"]


@pytest.mark.parametrize("name", NAMES)
def test_pack_schema_is_byte_identical_to_the_repository_copy(name: str) -> None:
    ours = PACK_ROOT / "schemas" / name
    theirs = REPO / "schemas" / name
    if not theirs.exists():
        pytest.skip("pack installed outside the repository")
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_a_valid_json_schema(name: str) -> None:
    schema = json.loads((PACK_ROOT / "schemas" / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)


def test_manifest_schema_and_code_agree_on_a_valid_manifest() -> None:
    schema = json.loads((PACK_ROOT / "schemas" / "plugin-manifest-v1.json").read_text())
    manifest = make_manifest()
    jsonschema.validate(manifest, schema)
    assert manifest_problems(manifest) == []


def test_capability_enums_match_the_vocabulary() -> None:
    from core.capabilities import CAPABILITY_NAMES

    manifest = json.loads((PACK_ROOT / "schemas" / "plugin-manifest-v1.json").read_text())
    registry = json.loads((PACK_ROOT / "schemas" / "plugin-registry-v1.json").read_text())
    policy = json.loads((PACK_ROOT / "schemas" / "plugin-permissions-v1.json").read_text())
    assert manifest["properties"]["permissions"]["items"]["enum"] == list(CAPABILITY_NAMES)
    assert registry["$defs"]["capability"]["enum"] == list(CAPABILITY_NAMES)
    assert policy["$defs"]["capability"]["enum"] == list(CAPABILITY_NAMES)
    for key in ("allowed", "blocked"):
        assert policy["properties"][key]["items"] == {"$ref": "#/$defs/grant"}


def test_call_grant_patterns_match_the_code() -> None:
    """The schemas' call:<plugin id>/<function> pattern is the code's (core/capabilities.py)."""
    import re

    from core.capabilities import CALL_GRANT_PREFIX, CALL_TARGET, MAX_CALL_TARGET

    manifest = json.loads((PACK_ROOT / "schemas" / "plugin-manifest-v1.json").read_text())
    calls = manifest["properties"]["calls"]["items"]
    assert calls["pattern"] == "^" + CALL_TARGET.pattern.replace("(?:", "(") + "$"
    assert calls["maxLength"] == MAX_CALL_TARGET
    for name in ("plugin-registry-v1.json", "plugin-permissions-v1.json"):
        grant = json.loads((PACK_ROOT / "schemas" / name).read_text())["$defs"]["call_grant"]
        assert grant["pattern"] == "^" + CALL_GRANT_PREFIX + calls["pattern"][1:]
        assert grant["maxLength"] == len(CALL_GRANT_PREFIX) + MAX_CALL_TARGET
        for good in ("call:acme.greeter/greet", "call:a.b/x_1"):
            assert re.fullmatch(grant["pattern"].strip("^$"), good)
        for bad in ("call:", "call:../../x", "call:acme.greeter", "network", "call:acme/greet"):
            assert not re.fullmatch(grant["pattern"].strip("^$"), bad)
