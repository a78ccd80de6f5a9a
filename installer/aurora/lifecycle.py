"""The lifecycle of an installed pack: start, stop and health checks, recorded in state."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from aurora_common import identity

from aurora import orphans
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
    proc_start_time,
    read_pidfiles,
)
from aurora.state import PackState, State
from aurora.timeutil import now_iso

log = logging.getLogger(__name__)

HealthSink = Callable[[dict[str, Any]], None]

# After stop.sh had its chance, what it left gets this long to end on SIGTERM (at most
# --timeout); a process gets KILL_WAIT to disappear after SIGKILL.
FALLBACK_GRACE = 10.0
KILL_WAIT = 5.0


def _same(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the process first seen with this start time (not a zombie)."""
    return proc_start_time(pid) == started and not identity.is_zombie(pid)


def _signal(pid: int, sig: int) -> None:
    """Signal a pack's process, and its whole group when it leads one of its own (a
    daemon's children go with it; never the installer's own group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        try:
            group = os.getpgid(pid)
        except ProcessLookupError:
            return
        if group == pid and group != os.getpgrp():
            os.killpg(group, sig)
        else:
            os.kill(pid, sig)


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
        self,
        state: State,
        manifest: Manifest,
        script: ScriptResult,
        final: dict[str, Any] | None,
        error: BaseException | None = None,
    ) -> dict[str, Any]:
        """Record the outcome of the poll (the caller holds the lock again, with a fresh
        ``state``); a pack stopped or uninstalled meanwhile stays so. ``error``: the poll
        itself failed (its scripts could not run, Ctrl-C). Every path records an outcome
        under the start's intent."""
        pack_id, version = manifest.id, manifest.version
        record = state.pack(pack_id)
        died = self._previous_run_died.pop(pack_id, False)
        runtime = record.get("runtime") or {}
        if state.active_version(pack_id) != version:
            now = state.active_version(pack_id)
            raise self._start_aborted(
                pack_id,
                version,
                f"{pack_id}: start aborted: it was "
                + (f"replaced by {now}" if now else "uninstalled")
                + " while its health was polled",
            )
        if runtime.get("state") == "healthy" and runtime.get("version") == version:
            # Another start made it healthy meanwhile: what was asked holds (that start
            # recorded its own outcome; this one records that it found it so).
            self.audit.record("start", pack_id, version=version, health="healthy", by_other=True)
            return {
                "pack": pack_id,
                "version": version,
                "health": {"status": "healthy", "last_check": runtime.get("last_check")},
                "script": script.as_dict(),
                "previous_run_died": died,
                "note": "another start made it healthy while this one polled",
            }
        if runtime.get("state") != "starting" or runtime.get("version") != version:
            raise self._start_aborted(
                pack_id,
                version,
                f"{pack_id}: start interrupted: it was stopped or changed while its health "
                f"was polled (now {runtime.get('state') or 'not running'})",
            )
        if error is not None or final is None:
            why = f"{type(error).__name__}: {error}" if error is not None else "no result"
            message = f"its health could not be polled ({why})"
            runtime["state"] = "unhealthy"
            state.record_result(pack_id, "start", False, version, message)
            record["pending"] = None
            state.save()
            self.audit.record("start-failed", pack_id, version=version, reason=message)
            if error is not None and not isinstance(error, Exception):
                raise error  # Ctrl-C stays Ctrl-C, now with its outcome recorded
            raise OperationFailed(f"{pack_id}: start failed: {message}")
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

    def _live(self, pack_id: str) -> dict[int, int]:
        """What the pack's pidfiles name that still runs: pid -> start time (its identity,
        checked again before each signal, so a reused pid is never signalled). Only a
        process whose environment names this home counts: a pidfile naming some other
        process (hostile, or a reused pid) never gets it signalled."""
        found = {}
        for info in read_pidfiles(self.home.run(pack_id)):
            started = info.start_time if info.start_time is not None else proc_start_time(info.pid)
            if not info.alive or started is None:
                continue
            if not orphans.has_home(info.pid, self.home.root):
                log.warning(
                    "%s: %s names pid %d, which was not started under %s: not signalled",
                    pack_id,
                    info.path,
                    info.pid,
                    self.home.root,
                )
                continue
            found[info.pid] = started
        return found

    def stop(self, state: State, manifest: Manifest) -> dict[str, Any]:
        """Run stop.sh with its timeout; whatever the pidfiles still name afterwards (stop.sh
        failed, hung, could not run, or "succeeded" and left it) is TERMed then KILLed, and
        only a pack whose processes are gone is recorded stopped."""
        pack_id, version = manifest.id, manifest.version
        begin(state, pack_id, "stop", version, intent=self.audit.current_intent)
        before = self._live(pack_id)  # a stop.sh may remove the pidfile of what it leaves
        script: ScriptResult | None = None
        try:
            script = self._run(manifest, "stop", self.stop_timeout)
            failure = None if script.ok else f"stop.sh {script.describe()}"
        except OSError as exc:  # ENOEXEC (garbage bytes), ETXTBSY, ...
            failure = f"stop.sh could not run: {exc.strerror or exc}"
        crash_point("stop:script-done")
        left = {**before, **self._live(pack_id)}
        left = {pid: t for pid, t in left.items() if _same(pid, t)}
        uses_pidfiles = bool(before) or bool(read_pidfiles(self.home.run(pack_id)))
        if failure is not None and not uses_pidfiles:
            # Nothing says what runs: the failure stands (a pack without pidfiles).
            if script is not None:
                raise self._script_failed(state, manifest, "stop", script)
            raise self._stop_failed(state, pack_id, version, failure)
        if not left:
            if failure is not None:
                log.warning("%s: %s, but its pidfiles name nothing running", pack_id, failure)
            return self._stopped(state, pack_id, version, script, failure=failure)
        why = failure or "stop.sh exited 0 but the pidfiles still name live processes"
        log.warning("%s: %s: %s; ending them from the pidfiles", pack_id, why, sorted(left))
        return self._end_from_pidfiles(
            state, pack_id, version, why, left, grace=min(self.stop_timeout, FALLBACK_GRACE)
        )

    def stop_by_pidfiles(
        self, state: State, pack_id: str, version: str | None, why: str
    ) -> dict[str, Any]:
        """Stop a pack whose installed copy cannot run stop.sh: TERM what its pidfiles
        name (only processes whose identity still matches), wait, KILL the rest."""
        begin(state, pack_id, "stop", version or "", intent=self.audit.current_intent)
        return self._end_from_pidfiles(
            state, pack_id, version, why, self._live(pack_id), grace=self.stop_timeout
        )

    def _end_from_pidfiles(
        self,
        state: State,
        pack_id: str,
        version: str | None,
        why: str,
        targets: dict[int, int],
        grace: float,
    ) -> dict[str, Any]:
        """TERM ``targets`` (pid -> start time), KILL what outlives ``grace``; recorded
        stopped only when none of them is left, else stop-failed naming the survivors."""
        signalled, killed = sorted(targets), []

        def alive() -> list[int]:
            return sorted(pid for pid, t in targets.items() if _same(pid, t))

        for pid in alive():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = alive()
        for pid in killed:
            _signal(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = alive()
        if survivors:  # never recorded stopped while it runs (D state, EPERM, ...)
            raise self._stop_failed(
                state,
                pack_id,
                version,
                f"{why}; still running after SIGKILL: {survivors}",
                signalled=signalled,
                killed=killed,
            )
        return self._stopped(
            state,
            pack_id,
            version,
            None,
            failure=why,
            via="pidfiles",
            signalled=signalled,
            killed=killed,
        )

    def _stopped(
        self,
        state: State,
        pack_id: str,
        version: str | None,
        script: ScriptResult | None,
        *,
        failure: str | None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Record the pack stopped (its processes are gone) and the ``stop`` outcome."""
        record = state.pack(pack_id)
        record["runtime"] = {
            **(record.get("runtime") or {}),
            "state": "stopped",
            "version": version,
            "stopped_at": now_iso(),
        }
        message = "stopped" if failure is None else f"stopped ({failure})"
        if fields.get("via") == "pidfiles":
            message = f"stopped from its pidfiles ({failure})"
        state.record_result(pack_id, "stop", True, version, message)
        record["pending"] = None
        state.save()
        with contextlib.suppress(StateError):
            self.health_record(pack_id).reset("stopped")
        if failure is not None:
            fields["reason"] = failure
        self.audit.record("stop", pack_id, version=version, **fields)
        result: dict[str, Any] = {"pack": pack_id, "version": version, **fields}
        if script is not None:
            result["script"] = script.as_dict()
        if failure is not None:
            result["warning"] = failure
        return result

    def _stop_failed(
        self, state: State, pack_id: str, version: str | None, message: str, **fields: Any
    ) -> OperationFailed:
        """Record a stop that left the pack running; returns the error to raise."""
        state.record_result(pack_id, "stop", False, version, f"stop failed: {message}")
        state.pack(pack_id)["pending"] = None
        state.save()
        self.audit.record("stop-failed", pack_id, version=version, reason=message, **fields)
        return OperationFailed(f"{pack_id}: stop failed: {message}")

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

    def _start_aborted(self, pack_id: str, version: str, message: str) -> OperationFailed:
        """A start overtaken by another command (which owns the state now): only its
        outcome is recorded; returns the error to raise."""
        self.audit.record("start-aborted", pack_id, version=version, reason=message)
        return OperationFailed(message)

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
