"""The audit log (``audit.log``): one JSON line per change, who did what and when."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


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
    """Append one JSON line to the audit log and make it durable.

    One ``write`` on an O_APPEND descriptor, so concurrent writers never interleave lines.
    """
    line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fdatasync(fd)
    finally:
        os.close(fd)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit log (empty when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
