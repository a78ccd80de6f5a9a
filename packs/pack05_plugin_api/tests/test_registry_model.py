"""Random walks over registry operations keep its safety invariants (core/registry.py).

A seeded walk rather than a Hypothesis state machine: the interesting states (a plugin
enabled with grants, then a revoke, a block, a new version...) need several specific
steps in a row, which a weighted walk reaches every run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest
from core.errors import PluginError
from core.permissions import load_policy, update_policy
from core.registry import PluginRegistry
from packaging.version import Version

from pack05_testlib import make_manifest

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "schemas" / "plugin-registry-v1.json").read_text()
)
IDS = ["acme.a", "acme.b"]
VERSIONS = ["1.0.0", "1.1.0", "2.0.0"]
CAPS = ["network", "gpu"]


def _caps(rng: random.Random) -> list[str]:
    return rng.sample(CAPS, rng.randint(0, len(CAPS)))


def _step(reg: PluginRegistry, rng: random.Random, stats: dict[str, int]) -> None:
    pid = rng.choice(IDS)
    action = rng.choices(
        ["register", "grant", "revoke", "enable", "disable", "rollback", "unregister", "policy"],
        weights=[5, 4, 2, 4, 1, 2, 1, 1],
    )[0]
    record = reg.get(pid)
    try:
        if action == "register":
            manifest = make_manifest(id=pid, version=rng.choice(VERSIONS), permissions=_caps(rng))
            reg.register_version(manifest, ["main.py"], replace=rng.random() < 0.5)
        elif action == "grant" and record:
            wanted = {c for v in record["versions"].values() for c in v["manifest"]["permissions"]}
            reg.grant(pid, sorted(wanted))
        elif action == "revoke":
            if reg.revoke(pid, _caps(rng))["disabled"]:
                stats["revoke disabled"] += 1
        elif action == "enable":
            if reg.enable(pid, rng.choice([None, *VERSIONS])):
                stats["enabled"] += 1
        elif action == "disable":
            reg.disable(pid)
        elif action == "rollback":
            reg.rollback(pid, rng.choice([None, *VERSIONS]))
            stats["rolled back"] += 1
        elif action == "unregister":
            reg.unregister(pid, rng.choice([None, *VERSIONS]))
        elif action == "policy":
            update_policy(
                reg.plugins_dir, **{rng.choice(["block", "allow", "clear"]): [rng.choice(CAPS)]}
            )
    except PluginError:  # not granted, unknown, other content without replace...: refused
        stats["refused"] += 1


def _check(reg: PluginRegistry, *, full: bool) -> None:
    blocked = load_policy(reg.plugins_dir).blocked
    for pid, record in reg.list().items():
        assert record["active_version"] in record["versions"], pid
        assert not set(record["granted"]) & blocked, pid
        if record["enabled"]:
            requested = set(record["manifest"]["permissions"])
            assert requested <= set(record["granted"]), (pid, record)
        pending = record["pending_version"]
        if pending is not None:
            assert pending in record["versions"]
            assert Version(pending) > Version(record["active_version"])
    if full and reg.path.exists():
        jsonschema.validate(json.loads(reg.path.read_text()), SCHEMA)
        assert PluginRegistry(reg.plugins_dir).list() == reg.list()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_walk_keeps_enabled_plugins_within_their_grants(tmp_path: Path, seed: int) -> None:
    reg = PluginRegistry(tmp_path / "plugins", actor="walk")
    rng = random.Random(seed)
    stats = {"enabled": 0, "revoke disabled": 0, "rolled back": 0, "refused": 0}
    for i in range(150):
        _step(reg, rng, stats)
        _check(reg, full=i % 10 == 9)
    # the walk reached the states that matter
    assert stats["enabled"] and stats["revoke disabled"] and stats["refused"], stats
