"""The audit log (``audit.log``): one JSON line per change, who did what and when.

A change is written as its records (each carrying a ``txn`` id) *before* it is made, then
one outcome line (``action`` ``commit`` or ``abort`` with the same ``txn``) after it:
see ``core/txn.py``. ``read_audit`` returns the records of changes that took effect.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .storage import append_durable

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


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"


def append_audit(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the audit log durably: the whole line or nothing."""
    append_audit_many(path, [record])


def append_audit_many(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append several lines in one write: all of them durably, or none (disk full)."""
    append_durable(path, "".join(_line(r) for r in records).encode("utf-8"))


def read_audit_raw(path: Path) -> list[dict[str, Any]]:
    """Every line of an audit log, intents and outcomes included (empty when missing).

    A last line without its newline (cut by a power loss mid-append) is ignored; any other
    line that is not a JSON object raises ValueError naming the file and the line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    tail = lines.pop()  # "" when the file ends with a newline
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise ValueError(f"{path}: line {number} is not a JSON record") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    del tail
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
