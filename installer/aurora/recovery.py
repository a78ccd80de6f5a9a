"""Crash recovery: find what an interrupted stage or install left, report it, clean it up.

Stage and install record a `pending` operation in state.json before they
touch the disk, build new copies under dot-names (`.tmp-*`, `.incoming-*`)
and move a replaced copy aside (`.old-*`) until the new state is written.
Whatever a crash leaves is therefore recognisable: partial copies are
removed, a copy moved aside is put back, and the previous good state is in
force again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from aurora_common import identity

from aurora import datasnap, orphans
from aurora.audit import AuditLog
from aurora.fsutil import atomic_write_json, fsync_dir, remove_what_can_be
from aurora.home import Home
from aurora.sources import is_pack_id
from aurora.state import PackState, State
from aurora.timeutil import now_iso

log = logging.getLogger(__name__)


def temp_name(kind: str, version: str) -> str:
    """A dot-name beside the final copy: `.tmp-`, `.incoming-` or `.old-<version>-<random>`."""
    return f".{kind}-{version}-{secrets.token_hex(4)}"


def temp_version(name: str) -> str:
    """The version inside a name made by temp_name()."""
    return name.split("-", 1)[1].rsplit("-", 1)[0]


def begin(
    state: State, pack_id: str, op: str, version: str, *, intent: str | None, **extra: Any
) -> None:
    """Record ``op`` as pending before it touches the disk, so that a crash is found;
    ``intent`` is the id of the command's intent record in audit.log."""
    state.pack(pack_id)["pending"] = {
        "op": op,
        "version": version,
        "started_at": now_iso(),
        "pid": os.getpid(),
        "pid_start_time": identity.start_time(os.getpid()),
        "intent": intent,
        **extra,
    }
    state.save()


def _in_progress(pending: dict[str, Any], ours: bool) -> bool:
    """A pending start whose installer still lives (same pid and start time; this process
    only if ``ours``): it holds no lock while it polls health, and is not interrupted."""
    pid, started = pending.get("pid"), pending.get("pid_start_time")
    if pending.get("op") != "start" or not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return ours
    return started is not None and identity.start_time(pid) == started


def commit(state: State, pack_id: str, event: str, **fields: Any) -> None:
    """The commit point of the pending operation: the change already made to ``state``
    and the outcome record it owes audit.log are saved together.

    The operation stays pending (committed) until its caller has appended the outcome
    and removed what the change made obsolete, then clears it (``settle``); a crash in
    between is finished by the next command, which appends the outcome unless audit.log
    already holds it (Recovery._finish_committed): every change has exactly one.
    """
    pending = state.pack(pack_id)["pending"]
    pending["committed"] = True
    pending["outcome"] = {"event": event, **fields}
    state.save()


def settle(state: State, pack_id: str) -> None:
    """A committed operation whose outcome is recorded and whose leftovers are gone."""
    state.pack(pack_id)["pending"] = None
    state.save()


def _own_dir(home: Home, path: Path) -> bool:
    """Whether ``path`` is a real directory (not a symlink) directly inside the home's
    own directories (staging/, packs/, data/, run/, records/): what recovery may remove."""
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        parent = path.parent
        return (
            not parent.is_symlink()
            and parent.parent == home.root
            and parent.name in OWN_DIRS
            and is_pack_id(path.name)
        )
    except OSError:
        return False


OWN_DIRS = frozenset({"staging", "packs", "data", "run", "records"})


def _health_is(path: Path, states: tuple[str, ...]) -> bool:
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(1 << 16))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("status") in states


def uninstall_leftovers(home: Home, pack_id: str, purge: bool) -> tuple[list[str], list[str]]:
    """Remove what an uninstall removes: packs/<id>, and with purge data/<id> and run/<id>.

    Never follows a symlink and never removes anything outside the home's own
    directories (a symlink in their place is removed itself, not what it names).
    Returns (removed, left): what cannot be removed (a mount point, an immutable file)
    is left, named by its full path, and the rest still goes (never an exception: the
    uninstall has happened, and a pack's leftover never blocks commands about others).
    """
    removed: list[str] = []
    left: list[str] = []
    paths = [home.packs(pack_id)]
    if purge:
        paths += [home.data(pack_id), home.run(pack_id)]
    for path in paths:
        if path.is_symlink() or _own_dir(home, path):
            stuck = remove_what_can_be(path)
            left += stuck
            if not stuck:
                removed.append(str(path))
    return removed, left


def _remove(path: Path, notes: list[str]) -> bool:
    """Remove ``path`` for recovery, going on past what cannot be removed (noted)."""
    stuck = remove_what_can_be(path)
    notes += [f"could not remove {what} (left behind)" for what in stuck]
    return not stuck


def _observe_seal(intent: dict[str, Any]) -> tuple[bool, str]:
    """Whether a killed seal's manifest.yaml is the one it meant to write."""
    path, wanted = intent.get("manifest"), intent.get("sha256_after")
    if not isinstance(path, str) or not isinstance(wanted, str):
        return False, "the intent names no manifest to compare"
    try:
        with open(path, "rb") as fh:
            now = hashlib.sha256(fh.read(1 << 20)).hexdigest()
    except OSError as exc:
        return False, f"{path}: {exc.strerror or exc}"
    if now == wanted:
        return True, f"{path} holds the sealed hashes"
    return False, f"{path} is as it was before the seal"


