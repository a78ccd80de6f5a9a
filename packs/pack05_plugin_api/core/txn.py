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

A change that must also change another file first (``policy --block``: withdraw in
``registry.json``, then write ``permissions.json``) goes through ``audited_replace_after``,
which rolls *forward*: its records are appended and the new content written to a temp file
*before* the marker, and the marker holds the content and what the other change was
(``redo``). Once the marker exists the change is decided: a command killed at any later
point is finished by ``recover`` (the other change again, which is idempotent, then the
file), so the next command sees the whole change, never half of it. Before the marker,
nothing has changed (the records have no ``commit`` and do not count).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aurora_common.atomic import remove_temps

from .audit import append_audit, append_audit_many, audit_entry
from .storage import InputRefused, atomic_write, fsync_dir, named_oserror, read_bytes

__all__ = [
    "TxnError",
    "audited_replace",
    "audited_replace_after",
    "marker_path",
    "recover",
    "remove_leftover_temps",
]

log = logging.getLogger(__name__)

_MAX_MARKER = 256 * 1024  # a decided change holds its content (a policy: under 1 KiB)
# What a decided change did besides writing the file (JSON), handed to ``redo`` to do again.
Redo = Callable[[Any], None]


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


def recover(
    target: Path,
    audit: Path,
    *,
    actor: str | None,
    max_bytes: int,
    redo: Redo | None = None,
) -> str | None:
    """Resolve an interrupted change of ``target``; return ``commit``/``abort`` or None.

    Call with the file's lock held. A marker of ``audited_replace_after`` is finished:
    ``redo`` (its other change) runs again, then the file is written. Raises OSError when
    the outcome cannot be recorded (then nothing else should change either) and TxnError
    for a marker it cannot read.
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
    if "redo" in doc:  # a decided change (``audited_replace_after``): finish it
        if redo is None or not isinstance(doc.get("data"), str):
            raise TxnError(f"{marker}: a change to finish, but no way to finish it here")
        redo(doc["redo"])
        if _current_digest(target, max_bytes) != expect:
            atomic_write(target, doc["data"].encode("utf-8"))
        outcome = "commit"
    else:
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


def _write_temp(target: Path, data: bytes) -> Path:
    """``data`` in a durable temp file beside ``target`` (named as aurora_common names its
    temp files, so ``remove_temps`` finds it if we die); the error names ``target``."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise named_oserror(exc, "create a temp file for", target) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o600)  # root's alone, as every file of the plugins dir
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise named_oserror(exc, "write", target) from None
    return Path(name)


def _abort(audit: Path, actor: str | None, txn: str) -> None:
    with contextlib.suppress(OSError):
        append_audit(audit, audit_entry(actor, "abort", None, None, txn=txn))


def audited_replace_after(
    target: Path,
    data: bytes,
    entries: Sequence[Mapping[str, Any]],
    *,
    first: Redo,
    redo: Any,
    audit: Path,
    actor: str | None,
    max_bytes: int,
) -> None:
    """Do ``first(redo)`` (another audited, idempotent change), then replace ``target``
    with ``data``, as one change audited as ``entries`` that rolls forward (module
    docstring). Call with the file's lock held, after ``recover`` with the same ``first``
    as its ``redo``.

    Fails with nothing changed up to the marker and while ``first`` fails. Once ``first``
    has changed its file the change stands and never raises: a final rename that fails
    twice is a warning (the marker makes the next command finish it), and so is a failed
    outcome record, as in ``audited_replace``.
    """
    txn = uuid.uuid4().hex
    marker = marker_path(target)
    append_audit_many(audit, [{**e, "txn": txn} for e in entries])  # uncommitted: no effect
    try:
        temp = _write_temp(target, data)
    except BaseException:
        _abort(audit, actor, txn)
        raise
    doc = {
        "txn": txn,
        "file": target.name,
        "expect": _digest(data),
        "data": data.decode("utf-8"),
        "redo": redo,
    }
    try:
        try:
            atomic_write(marker, json.dumps(doc).encode("utf-8"))
        except BaseException:
            with contextlib.suppress(OSError):
                _drop_marker(marker)  # if only its directory fsync failed
            raise
        try:
            first(redo)
        except BaseException:
            _drop_marker(marker)  # nothing was changed: undecided again
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        _abort(audit, actor, txn)
        raise
    try:
        os.replace(temp, target)
    except OSError as exc:
        # Decided and half made (``first`` changed its file): the change stands. Once more
        # with a fresh temp file; failing that, the marker makes the next command finish it.
        with contextlib.suppress(OSError):
            temp.unlink()
        try:
            atomic_write(target, data)
        except OSError:
            log.warning(
                "%s: changed in effect, but the file could not be written yet (%s); "
                "the next command finishes the change",
                target,
                named_oserror(exc, "rename the new content over", target),
            )
            return
    try:
        fsync_dir(target.parent)
        append_audit(audit, audit_entry(actor, "commit", None, None, txn=txn))
        _drop_marker(marker)
    except OSError as exc:
        log.warning(
            "%s: changed, but its outcome could not be recorded (%s); the next change records it",
            target,
            exc,
        )


def remove_leftover_temps(target: Path) -> None:
    """Remove the temp files killed writers of ``target`` left (call with its lock held)."""
    with contextlib.suppress(OSError):
        for path in remove_temps(target.parent, target.name):
            log.info("removed %s, left by a killed writer", path)
