"""The run report is replaced atomically: never half a file, no temp file left on failure."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sandbox.report import write_report


def test_report_is_written_whole(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    write_report(str(target), {"a": 1})
    write_report(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_failed_replace_keeps_the_old_report_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r.json"
    write_report(str(target), {"a": 1})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_report(str(target), {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
