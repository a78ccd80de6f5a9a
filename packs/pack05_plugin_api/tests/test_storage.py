"""Atomic writes, locks and the audit log (core/storage.py)."""

from __future__ import annotations

import json
import multiprocessing
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
        other = storage.FileLock(lock, blocking=False)
        assert other.acquire() is False
    assert other.acquire() is True
    other.release()
    assert lock.exists()  # never deleted: a lock file that vanished could be held twice


def _append(path: str, n: int, worker: int) -> None:
    for i in range(n):
        storage.append_audit(Path(path), {"worker": worker, "i": i, "pad": "x" * 500})


def test_audit_lines_from_many_processes_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(str(log), 50, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    records = storage.read_audit(log)
    assert len(records) == 200
    assert all(set(r) == {"worker", "i", "pad"} for r in records)
    assert all(json.loads(line) for line in log.read_text().splitlines())


def test_read_audit_of_missing_log_is_empty(tmp_path: Path) -> None:
    assert storage.read_audit(tmp_path / "audit.log") == []


def test_utc_now_format() -> None:
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", storage.utc_now())
