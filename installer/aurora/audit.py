"""The audit log: append-only JSON lines saying who did what, when, to which digest.

Each event is one record of pack01_common's journal (``aurora_common.journal``): it
is in the file whole or not at all, and a failed append raises OSError naming
audit.log. A state-changing command records its intent before the change and its
outcome after (installer.py), so no change is ever without its record.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from aurora_common import identity
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
        self.current_op: str | None = None
        self.outcomes = 0  # outcome records since the current intent
        self.concluded = False  # whether one of them is the op's own outcome (concludes)
        self.mine: set[str] = set()  # intents this log wrote (a start's outlives its lock)

    def intent(self, op: str, pack_id: str | None = None, **fields: Any) -> str:
        """Record durably that ``op`` is about to change something; returns its id.

        Raises AuditUnavailable (naming audit.log) when the record cannot be written:
        the caller has changed nothing yet and must not.
        """
        intent_id = secrets.token_hex(6)
        try:
            # The start time tells a live command from a dead one that had the same pid
            # (open_intents: only a dead command's intent is reconciled).
            started = identity.start_time(os.getpid())
            self._append(
                "intent", pack_id, op=op, intent=intent_id, pid_start_time=started, **fields
            )
        except OSError as exc:
            raise AuditUnavailable(
                f"{op} refused before changing anything: cannot record it in {self.path}: "
                f"{os.strerror(exc.errno) if exc.errno else exc}"  # the path is named already
            ) from exc
        self.resume(intent_id, op)
        self.mine.add(intent_id)
        return intent_id

    def resume(self, intent_id: str, op: str) -> None:
        """Make ``intent_id`` (of ``op``) the current intent again, its outcome owed (a
        start takes the lock twice under one intent)."""
        self.current_intent, self.current_op = intent_id, op
        self.outcomes = 0
        self.concluded = False

    def record(self, event: str, pack_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one outcome event and return it.

        Never raises for a failed append: the change it describes has taken effect
        and its intent is on record; the failure is logged and kept in ``unrecorded``
        (a command never reports failure for a change that took effect).
        """
        if self.current_intent is not None:
            fields.setdefault("intent", self.current_intent)
        self.outcomes += 1
        if self.current_op is not None and concludes(self.current_op, event):
            self.concluded = True
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
        self.current_intent = self.current_op = None

    def has_outcome(self, event: str, pack_id: str, intent: str) -> bool:
        """Whether the last TAIL_BYTES of audit.log hold ``event`` for ``pack_id`` under
        ``intent``: what recovery asks before recording the outcome of a committed change
        whose command was killed (its outcome is among the last records: every command
        recovers before it appends anything). Unreadable: False."""
        for entry in _tail_records(self.path, TAIL_BYTES):
            if (entry.get("event"), entry.get("pack"), entry.get("intent")) == (
                event,
                pack_id,
                intent,
            ):
                return True
        return False

    def open_intents(self) -> list[dict[str, Any]]:
        """Intents among the last OPEN_TAIL_BYTES of audit.log that have no outcome and
        whose command is dead (killed, or its outcome could not be appended): the next
        command records for each the outcome it observes (Recovery.reconcile_intents).
        A live command's intent (this process, or a start polling health elsewhere) is
        not open. Unreadable: []."""
        records = _tail_records(self.path, OPEN_TAIL_BYTES)
        ops = {r.get("intent"): r.get("op") for r in records if r.get("event") == "intent"}
        answered = {
            r.get("intent")
            for r in records
            if r.get("event") != "intent"
            and concludes(str(ops.get(r.get("intent"))), str(r.get("event")))
        }
        found = []
        for record in records:
            if record.get("event") != "intent" or record.get("intent") in answered:
                continue
            if record.get("intent") in self.mine:
                continue
            pid, started = record.get("pid"), record.get("pid_start_time")
            other = pid if isinstance(pid, int) and pid != os.getpid() else None
            if other is not None and started is not None and identity.start_time(other) == started:
                continue  # still at work (this process: an earlier command, over)
            found.append(record)
        return found

    def read(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every event, and the lines that are not one (a record cut by a power loss)."""
        return read_records(self.path)


TAIL_BYTES = 1 << 20


def concludes(op: str, event: str) -> bool:
    """Whether ``event`` is the outcome of an ``op`` intent (``install``,
    ``install-failed``, ...; ``recovered`` for ``recover``; ``approval-denied`` or
    ``approval-refused`` for an install the operator did not approve), not a step on
    the way (the ``stage`` an install does first, its ``approve``, the ``stop`` of
    ``uninstall --stop``)."""
    return event == op or event.startswith(op + "-") or (op, event) in _CONCLUDES


_CONCLUDES = frozenset(
    {("recover", "recovered"), ("install", "approval-denied"), ("install", "approval-refused")}
)


# Every command reconciles before it appends, so an open intent is among the last records;
# a small tail keeps the check cheap enough for every command, read-only ones included.
OPEN_TAIL_BYTES = 64 << 10


def _tail_records(path: Path, size: int) -> list[dict[str, Any]]:
    """The whole records in the last ``size`` bytes of a regular file (never blocks on a
    FIFO, never follows a symlink); [] when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return []
        start = max(0, st.st_size - size)
        data = os.pread(fd, st.st_size - start, start)
    except OSError:
        return []
    finally:
        os.close(fd)
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first line may be cut
    records = []
    for line in lines:
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                records.append(value)
    return records
