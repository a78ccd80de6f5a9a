"""The audit log (core/audit.py)."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

from core import audit


def _append(path: str, n: int, worker: int) -> None:
    for i in range(n):
        audit.append_audit(Path(path), {"worker": worker, "i": i, "pad": "x" * 500})


def test_audit_lines_from_many_processes_never_interleave(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append, args=(str(log), 50, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)  # 200 fsyncs: slow on a loaded disk
    assert [p.exitcode for p in procs] == [0] * 4
    records = audit.read_audit(log)
    assert len(records) == 200
    assert all(set(r) == {"worker", "i", "pad"} for r in records)
    assert all(json.loads(line) for line in log.read_text().splitlines())


def test_read_audit_of_missing_log_is_empty(tmp_path: Path) -> None:
    assert audit.read_audit(tmp_path / "audit.log") == []


def test_utc_now_format() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", audit.utc_now())
