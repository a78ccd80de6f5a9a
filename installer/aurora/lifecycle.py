"""The lifecycle of an installed pack: start, stop and health checks, recorded in state."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from aurora.audit import AuditLog
from aurora.errors import OperationFailed, ScriptError, StateError
from aurora.fsutil import crash_point
from aurora.home import Home
from aurora.manifest import Manifest
from aurora.recovery import begin
from aurora.runner import OutputSink, ScriptResult, run_entrypoint, script_error
from aurora.runtime import (
    HealthPolicy,
    HealthRecord,
    last_output,
    poll_until_healthy,
    read_pidfiles,
)
from aurora.state import PackState, State
from aurora.timeutil import now_iso

log = logging.getLogger(__name__)

HealthSink = Callable[[dict[str, Any]], None]


class Lifecycle:
    """Runs an installed pack's start, stop and health scripts for one installer home.

    The caller holds the installer lock around ``start`` and ``stop`` (they write
    state.json); the health checks write only the pack's health record.
    """

    def __init__(
        self,
        home: Home,
        audit: AuditLog,
        *,
        script_timeout: float,
        stop_timeout: float,
        health: HealthPolicy,
        on_output: OutputSink | None = None,
    ) -> None:
        self.home = home
        self.audit = audit
        self.script_timeout = script_timeout
        self.stop_timeout = stop_timeout
        self.policy = health
        self.on_output = on_output
        self._previous_run_died: dict[str, bool] = {}  # begin_start -> finish_start

    def running(self, pack_id: str, record: PackState) -> dict[str, Any]:
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

    def health_record(self, pack_id: str) -> HealthRecord:
        return HealthRecord(self.home.health(pack_id))

    def _run(self, manifest: Manifest, entry: str, timeout: float) -> ScriptResult:
        return run_entrypoint(self.home, manifest, entry, [], timeout, on_output=self.on_output)

    def _check(self, manifest: Manifest, timeout: float) -> ScriptResult:
        # A health check must leave nothing running behind it.
        return run_entrypoint(
            self.home,
            manifest,
            "health",
            [],
            timeout,
            on_output=self.on_output,
            kill_group_on_exit=True,
        )

    def start(
        self, state: State, manifest: Manifest, on_health: HealthSink | None = None
    ) -> dict[str, Any]:
        """Run start.sh, then poll health_check.sh until healthy or the manifest's bound."""
        script = self.begin_start(state, manifest)
        final = self.poll_start(manifest, on_health)
        return self.finish_start(state, manifest, script, final)

    def begin_start(self, state: State, manifest: Manifest) -> ScriptResult:
        """Run start.sh and record the pack as starting (the caller holds the lock)."""
        pack_id, version = manifest.id, manifest.version
        record = state.pack(pack_id)
        before = (record.get("runtime") or {}).get("state")
        died = before not in (None, "stopped") and not self.running(pack_id, record)["running"]
        if died:  # recorded as running, but its process is gone (pidfile no longer matches)
            log.warning(
                "%s: recorded %s, but its process is gone: starting it again", pack_id, before
            )
        self.home.run(pack_id).mkdir(parents=True, exist_ok=True)
        health = self.health_record(pack_id)
        health.reset("starting")
        begin(
            state, pack_id, "start", version, intent=self.audit.current_intent
        )  # a killed start is found and reported
        script = self._run(manifest, "start", self.script_timeout)
        crash_point("start:script-done")
        if not script.ok:
            record["runtime"] = {
                "state": "stopped",
                "version": version,
                "started_at": None,
                "stopped_at": now_iso(),
                "last_check": None,
            }
            health.reset("stopped")
            raise self._script_failed(state, manifest, "start", script)
        record["runtime"] = {
            "state": "starting",
            "version": version,
            "started_at": now_iso(),
            "started_epoch": time.time(),
            "stopped_at": None,
            "last_check": None,
            "pidfile": bool(read_pidfiles(self.home.run(pack_id))),
        }
        state.save()
        crash_point("start:starting-saved")
        self._previous_run_died[pack_id] = died
        return script

    def poll_start(self, manifest: Manifest, on_health: HealthSink | None) -> dict[str, Any]:
        """Poll health_check.sh until healthy or the bound; needs no lock (it changes only
        health/<id>.json, as `health` does), so other packs can be stopped meanwhile. The
        start stays pending meanwhile; recovery leaves a pending start alone while the
        process that recorded it lives."""
        return poll_until_healthy(
            lambda timeout: self._check(manifest, timeout),
            self.health_record(manifest.id),
            self.policy,
            manifest.health_check_timeout,
            on_health,
        )

    def finish_start(
        self, state: State, manifest: Manifest, script: ScriptResult, final: dict[str, Any]
    ) -> dict[str, Any]:
        """Record the outcome of the poll (the caller holds the lock again, with a fresh
        ``state``); a pack stopped meanwhile stays stopped."""
        pack_id, version = manifest.id, manifest.version
        record = state.pack(pack_id)
        died = self._previous_run_died.pop(pack_id, False)
        runtime = record.get("runtime") or {}
        if runtime.get("state") != "starting" or runtime.get("version") != version:
            raise OperationFailed(
                f"{pack_id}: start interrupted: it was stopped or changed while its health "
                f"was polled (now {runtime.get('state') or 'not running'})"
            )
        runtime["state"] = final["status"]
        runtime["last_check"] = final.get("last_check")
        ok = final["status"] == "healthy"
        last = (final.get("last_check") or {}).get("output", "")
        message = "healthy" if ok else f"{final['reason']}; last check: {last or '(no output)'}"
        state.record_result(pack_id, "start", ok, version, message)
        record["pending"] = None
        state.save()
        self.audit.record(
            "start" if ok else "start-unhealthy", pack_id, version=version, health=final["status"]
        )
        if not ok:
            raise OperationFailed(f"{pack_id}: start failed: {message}")
        return {
            "pack": pack_id,
            "version": version,
            "health": final,
            "script": script.as_dict(),
            "previous_run_died": died,
        }

    def stop(self, state: State, manifest: Manifest) -> dict[str, Any]:
        """Run stop.sh with its timeout and record the result."""
        pack_id, version = manifest.id, manifest.version
        record = state.pack(pack_id)
        begin(state, pack_id, "stop", version, intent=self.audit.current_intent)
        script = self._run(manifest, "stop", self.stop_timeout)
        crash_point("stop:script-done")
        if not script.ok:
            raise self._script_failed(state, manifest, "stop", script)
        record["runtime"] = {
            **(record.get("runtime") or {}),
            "state": "stopped",
            "version": version,
            "stopped_at": now_iso(),
        }
        state.record_result(pack_id, "stop", True, version, "stopped")
        record["pending"] = None
        state.save()
        self.health_record(pack_id).reset("stopped")
        self.audit.record("stop", pack_id, version=version)
        still = [p.pid for p in read_pidfiles(self.home.run(pack_id)) if p.alive]
        if still:
            log.warning(
                "%s: stop.sh succeeded but pidfiles still name live processes: %s", pack_id, still
            )
        return {"pack": pack_id, "version": version, "script": script.as_dict()}

    def stop_by_pidfiles(
        self, state: State, pack_id: str, version: str | None, why: str
    ) -> dict[str, Any]:
        """Stop a pack whose installed copy cannot run stop.sh: TERM what its pidfiles
        name (only processes whose identity still matches), wait, KILL the rest."""
        run = self.home.run(pack_id)
        targets = {p.pid for p in read_pidfiles(run) if p.alive}

        def alive() -> set[int]:
            return {p.pid for p in read_pidfiles(run) if p.alive} & targets

        for pid in sorted(targets):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        killed = sorted(alive())
        for pid in killed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        record = state.pack(pack_id)
        record["runtime"] = {
            **(record.get("runtime") or {}),
            "state": "stopped",
            "version": version,
            "stopped_at": now_iso(),
        }
        message = f"stopped from its pidfiles ({why})"
        state.record_result(pack_id, "stop", True, version, message)
        state.save()
        with contextlib.suppress(StateError):
            self.health_record(pack_id).reset("stopped")
        self.audit.record(
            "stop",
            pack_id,
            version=version,
            via="pidfiles",
            signalled=sorted(targets),
            killed=killed,
        )
        return {
            "pack": pack_id,
            "version": version,
            "via": "pidfiles",
            "signalled": sorted(targets),
        }

    def _script_failed(
        self, state: State, manifest: Manifest, op: str, script: ScriptResult
    ) -> ScriptError:
        """Record a failed start.sh or stop.sh in state.json and the audit log; returns
        the error to raise."""
        message = f"{op} failed: {script.describe()}"
        state.record_result(manifest.id, op, False, manifest.version, message)
        state.pack(manifest.id)["pending"] = None
        state.save()
        self.audit.record(
            f"{op}-failed", manifest.id, version=manifest.version, reason=script.describe()
        )
        return script_error(f"{manifest.id}: {message}", script)

    def _check_and_record(self, manifest: Manifest) -> tuple[ScriptResult, dict[str, Any]]:
        """One counted check outside any start period, applied to the health record."""
        result = self._check(manifest, self.policy.timeout)
        doc = self.health_record(manifest.id).update(
            result.ok,
            last_output(result),
            result.returncode,
            counted=True,
            retries=self.policy.retries,
        )
        return result, doc

    def health(self, manifest: Manifest) -> dict[str, Any]:
        """Run health_check.sh once and update the health state."""
        result, doc = self._check_and_record(manifest)
        if not result.ok:
            raise OperationFailed(
                f"{manifest.id}: health check failed: {result.describe()}: "
                f"{last_output(result) or '(no output)'}"
            )
        return {"pack": manifest.id, "ok": True, "status": doc["status"], "check": result.as_dict()}

    def watch(
        self,
        manifest: Manifest,
        on_health: HealthSink,
        count: int | None,
        on_check: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> int:
        """Check every interval, reporting the first state and each change (and every
        check to ``on_check``: a progress display); returns the number of checks run."""
        previous = None
        checks = 0
        while count is None or checks < count:
            if checks:
                time.sleep(self.policy.interval)
            _, doc = self._check_and_record(manifest)
            checks += 1
            if on_check is not None:
                on_check(checks, doc)
            # The first check says where things stand; after it, only changes are news.
            if checks == 1 or doc["status"] != previous:
                on_health(doc)
                previous = doc["status"]
        return checks
