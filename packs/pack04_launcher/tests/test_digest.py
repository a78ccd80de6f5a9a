"""The package tree digest, as pack05 records it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from launcher.digest import tree_digest
from launcher_testing import PACK_ROOT

EXAMPLE = PACK_ROOT.parent.parent / "examples" / "plugins" / "acme.heartbeat"
PLUGINS_CLI = PACK_ROOT.parent / "pack05_plugin_api" / "plugins.py"


def test_digest_changes_with_content_names_and_links(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.py").write_text("a")
    (tmp_path / "sub" / "x.txt").write_text("b")
    first = tree_digest(tmp_path)
    assert first.startswith("tree-v1:sha256:") and len(first) == 15 + 64
    assert tree_digest(tmp_path) == first
    (tmp_path / "main.py").write_text("A")
    assert tree_digest(tmp_path) != first
    (tmp_path / "main.py").write_text("a")
    assert tree_digest(tmp_path) == first
    (tmp_path / "link").symlink_to("main.py")
    with_link = tree_digest(tmp_path)
    assert with_link != first
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("sub")
    assert tree_digest(tmp_path) not in (first, with_link)


def test_digest_matches_what_pack05_records(tmp_path: Path) -> None:
    if not PLUGINS_CLI.is_file():
        pytest.skip(f"pack05 CLI not present at {PLUGINS_CLI}")
    data = tmp_path / "plugins"
    res = subprocess.run(
        [sys.executable, str(PLUGINS_CLI), "--data", str(data), "stage", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    reg = json.loads((data / "registry.json").read_text())
    version = reg["plugins"]["acme.heartbeat"]["versions"]["1.0.0"]
    assert tree_digest(data / version["path"]) == version["digest"]


def test_digest_is_the_shared_tree_v1_digest(tmp_path: Path) -> None:
    from aurora_common.digest import tree_digest as shared

    (tmp_path / "a\nb").write_text("x")
    (tmp_path / "empty").mkdir()
    assert tree_digest(tmp_path) == shared(tmp_path)


def test_an_old_format_registry_digest_says_restage() -> None:
    from launcher.digest import old_format_hint

    assert "restage" in old_format_hint("sha256:" + "0" * 64)
    assert old_format_hint("tree-v1:sha256:" + "0" * 64) == ""


def test_a_fifo_in_a_package_is_an_oserror(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "p")
    with pytest.raises(OSError, match="not a regular file"):
        tree_digest(tmp_path)
