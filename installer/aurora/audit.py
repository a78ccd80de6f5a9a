"""The audit log: append-only JSON lines saying who did what, when, to which digest."""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from aurora.fsutil import append_line
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
        """Append one event and return it."""
        entry: dict[str, Any] = {
            "ts": now_iso(),
            "event": event,
            "pack": pack_id,
            "user": _user(),
            "pid": os.getpid(),
            **fields,
        }
        append_line(self.path, json.dumps(entry, sort_keys=True))
        return entry
