"""The audit log: append-only JSON lines saying who did what, when, to which digest.

Each event is one record of pack01_common's journal (``aurora_common.journal``): it
is in the file whole or not at all, and a failed append raises OSError naming
audit.log. A state-changing command records its intent before the change and its
outcome after (installer.py), so no change is ever without its record.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import Any

from aurora_common.journal import append_record, read_records

from aurora.timeutil import now_iso


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


class AuditLog:
    """Appends events to ``path``; never rewrites earlier lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, event: str, pack_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one event durably and return it (OSError naming the file if it cannot)."""
        entry: dict[str, Any] = {
            "ts": now_iso(),
            "event": event,
            "pack": pack_id,
            "user": _user(),
            "pid": os.getpid(),
            **fields,
        }
        append_record(self.path, entry)
        return entry

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every event, and the lines that are not one (a record cut by a power loss)."""
        return read_records(self.path)
