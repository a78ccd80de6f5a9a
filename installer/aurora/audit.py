"""The audit log: append-only JSON lines saying who did what, when, to which digest.

Each event is one record of pack01_common's journal (``aurora_common.journal``): it
is in the file whole or not at all, and a failed append raises OSError naming
audit.log. A state-changing command records its intent before the change and its
outcome after (installer.py), so no change is ever without its record.
"""

from __future__ import annotations

import getpass
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from aurora_common.journal import append_record, read_records

from aurora.errors import OperationFailed
from aurora.timeutil import now_iso

log = logging.getLogger(__name__)


class AuditUnavailable(OperationFailed):
    """audit.log cannot be written: the command is refused before it changes anything."""


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


class AuditLog:
    """Appends events to ``path``; never rewrites earlier lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unrecorded: list[dict[str, Any]] = []  # outcomes that could not be appended
        self.current_intent: str | None = None
        self.outcomes = 0  # outcome records since the current intent

    def intent(self, op: str, pack_id: str | None = None, **fields: Any) -> str:
        """Record durably that ``op`` is about to change something; returns its id.

        Raises AuditUnavailable (naming audit.log) when the record cannot be written:
        the caller has changed nothing yet and must not.
        """
        intent_id = secrets.token_hex(6)
        try:
            self._append("intent", pack_id, op=op, intent=intent_id, **fields)
        except OSError as exc:
            raise AuditUnavailable(
                f"{op} refused before changing anything: cannot record it in {self.path}: "
                f"{exc.strerror or exc}"
            ) from exc
        self.current_intent = intent_id
        self.outcomes = 0
        return intent_id

    def record(self, event: str, pack_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one outcome event and return it.

        Never raises for a failed append: the change it describes has taken effect
        and its intent is on record; the failure is logged and kept in ``unrecorded``
        (a command never reports failure for a change that took effect).
        """
        if self.current_intent is not None:
            fields.setdefault("intent", self.current_intent)
        self.outcomes += 1
        try:
            return self._append(event, pack_id, **fields)
        except OSError as exc:
            entry = {"event": event, "pack": pack_id, **fields}
            self.unrecorded.append(entry)
            log.warning(
                "%s took effect but its outcome could not be recorded in %s: %s",
                event,
                self.path,
                exc.strerror or exc,
            )
            return {"ts": now_iso(), "user": _user(), "pid": os.getpid(), **entry}

    def _append(self, event: str, pack_id: str | None, **fields: Any) -> dict[str, Any]:
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

    def done(self) -> None:
        """The command's change is over: later outcomes belong to no intent."""
        self.current_intent = None

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every event, and the lines that are not one (a record cut by a power loss)."""
        return read_records(self.path)