class Recovery:
    """Recovery for one installer home; call recover() only while holding the lock."""

    def __init__(self, home: Home, audit: AuditLog) -> None:
        self.home = home
        self.audit = audit
        #: Packs whose start this process has in flight (polling health, lock released).
        self.in_flight: set[str] = set()

    def has_leftovers(self, state: State) -> bool:
        """Whether a crash left something behind (cheap: no hashing)."""
        if any(
            record.get("pending") and not _in_progress(record["pending"], pid in self.in_flight)
            for pid, record in state.packs.items()
        ):
            return True
        if orphans.markers(self.home.root):
            return True
        if self.audit.open_intents():
            return True
        if datasnap.leftovers(self.home, set()):
            return True
        for kind in ("staging", "packs"):
            for child in self.home.root.glob(f"{kind}/*/*"):
                record = state.get(child.parent.name) or {}
                if kind == "staging":
                    known = child.name in record.get("staged", {})
                else:
                    known = child.name == record.get("active_version")
                if not known:
                    return True
        return False

    def recover(self, state: State, *, within_intent: bool = False) -> list[str]:
        """Clean up what an interrupted run left; report each thing done.

        A pending record in state.json names the operation that was in
        progress. Copies it left are removed and a copy it moved aside is put
        back, so the previous good state is in force again.
        """
        notes: list[str] = []
        # within_intent: a failed command undoing its own leftovers, under its own intent
        # (whose outcome follows); else recovery records an intent of its own.
        recorded = not within_intent and self.has_leftovers(state)
        if recorded:
            self.audit.intent("recover")  # refused, unchanged, if audit.log cannot take it
        # First what scripts of a killed installer still run, so nothing writes meanwhile.
        notes += orphans.kill_left_behind(self.home.root)
        ids = set(state.packs)  # keys validated by the schema: pack ids, never paths
        for parent in (self.home.root / "staging", self.home.root / "packs"):
            if parent.is_symlink():
                notes.append(f"left {parent} alone: a symlink, not the home's own directory")
                continue
            if parent.is_dir():
                for p in parent.iterdir():
                    if is_pack_id(p.name) and _own_dir(self.home, p):
                        ids.add(p.name)
                    elif not p.name.startswith("."):
                        notes.append(f"left {p} alone: not a pack directory of this home")
        changed = False
        for pack_id in sorted(ids):
            record = state.pack(pack_id)
            pending = record.get("pending") or {}
            if _in_progress(pending, pack_id in self.in_flight):
                continue  # a start polling health without the lock: not ours to settle
            # An uninstall is pending only after its commit point (older states say so
            # without "committed").
            if pending.get("committed") or pending.get("op") == "uninstall":
                notes += self._finish_committed(state, pack_id, pending)
                changed = True
                pending = {}
            if pending:
                notes.append(
                    f"{pack_id}: a {pending.get('op')} of {pending.get('version')} started at "
                    f"{pending.get('started_at')} by pid {pending.get('pid')} was interrupted"
                )
            if pending.get("op") == "install" and "data" in pending:
                notes += datasnap.restore(self.home, pack_id, str(pending["data"]))
            notes += self._recover_dir(
                self.home.staging(pack_id),
                keep=set(record["staged"]),
                pending_version=pending.get("version") if pending.get("op") == "stage" else None,
            )
            active = record.get("active_version")
            notes += self._recover_dir(
                self.home.packs(pack_id),
                keep={active} if active else set(),
                pending_version=pending.get("version") if pending.get("op") == "install" else None,
            )
            if pending.get("op") in ("start", "stop"):
                notes += self._interrupted_lifecycle(pack_id, record, str(pending["op"]))
            if pending:
                state.record_result(
                    pack_id,
                    str(pending.get("op")),
                    False,
                    pending.get("version"),
                    "interrupted; leftovers cleaned up",
                    intent=pending.get("intent"),
                )
                record["pending"] = None
                changed = True
            self._collect_records(pack_id, record)
            if not any(record.values()):
                del state.packs[pack_id]  # only created above, to look at its directories
        if changed:
            state.save()
        for copy in datasnap.leftovers(self.home, set()):  # no install is pending any more
            if _remove(copy, notes):
                notes.append(f"removed {copy}: a copy of data taken by a killed install")
        for tmp in self.home.root.glob(".state.json.*.tmp"):
            if _remove(tmp, notes):
                notes.append(f"removed a half-written {tmp.name}")
        notes += self.reconcile_intents(state)
        if notes or recorded:  # its intent is never left without an outcome
            self.audit.record("recovered", None, notes=notes)
            for note in notes:
                log.warning("recovered: %s", note)
        if not within_intent:
            self.audit.done()
        return notes

    def reconcile_intents(self, state: State) -> list[str]:
        """Give each intent a dead command left without an outcome (killed between its
        change and its record, or its record could not be appended) the outcome observed
        now: ``<op>-completed`` when state.json's last_result for the pack carries that
        intent and says ok, else ``<op>-aborted`` (the interrupted change was rolled back
        above, or never began). Each is marked ``recorded_late``. Run after the pending
        operations are settled and state.json saved, so what is observed is final."""
        notes = []
        for intent in self.audit.open_intents():
            op, pack_id, intent_id = str(intent.get("op")), intent.get("pack"), intent["intent"]
            fields: dict[str, Any] = {"intent": intent_id, "recorded_late": True}
            if op == "seal":
                ok, fields["observed"] = _observe_seal(intent)
            else:
                last = (state.get(pack_id) or {}).get("last_result") if pack_id else None
                if isinstance(last, dict) and last.get("intent") == intent_id:
                    # ok only for the op itself: an install killed after its stage is not
                    # an install (the stage has its own outcome)
                    ok = bool(last.get("ok")) and last.get("op") == op
                    fields["version"] = last.get("version")
                    fields["observed"] = f"state.json: {last.get('message')}"
                else:
                    ok = False
                    fields["observed"] = "nothing of it is recorded in state.json"
            event = f"{op}-completed" if ok else f"{op}-aborted"
            self.audit.record(event, pack_id if isinstance(pack_id, str) else None, **fields)
            notes.append(
                f"{pack_id or 'home'}: recorded the outcome of an interrupted {op} "
                f"(pid {intent.get('pid')}) in audit.log: {event}"
            )
        return notes

    def _finish_committed(self, state: State, pack_id: str, pending: dict[str, Any]) -> list[str]:
        """An operation was killed after its commit point: its change stands. Finish an
        uninstall's removal (the copies other operations made obsolete are removed by
        _recover_dir next) and append the outcome unless audit.log already holds it."""
        op, version = pending.get("op"), pending.get("version")
        notes = []
        outcome = dict(pending.get("outcome") or {"event": op, "version": version})
        event = str(outcome.pop("event"))
        if op == "uninstall":
            purge = bool(pending.get("purge"))
            removed, left = uninstall_leftovers(self.home, pack_id, purge)
            outcome.setdefault("purge", purge)
            notes.append(
                f"{pack_id}: finished the interrupted uninstall of {version} (removed {removed})"
            )
            notes += [f"{pack_id}: could not remove {what} (left behind)" for what in left]
        else:
            notes.append(f"{pack_id}: the {op} of {version} was committed before it was killed")
            datasnap.discard(self.home, str(pending.get("data", datasnap.ABSENT)))
        intent = pending.get("intent")
        if intent is None or not self.audit.has_outcome(event, pack_id, str(intent)):
            self.audit.record(event, pack_id, **outcome, intent=intent, finished_by_recovery=True)
            notes.append(f"{pack_id}: recorded its {event} outcome in audit.log")
        state.pack(pack_id)["pending"] = None
        return notes

    def _interrupted_lifecycle(self, pack_id: str, record: PackState, op: str) -> list[str]:
        """A start or stop was killed: never leave "starting" forever. The pack's health
        is unknown until the next check (``health`` or ``start``)."""
        runtime = record.get("runtime") or {}
        if runtime.get("state") == "starting":
            record["runtime"] = {**runtime, "state": "unhealthy"}
        health = self.home.health(pack_id)
        if _health_is(health, ("starting",)):
            atomic_write_json(health, {"status": "unknown", "failing_streak": 0, "since": 0})
        return [f"{pack_id}: the {op} was interrupted; its health is unknown until checked"]

    def _recover_dir(self, parent: Path, keep: set[str], pending_version: str | None) -> list[str]:
        """Restore moved-aside copies and remove uncommitted ones in staging/<id> or packs/<id>."""
        notes: list[str] = []
        if not _own_dir(self.home, parent):
            return notes
        children = sorted(parent.iterdir())
        for child in children:
            if child.name.startswith((".tmp-", ".incoming-")) and _remove(child, notes):
                notes.append(f"removed the partial copy {child}")
        for child in children:
            if not child.name.startswith(".old-") or not child.exists():
                continue
            version = temp_version(child.name)
            target = parent / version
            if version == pending_version or not target.exists():
                if _remove(target, notes):
                    os.rename(child, target)
                    notes.append(f"restored {target} from {child.name}")
            elif _remove(child, notes):
                notes.append(f"removed the replaced copy {child}")
        for child in sorted(parent.iterdir()):
            if not child.name.startswith(".") and child.name not in keep and _remove(child, notes):
                notes.append(f"removed {child} (not recorded in state.json)")
        fsync_dir(parent)
        return notes

    def _collect_records(self, pack_id: str, record: PackState) -> None:
        """Drop digest records no staged or installed copy refers to."""
        wanted = {s["digest"].rpartition(":")[2] for s in record["staged"].values()}
        if record.get("installed"):
            wanted.add(record["installed"]["digest"].rpartition(":")[2])
        directory = self.home.records(pack_id)
        if not _own_dir(self.home, directory):
            return
        for path in directory.iterdir():
            if (path.suffix == ".json" and path.stem not in wanted) or path.name.startswith("."):
                _remove(path, [])  # a digest record left behind is harmless
