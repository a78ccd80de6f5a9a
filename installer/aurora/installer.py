"""The installer's operations: stage, dry-run, install, uninstall, verify and the lifecycle."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aurora.audit import AuditLog
from aurora.errors import (
    ApprovalError,
    DependencyError,
    DependentsError,
    IntegrityError,
    LockBusyError,
    ManifestError,
    NotFoundError,
    OperationFailed,
    PackRunningError,
    StateError,
)
from aurora.fsutil import atomic_write_json, crash_point, fsync_dir, remove_tree
from aurora.home import Home
from aurora.lock import InstallerLock
from aurora.manifest import Dependency, Manifest, load_manifest
from aurora.recovery import Recovery, record_result, temp_name
from aurora.resolve import Plan, resolve
from aurora.runner import OutputSink, ScriptResult, run_script, script_env, script_error
from aurora.runtime import (
    HealthPolicy,
    HealthRecord,
    last_output,
    poll_until_healthy,
    read_pidfiles,
)
from aurora.seal import seal as seal_manifest
from aurora.sources import find_pack, find_packs, has_pack, unknown_pack, valid_manifests
from aurora.state import PackState, State
from aurora.timeutil import now_iso
from aurora.tree import TreeDigest, compare, copy_tree, digest_tree, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApprovalRequest:
    """What the operator is asked to approve: this pack, this version, this exact tree."""

    pack_id: str
    version: str
    digest: str
    action: str


# Returns how approval was given ("flag", "prompt") or None when the operator
# says no; raises ApprovalError when it cannot ask (no terminal, no --approve).
Approver = Callable[[ApprovalRequest], str | None]
HealthSink = Callable[[dict[str, Any]], None]


def _refuse_approval(request: ApprovalRequest) -> str | None:
    raise ApprovalError(
        f"{request.pack_id} {request.version} requires operator approval: "
        "run on a terminal to be asked, or pass --approve"
    )


@dataclass(frozen=True)
class Options:
    """Tunables of one Installer (the CLI's flags)."""

    lock_wait: float = 5.0
    script_timeout: float = 300.0
    stop_timeout: float = 60.0
    health: HealthPolicy = field(default_factory=HealthPolicy)


class Installer:
    """Operations on one $AURORA_HOME with packs found in one packs directory.

    Every operation that changes state holds installer.lock, first cleans up
    what an interrupted run left behind, and writes state.json atomically.
    """

    def __init__(
        self,
        home: Path,
        packs_dir: Path,
        *,
        options: Options | None = None,
        on_output: OutputSink | None = None,
        approver: Approver | None = None,
    ) -> None:
        self.home = Home(home.absolute())
        self.packs_dir = packs_dir.absolute()
        self.options = options or Options()
        self.on_output = on_output
        self.approver: Approver = approver or _refuse_approval
        self.audit = AuditLog(self.home.audit)
        self.recovery = Recovery(self.home, self.audit)
        self.recovered: list[str] = []

    # -- plumbing -------------------------------------------------------------

    def _state(self) -> State:
        return State.load(self.home.state)

    @contextmanager
    def _locked(self) -> Iterator[State]:
        """Hold the installer lock, recover from an interrupted run, yield the state."""
        with InstallerLock(self.home.lock, self.options.lock_wait):
            state = self._state()
            self.recovered = self.recovery.recover(state)
            yield state

    def _not_installed(self, pack_id: str) -> NotFoundError:
        if has_pack(self.packs_dir, pack_id):
            return NotFoundError(f"{pack_id} is not installed (install --pack {pack_id})")
        return unknown_pack(self.packs_dir, pack_id)

    def _require_installed(self, pack_id: str) -> None:
        """Refuse a command on a pack that is not installed before taking the lock,
        so that a mistyped id or --home creates nothing (checked again under the lock)."""
        if self._state().active_version(pack_id) is None:
            raise self._not_installed(pack_id)

    def _installed_manifest(self, state: State, pack_id: str) -> Manifest:
        version = state.active_version(pack_id)
        if version is None:
            raise self._not_installed(pack_id)
        root = self.home.installed(pack_id, version)
        try:
            return load_manifest(root)
        except ManifestError as exc:
            raise StateError(
                f"installed copy of {pack_id} {version} at {root} is unreadable "
                "(run verify; reinstall it)",
                exc.problems,
            ) from exc

    def _run(
        self,
        manifest: Manifest,
        entry: str,
        args: list[str],
        timeout: float,
        *,
        kill_group_on_exit: bool = False,
    ) -> ScriptResult:
        script = manifest.script(entry)
        return run_script(
            [str(script), *args],
            cwd=manifest.root,
            env=script_env(self.home, manifest.id, manifest.version, manifest.root),
            timeout=timeout,
            log_path=self.home.logs(manifest.id) / f"{script.stem}.log",
            on_output=self.on_output,
            kill_group_on_exit=kill_group_on_exit,
        )

    # -- crash recovery (see recovery.py) -------------------------------------------------------

    def _read_state(self) -> State:
        """State for a read-only command; an interrupted run's leftovers are cleaned up
        first when no other installer is at work (its pending record is not a leftover)."""
        state = self._state()
        if self.recovery.has_leftovers(state):
            try:
                with InstallerLock(self.home.lock, 0):
                    state = self._state()
                    self.recovered = self.recovery.recover(state)
            except LockBusyError:
                pass
        return state

    # -- read-only commands ---------------------------------------------------

    def list_packs(self) -> list[dict[str, Any]]:
        """Packs found in the packs directory and packs installed, with their states."""
        state = self._read_state()
        rows: list[dict[str, Any]] = []
        sources = find_packs(self.packs_dir)
        for pack_id in sorted(set(sources) | set(state.packs)):
            source = sources.get(pack_id)
            record = state.get(pack_id) or {}
            rows.append(
                {
                    "id": pack_id,
                    "version": source.manifest.version if source and source.manifest else None,
                    "source": str(source.root) if source else None,
                    "valid": bool(source and source.manifest),
                    "problems": len(source.error.problems) if source and source.error else 0,
                    "staged": sorted(record.get("staged", {})),
                    "installed": record.get("active_version"),
                    "running": self._running(pack_id, record)["running"],
                }
            )
        return rows

    def validate(self, pack_id: str) -> dict[str, Any]:
        """Validate a pack and check pinned artifact hashes; writes nothing."""
        manifest = find_pack(self.packs_dir, pack_id)
        warnings = _check_artifacts(
            manifest, lambda rel: sha256_file(manifest.root / rel), require_hashes=False
        )
        return {
            "pack": manifest.id,
            "version": manifest.version,
            "valid": True,
            "manifest": manifest.summary(),
            "warnings": warnings,
        }

    def verify(self, pack_id: str) -> dict[str, Any]:
        """Re-hash the installed copy against its recorded digest."""
        state = self._read_state()
        record = state.get(pack_id)
        version = state.active_version(pack_id)
        if record is None or version is None:
            raise self._not_installed(pack_id)
        expected = record["installed"]["digest"]
        root = self.home.installed(pack_id, version)
        recorded = self._read_record(pack_id, expected)
        if not root.is_dir():
            raise OperationFailed(f"{pack_id} {version}: installed copy {root} is missing")
        actual, problems = digest_tree(root)
        diff = compare(recorded, actual.entries)
        result = {
            "pack": pack_id,
            "version": version,
            "digest": expected,
            "actual_digest": actual.digest,
            "ok": actual.digest == expected,
            **diff,
        }
        if actual.digest != expected or problems:
            raise OperationFailed(
                f"{pack_id} {version}: installed copy does not match its digest {expected}",
                [f"changed: {p}" for p in diff["changed"]]
                + [f"missing: {p}" for p in diff["missing"]]
                + [f"extra: {p}" for p in diff["extra"]]
                + problems,
            )
        return result

    def status(self, pack_id: str | None = None) -> dict[str, Any]:
        """State, version, digest, approval, last result and runtime of one or every pack."""
        state = self._read_state()
        if pack_id is not None:
            if state.get(pack_id) is None and not has_pack(self.packs_dir, pack_id):
                raise unknown_pack(self.packs_dir, pack_id)
            return self._status_of(pack_id, state.get(pack_id) or {})
        return {"packs": [self._status_of(pid, rec) for pid, rec in sorted(state.packs.items())]}

    def _status_of(self, pack_id: str, record: PackState) -> dict[str, Any]:
        installed = record.get("installed") or {}
        running = self._running(pack_id, record)
        health = HealthRecord(self._health_path(pack_id)).read()
        if record.get("active_version"):
            word = "running" if running["running"] else "installed"
        elif record.get("staged"):
            word = "staged"
        else:
            word = "not installed"
        return {
            "pack": pack_id,
            "state": word,
            "active_version": record.get("active_version"),
            "digest": installed.get("digest"),
            "installed_at": installed.get("installed_at"),
            "approval": installed.get("approval"),
            "staged": record.get("staged", {}),
            "last_result": record.get("last_result"),
            "pending": record.get("pending"),
            "runtime": {**running, "health": health},
        }

    def _running(self, pack_id: str, record: PackState) -> dict[str, Any]:
        """Whether the pack runs: a live pidfile, else what the last start/stop recorded."""
        pids = read_pidfiles(self.home.run(pack_id))
        alive = [p for p in pids if p.alive]
        runtime = record.get("runtime") or {}
        started = runtime.get("state") not in (None, "stopped")
        # A pack that writes pidfiles runs exactly while one names a live process; for
        # one that does not, what the last start/stop recorded is all there is to go by.
        uses_pidfiles = bool(pids) or bool(runtime.get("pidfile"))
        info: dict[str, Any] = {
            "running": bool(alive) if uses_pidfiles else started,
            "pid": alive[0].pid if alive else None,
            "uptime_seconds": alive[0].as_dict()["uptime_seconds"] if alive else None,
            "pidfiles": [p.as_dict() for p in pids],
            "started_at": runtime.get("started_at"),
            "stopped_at": runtime.get("stopped_at"),
        }
        if info["uptime_seconds"] is None and info["running"] and runtime.get("started_epoch"):
            info["uptime_seconds"] = round(time.time() - runtime["started_epoch"], 1)
        return info

    def _health_path(self, pack_id: str) -> Path:
        return self.home.root / "health" / f"{pack_id}.json"

    # -- stage and seal -------------------------------------------------------

    def stage(self, pack_id: str, *, require_hashes: bool = False) -> dict[str, Any]:
        """Validate and copy a pack into staging/<id>/<version>/, recording its digest."""
        manifest = find_pack(self.packs_dir, pack_id)
        with self._locked() as state:
            return self._stage(state, manifest, require_hashes=require_hashes)

    def _stage(self, state: State, manifest: Manifest, *, require_hashes: bool) -> dict[str, Any]:
        pack_id, version = manifest.id, manifest.version
        record = state.pack(pack_id)
        _begin(state, pack_id, "stage", version)
        parent = self.home.staging(pack_id)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / temp_name("tmp", version)
        try:
            tree, problems = copy_tree(manifest.root, tmp)
            if problems:
                raise ManifestError(f"{manifest.root}: pack tree cannot be staged", problems)
            crash_point("stage:copied")
            warnings = _check_artifacts(manifest, tree.file_sha256, require_hashes=require_hashes)
        except BaseException:
            remove_tree(tmp)
            record["pending"] = None
            state.save()
            raise
        target = parent / version
        previous = record["staged"].get(version)
        # The fresh copy always replaces the old one: the old one may have been tampered with.
        changed = not (previous and previous["digest"] == tree.digest)
        aside = None
        if target.exists():
            aside = parent / temp_name("old", version)
            os.rename(target, aside)
            crash_point("stage:moved-aside")
        os.rename(tmp, target)
        fsync_dir(parent)
        crash_point("stage:renamed")
        self._write_record(pack_id, tree)
        record["staged"][version] = {
            "digest": tree.digest,
            "staged_at": now_iso(),
            "files": tree.files,
            "size": tree.size,
            "source": str(manifest.root),
            "warnings": warnings,
        }
        record["pending"] = None
        record_result(state, pack_id, "stage", True, version, f"staged {tree.digest}")
        state.save()
        crash_point("stage:committed")
        if aside is not None:
            remove_tree(aside)
        self.audit.record(
            "stage",
            pack_id,
            version=version,
            digest=tree.digest,
            source=str(manifest.root),
            warnings=warnings,
        )
        return self._staged_result(manifest, target, tree, warnings, changed=changed)

    @staticmethod
    def _staged_result(
        manifest: Manifest, target: Path, tree: TreeDigest, warnings: list[str], *, changed: bool
    ) -> dict[str, Any]:
        return {
            "pack": manifest.id,
            "version": manifest.version,
            "path": str(target),
            "digest": tree.digest,
            "files": tree.files,
            "size": tree.size,
            "warnings": warnings,
            "changed": changed,
        }

    def _write_record(self, pack_id: str, tree: TreeDigest) -> None:
        path = self.home.record(pack_id, tree.digest)
        if not path.exists():
            atomic_write_json(path, {"digest": tree.digest, "entries": tree.entries})

    def _read_record(self, pack_id: str, digest: str) -> dict[str, str]:
        path = self.home.record(pack_id, digest)
        try:
            entries: dict[str, str] = _load_json(path)["entries"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{path}: file record of {digest} unreadable: {exc}") from exc
        return entries

    def seal(self, pack_id: str) -> dict[str, Any]:
        """Write every artifact's sha256 into the pack's manifest.yaml."""
        manifest = find_pack(self.packs_dir, pack_id)
        result = seal_manifest(manifest)
        if result["written"]:
            self._audit_if_home("seal", pack_id, artifacts=result["artifacts"])
        return result

    def _audit_if_home(self, event: str, pack_id: str, **fields: Any) -> None:
        """Audit an event that does not need a home, if the home exists."""
        if self.home.root.is_dir():
            self.audit.record(event, pack_id, **fields)

    # -- dry-run and install --------------------------------------------------

    def _ensure_staged(self, state: State, manifest: Manifest) -> tuple[Manifest, str, bool]:
        """The staged copy of this version (staged now if missing) and its digest."""
        record = state.pack(manifest.id)
        target = self.home.staged(manifest.id, manifest.version)
        staged_now = False
        if manifest.version not in record["staged"] or not target.is_dir():
            log.info("staging %s %s", manifest.id, manifest.version)
            self._stage(state, manifest, require_hashes=False)
            staged_now = True
        digest: str = state.pack(manifest.id)["staged"][manifest.version]["digest"]
        try:
            staged = load_manifest(target)
        except ManifestError as exc:
            raise IntegrityError(
                f"staged copy {target} is no longer valid: run stage again", exc.problems
            ) from exc
        return staged, digest, staged_now

    def _plan(self, state: State, target: Manifest) -> Plan:
        installed = state.installed_versions()
        installed_deps: dict[str, tuple[Dependency, ...]] = {}
        for pack_id in installed:
            with suppress(NotFoundError, StateError):
                installed_deps[pack_id] = self._installed_manifest(state, pack_id).dependencies
        sources = find_packs(self.packs_dir)
        valid = {pid: src.manifest for pid, src in sources.items() if src.manifest}
        invalid = [pid for pid, src in sources.items() if src.manifest is None]
        return resolve(target, valid, installed, installed_deps, invalid)

    def dry_run(self, pack_id: str) -> dict[str, Any]:
        """Stage if needed, plan the dependencies, run install.sh --dry-run; install nothing."""
        manifest = find_pack(self.packs_dir, pack_id)
        with self._locked() as state:
            staged, digest, staged_now = self._ensure_staged(state, manifest)
            actual, _ = digest_tree(staged.root)
            if actual.digest != digest:
                raise IntegrityError(
                    f"staged copy {staged.root} changed since it was staged "
                    f"(recorded {digest}, found {actual.digest}): run stage again"
                )
            plan = self._plan(state, staged)
            result: dict[str, Any] = {
                "pack": pack_id,
                "version": staged.version,
                "digest": digest,
                "staged_now": staged_now,
                "plan": plan.as_dict(),
                "script": None,
            }
            if plan.problems:
                raise DependencyError(f"{pack_id}: install could not succeed", plan.problems)
            if not staged.dry_run_supported:
                log.warning("%s does not support a dry run: install.sh not run", pack_id)
                return result
            script = self._run(staged, "install", ["--dry-run"], self.options.script_timeout)
            result["script"] = _script_dict(script)
            if not script.ok:
                raise script_error(f"{pack_id}: dry run failed: {script.describe()}", script)
            return result

    def install(self, pack_id: str, *, with_deps: bool = False) -> dict[str, Any]:
        """Install a pack (and with_deps, what it needs, in order) after approval."""
        manifest = find_pack(self.packs_dir, pack_id)
        with self._locked() as state:
            plan = self._plan(state, manifest)
            if plan.problems:
                raise DependencyError(f"{pack_id}: cannot install", plan.problems)
            if plan.dependency_steps and not with_deps:
                raise DependencyError(
                    f"{pack_id}: dependencies are not installed (install --with-deps installs "
                    "them from the packs directory)",
                    [
                        f"{s.reason}: {s.action} {s.pack_id} {s.version}"
                        for s in plan.dependency_steps
                    ],
                )
            sources = valid_manifests(self.packs_dir)
            steps = [
                (sources[s.pack_id] if s.pack_id != pack_id else manifest, s.action)
                for s in plan.steps
            ]
            for source, _ in steps:
                running = self._running(source.id, state.pack(source.id))
                if state.active_version(source.id) and running["running"]:
                    raise PackRunningError(
                        f"{source.id} is running: stop it before installing over it"
                    )
            # Stage everything first, then ask once per pack, then install in order:
            # a refusal leaves nothing half done.
            prepared = []
            for source, action in steps:
                staged, digest, staged_now = self._ensure_staged(state, source)
                prepared.append((staged, digest, action, staged_now))
            approvals = [
                self._approve(staged, digest, action) for staged, digest, action, _ in prepared
            ]
            done = []
            for (staged, digest, action, staged_now), approval in zip(
                prepared, approvals, strict=True
            ):
                done.append(
                    self._install_one(state, staged, digest, action, approval)
                    | {"staged_now": staged_now}
                )
            return {"pack": pack_id, "plan": plan.as_dict(), "installed": done}

    def _approve(self, staged: Manifest, digest: str, action: str) -> dict[str, Any] | None:
        if not staged.approval_required:
            return None
        request = ApprovalRequest(staged.id, staged.version, digest, action)
        try:
            how = self.approver(request)
        except ApprovalError as exc:
            self.audit.record(
                "approval-refused",
                staged.id,
                version=staged.version,
                digest=digest,
                reason=str(exc),
            )
            raise
        if how is None:
            self.audit.record("approval-denied", staged.id, version=staged.version, digest=digest)
            raise ApprovalError(f"{staged.id} {staged.version}: the operator did not approve")
        entry = self.audit.record(
            "approve", staged.id, version=staged.version, digest=digest, how=how
        )
        return {"digest": digest, "at": entry["ts"], "by": entry["user"], "how": how}

    def _install_one(
        self,
        state: State,
        staged: Manifest,
        digest: str,
        action: str,
        approval: dict[str, Any] | None,
    ) -> dict[str, Any]:
        pack_id, version = staged.id, staged.version
        record = state.pack(pack_id)
        previous = record.get("active_version")
        _begin(state, pack_id, "install", version)
        parent = self.home.packs(pack_id)
        parent.mkdir(parents=True, exist_ok=True)
        incoming = parent / temp_name("incoming", version)
        # Copy and hash in one pass: what lands in packs/ is exactly what was approved.
        tree, problems = copy_tree(staged.root, incoming)
        crash_point("install:copied")
        if problems or tree.digest != digest:
            remove_tree(incoming)
            record["pending"] = None
            message = (
                f"staged copy changed since it was staged and approved (approved "
                f"{digest}, found {tree.digest}): run stage again"
            )
            record_result(state, pack_id, "install", False, version, message)
            state.save()
            self.audit.record(
                "install-refused", pack_id, version=version, digest=digest, found=tree.digest
            )
            raise IntegrityError(f"{pack_id} {version}: {message}", problems)
        target = parent / version
        aside = None
        if target.exists():
            aside = parent / temp_name("old", version)
            os.rename(target, aside)
        os.rename(incoming, target)
        fsync_dir(parent)
        crash_point("install:placed")
        installed = load_manifest(target)
        script = self._run(installed, "install", ["--install"], self.options.script_timeout)
        crash_point("install:script-done")
        if not script.ok:
            remove_tree(target)
            if aside is not None:
                os.rename(aside, target)
            fsync_dir(parent)
            record["pending"] = None
            message = f"{script.describe()}; {previous or 'nothing'} stays active"
            record_result(state, pack_id, "install", False, version, message)
            state.save()
            self.audit.record(
                "install-failed",
                pack_id,
                version=version,
                digest=digest,
                reason=script.describe(),
                log=str(script.log_path),
            )
            raise script_error(f"{pack_id} {version}: install failed: {message}", script)
        # The copy's files reach the disk before state.json names it active (a staged
        # copy needs no such care: its digest is re-verified before it is installed).
        os.sync()
        record["active_version"] = version
        record["installed"] = {
            "version": version,
            "digest": digest,
            "installed_at": now_iso(),
            "approval": approval,
            "dependencies": [
                {"pack_id": d.pack_id, "version_constraint": d.constraint}
                for d in installed.dependencies
            ],
        }
        record["pending"] = None
        record_result(
            state,
            pack_id,
            "install",
            True,
            version,
            f"{action} {version}" + (f" (was {previous})" if previous else ""),
        )
        state.save()
        crash_point("install:committed")
        if aside is not None:
            remove_tree(aside)
        for child in parent.iterdir():
            if child.name != version:
                remove_tree(child)
        self.audit.record(
            "install", pack_id, version=version, digest=digest, previous=previous, approval=approval
        )
        return {
            "pack": pack_id,
            "version": version,
            "digest": digest,
            "action": action,
            "previous": previous,
            "path": str(target),
            "approval": approval,
            "script": _script_dict(script),
        }

    # -- uninstall ------------------------------------------------------------

    def uninstall(
        self, pack_id: str, *, force: bool = False, purge: bool = False, stop: bool = False
    ) -> dict[str, Any]:
        """Remove the installed copy; data/<id> stays unless purge."""
        self._require_installed(pack_id)
        with self._locked() as state:
            version = state.active_version(pack_id)
            if version is None:
                raise self._not_installed(pack_id)
            record = state.pack(pack_id)
            stopped = None
            if self._running(pack_id, record)["running"]:
                if not stop:
                    raise PackRunningError(
                        f"{pack_id} is running: stop it first (or uninstall --stop)"
                    )
                stopped = self._stop(state, pack_id)
            dependents = []
            for other in sorted(state.installed_versions()):
                if other == pack_id:
                    continue
                with suppress(NotFoundError, StateError):
                    deps = self._installed_manifest(state, other).dependencies
                    if any(d.pack_id == pack_id for d in deps):
                        dependents.append(other)
            if dependents and not force:
                raise DependentsError(
                    f"{pack_id} is needed by installed packs (uninstall them first, or --force)",
                    [f"{d} depends on {pack_id}" for d in dependents],
                )
            record["active_version"] = None
            record["installed"] = None
            record["runtime"] = None
            record_result(
                state,
                pack_id,
                "uninstall",
                True,
                version,
                "uninstalled" + (" (forced past dependents)" if dependents else ""),
            )
            state.save()
            remove_tree(self.home.packs(pack_id))
            removed = [str(self.home.packs(pack_id))]
            if purge:
                for path in (
                    self.home.data(pack_id),
                    self.home.run(pack_id),
                    self._health_path(pack_id),
                ):
                    if path.exists():
                        remove_tree(path)
                        removed.append(str(path))
            self.audit.record(
                "uninstall", pack_id, version=version, purge=purge, forced_past=dependents
            )
            return {
                "pack": pack_id,
                "version": version,
                "removed": removed,
                "data_kept": None if purge else str(self.home.data(pack_id)),
                "forced_past": dependents,
                "stopped": stopped,
            }

    # -- lifecycle ------------------------------------------------------------

    def start(self, pack_id: str, on_health: HealthSink | None = None) -> dict[str, Any]:
        """Run start.sh, then poll health_check.sh until healthy or the manifest's bound."""
        self._require_installed(pack_id)
        with self._locked() as state:
            manifest = self._installed_manifest(state, pack_id)
            record = state.pack(pack_id)
            self.home.run(pack_id).mkdir(parents=True, exist_ok=True)
            health = HealthRecord(self._health_path(pack_id))
            health.reset("starting")
            script = self._run(manifest, "start", [], self.options.script_timeout)
            if not script.ok:
                record["runtime"] = {
                    "state": "stopped",
                    "version": manifest.version,
                    "started_at": None,
                    "stopped_at": now_iso(),
                    "last_check": None,
                }
                message = f"start failed: {script.describe()}"
                record_result(state, pack_id, "start", False, manifest.version, message)
                state.save()
                health.reset("stopped")
                self.audit.record(
                    "start-failed", pack_id, version=manifest.version, reason=script.describe()
                )
                raise script_error(f"{pack_id}: {message}", script)
            record["runtime"] = {
                "state": "starting",
                "version": manifest.version,
                "started_at": now_iso(),
                "started_epoch": time.time(),
                "stopped_at": None,
                "last_check": None,
                "pidfile": bool(read_pidfiles(self.home.run(pack_id))),
            }
            state.save()
            final = poll_until_healthy(
                lambda timeout: self._check(manifest, timeout),
                health,
                self.options.health,
                manifest.health_check_timeout,
                on_health,
            )
            record["runtime"]["state"] = final["status"]
            record["runtime"]["last_check"] = final.get("last_check")
            ok = final["status"] == "healthy"
            last = (final.get("last_check") or {}).get("output", "")
            message = (
                "healthy"
                if ok
                else f"not healthy ({final['status']}) within the bound: {final['reason']}; "
                f"last check: {last or '(no output)'}"
            )
            record_result(state, pack_id, "start", ok, manifest.version, message)
            state.save()
            self.audit.record(
                "start" if ok else "start-unhealthy",
                pack_id,
                version=manifest.version,
                health=final["status"],
            )
            result = {
                "pack": pack_id,
                "version": manifest.version,
                "health": final,
                "script": _script_dict(script),
            }
            if not ok:
                raise OperationFailed(f"{pack_id}: start failed: {message}")
            return result

    def _check(self, manifest: Manifest, timeout: float) -> ScriptResult:
        return self._run(manifest, "health", [], timeout, kill_group_on_exit=True)

    def health(self, pack_id: str) -> dict[str, Any]:
        """Run health_check.sh once and update the health state."""
        state = self._read_state()
        manifest = self._installed_manifest(state, pack_id)
        health = HealthRecord(self._health_path(pack_id))
        result = self._check(manifest, self.options.health.timeout)
        doc = health.update(
            result.ok,
            last_output(result),
            result.returncode,
            counted=True,
            retries=self.options.health.retries,
        )
        out = {
            "pack": pack_id,
            "ok": result.ok,
            "status": doc["status"],
            "check": _script_dict(result),
        }
        if not result.ok:
            raise OperationFailed(
                f"{pack_id}: health check failed: {result.describe()}: "
                f"{last_output(result) or '(no output)'}"
            )
        return out

    def watch_health(self, pack_id: str, on_health: HealthSink, count: int | None) -> int:
        """Poll health every interval, reporting the first state and each change;
        returns the number of checks run."""
        state = self._read_state()
        manifest = self._installed_manifest(state, pack_id)
        policy = self.options.health
        health = HealthRecord(self._health_path(pack_id))
        previous = None
        checks = 0
        while count is None or checks < count:
            if checks:
                time.sleep(policy.interval)
            result = self._check(manifest, policy.timeout)
            checks += 1
            doc = health.update(
                result.ok,
                last_output(result),
                result.returncode,
                counted=True,
                retries=policy.retries,
            )
            # The first check says where things stand; after it, only changes are news.
            if checks == 1 or doc["status"] != previous:
                on_health(doc)
                previous = doc["status"]
        return checks

    def stop(self, pack_id: str) -> dict[str, Any]:
        """Run stop.sh with a timeout and record the result."""
        self._require_installed(pack_id)
        with self._locked() as state:
            return self._stop(state, pack_id)

    def _stop(self, state: State, pack_id: str) -> dict[str, Any]:
        manifest = self._installed_manifest(state, pack_id)
        record = state.pack(pack_id)
        script = self._run(manifest, "stop", [], self.options.stop_timeout)
        if not script.ok:
            message = f"stop failed: {script.describe()}"
            record_result(state, pack_id, "stop", False, manifest.version, message)
            state.save()
            self.audit.record(
                "stop-failed", pack_id, version=manifest.version, reason=script.describe()
            )
            raise script_error(f"{pack_id}: {message}", script)
        runtime = record.get("runtime") or {}
        record["runtime"] = {
            **runtime,
            "state": "stopped",
            "version": manifest.version,
            "stopped_at": now_iso(),
        }
        record_result(state, pack_id, "stop", True, manifest.version, "stopped")
        state.save()
        HealthRecord(self._health_path(pack_id)).reset("stopped")
        self.audit.record("stop", pack_id, version=manifest.version)
        still = [p.pid for p in read_pidfiles(self.home.run(pack_id)) if p.alive]
        if still:
            log.warning(
                "%s: stop.sh succeeded but pidfiles still name live processes: %s", pack_id, still
            )
        return {"pack": pack_id, "version": manifest.version, "script": _script_dict(script)}


def _begin(state: State, pack_id: str, op: str, version: str) -> None:
    """Record ``op`` as pending before it touches the disk: a crash is then found and undone."""
    state.pack(pack_id)["pending"] = {
        "op": op,
        "version": version,
        "started_at": now_iso(),
        "pid": os.getpid(),
    }
    state.save()


def _check_artifacts(
    manifest: Manifest, sha256_of: Callable[[str], str | None], *, require_hashes: bool
) -> list[str]:
    """Compare each artifact's sha256 (``sha256_of`` its path) with the pinned one.

    Raises IntegrityError on any mismatch, and on an unpinned artifact when
    ``require_hashes``; otherwise returns (and logs) one warning per unpinned artifact.
    """
    unpinned: list[str] = []
    mismatches: list[str] = []
    for i, artifact in enumerate(manifest.artifacts):
        if not artifact.sha256:
            unpinned.append(f"pack.artifacts[{i}]: {artifact.path} has no sha256 (run seal)")
            continue
        actual = sha256_of(artifact.path)
        if actual != artifact.sha256:
            mismatches.append(
                f"pack.artifacts[{i}]: {artifact.path} sha256 is {actual}, "
                f"the manifest pins {artifact.sha256}"
            )
    if mismatches:
        raise IntegrityError(f"{manifest.id}: artifact hash mismatch", mismatches)
    if unpinned and require_hashes:
        raise IntegrityError(
            f"{manifest.id}: --require-hashes and artifacts are not pinned", unpinned
        )
    for w in unpinned:
        log.warning("%s", w)
    return unpinned


def _script_dict(result: ScriptResult) -> dict[str, Any]:
    return {
        "command": result.argv,
        "exit_code": result.returncode,
        "timed_out": result.timed_out,
        "seconds": round(result.duration, 3),
        "log": str(result.log_path),
        "output_tail": result.output_tail,
    }


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
