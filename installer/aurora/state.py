"""state.json: what is staged, installed, active and running (schema aurora-state-v1)."""

from __future__ import annotations

import logging
from contextlib import suppress
from pathlib import Path
from typing import Any

import jsonschema
from aurora_common import structured
from aurora_common.errors import InputRefused

from aurora.errors import StateError
from aurora.fsutil import atomic_write_bytes, atomic_write_json
from aurora.manifest import load_schema
from aurora.timeutil import now_iso

log = logging.getLogger(__name__)

STATE_SCHEMA = "aurora-state-v1"
STATE_LIMIT = 16 << 20
STATE_DEPTH = 16

PackState = dict[str, Any]


def empty_pack_state() -> PackState:
    """The record of a pack the installer has not touched yet."""
    return {
        "active_version": None,
        "installed": None,
        "staged": {},
        "pending": None,
        "last_result": None,
        "runtime": None,
    }


class State:
    """An in-memory copy of state.json; ``save`` replaces the file atomically."""

    def __init__(self, path: Path, document: dict[str, Any]) -> None:
        self.path = path
        self.document = document
        #: The audit intent of the command at work: stamped on each last_result, so that
        #: the next command can tell from state.json whether a killed command's change
        #: took effect (Recovery.reconcile_intents).
        self.intent: str | None = None

    @classmethod
    def load(cls, path: Path) -> State:
        """Read state.json (a missing file is an empty state; a corrupt one is an error)."""
        try:
            document = structured.read_json(path, STATE_LIMIT, max_depth=STATE_DEPTH)
        except FileNotFoundError:
            copies = copies_without_state(path.parent)
            if copies:
                raise StateError(
                    f"{path} is missing but the home holds pack copies: it is never "
                    "treated as empty and nothing is removed",
                    [
                        *copies,
                        f"restore {path.name} (a copy of the last saved state is "
                        f"{path.name}.bak: cp {path}.bak {path}), or move those "
                        "directories aside to start afresh",
                    ],
                ) from None
            return cls(path, {"schema": STATE_SCHEMA, "packs": {}})
        except InputRefused as exc:
            raise StateError(
                f"{exc}; it is never repaired automatically: restore it or move it aside"
            ) from None
        except OSError as exc:
            raise StateError(f"{path}: cannot read: {exc}") from exc
        validator = jsonschema.Draft202012Validator(load_schema("aurora-state-v1.json"))
        problems = [
            f"{'/'.join(str(p) for p in e.absolute_path) or '(document)'}: {e.message}"
            for e in validator.iter_errors(document)
        ]
        if not problems:
            problems = _consistency_problems(document)
        if problems:
            raise StateError(f"{path}: does not match {STATE_SCHEMA}", problems)
        return cls(path, document)

    @property
    def packs(self) -> dict[str, PackState]:
        packs: dict[str, PackState] = self.document["packs"]
        return packs

    def pack(self, pack_id: str) -> PackState:
        """The record of ``pack_id``, created empty (in memory) if absent."""
        record = self.packs.setdefault(pack_id, empty_pack_state())
        for key, value in empty_pack_state().items():
            record.setdefault(key, value)
        return record

    def get(self, pack_id: str) -> PackState | None:
        return self.packs.get(pack_id)

    def active_version(self, pack_id: str) -> str | None:
        record = self.packs.get(pack_id)
        return None if record is None else record.get("active_version")

    def installed_versions(self) -> dict[str, str]:
        """pack id -> active version, for every installed pack."""
        return {
            pid: rec["active_version"]
            for pid, rec in self.packs.items()
            if rec.get("active_version")
        }

    def record_result(
        self,
        pack_id: str,
        op: str,
        ok: bool,
        version: str | None,
        message: str,
        *,
        intent: str | None = None,
    ) -> None:
        """Record the outcome of an operation as the pack's last_result, with the audit
        intent it belongs to (``intent``, else the command's)."""
        self.pack(pack_id)["last_result"] = {
            "op": op,
            "ok": ok,
            "version": version,
            "at": now_iso(),
            "message": message,
            "intent": intent or self.intent,
        }

    def save(self) -> None:
        """Replace state.json atomically, then its mirror state.json.bak."""
        atomic_write_json(self.path, self.document, 0o600)  # root's alone (Home.secure)
        keep_backup(self.path)


def keep_backup(path: Path) -> None:
    """Mirror the state.json just saved as state.json.bak (restore it if state.json is
    lost: it is exactly what recovery would have found).

    Never fails the command whose change is already in state.json: a copy that
    cannot be written (a full disk) is removed instead, so a stale one (which could
    send recovery to remove a copy the real state names) is never restored.
    """
    backup = path.with_name(path.name + ".bak")
    try:
        atomic_write_bytes(backup, path.read_bytes(), 0o600)
    except OSError as exc:
        log.warning("%s not kept: %s; removed it", backup, exc.strerror or exc)
        with suppress(OSError):
            backup.unlink(missing_ok=True)


def _consistency_problems(document: dict[str, Any]) -> list[str]:
    """What the schema cannot say: an active version has its installed record."""
    problems: list[str] = []
    for pack_id, record in document["packs"].items():
        active = record.get("active_version")
        installed = record.get("installed")
        if active is not None and (installed is None or installed.get("version") != active):
            problems.append(
                f"packs/{pack_id}: active_version {active!r} without a matching installed record"
            )
        if active is None and installed is not None:
            problems.append(f"packs/{pack_id}: an installed record but no active_version")
    return problems


def copies_without_state(home: Path) -> list[str]:
    """The pack copies under ``home`` (packs/<id>/<version>, staging/<id>/<version>)."""
    found: list[str] = []
    for kind in ("packs", "staging"):
        for copy in sorted(home.glob(f"{kind}/*/*")):
            if not copy.name.startswith("."):
                found.append(f"{kind}/{copy.parent.name}/{copy.name}")
    return found
