"""The Installer: every command on one $AURORA_HOME, under its lock, with crash recovery."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from aurora_common import digest as shared_digest
from aurora_common.errors import InputRefused

from aurora import datasnap, reserve, staging
from aurora.audit import AuditLog, AuditUnavailable
from aurora.errors import (
    ApprovalError,
    AuroraError,
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
from aurora.fsutil import crash_point, fsync_dir, remove_tree
from aurora.home import Home
from aurora.lifecycle import HealthSink, Lifecycle
from aurora.lock import InstallerLock
from aurora.manifest import Dependency, Manifest, load_manifest
from aurora.recovery import Recovery, begin, commit, settle, temp_name, uninstall_leftovers
from aurora.resolve import Plan, resolve
from aurora.runner import OutputSink, ScriptResult, run_entrypoint, script_error
from aurora.runtime import HealthPolicy
from aurora.seal import seal as seal_manifest
from aurora.sources import find_pack, find_packs, has_pack, unknown_pack, valid_manifests
from aurora.state import PackState, State
from aurora.timeutil import now_iso
from aurora.tree import compare, copy_tree, digest_tree, sha256_file

log = logging.getLogger(__name__)

COMMON_PACK = "pack01_common"  # the shared primitives library (docs/primitives.md)


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
        on_progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.home = Home(home.absolute())
        self.packs_dir = packs_dir.absolute()
        self.options = options or Options()
        self.on_output = on_output
        self.on_progress = on_progress  # (what, done, total) while a tree is copied
        self.approver: Approver = approver or _refuse_approval
        self.audit = AuditLog(self.home.audit)
        self.recovery = Recovery(self.home, self.audit)
        self.recovered: list[str] = []
        self.lifecycle = Lifecycle(
            self.home,
            self.audit,
            script_timeout=self.options.script_timeout,
            stop_timeout=self.options.stop_timeout,
            health=self.options.health,
            on_output=on_output,
        )

    # -- plumbing -------------------------------------------------------------

    def _state(self) -> State:
        return State.load(self.home.state)

    @contextmanager
    def _locked(self, op: str | None, pack_id: str) -> Iterator[State]:
        """Hold the installer lock, recover from an interrupted run, record the intent
        of ``op`` in audit.log (refused, unchanged, if it cannot be), yield the state.

        A command that fails without recording an outcome of its own gets
        ``<op>-aborted`` with the error, so every intent has its outcome.
        """
        with InstallerLock(self.home.lock, self.options.lock_wait):
            state = self._state()
            try:
                self.recovered = self.recovery.recover(state)
            except AuditUnavailable as exc:
                # Recovery must record what it does; on a full disk, uninstall (which
                # frees space) may spend the reserve on it, as on its own intent.
                if not (op == "uninstall" and reserve.is_disk_full(exc)):
                    raise
                if not reserve.release(self.home.reserve):
                    raise
                log.warning("disk full (%s): freed the installer's reserve to uninstall", exc)
                state = self._state()
                self.recovered = self.recovery.recover(state)
            if op is not None:  # None: a command that records its own intent if it changes
                self._intent(op, pack_id)
                state.intent = self.audit.current_intent
            try:
                yield state
                reserve.ensure(self.home.reserve)
            except BaseException as exc:
                if isinstance(exc, Exception) and self.audit.current_intent is not None:
                    self._undo_own_leftovers()
                if self.audit.current_intent is not None and not self.audit.concluded:
                    name = self.audit.current_op or op or "change"
                    self.audit.record(f"{name}-aborted", pack_id, error=str(exc) or repr(exc))
                raise
            finally:
                self.audit.done()

    def _undo_own_leftovers(self) -> None:
        """A command that failed (a full disk, a script, ...) leaves the previous state in
        force before it reports the failure: what its pending record says it left is
        undone now, as the next command's recovery would. If even that fails, the next
        command does it (the pending record stays)."""
        try:
            state = self._state()
            if self.recovery.has_leftovers(state):
                self.recovered += self.recovery.recover(state, within_intent=True)
        except (AuroraError, OSError) as exc:
            log.warning("could not undo what the failed command left (%s): the next one will", exc)

    def _progress(self, what: str) -> Callable[[int, int], None] | None:
        """A copy's progress sink for ``what`` (None when nobody listens)."""
        sink = self.on_progress
        if sink is None:
            return None
        return lambda done, total: sink(what, done, total)

    def _intent(self, op: str, pack_id: str) -> None:
        """Record the intent of ``op``; an uninstall on a full disk frees the reserve once."""
        try:
            self.audit.intent(op, pack_id)
        except AuditUnavailable as exc:
            # Only a full disk is helped by the reserve (not EPERM, a FIFO, ...).
            full = reserve.is_disk_full(exc)
            if op != "uninstall" or not full or not reserve.release(self.home.reserve):
                raise
            log.warning("disk full (%s): freed the installer's reserve to uninstall", exc)
            self.audit.intent(op, pack_id)

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

    def _install_script(
        self, manifest: Manifest, mode: str, extra_env: dict[str, str] | None = None
    ) -> ScriptResult:
        """install.sh --dry-run or --install in the copy ``manifest`` was read from."""
        return run_entrypoint(
            self.home,
            manifest,
            "install",
            [mode],
            self.options.script_timeout,
            on_output=self.on_output,
            extra_env=extra_env,
        )

    def _planned_library_env(self, plan: Plan) -> dict[str, str]:
        """For a dry run whose plan installs pack01_common first: where the pack's
        bootstrap finds it meanwhile (the source the plan would install)."""
        for step in plan.dependency_steps:
            if step.pack_id == COMMON_PACK and has_pack(self.packs_dir, COMMON_PACK):
                return {"AURORA_COMMON_ROOT": str(find_pack(self.packs_dir, COMMON_PACK).root)}
        return {}

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
            except (LockBusyError, AuditUnavailable):
                pass  # a read-only command still reads; the next change recovers
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
                    "running": self.lifecycle.running(pack_id, record)["running"],
                }
            )
        return rows

    def validate(self, pack_id: str) -> dict[str, Any]:
        """Validate a pack and check pinned artifact hashes; writes nothing."""
        manifest = find_pack(self.packs_dir, pack_id)
        warnings = staging.check_artifacts(
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
        try:
            shared_digest.check_format(expected, f"{self.home.state}: packs/{pack_id}")
        except InputRefused as exc:
            raise OperationFailed(f"{pack_id} {version}: {exc}") from None
        root = self.home.installed(pack_id, version)
        recorded = staging.read_tree_record(self.home, pack_id, expected)
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
        running = self.lifecycle.running(pack_id, record)
        health_file = self.lifecycle.health_record(pack_id)
        health: dict[str, Any] | None = health_file.read()
        problem = health_file.problem()
        if problem is not None:
            health = {"status": "invalid", "problem": problem}
        runtime_state = (record.get("runtime") or {}).get("state")
        died = runtime_state not in (None, "stopped") and not running["running"]
        if (
            health is not None
            and not running["running"]
            and health.get("status")
            in (
                "starting",
                "healthy",
            )
        ):
            # Never "healthy" for a pack that is not running: its process is gone.
            health = {**health, "status": "not running", "recorded_status": health["status"]}
        if died:
            running = {**running, "died": True, "recorded_state": runtime_state}
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

    # -- stage and seal -------------------------------------------------------

    def stage(self, pack_id: str, *, require_hashes: bool = False) -> dict[str, Any]:
        """Validate and copy a pack into staging/<id>/<version>/, recording its digest."""
        manifest = find_pack(self.packs_dir, pack_id)
        with self._locked("stage", pack_id) as state:
            return staging.stage(
                self.home,
                self.audit,
                state,
                manifest,
                require_hashes=require_hashes,
                on_progress=self._progress(f"staging {pack_id}"),
            )

    def seal(self, pack_id: str) -> dict[str, Any]:
        """Write every artifact's sha256 into the pack's manifest.yaml."""
        manifest = find_pack(self.packs_dir, pack_id)
        # Audited when the home exists (seal needs none): intent first, with the digest of
        # what it will write (so that the next command can tell whether a killed seal
        # wrote it: Recovery.reconcile_intents), outcome after.
        audited = self.home.root.is_dir()

        def intent(path: str, new: bytes) -> None:
            if audited:
                self.audit.intent(
                    "seal", pack_id, manifest=path, sha256_after=hashlib.sha256(new).hexdigest()
                )

        try:
            result = seal_manifest(manifest, before_write=intent)
            if audited:
                event = "seal" if result["written"] else "seal-unchanged"
                self.audit.record(event, pack_id, artifacts=result["artifacts"])
        except BaseException as exc:
            if self.audit.current_intent is not None and not self.audit.concluded:
                self.audit.record("seal-aborted", pack_id, error=str(exc) or repr(exc))
            raise
        finally:
            self.audit.done()
        return result

    # -- dry-run and install --------------------------------------------------

    def _ensure_staged(self, state: State, manifest: Manifest) -> tuple[Manifest, str, bool]:
        return staging.ensure_staged(
            self.home, self.audit, state, manifest, self._progress(f"staging {manifest.id}")
        )

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

    def dry_run(
        self, pack_id: str, on_plan: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Stage if needed, plan the dependencies, run install.sh --dry-run; install nothing.

        ``on_plan`` gets the result so far (the plan) before the script runs, so that
        the operator sees the plan even when the script then fails.
        """
        manifest = find_pack(self.packs_dir, pack_id)
        with self._locked(None, pack_id) as state:
            # Dependencies first, like install: a plan that cannot succeed stages nothing.
            early = self._plan(state, manifest)
            if early.problems:
                raise DependencyError(f"{pack_id}: install could not succeed", early.problems)
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
            if on_plan is not None:
                on_plan(result)
            if not staged.dry_run_supported:
                log.warning("%s does not support a dry run: install.sh not run", pack_id)
                return result
            script = self._install_script(staged, "--dry-run", self._planned_library_env(plan))
            result["script"] = script.as_dict()
            if not script.ok:
                raise script_error(f"{pack_id}: dry run failed: {script.describe()}", script)
            return result

    def install(self, pack_id: str, *, with_deps: bool = False) -> dict[str, Any]:
        """Install a pack (and with_deps, what it needs, in order) after approval."""
        manifest = find_pack(self.packs_dir, pack_id)
        with self._locked("install", pack_id) as state:
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
                running = self.lifecycle.running(source.id, state.pack(source.id))
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
        """Copy the approved staged tree into packs/<id>/<version>/, run install.sh --install,
        make it the active version; on failure the previous version stays in force."""
        pack_id, version = staged.id, staged.version
        previous = state.active_version(pack_id)
        # install.sh changes data/<id> in place: copied first, put back if it fails.
        snapshot = datasnap.take(self.home, pack_id)
        try:
            begin(
                state, pack_id, "install", version, intent=self.audit.current_intent, data=snapshot
            )
            target, aside = self._place(state, staged, digest)
        except IntegrityError:
            datasnap.discard(self.home, snapshot)
            raise
        installed = load_manifest(target)
        script = self._install_script(installed, "--install")
        crash_point("install:script-done")
        if not script.ok:
            self._roll_back(state, installed, aside, previous, digest, script, snapshot)
        # The copy's files reach the disk before state.json names it active (a staged
        # copy needs no such care: its digest is re-verified before it is installed).
        os.sync()
        record = state.pack(pack_id)
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
        was = f" (was {previous})" if previous else ""
        state.record_result(pack_id, "install", True, version, f"{action} {version}{was}")
        outcome = {"version": version, "digest": digest, "previous": previous, "approval": approval}
        commit(state, pack_id, "install", **outcome)
        crash_point("install:committed")
        self.audit.record("install", pack_id, **outcome)
        crash_point("install:recorded")
        if aside is not None:
            remove_tree(aside)
        for child in target.parent.iterdir():
            if child.name != version:
                remove_tree(child)
        datasnap.discard(self.home, snapshot)
        settle(state, pack_id)
        return {
            "pack": pack_id,
            "version": version,
            "digest": digest,
            "action": action,
            "previous": previous,
            "path": str(target),
            "approval": approval,
            "script": script.as_dict(),
        }

    def _place(self, state: State, staged: Manifest, digest: str) -> tuple[Path, Path | None]:
        """Copy the staged tree to packs/<id>/<version>/ (a copy already there is moved
        aside); returns the copy and the moved-aside one. Refuses a tree whose digest is
        not the approved one, leaving nothing behind."""
        pack_id, version = staged.id, staged.version
        parent = self.home.packs(pack_id)
        parent.mkdir(parents=True, exist_ok=True)
        incoming = parent / temp_name("incoming", version)
        # Copy and hash in one pass: what lands in packs/ is exactly what was approved.
        tree, problems = copy_tree(staged.root, incoming, self._progress(f"installing {pack_id}"))
        crash_point("install:copied")
        if problems or tree.digest != digest:
            remove_tree(incoming)
            state.pack(pack_id)["pending"] = None
            message = (
                f"staged copy changed since it was staged and approved (approved "
                f"{digest}, found {tree.digest}): run stage again"
            )
            state.record_result(pack_id, "install", False, version, message)
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
        return target, aside

    def _roll_back(
        self,
        state: State,
        installed: Manifest,
        aside: Path | None,
        previous: str | None,
        digest: str,
        script: ScriptResult,
        snapshot: str,
    ) -> NoReturn:
        """After a failed install.sh: remove the new copy, put back the one it replaced
        and the data as it was, record the failure and raise it."""
        pack_id, version, target = installed.id, installed.version, installed.root
        remove_tree(target)
        if aside is not None:
            os.rename(aside, target)
        fsync_dir(target.parent)
        for note in datasnap.restore(self.home, pack_id, snapshot):
            log.info("%s", note)
        state.pack(pack_id)["pending"] = None
        message = f"{script.describe()}; {previous or 'nothing'} stays active"
        state.record_result(pack_id, "install", False, version, message)
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

    # -- uninstall ------------------------------------------------------------

    def uninstall(
        self, pack_id: str, *, force: bool = False, purge: bool = False, stop: bool = False
    ) -> dict[str, Any]:
        """Remove the installed copy and its health record; data/<id> stays unless purge,
        logs/<id> always."""
        self._require_installed(pack_id)
        with self._locked("uninstall", pack_id) as state:
            version = state.active_version(pack_id)
            if version is None:
                raise self._not_installed(pack_id)
            record = state.pack(pack_id)
            stopped = None
            if self.lifecycle.running(pack_id, record)["running"]:
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
            # The health record describes the installed pack, so it goes with it; first,
            # so that a crash before state.json is saved leaves an installed pack without
            # a health record (the next check writes one), never a removed pack with one.
            health = self.lifecycle.health_record(pack_id)
            health_removed = [str(health.path)] if health.remove() else []
            # The commit point: state says uninstalled, with the removal still pending;
            # a crash after it is finished by the next command (recovery.py).
            record["active_version"] = None
            record["installed"] = None
            record["runtime"] = None
            state.record_result(
                pack_id,
                "uninstall",
                True,
                version,
                "uninstalled" + (" (forced past dependents)" if dependents else ""),
            )
            outcome = {"version": version, "purge": purge, "forced_past": dependents}
            try:
                self._commit_uninstall(state, pack_id, outcome)
            except OSError as exc:  # a full disk: uninstall is how space comes back
                if not (reserve.is_disk_full(exc) and reserve.release(self.home.reserve)):
                    raise
                self._commit_uninstall(state, pack_id, outcome)
            crash_point("uninstall:committed")
            self.audit.record("uninstall", pack_id, **outcome)
            removed, left = uninstall_leftovers(self.home, pack_id, purge)
            removed += health_removed
            crash_point("uninstall:removed")
            if left:  # the uninstall happened: what could not be removed is a warning
                for what in left:
                    log.warning("%s: uninstalled, but could not remove %s", pack_id, what)
                state.record_result(
                    pack_id,
                    "uninstall",
                    True,
                    version,
                    f"uninstalled; left behind (cannot be removed): {'; '.join(left)}",
                )
            settle(state, pack_id)
            return {
                "pack": pack_id,
                "version": version,
                "removed": removed,
                "left_behind": left,
                "data_kept": None if purge else str(self.home.data(pack_id)),
                "forced_past": dependents,
                "stopped": stopped,
            }

    def _commit_uninstall(self, state: State, pack_id: str, outcome: dict[str, Any]) -> None:
        """Save the uninstalled record as pending and committed, with the outcome it owes."""
        version = str(outcome["version"])
        begin(
            state,
            pack_id,
            "uninstall",
            version,
            intent=self.audit.current_intent,
            purge=bool(outcome["purge"]),
            committed=True,
            outcome={"event": "uninstall", **outcome},
        )

    # -- lifecycle ------------------------------------------------------------

    def start(self, pack_id: str, on_health: HealthSink | None = None) -> dict[str, Any]:
        """Run start.sh, then poll health_check.sh until healthy or the manifest's bound."""
        self._require_installed(pack_id)
        with self._locked("start", pack_id) as state:
            manifest = self._installed_manifest(state, pack_id)
            script = self.lifecycle.begin_start(state, manifest)
            intent = self.audit.current_intent
        # The lock is not held while health is only polled: stopping (or installing)
        # another pack meanwhile is not refused as busy.
        self.recovery.in_flight.add(pack_id)
        try:
            final: dict[str, Any] | None = None
            error: BaseException | None = None
            try:
                final = self.lifecycle.poll_start(manifest, on_health)
            except BaseException as exc:  # its outcome is recorded under the lock below
                error = exc
            with self._locked(None, pack_id) as state:
                if intent is not None:
                    self.audit.resume(intent, "start")  # the same start, its outcome owed
                state.intent = intent
                return self.lifecycle.finish_start(state, manifest, script, final, error)
        finally:
            self.recovery.in_flight.discard(pack_id)

    def health(self, pack_id: str) -> dict[str, Any]:
        """Run health_check.sh once and update the health state."""
        return self.lifecycle.health(self._installed_manifest(self._read_state(), pack_id))

    def watch_health(
        self,
        pack_id: str,
        on_health: HealthSink,
        count: int | None,
        on_check: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> int:
        """Poll health every interval, reporting the first state and each change;
        returns the number of checks run."""
        manifest = self._installed_manifest(self._read_state(), pack_id)
        return self.lifecycle.watch(manifest, on_health, count, on_check)

    def stop(self, pack_id: str) -> dict[str, Any]:
        """Run stop.sh with a timeout and record the result."""
        self._require_installed(pack_id)
        with self._locked("stop", pack_id) as state:
            return self._stop(state, pack_id)

    def _stop(self, state: State, pack_id: str) -> dict[str, Any]:
        """stop.sh of the installed copy; from the recorded pidfiles when that copy is
        damaged (a way out: a pack that cannot be stopped cannot be repaired either)."""
        try:
            manifest = self._installed_manifest(state, pack_id)
        except StateError as exc:
            log.warning("%s: %s; stopping it from its pidfiles", pack_id, exc.message)
            return self.lifecycle.stop_by_pidfiles(
                state, pack_id, state.active_version(pack_id), "installed copy unusable"
            )
        return self.lifecycle.stop(state, manifest)
