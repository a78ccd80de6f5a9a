"""The repository's own packs through the installer, on a temporary home."""

from __future__ import annotations

import json

import pytest
from aurora.exitcodes import ExitCode
from aurora_testing import REPO, Env

PACKS = REPO / "packs"


def _ready(pack_id: str) -> bool:
    return (PACKS / pack_id / "install.sh").exists()


needs_all = pytest.mark.skipif(
    not all(_ready(p) for p in ("pack03_os_base", "pack04_launcher", "pack05_plugin_api")),
    reason="a pack's lifecycle scripts have not landed yet",
)


@pytest.fixture
def real(env: Env) -> Env:
    env.packs_dir = PACKS
    return env


@pytest.mark.parametrize(
    "pack_id", ["pack01_common", "pack03_os_base", "pack04_launcher", "pack05_plugin_api"]
)
def test_repository_pack_validates(real: Env, pack_id: str) -> None:
    if not _ready(pack_id):
        pytest.skip(f"{pack_id}: scripts not there yet")
    result = real.run("validate", "--pack", pack_id)
    assert result.code == 0, result.err


def test_pack05_manifest_is_the_reference(real: Env) -> None:
    text = (PACKS / "pack05_plugin_api" / "manifest.yaml").read_text()
    for line in (
        'id: "pack05_plugin_api"',
        'version: "0.1.0"',
        'pack_id: "pack03_os_base"',
        'pack_id: "pack04_launcher"',
        'path: "core/api.py"',
        "health_check_timeout_seconds: 30",
    ):
        assert line in text


@needs_all
def test_pack05_stage_then_dry_run_on_a_fresh_home(real: Env) -> None:
    # The reference's two commands; dependencies not yet installed are part of the plan.
    staged = real.cli("stage", "--pack", "pack05_plugin_api")
    assert staged.code == 0, staged.err
    dry = real.cli("dry-run", "--pack", "pack05_plugin_api", "--json")
    assert dry.code == 0, dry.err
    steps = json.loads(dry.out)["result"]["plan"]["steps"]
    assert [s["pack"] for s in steps] == [
        "pack01_common",
        "pack03_os_base",
        "pack04_launcher",
        "pack05_plugin_api",
    ]
    assert not (real.home / "packs").exists()


@needs_all
def test_pack05_install_with_deps_then_uninstall(real: Env) -> None:
    result = real.cli("install", "--pack", "pack05_plugin_api", "--with-deps", "--approve")
    assert result.code == 0, result.err
    for pack_id in ("pack01_common", "pack03_os_base", "pack04_launcher", "pack05_plugin_api"):
        assert real.active(pack_id) == "0.1.0"
        assert real.cli("verify", "--pack", pack_id).code == 0
    assert real.cli("uninstall", "--pack", "pack03_os_base").code == ExitCode.REFUSED
    assert real.cli("uninstall", "--pack", "pack05_plugin_api").code == 0
    assert not (real.home / "packs" / "pack05_plugin_api").exists()
