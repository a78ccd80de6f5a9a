"""The lifecycle scripts, run as the installer runs them (environment from the contract)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]


def _script(
    name: str, *args: str, data: Path, root: Path = PACK
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHON": sys.executable,
        "PYTHONDONTWRITEBYTECODE": "1",  # as on this project's machines
        "AURORA_PACK_ROOT": str(root),
        "AURORA_PACK_DATA": str(data),
    }
    return subprocess.run(
        [str(root / name), *args], capture_output=True, text=True, env=env, timeout=120,
        cwd="/",
    )  # fmt: skip


def _installed_copy(tmp_path: Path) -> Path:
    """The pack as the installer places it: no __pycache__, no tests."""
    root = tmp_path / "pack03"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", "data", "run", "logs")
    shutil.copytree(PACK, root, ignore=ignore)
    return root


def test_scripts_are_executable() -> None:
    for name in ("install.sh", "start.sh", "stop.sh", "health_check.sh"):
        assert os.access(PACK / name, os.X_OK), name


def test_dry_run_checks_and_writes_nothing(tmp_path: Path) -> None:
    root = _installed_copy(tmp_path)
    proc = _script("install.sh", "--dry-run", data=tmp_path / "data", root=root)
    assert proc.returncode == 0, proc.stderr
    assert "dry run ok" in proc.stderr
    assert not (tmp_path / "data").exists()
    assert not list(root.rglob("__pycache__"))


def test_install_creates_the_data_dir_and_compiles_the_library(tmp_path: Path) -> None:
    root = _installed_copy(tmp_path)
    proc = _script("install.sh", "--install", data=tmp_path / "data", root=root)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data").is_dir()
    tag = sys.implementation.cache_tag
    for module in ("confine", "cgroups", "policy", "server"):
        assert (root / "sandbox" / "__pycache__" / f"{module}.{tag}.pyc").is_file(), module


@pytest.mark.parametrize("args", [pytest.param([], id="no-arg"), pytest.param(["--x"], id="bad")])
def test_install_usage_mistake_fails(tmp_path: Path, args: list[str]) -> None:
    proc = _script("install.sh", *args, data=tmp_path / "data")
    assert proc.returncode != 0
    assert "usage" in proc.stderr


@pytest.mark.parametrize("name", ["start.sh", "stop.sh"])
def test_no_daemon_says_so(tmp_path: Path, name: str) -> None:
    proc = _script(name, data=tmp_path / "data")
    assert proc.returncode == 0
    assert "no daemon" in proc.stderr


def test_health_reports_the_layers(tmp_path: Path) -> None:
    proc = _script("health_check.sh", data=tmp_path / "data")
    assert "always-layers: " in proc.stderr
    for layer in ("landlock", "seccomp", "cgroup", "network-namespace", "bwrap"):
        assert layer in proc.stderr
    assert proc.returncode == (0 if "always-layers: ok" in proc.stderr else 1)
