"""Operator requests to the service: hold and start, written under a lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launcher.control import SCHEMA, read_control, request
from launcher.errors import LauncherError


def test_stop_holds_and_start_releases_and_counts(tmp_path: Path) -> None:
    path, lock = tmp_path / "control.json", tmp_path / "control.lock"
    assert read_control(path).held == set()
    request(path, lock, "acme.a", start=False)
    request(path, lock, "acme.b", start=False)
    assert read_control(path).held == {"acme.a", "acme.b"}
    ctl = request(path, lock, "acme.a", start=True)
    assert ctl.held == {"acme.b"} and ctl.starts == {"acme.a": 1}
    request(path, lock, "acme.a", start=True)
    assert read_control(path).starts == {"acme.a": 2}
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert lock.exists()  # the lock file is never deleted


@pytest.mark.parametrize(
    "text",
    [pytest.param("{", id="truncated"), pytest.param('{"held": []}', id="no-schema")],
)
def test_a_bad_control_file_is_an_error_not_an_empty_one(tmp_path: Path, text: str) -> None:
    (tmp_path / "control.json").write_text(text)
    with pytest.raises(LauncherError, match=r"control\.json"):
        read_control(tmp_path / "control.json")
