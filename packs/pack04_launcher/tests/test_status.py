"""Reading the service's status file."""

from __future__ import annotations

from pathlib import Path

import pytest
from launcher.errors import LauncherError
from launcher.fsutil import atomic_write_json
from launcher.status import SCHEMA, read_status


def test_absent_status_is_none(tmp_path: Path) -> None:
    assert read_status(tmp_path / "status.json") is None


def test_round_trip(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "status.json", {"schema": SCHEMA, "plugins": {}})
    assert read_status(tmp_path / "status.json") == {"schema": SCHEMA, "plugins": {}}


@pytest.mark.parametrize(
    "text", [pytest.param("{", id="truncated"), pytest.param("{}", id="no-schema")]
)
def test_foreign_status_is_an_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "status.json").write_text(text)
    with pytest.raises(LauncherError, match=r"status\.json"):
        read_status(tmp_path / "status.json")
