"""The test vectors of docs/primitives.md, checked against the code."""

from __future__ import annotations

import os
import re
from pathlib import Path

from aurora_common.digest import encode, scan, tree_digest

DOC = Path(__file__).resolve().parents[3] / "docs" / "primitives.md"


def _vector(name: str) -> str:
    match = re.search(rf"<!-- vector:{name} -->\n```\n(.+?)\n```", DOC.read_text(), re.S)
    assert match, f"vector {name} missing from {DOC}"
    return match.group(1).strip()


def _make_vector_tree(root: Path) -> None:
    (root / "a\nb").write_bytes(b"x\n")
    (root / "dir").mkdir()
    (root / "dir" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "dir" / "run.sh", 0o755)
    (root / "empty").mkdir()
    os.symlink("a\nb", root / "link")
    (root / "tab\there").write_bytes(b"")
    (root / "x -> y").write_bytes(b"link")
    for p in (root / "a\nb", root / "tab\there", root / "x -> y"):
        os.chmod(p, 0o644)


def test_tree_vector_matches_a_real_tree(tmp_path: Path) -> None:
    _make_vector_tree(tmp_path)
    assert tree_digest(tmp_path) == _vector("tree")
    assert encode(scan(tmp_path)).hex() == _vector("tree-encoding")


def test_empty_tree_and_empty_directory_vectors(tmp_path: Path) -> None:
    assert tree_digest(tmp_path) == _vector("empty")
    (tmp_path / "empty").mkdir()
    assert tree_digest(tmp_path) == _vector("only-empty-dir")


def test_mode_bits_other_than_execute_do_not_count(tmp_path: Path) -> None:
    _make_vector_tree(tmp_path)
    os.chmod(tmp_path / "a\nb", 0o600)
    assert tree_digest(tmp_path) == _vector("tree")
    os.chmod(tmp_path / "a\nb", 0o744)
    assert tree_digest(tmp_path) != _vector("tree")
