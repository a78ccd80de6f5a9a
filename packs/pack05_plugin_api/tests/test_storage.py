"""Atomic writes and locks (core/storage.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from core import storage


def test_atomic_write_replaces_and_returns_stat(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("old")
    st = storage.atomic_write(path, b"new", backup=tmp_path / "f.json.bak")
    assert path.read_text() == "new" and (tmp_path / "f.json.bak").read_text() == "old"
    assert st.st_ino == os.stat(path).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.json.bak"]


def test_atomic_write_removes_its_temp_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.json"
    path.write_text("old")

    def boom(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(storage.os, "fsync", boom)
    with pytest.raises(OSError, match="I/O error"):
        storage.atomic_write(path, b"new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_keeps_old_content_when_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(storage.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        storage.atomic_write(str(target), b"new")  # a str path, as the lifecycle code passes
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_held_lock_refuses_a_non_blocking_taker_until_released(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with storage.locked(lock):
        other = storage.FileLock(lock, 0)
        with pytest.raises(storage.LockBusy, match=f"pid {os.getpid()} holds"):
            other.acquire()
    other.acquire()
    assert other.held
    other.release()
    assert lock.exists()  # never deleted: a lock file that vanished could be held twice


def test_pack05_has_no_lock_of_its_own() -> None:
    """One lock primitive in the tree: pack05's is aurora_common.lock's, not a copy."""
    from aurora_common import lock

    assert storage.FileLock is lock.FileLock
    assert not hasattr(storage, "fcntl")
