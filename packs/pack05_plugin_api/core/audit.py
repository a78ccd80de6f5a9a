"""The audit log (``audit.log``): one JSON line per change, who did what and when.

A change is written as its records (each carrying a ``txn`` id) *before* it is made, then
one outcome line (``action`` ``commit`` or ``abort`` with the same ``txn``) after it:
see ``core/txn.py``. ``read_audit`` returns the records of changes that took effect.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aurora_common.journal import append_record, read_records

log = logging.getLogger(__name__)

OUTCOMES = ("commit", "abort")


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds (``2026-01-01T12:00:00.000000Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_actor() -> str:
    """Who is acting: the login name, else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def audit_entry(
    actor: str | None, action: str, plugin_id: str | None, version: str | None, **details: Any
) -> dict[str, Any]:
    """One audit record: time, actor (default: the login name), action, id, version, details."""
    return {
        "time": utc_now(),
        "actor": actor or default_actor(),
        "action": action,
        "id": plugin_id,
        "version": version,
        **details,
    }


def append_audit(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the audit log durably: the whole line or nothing."""
    append_audit_many(path, [record])


def append_audit_many(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append records in order, each durably and whole (``aurora_common.journal``).

    A failure part-way leaves the first records without their ``commit`` line: they do not
    count (see ``read_audit``), and ``core/txn.py`` records their ``abort``.
    """
    for record in records:
        append_record(path, dict(record), 0o600)


def read_audit_raw(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit log, intents and outcomes included (empty when missing).

    A line that is not a JSON object (cut by a power loss) is skipped with a warning.
    """
    records, problems = read_records(path)
    for problem in problems:
        log.warning("%s", problem)
    return records


def read_audit(path: Path) -> list[dict[str, Any]]:
    """The records of every change that took effect, in order (empty when there is none).

    Records of a transaction count once its ``commit`` line exists; those of an aborted or
    not yet resolved one are left out, and so are the outcome lines themselves.
    """
    records = read_audit_raw(path)
    committed = {r.get("txn") for r in records if r.get("action") == "commit"}
    return [
        r
        for r in records
        if r.get("action") not in OUTCOMES and ("txn" not in r or r["txn"] in committed)
    ]
