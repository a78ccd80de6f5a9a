"""Where data lives, and that importing creates nothing (core/paths.py and every module)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from core import paths

from pack05_testlib import write_package

PACK_ROOT = Path(__file__).resolve().parent.parent


def test_plugins_dir_follows_aurora_pack_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AURORA_PACK_DATA", str(tmp_path / "d"))
    assert paths.plugins_dir() == tmp_path / "d" / "plugins"
    monkeypatch.delenv("AURORA_PACK_DATA")
    assert paths.plugins_dir() == PACK_ROOT / "data" / "plugins"
    assert not (tmp_path / "d").exists()


def test_schemas_ship_inside_the_pack() -> None:
    assert (paths.schemas_dir() / "plugin-manifest-v1.json").is_file()


def test_importing_every_module_creates_nothing(tmp_path: Path) -> None:
    """In a fresh interpreter with the default data dir: no data/, no file anywhere in the pack."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.dont_write_bytecode = True\n"
        "import core, core.api, core.registry, core.loader, core.permissions, core.paths, "
        "core.errors, core.storage, core.audit, core.capabilities, core.frozen, core.service, "
        "core.process, core.health\n"
        "import plugins\n"
    )
    before = sorted(str(p) for p in PACK_ROOT.rglob("*") if "__pycache__" not in p.parts)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(PACK_ROOT)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    after = sorted(str(p) for p in PACK_ROOT.rglob("*") if "__pycache__" not in p.parts)
    assert after == before
    assert list(tmp_path.iterdir()) == []


def test_reference_tests_never_touch_the_real_data_dir(tmp_path: Path) -> None:
    """Run the reference's two test files from the repo root, as the issue says."""
    repo = PACK_ROOT.parent.parent
    data = PACK_ROOT / "data"

    def state() -> list[tuple[str, int]]:
        return (
            sorted((str(p), p.lstat().st_mtime_ns) for p in data.rglob("*"))
            if data.exists()
            else []
        )

    existed, before = data.exists(), state()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "basetemp"),
            str(PACK_ROOT / "tests" / "test_registry.py"),
            str(PACK_ROOT / "tests" / "test_loader.py"),
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert data.exists() == existed and state() == before


def test_a_copy_of_the_pack_elsewhere_works_on_its_own(tmp_path: Path) -> None:
    """The installer copies only the pack directory: schemas and code must travel with it."""
    copy = tmp_path / "installed" / "pack05_plugin_api"
    shutil.copytree(
        PACK_ROOT,
        copy,
        ignore=shutil.ignore_patterns("tests", "data", "run", "logs", "__pycache__"),
    )
    # ... beside its declared dependency pack01_common (the shared primitives library).
    shutil.copytree(
        PACK_ROOT.parent / "pack01_common",
        copy.parent / "pack01_common",
        ignore=shutil.ignore_patterns("tests", "__pycache__"),
    )
    pkg = write_package(tmp_path / "pkg")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AURORA_PACK_DATA": str(tmp_path / "d")}
    for argv in (["validate", str(pkg)], ["stage", str(pkg)], ["list"]):
        result = subprocess.run(
            [sys.executable, "-B", str(copy / "plugins.py"), *argv, "--json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["ok"] is True
    assert (tmp_path / "d" / "plugins" / "registry.json").exists()
    assert not (copy / "data").exists()
