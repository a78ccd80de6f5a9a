"""Factories for pack05 tests (a unique module name: test dirs of several packs share sys.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
