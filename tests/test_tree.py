"""Tree digests and the hashing copy: every file's path and content, nothing else."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from aurora.tree import compare, copy_tree, digest_tree


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "sub" / "b.bin").write_bytes(os.urandom(5 * 1024 * 1024 + 3))  # spans chunks
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    os.symlink("a.txt", root / "link")
    return root


def test_copy_digest_equals_in_place_digest(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    copied, problems = copy_tree(src, tmp_path / "dst")
    assert problems == []
    in_place, _ = digest_tree(src)
    assert copied.digest == in_place.digest == digest_tree(tmp_path / "dst")[0].digest
    big = (src / "sub" / "b.bin").read_bytes()
    assert copied.file_sha256("sub/b.bin") == hashlib.sha256(big).hexdigest()
    assert (tmp_path / "dst" / "sub" / "b.bin").read_bytes() == big
    assert os.access(tmp_path / "dst" / "run.sh", os.X_OK)
    assert os.readlink(tmp_path / "dst" / "link") == "a.txt"
    assert copied.files == 3


def test_digest_changes_with_content_name_and_mode(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    base = digest_tree(src)[0].digest
    (src / "a.txt").write_text("b")
    changed = digest_tree(src)[0].digest
    assert changed != base
    (src / "a.txt").rename(src / "c.txt")
    assert digest_tree(src)[0].digest not in (base, changed)
    (src / "run.sh").chmod(0o644)
    renamed = digest_tree(src)[0]
    (src / "run.sh").chmod(0o755)
    assert renamed.digest != digest_tree(src)[0].digest


def test_compare_lists_changed_missing_extra() -> None:
    recorded = {"a": "file:1", "b": "file:2", "d": "dir"}
    actual = {"a": "file:9", "c": "file:3", "d": "dir"}
    assert compare(recorded, actual) == {"changed": ["a"], "missing": ["b"], "extra": ["c"]}


def test_escaping_symlink_stops_the_copy(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    os.symlink("../../outside", src / "sub" / "evil")
    _, problems = copy_tree(src, tmp_path / "dst")
    assert problems == ["sub/evil: symlink leads out of the pack (../../outside)"]
    assert not (tmp_path / "dst").exists()
