"""Durable writes: a reader sees the old or the new file, never half; no temp file is left."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aurora import fsutil
from aurora.audit import AuditLog
from aurora.fsutil import atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_and_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert len(synced) == 2  # the temp file before the rename, the directory after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_failed_rename_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsutil.os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_atomic_write_keeps_the_requested_mode(tmp_path: Path) -> None:
    target = tmp_path / "manifest.yaml"
    atomic_write_bytes(target, b"x", mode=0o600)
    assert target.stat().st_mode & 0o777 == 0o600


def test_audit_log_only_appends_json_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    first = log.record("stage", "alpha", digest="sha256:1")
    before = (tmp_path / "audit.log").read_bytes()
    log.record("install", "alpha", digest="sha256:1")
    after = (tmp_path / "audit.log").read_bytes()
    assert after.startswith(before)  # earlier lines are never rewritten
    lines = [json.loads(line) for line in after.decode().splitlines()]
    assert [e["event"] for e in lines] == ["stage", "install"]
    assert lines[0] == first and {"ts", "user", "pid"} <= set(first)
