"""Audited changes: no change without its audit record, no failure reported for a change made,
and exactly one outcome (``commit`` or ``abort``) for every change whose records were written.

A change of a state file (``registry.json``, ``permissions.json``) goes through
``audited_replace``:

1. a marker ``<file>.txn`` is written durably: the transaction id, the SHA-256 of the
   new content and where audit.log ended (``audit_from``: its records come after);
2. the change's audit records, each with that ``txn`` id, are appended to ``audit.log``.
   If this fails (audit.log immutable, disk full), the marker is removed and the error
   raised: nothing changed (records that did get written get their ``abort`` first);
3. the file is replaced atomically;
4. a ``commit`` line is appended and the marker removed. If this fails, the change stands
   and is reported done (its records are in the log): the marker stays, and the next
   change of the file, or ``recover``, records the outcome.

``recover`` (run under the file's lock before every change) resolves a marker left by a
killed or failed writer. An outcome already in audit.log for the marker's txn (the writer
died between appending it and removing the marker) is never appended again: the marker
is only removed. Otherwise the file holds the new content -> ``commit``, else ``abort``.
A failure path records its ``abort`` *before* removing the marker, and keeps the marker
when the abort cannot be written: the change is never left without an outcome.

A change that must also change another file first (``policy --block``: withdraw in
``registry.json``, then write ``permissions.json``) goes through ``audited_replace_after``,
which rolls *forward* once decided. Its marker (written first, as above) also holds what
the other change is (``redo``); its records follow, then the new content is written to a
temp file, and the change is *decided* by renaming that file to ``<file>.txn.new`` (a
rename: it needs no space, and undoing it is an unlink, which works on a full disk). A
command killed after that point is finished by ``recover`` (the other change again, which
is idempotent, then the file), so the next command sees the whole change, never half of
it. Killed before it, ``recover`` records the ``abort``: nothing had changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aurora_common.atomic import is_temp_name, remove_temps

from .audit import OUTCOMES, append_audit, append_audit_many, audit_entry
from .storage import InputRefused, atomic_write, fsync_dir, named_oserror, read_bytes

__all__ = [
    "TxnError",
    "audited_replace",
    "audited_replace_after",
    "decision_path",
    "left_behind",
    "marker_path",
    "recover",
    "remove_leftover_temps",
]

log = logging.getLogger(__name__)

_MAX_MARKER = 256 * 1024  # markers of the previous format held a policy (under 1 KiB)
# What a decided change did besides writing the file (JSON), handed to ``redo`` to do again.
Redo = Callable[[Any], None]


class TxnError(Exception):
    """A transaction marker that cannot be understood (not written by this module)."""


def marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".txn")


def decision_path(target: Path) -> Path:
    """Where a decided ``audited_replace_after`` keeps the new content until it is placed."""
    return target.with_name(target.name + ".txn.new")


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


def _audit_end(audit: Path) -> int:
    try:
        return os.stat(audit).st_size
    except OSError:
        return 0


def _txn_actions(audit: Path, txn: str, start: int) -> list[str]:
    """The actions of ``txn``'s records in ``audit`` (read from ``start``, where the log
    ended when the txn's marker was written: its records all come later)."""
    key = txn.encode("ascii")
    actions: list[str] = []
    try:
        # never blocks on a FIFO put in its place: a damaged log is an error naming it
        fd = os.open(audit, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if st.st_size >= start:
                f.seek(start)  # else the log was cut or replaced: read it all
            for line in f:
                if key not in line:
                    continue
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("txn") == txn:
                        actions.append(str(record.get("action")))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise named_oserror(exc, "read", audit) from None
    return actions


def _recorded_outcome(audit: Path, txn: str, start: int) -> str | None:
    return next((a for a in _txn_actions(audit, txn, start) if a in OUTCOMES), None)


def _abort(marker: Path, audit: Path, actor: str | None, txn: str) -> None:
    """A failed change's outcome, then its marker removed. When the abort cannot be
    written the marker stays: the next ``recover`` records it (never no outcome)."""
    try:
        append_audit(audit, audit_entry(actor, "abort", None, None, txn=txn))
    except OSError as exc:
        log.warning("%s: not changed; its abort is recorded by the next command (%s)", marker, exc)
        return
    with contextlib.suppress(OSError):
        _drop_marker(marker)


def _fail_before_change(marker: Path, audit: Path, actor: str | None, txn: str, start: int) -> None:
    """Nothing changed: abort the records that were written (if any), drop the marker."""
    try:
        written = _txn_actions(audit, txn, start)
    except OSError:
        written = ["?"]  # cannot tell: keep the marker, recovery decides
    if written:
        _abort(marker, audit, actor, txn)
    else:
        with contextlib.suppress(OSError):
            _drop_marker(marker)


def recover(
    target: Path,
    audit: Path,
    *,
    actor: str | None,
    max_bytes: int,
    redo: Redo | None = None,
) -> str | None:
    """Resolve an interrupted change of ``target``; return ``commit``/``abort`` or None.

    Call with the file's lock held. A decided ``audited_replace_after`` is finished:
    ``redo`` (its other change) runs again, then the file is written. An outcome already
    recorded is returned, not appended again. Raises OSError when the outcome cannot be
    recorded (then nothing else should change either) and TxnError for a marker (or a
    decided content) it cannot read.
    """
    marker = marker_path(target)
    decided = decision_path(target)
    try:
        raw = read_bytes(marker, _MAX_MARKER)
    except FileNotFoundError:
        return None
    except InputRefused as exc:
        raise TxnError(f"{exc}; check {target} and {audit}, then remove {marker}") from None
    try:
        doc = json.loads(raw)
        txn, expect = doc["txn"], doc["expect"]
        start = doc.get("audit_from", 0)
        if not (isinstance(txn, str) and isinstance(expect, str) and type(start) is int):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise TxnError(
            f"{marker}: not a transaction marker of {target.name}; it was not changed "
            f"(check {target} and {audit}, then remove {marker})"
        ) from None
    done = _recorded_outcome(audit, txn, start)
    if done is not None:  # the writer died after its outcome, before removing the marker
        if done == "abort":
            decided.unlink(missing_ok=True)
        _drop_marker(marker)
        log.info("%s: removed the marker of a change already recorded (%s %s)", target, done, txn)
        return done
    if "redo" in doc:  # ``audited_replace_after``: finish it if it was decided
        if redo is None:
            raise TxnError(f"{marker}: a change to finish, but no way to finish it here")
        outcome = _finish(target, doc, redo, max_bytes)
    else:
        outcome = "commit" if _current_digest(target, max_bytes) == expect else "abort"
    append_audit(audit, audit_entry(actor, outcome, None, None, txn=txn, recovered=True))
    _drop_marker(marker)
    log.warning("%s: recorded the outcome of an interrupted change (%s %s)", target, outcome, txn)
    return outcome


def _finish(target: Path, doc: dict[str, Any], redo: Redo, max_bytes: int) -> str:
    """Roll a decided ``audited_replace_after`` forward; ``abort`` if it was not decided."""
    expect = doc["expect"]
    decided = decision_path(target)
    if isinstance(doc.get("data"), str):  # a marker of the previous format: decided
        redo(doc["redo"])
        if _current_digest(target, max_bytes) != expect:
            atomic_write(target, doc["data"].encode("utf-8"))
        return "commit"
    if os.path.lexists(decided):
        try:
            content = read_bytes(decided, max_bytes)
        except InputRefused as exc:
            raise TxnError(f"{exc}; check {target}, then remove {decided}") from None
        if _digest(content) != expect:
            raise TxnError(
                f"{decided}: not the content its change decided on ({marker_path(target)}); "
                f"check {target}, then remove both"
            )
        redo(doc["redo"])
        try:
            os.replace(decided, target)
        except OSError as exc:
            raise named_oserror(exc, "rename the decided content over", target) from None
        fsync_dir(target.parent)
        return "commit"
    if _current_digest(target, max_bytes) == expect:  # placed; killed before its commit
        redo(doc["redo"])  # idempotent: makes sure the other change is there too
        return "commit"
    return "abort"  # killed before it was decided: nothing changed


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
    start = _audit_end(audit)
    doc = {"txn": txn, "file": target.name, "expect": _digest(data), "audit_from": start}
    atomic_write(marker, json.dumps(doc).encode("utf-8"))
    try:
        append_audit_many(audit, [{**e, "txn": txn} for e in entries])
    except BaseException:
        _fail_before_change(marker, audit, actor, txn, start)
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

    Fails with nothing changed (and its ``abort`` recorded) up to the decision and while
    ``first`` fails. Once ``first`` has changed its file the change stands and never
    raises: a final rename that fails twice is a warning (the marker makes the next
    command finish it), and so is a failed outcome record, as in ``audited_replace``.
    """
    txn = uuid.uuid4().hex
    marker = marker_path(target)
    decided = decision_path(target)
    start = _audit_end(audit)
    doc = {"txn": txn, "file": target.name, "expect": _digest(data), "audit_from": start}
    atomic_write(marker, json.dumps({**doc, "redo": redo}).encode("utf-8"))
    try:
        append_audit_many(audit, [{**e, "txn": txn} for e in entries])
    except BaseException:
        _fail_before_change(marker, audit, actor, txn, start)
        raise
    temp: Path | None = None
    try:
        temp = _write_temp(target, data)
        try:
            os.rename(temp, decided)  # decided: from here on the change rolls forward
        except OSError as exc:
            raise named_oserror(exc, "rename the new content to", decided) from None
        temp = None
        try:
            fsync_dir(target.parent)
            first(redo)
        except BaseException:
            try:
                decided.unlink()  # undecided again (an unlink works on a full disk)
            except OSError as exc:  # still decided: the next command finishes the change
                log.warning("%s: %s", target, named_oserror(exc, "remove", decided))
            raise
    except BaseException:
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.unlink()
        if not os.path.lexists(decided):
            _abort(marker, audit, actor, txn)
        raise
    try:
        os.replace(decided, target)
    except OSError as exc:
        # Decided and half made (``first`` changed its file): the change stands. Once more
        # with a fresh temp file; failing that, the marker makes the next command finish it.
        try:
            atomic_write(target, data)
            decided.unlink()
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


def left_behind(target: Path, names: Iterable[str] | None = None) -> bool:
    """Whether a writer of ``target`` left something to settle (cheap: no lock, no read):
    its marker, or a temp file of the file or of its marker (``names``: the directory's
    entries, when the caller has them)."""
    if names is None:
        try:
            names = os.listdir(target.parent)
        except OSError:
            return False
    marker = marker_path(target).name
    prefix = f".{target.name}."
    return any(n == marker or (n.startswith(prefix) and is_temp_name(n)) for n in names)


def remove_leftover_temps(target: Path) -> None:
    """Remove the temp files killed writers of ``target`` left (call with its lock held)."""
    with contextlib.suppress(OSError):
        for path in remove_temps(target.parent, target.name):
            log.info("removed %s, left by a killed writer", path)
