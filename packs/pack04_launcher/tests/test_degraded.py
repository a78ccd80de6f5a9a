"""The operator's degraded-mode allowances: stored atomically, audited, fail closed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from launcher.degraded import SCHEMA, read_allowed, set_allowed
from launcher.errors import LauncherError


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "degraded.json", tmp_path / "degraded.lock", tmp_path / "audit.log"


def test_nobody_is_allowed_by_default(tmp_path: Path) -> None:
    assert read_allowed(tmp_path / "degraded.json") == set()
    assert list(tmp_path.iterdir()) == []  # reading creates nothing


def test_allow_and_deny_are_stored_and_audited(tmp_path: Path) -> None:
    path, lock, audit = _files(tmp_path)
    assert set_allowed(path, lock, audit, "acme.a", True) is True
    assert set_allowed(path, lock, audit, "acme.b", True) is True
    assert set_allowed(path, lock, audit, "acme.a", True) is False  # already allowed
    assert read_allowed(path) == {"acme.a", "acme.b"}
    assert set_allowed(path, lock, audit, "acme.a", False) is True
    assert read_allowed(path) == {"acme.b"}
    assert json.loads(path.read_text()) == {"schema": SCHEMA, "allowed": ["acme.b"]}
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["plugin"], r["changed"]) for r in records] == [
        ("allow-degraded", "acme.a", True),
        ("allow-degraded", "acme.b", True),
        ("allow-degraded", "acme.a", False),
        ("deny-degraded", "acme.a", True),
    ]
    assert all(r["at"].endswith("Z") and "uid" in r["by"] for r in records)
    assert lock.exists()  # the lock file is never deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.log",
        "degraded.json",
        "degraded.lock",
    ]  # no temp file left


def test_a_failed_write_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, lock, audit = _files(tmp_path)
    set_allowed(path, lock, audit, "acme.a", True)

    def _boom(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("aurora_common.atomic.os.replace", _boom)
    with pytest.raises(OSError):
        set_allowed(path, lock, audit, "acme.b", True)
    assert read_allowed(path) == {"acme.a"}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("{", "unreadable degraded-mode file", id="truncated"),
        pytest.param('{"allowed": []}', f"not a {SCHEMA} file", id="no-schema"),
        pytest.param(
            json.dumps({"schema": SCHEMA, "allowed": "acme.a"}),
            "allowed: expected a list of plugin ids",
            id="not-a-list",
        ),
    ],
)
def test_a_bad_file_is_an_error_naming_it(tmp_path: Path, text: str, expected: str) -> None:
    path, lock, audit = _files(tmp_path)
    path.write_text(text)
    with pytest.raises(LauncherError, match=r"degraded\.json") as info:
        read_allowed(path)
    assert expected in str(info.value)
    with pytest.raises(LauncherError):  # never silently repaired by a write
        set_allowed(path, lock, audit, "acme.a", True)
    assert path.read_text() == text
