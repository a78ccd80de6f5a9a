"""The repository's own packs are sealed: every artifact's sha256 pinned and right."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "packs").glob("*/manifest.yaml"))


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.parent.name for m in MANIFESTS])
def test_every_artifact_is_pinned_to_its_sha256(manifest: Path) -> None:
    doc = yaml.safe_load(manifest.read_text())
    for artifact in doc["pack"]["artifacts"]:
        path = manifest.parent / artifact["path"]
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        where = f"{manifest.relative_to(REPO)}: {artifact['path']}"
        assert artifact["sha256"], f"{where}: no sha256 (run `make seal`)"
        assert artifact["sha256"] == actual, f"{where}: sha256 is stale (run `make seal`)"


def test_the_repository_has_its_packs() -> None:
    assert {m.parent.name for m in MANIFESTS} >= {
        "pack03_os_base",
        "pack04_launcher",
        "pack05_plugin_api",
    }
