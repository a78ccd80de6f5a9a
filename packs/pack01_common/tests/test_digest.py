"""The tree digest: injective encoding, old formats refused, special files refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aurora_common.digest import (
    DigestFormatError,
    Entry,
    check_format,
    digest_entries,
    encode,
    tree_digest,
)
from aurora_common.errors import InputRefused
from hypothesis import given, settings
from hypothesis import strategies as st

_name = st.text(
    alphabet=st.sampled_from(["a", "b", "\n", "\t", " ", "-", ">", "/", "é"]),
    min_size=1,
    max_size=6,
).filter(lambda p: all(part not in ("", ".", "..") for part in p.split("/")))
_hex = st.sampled_from(["0" * 64, "1" * 64, "ab" * 32])


@st.composite
def _entry(draw: st.DrawFn) -> Entry:
    path = draw(_name)
    kind = draw(st.sampled_from(["d", "f", "x", "l"]))
    if kind in ("f", "x"):
        return Entry(path, kind, size=draw(st.integers(0, 300)), sha256=draw(_hex))
    if kind == "l":
        return Entry(path, kind, target=draw(_name))
    return Entry(path, kind)


def _unique(entries: list[Entry]) -> list[Entry]:
    return list({e.path: e for e in entries}.values())


@settings(max_examples=400, deadline=None)
@given(st.lists(_entry(), max_size=5), st.lists(_entry(), max_size=5))
def test_different_trees_never_share_an_encoding(a: list[Entry], b: list[Entry]) -> None:
    a, b = _unique(a), _unique(b)
    same_tree = sorted(a, key=lambda e: e.path) == sorted(b, key=lambda e: e.path)
    assert (encode(a) == encode(b)) == same_tree


def test_the_old_line_format_collisions_are_distinct() -> None:
    # "kind:hash\tpath\n" lines: one crafted name imitated two entries.
    h = "ab" * 32
    two = [Entry("a", "f", 1, h), Entry("b", "f", 1, h)]
    one = [Entry(f"a\nfile:{h}\tb", "f", 1, h)]
    assert digest_entries(two) != digest_entries(one)
    # pack05's "-> target path" records: z -> "x y" versus "y z" -> x.
    assert digest_entries([Entry("z", "l", target="x y")]) != digest_entries(
        [Entry("y z", "l", target="x")]
    )


def test_an_old_digest_is_refused_with_restage() -> None:
    with pytest.raises(DigestFormatError, match="restage"):
        check_format("sha256:" + "0" * 64, "registry.json plugin x")
    with pytest.raises(DigestFormatError, match="not a tree-v1"):
        check_format("tree-v1:sha256:XYZ")
    good = "tree-v1:sha256:" + "0" * 64
    assert check_format(good) == good


def test_bad_entry_paths_are_refused() -> None:
    for bad in ("", "/abs", "a//b", "a/../b", "./a", "nul\0"):
        with pytest.raises(InputRefused):
            encode([Entry(bad, "d")])
    with pytest.raises(InputRefused, match="twice"):
        encode([Entry("a", "d"), Entry("a", "d")])


def test_symlinks_are_recorded_not_followed(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("1")
    os.symlink("real", tmp_path / "l")
    first = tree_digest(tmp_path)
    (tmp_path / "real").write_text("1")
    os.unlink(tmp_path / "l")
    os.symlink("other", tmp_path / "l")
    assert tree_digest(tmp_path) != first


def test_a_fifo_in_the_tree_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputRefused, match="pipe"):
        tree_digest(tmp_path)


def test_exclude_leaves_out_a_subtree(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("k")
    empty = tree_digest(tmp_path)
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_text("c")
    assert tree_digest(tmp_path, lambda parts: "__pycache__" in parts) == empty
