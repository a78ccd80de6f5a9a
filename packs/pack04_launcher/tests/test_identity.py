"""Per-plugin host identities: stable, from the documented range, never reused, audited."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from launcher import identity
from launcher.errors import LauncherError
from launcher.identity import FIRST_ID, LAST_ID, SCHEMA, read_identities


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    return tmp_path / "identities.json", tmp_path / "identities.lock", tmp_path / "audit.log"


def allocate(path: Path, lock: Path, audit: Path, plugin_id: str, **kw: Any) -> int:
    """One installation (data dir ``path``'s parent) claiming in the test's claims dir."""
    claims = Path(os.environ["AURORA_UID_CLAIMS"])
    return identity.allocate(path, lock, audit, plugin_id, claims, path.parent, **kw)


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
    # The lowest number free host-wide; acme.a's stays claimed and recorded even when
    # it is gone from the registry: it is never given to another plugin.
    free = [
        allocate(path, lock, audit, f"acme.new{i}", host_uses=lambda n: False) for i in (1, 2, 3)
    ]
    assert free == [FIRST_ID, FIRST_ID + 1, FIRST_ID + 3]


def test_the_real_user_database_and_live_processes_are_consulted() -> None:
    assert identity._nss_uses(0) is True  # root
    assert identity._nss_uses(FIRST_ID + 99_000) is False
    uses = identity.host_checker()
    assert uses(os.getuid()) and not uses(FIRST_ID + 99_000)


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
