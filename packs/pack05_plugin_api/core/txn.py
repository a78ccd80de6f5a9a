"""Audited changes: no change without its audit record, no failure reported for a change made.

A change of a state file (``registry.json``, ``permissions.json``) goes through
``audited_replace``:

1. a marker ``<file>.txn`` is written durably: the transaction id and the SHA-256 of the
   new content;
2. the change's audit records, each with that ``txn`` id, are appended to ``audit.log``
   in one durable write (all or nothing). If this fails (audit.log immutable, disk full),
   the marker is removed and the error raised: nothing changed;
3. the file is replaced atomically;
4. a ``commit`` line is appended and the marker removed. If this fails, the change stands
   and is reported done (its records are in the log): the marker stays, and the next
   change of the file, or ``recover``, records the outcome.

``recover`` (run under the file's lock before every change) resolves a marker left by a
killed or failed writer: the file holds the new content -> ``commit``, else ``abort``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .audit import append_audit, append_audit_many, audit_entry
from .storage import InputRefused, atomic_write, fsync_dir, read_bytes

__all__ = ["TxnError", "audited_replace", "marker_path", "recover"]

log = logging.getLogger(__name__)

_MAX_MARKER = 4096


class TxnError(Exception):
    """A transaction marker that cannot be understood (not written by this module)."""


def marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".txn")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _current_digest(target: Path, max_bytes: int) -> str | None:
    try:
        return _digest(read_bytes(target, max_bytes))
    except (FileNotFoundError, InputRefused):
        return None  # not the content the change wrote


def _drop_marker(marker: Path) -> None:
    marker.unlink(missing_ok=True)
    fsync_dir(marker.parent)


def recover(target: Path, audit: Path, *, actor: str | None, max_bytes: int) -> str | None:
    """Resolve an interrupted change of ``target``; return ``commit``/``abort`` or None.

    Call with the file's lock held. Raises OSError when the outcome cannot be recorded
    (then nothing else should change either) and TxnError for a marker it cannot read.
    """
    marker = marker_path(target)
    try:
        raw = read_bytes(marker, _MAX_MARKER)
    except FileNotFoundError:
        return None
    except InputRefused as exc:
        raise TxnError(f"{exc}; check {target} and {audit}, then remove {marker}") from None
    try:
        doc = json.loads(raw)
        txn, expect = doc["txn"], doc["expect"]
        if not (isinstance(txn, str) and isinstance(expect, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise TxnError(
            f"{marker}: not a transaction marker of {target.name}; it was not changed "
            f"(check {target} and {audit}, then remove {marker})"
        ) from None
    outcome = "commit" if _current_digest(target, max_bytes) == expect else "abort"
    append_audit(audit, audit_entry(actor, outcome, None, None, txn=txn, recovered=True))
    _drop_marker(marker)
    log.warning("%s: recorded the outcome of an interrupted change (%s %s)", target, outcome, txn)
    return outcome


def audited_replace(
    target: Path,
    data: bytes,
    entries: Sequence[Mapping[str, Any]],
    *,
    audit: Path,
    actor: str | None,
    max_bytes: int,
    backup: Path | None = None,
) -> os.stat_result:
    """Replace ``target`` with ``data``, audited as ``entries`` (see the module docstring).

    Call with the file's lock held, after ``recover``. Returns the new file's stat.
    """
    txn = uuid.uuid4().hex
    marker = marker_path(target)
    doc = {"txn": txn, "file": target.name, "expect": _digest(data)}
    atomic_write(marker, json.dumps(doc).encode("utf-8"))
    try:
        append_audit_many(audit, [{**e, "txn": txn} for e in entries])
    except BaseException:
        with contextlib.suppress(OSError):
            _drop_marker(marker)
        raise
    try:
        st = atomic_write(target, data, backup=backup)
    except BaseException:
        # Almost always the file is unchanged; if only the final directory fsync failed,
        # it holds the new content: record whichever it is, as recovery would.
        with contextlib.suppress(OSError, TxnError):
            if recover(target, audit, actor=actor, max_bytes=max_bytes) == "commit":
                log.warning("%s: written although a step reported an error", target)
                return os.stat(target)
        raise
    try:
        append_audit(audit, audit_entry(actor, "commit", None, None, txn=txn))
        _drop_marker(marker)
    except OSError as exc:
        log.warning(
            "%s: changed, but its outcome could not be recorded (%s); the next change records it",
            target,
            exc,
        )
    return st
