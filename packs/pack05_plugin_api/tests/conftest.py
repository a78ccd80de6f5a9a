"""Shared fixtures: the pack root on sys.path, plugin data in tmp_path, package factories."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent
if str(PACK_ROOT) not in sys.path:
    # --import-mode=importlib does not add test dirs to sys.path; `core` lives in the pack root.
    sys.path.insert(0, str(PACK_ROOT))


@pytest.fixture(autouse=True)
def pack_data(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point AURORA_PACK_DATA at a temp dir so no test (the reference's included) touches data/."""
    data = tmp_path_factory.mktemp("pack-data")
    monkeypatch.setenv("AURORA_PACK_DATA", str(data))
    return data


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    """An explicit plugins directory (not created: the code creates it when it writes)."""
    return tmp_path / "plugins"


def make_manifest(**overrides: Any) -> dict[str, Any]:
    """A valid manifest; keys set to None are removed."""
    manifest: dict[str, Any] = {
        "id": "acme.echo",
        "name": "Echo",
        "version": "1.0.0",
        "entrypoint": "main.py",
        "description": "Echoes its input.",
        "permissions": ["network"],
    }
    manifest.update(overrides)
    return {k: v for k, v in manifest.items() if v is not None}


@pytest.fixture
def manifest_factory() -> Callable[..., dict[str, Any]]:
    return make_manifest


def write_package(
    root: Path, manifest: dict[str, Any] | None = None, files: dict[str, str | bytes] | None = None
) -> Path:
    """A package directory: manifest.json plus files (default: main.py)."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = make_manifest() if manifest is None else manifest
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    for rel, content in (files if files is not None else {"main.py": "print('hi')\n"}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


@pytest.fixture
def package_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build a package directory under tmp_path/src/<name>."""
    counter = iter(range(10**6))

    def build(
        manifest: dict[str, Any] | None = None,
        files: dict[str, str | bytes] | None = None,
        name: str | None = None,
    ) -> Path:
        return write_package(tmp_path / "src" / (name or f"pkg{next(counter)}"), manifest, files)

    return build
