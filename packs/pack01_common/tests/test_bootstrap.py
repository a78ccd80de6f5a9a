"""aurora_boot.py: the one copied file, identical in every pack, finds the library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKS = Path(__file__).resolve().parents[2]
MASTER = PACKS / "pack01_common" / "aurora_boot.py"


def test_every_copy_is_identical() -> None:
    copies = sorted(PACKS.glob("*/*/aurora_boot.py"))
    assert copies, "no pack keeps a copy yet"
    for copy in copies:
        assert copy.read_bytes() == MASTER.read_bytes(), f"{copy} differs from {MASTER}"


def _import_from(package_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import pkg.aurora_boot, aurora_common; print(aurora_common.__file__)"
    return subprocess.run(
        [sys.executable, "-E", "-s", "-c", code],
        cwd=package_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _pack_copy(root: Path) -> Path:
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    shutil.copy(MASTER, pkg / "aurora_boot.py")
    return pkg


def test_source_tree_finds_the_sibling(tmp_path: Path) -> None:
    shutil.copytree(
        PACKS / "pack01_common" / "aurora_common", tmp_path / "pack01_common" / "aurora_common"
    )
    pkg = _pack_copy(tmp_path / "packX")
    done = _import_from(pkg, {"PATH": os.environ["PATH"]})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "pack01_common" / "aurora_common" / "__init__.py")


def test_installed_copy_finds_the_active_version_from_state_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lib = home / "packs" / "pack01_common" / "0.1.0"
    shutil.copytree(PACKS / "pack01_common" / "aurora_common", lib / "aurora_common")
    (home / "state.json").write_text(
        json.dumps(
            {"schema": "aurora-state-v1", "packs": {"pack01_common": {"active_version": "0.1.0"}}}
        )
    )
    pkg = _pack_copy(home / "packs" / "packX" / "1.0.0")
    for env in (
        {"PATH": os.environ["PATH"], "AURORA_HOME": str(home)},
        {"PATH": os.environ["PATH"]},
    ):
        done = _import_from(pkg, env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == str(lib / "aurora_common" / "__init__.py")
    (home / "state.json").write_text(json.dumps({"schema": "aurora-state-v1", "packs": {}}))
    done = _import_from(pkg, {"PATH": os.environ["PATH"], "AURORA_HOME": str(home)})
    assert done.returncode != 0 and "pack01_common is not installed" in done.stderr
