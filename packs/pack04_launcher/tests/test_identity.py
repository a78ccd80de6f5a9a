"""Per-plugin host identities: stable, from the documented range, never reused, audited."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from launcher import identity
from launcher.errors import LauncherError
from launcher.identity import FIRST_ID, LAST_ID, SCHEMA, allocate, read_identities


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "identities.json", tmp_path / "identities.lock", tmp_path / "audit.log"


def test_ids_are_stable_distinct_recorded_0600_and_audited(tmp_path: Path) -> None:
    path, lock, audit = _files(tmp_path)
    a = allocate(path, lock, audit, "acme.a", host_uses=lambda n: False)
    b = allocate(path, lock, audit, "acme.b", host_uses=lambda n: False)
    assert (a, b) == (FIRST_ID, FIRST_ID + 1)
    assert allocate(path, lock, audit, "acme.a") == a  # stable
    doc = json.loads(path.read_text())
    assert doc == {
        "schema": SCHEMA,
        "plugins": {"acme.a": {"uid": a, "gid": a}, "acme.b": {"uid": b, "gid": b}},
    }
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and os.stat(path).st_uid == 0
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["plugin"], r["uid"]) for r in records] == [
        ("allocate-identity", "acme.a", a),
        ("allocate-identity", "acme.b", b),
    ]


def test_numbers_the_host_uses_are_skipped_and_removed_ids_never_reused(tmp_path: Path) -> None:
    path, lock, audit = _files(tmp_path)
    taken = {FIRST_ID, FIRST_ID + 1}
    assert allocate(path, lock, audit, "acme.a", host_uses=taken.__contains__) == FIRST_ID + 2
    # acme.a's number stays recorded even when it is gone from the registry: a new
    # plugin gets the next one.
    assert allocate(path, lock, audit, "acme.new", host_uses=lambda n: False) == FIRST_ID + 3


def test_the_real_user_database_is_consulted() -> None:
    assert identity._host_uses(0) is True  # root
    assert identity._host_uses(FIRST_ID + 99_000) is False


def test_range_spent_and_bad_file_are_errors_that_name_the_file(tmp_path: Path) -> None:
    path, lock, audit = _files(tmp_path)
    with pytest.raises(LauncherError, match="no plugin uid left"):
        allocate(path, lock, audit, "acme.a", host_uses=lambda n: True)
    path.write_text(json.dumps({"schema": SCHEMA, "plugins": {"acme.a": {"uid": 0}}}))
    with pytest.raises(LauncherError, match=r"identities.json: plugins.acme.a.uid"):
        read_identities(path)
    path.write_text("{")
    with pytest.raises(LauncherError, match="unreadable identities file"):
        allocate(path, lock, audit, "acme.b")
    assert LAST_ID - FIRST_ID == 99_999
