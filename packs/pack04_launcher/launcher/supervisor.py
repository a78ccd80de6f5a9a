"""The reconcile loop: make the running plugins match the registry.

Each call to ``Supervisor.reconcile`` re-reads the registry and the operator's
control file when they changed, collects exited plugins, schedules restarts
with exponential back-off, and starts or stops plugins so that exactly the
enabled, runnable, not held plugins run. It never blocks except to stop a
plugin (at most the stop grace period).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aurora_common

from launcher import (
    datadir,
    degraded,
    diskimage,
    identity,
    limits,
    process,
    registry,
    sandbox,
    status,
)
from launcher.api_socket import ApiServer
from launcher.cgroup import CgroupTree
from launcher.channel import FunctionSpec, Limits
from launcher.control import Control, read_control
from launcher.digest import old_format_hint, tree_digest
from launcher.errors import ForkServerError, LauncherError, RegistryError, SandboxUnavailable
from launcher.forkserver import LOST, ForkServer, ServerRun, stop_leftover
from launcher.fsutil import atomic_write_json
from launcher.paths import Paths, sandbox_root
from launcher.pluginlog import PluginLog, one_line, plugin_text
from launcher.process import ProcessId
from launcher.protocol_host import HealthPolicy, ProtocolHost
from launcher.registry import ON_CALL, PluginEntry

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_UNREAD = object()  # signature of a file not read yet: differs from any stat
#: Sandbox modes (status file): runs requested from pack03's fork server, or one
#: ``launch.py --policy`` process per run.
FORK_SERVER = "fork-server"
ONE_SHOT = "one-shot"
#: Restarts of a fork server that died before the supervisor gives up on it.
_SERVER_RESTARTS = 3
#: A standby that ended before its first call is not replaced for this long (seconds).
STANDBY_RETRY_S = 60.0


@dataclass(frozen=True)
class Settings:
    """How the supervisor behaves; every duration in seconds."""

    python: str
    poll_interval: float = 1.0  # registry/control re-check when nothing else is due
    backoff_base: float = 1.0  # first restart delay; doubles on each crash
    backoff_max: float = 60.0
    max_restarts: int = 5  # consecutive crashes restarted before "failed"
    stable_after: float = 60.0  # a run this long resets the crash count
    stop_grace: float = 5.0  # TERM to KILL
    max_runtime: float | None = None  # wall-clock bound of one run; None: unbounded
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    use_cgroup: bool = True
    # Without cgroups, become a child subreaper and kill orphans no plugin claims.
    # Only for a dedicated service process: it would adopt a host process's orphans.
    reap_orphans: bool = False
    # Start plugins through pack03's fork server (one-shot launch.py if it cannot start).
    fork_server: bool = True
    # Bound each data dir's bytes and inodes by a filesystem image of its own.
    disk_images: bool = True
    # Who may call plugins through the API socket besides root (uids the operator allows).
    api_callers: tuple[int, ...] = ()
    handshake_s: float = 10.0  # a protocol plugin's time to say hello after its start
    # The shortest health interval honoured (a manifest asking less gets this): each
    # check costs the loop, and a change of health rewrites the status file.
    min_health_interval: float = 1.0
    # Keep an idle on-call Python plugin's interpreter started (confined, SDK imported,
    # none of its code run) so that its first call does not wait for an interpreter.
    standby: bool = True


#: ``_begin_stop``'s ``then`` for a stop that counts as a crash (restarted with back-off).
CRASHED = "crashed"
#: How long past the grace period a stop waits for exit statuses before giving up.
_STOP_PATIENCE = 15.0


@dataclass
class _Stopping:
    """A stop under way: TERM sent; KILL at ``deadline``; then the state ``then``."""

    deadline: float
    killer: subprocess.Popen[bytes] | None
    then: str
    why: str | None
    killed: bool = False


@dataclass
class Slot:
    """One plugin under supervision and its current run, if any."""

    entry: PluginEntry
    state: str = status.BLOCKED
    reason: str | None = None
    proc: subprocess.Popen[bytes] | ServerRun | None = None
    mode: str | None = None  # FORK_SERVER or ONE_SHOT: how the current/last run started
    ident: ProcessId | None = None
    started_at: float | None = None  # wall clock, for the status file
    started_mono: float = 0.0
    restarts: int = 0
    crashes: int = 0  # consecutive, reset by a stable run
    next_start: float = 0.0  # monotonic time of the next start attempt
    last_exit: int | None = None
    cgroup: str | None = None
    tracked: set[ProcessId] = field(default_factory=set)  # descendants (no-cgroup mode)
    spec: tuple[Any, ...] | None = None  # what it was started with
    layers: list[str] = field(default_factory=list)
    starts_seen: int = 0
    backoff: float | None = None  # the delay before the pending restart
    sandbox_cgroups: list[str] = field(default_factory=list)  # from the sandbox report
    sandbox: sandbox.SandboxCommand | None = None  # the one that started this run
    degraded: list[str] = field(default_factory=list)  # what the sandbox could not enforce
    log: PluginLog | None = None  # the current run's output pipe and log file
    log_error: str | None = None  # the last failure writing its log
    disk_gap: str | None = None  # why its data dir is not bounded (degraded mode only)
    standby: socket.socket | None = None  # our end while the run stands by (on-call)
    standby_after: float = 0.0  # monotonic: no new standby before (one ended early)
    stopping: _Stopping | None = None  # a stop under way


def _spec(entry: PluginEntry) -> tuple[Any, ...]:
    """What, when changed in the registry, requires a restart."""
    return (
        entry.version,
        entry.granted,
        entry.package_dir,
        entry.entrypoint,
        entry.digest,
        entry.allow_degraded,
    )


class Supervisor:
    """Runs the enabled plugins of one registry; one instance per run dir."""

    def __init__(
        self, paths: Paths, settings: Settings, sandbox_env: dict[str, str] | None = None
    ) -> None:
        self.paths = paths
        self.settings = settings
        self._sandbox_env = sandbox_env
        self.slots: dict[str, Slot] = {}
        self.cgroups: CgroupTree | None = None
        self.registry_error: str | None = None
        self.sandbox_error: str | None = None
        self.degraded_error: str | None = None
        self.limits_error: str | None = None
        self._disk_error: str | None = None  # why no data image can be used here
        self._limits_sig: object = _UNREAD
        self._limit_settings: dict[str, dict[str, Any]] = {}
        self._registry_sig: object = _UNREAD
        self._control_sig: object = _UNREAD
        self._degraded_sig: object = _UNREAD
        self._registered: dict[str, PluginEntry] = {}  # as read from the registry
        self._degraded: set[str] = set()  # ids the operator allows to run degraded
        self._entries: dict[str, PluginEntry] = {}  # the two combined
        self._control = Control()
        self._sandbox_root: Path | None = None
        self.server: ForkServer | None = None
        self.server_error: str | None = None  # why runs are one-shot, or the last server death
        self._server_off: Path | None = None  # the pack03 root the server failed to run from
        self._server_restarts = 0
        # The plugin protocol: every run's connection, and the operator's call socket.
        self.protocol = ProtocolHost(
            self._call_grants,
            limits=Limits(handshake_s=settings.handshake_s),
            on_log=self._plugin_record,
            will_run=self._why_not_running,
        )
        self.api: ApiServer | None = None
        self.api_error: str | None = None
        self._protocol_seen: dict[str, tuple[str, str | None]] = {}
        self.dirty = True

    # --- setup and teardown -------------------------------------------------------

    def open(self) -> None:
        """Create the run/log dirs and the cgroup tree; kill what a dead run left.

        Then start pack03's fork server (a server left by a killed supervisor is
        stopped first, and with it the plugins it ran).
        """
        self._lay_out()
        if self.settings.disk_images:
            try:  # before the fork server makes its spares' namespaces
                diskimage.share_root(self.paths.plugin_data_root)
            except diskimage.DiskUnavailable as exc:
                self._disk_error = str(exc)
                log.error("data images off: %s", exc)
        stop_leftover(self.paths.sandbox_server_pidfile, self.settings.stop_grace)
        if self.settings.use_cgroup:
            self.cgroups = CgroupTree.create(str(self.paths.run))
        if self.cgroups is not None:
            for name in self.cgroups.leftovers():
                log.warning("killing plugin cgroup %s left by a previous launcher", name)
                self.cgroups.kill(name)
        elif self.settings.reap_orphans:
            # Orphans of our plugins are re-parented to us, so they can be found.
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())
        self._open_api()
        with contextlib.suppress(SandboxUnavailable):  # blocked plugins say why
            sbx = self._sandbox_command()
            self._kill_leftover_runs(sbx)
            self._server_for(sbx)

    def _open_api(self) -> None:
        """The call socket; without it plugins still run, calls say why they cannot."""
        extra = [u for u in self.settings.api_callers if u != 0]
        try:
            datadir.root_dir(self.paths.api_dir, datadir.TRAVERSE if extra else datadir.PRIVATE)
            api = ApiServer(self.paths.api_socket, self.protocol, (0, *extra))
            api.open(mode=0o666 if extra else 0o600)
        except (OSError, LauncherError) as exc:
            self.api_error = f"{self.paths.api_socket}: {getattr(exc, 'strerror', None) or exc}"
            log.error("plugin calls off: %s", self.api_error)
            return
        self.api, self.api_error = api, None

    def _lay_out(self) -> None:
        """Root's directories, closed to plugin uids; the data path only traversable."""
        p = self.paths
        # Callers the operator allows besides root must reach the call socket: the run
        # dir is then only traversable (its files stay 0600, its other dirs 0700).
        run_mode = datadir.TRAVERSE if self.settings.api_callers else datadir.PRIVATE
        datadir.root_dir(p.run, run_mode)
        for d in (p.reports_root, p.logs, p.logs / "plugins", p.images):
            datadir.root_dir(d, datadir.PRIVATE)
        for d in (p.data, p.plugin_data_root):
            datadir.root_dir(d, datadir.TRAVERSE)

    def _kill_leftover_runs(self, sbx: sandbox.SandboxCommand) -> None:
        """Kill runs a dead launcher left in pack03's cgroups (found by their reports).

        A launcher and its fork server both killed with SIGKILL leave their plugins
        running, moved out of every cgroup of ours by the sandbox.
        """
        for report in sorted(self.paths.run.glob("plugins/*/report.json")):
            dirs = sandbox.report_cgroups(sandbox.read_report(report))
            if not any(os.path.isdir(d) for d in dirs):
                continue  # the usual case: that run was stopped and its cgroups removed
            log.warning("killing a run left in %s (from %s)", ", ".join(dirs), report)
            argv = sbx.kill_tree_argv(report, 0.0)
            try:
                subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               timeout=30, check=False)  # fmt: skip
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("%s: %s", argv[3], exc)

    def close(self) -> None:
        """Stop every plugin, then the fork server, and remove the cgroup tree."""
        self._track_descendants()
        self._stop([s for s in self.slots.values() if s.proc is not None])
        self.protocol.close("the launcher stopped")
        if self.api is not None:
            self.api.close()
            self.api = None
        self._stop_server()
        if self.settings.reap_orphans:
            # Every plugin is stopped: any child still ours is an orphan we adopted.
            left = [i for p in process.children(os.getpid()) if (i := process.identify(p))]
            left += [d for i in list(left) for d in process.descendants(i.pid)]
            if left:
                log.warning("killing %d adopted orphan(s) at shutdown", len(left))
                process.terminate(left, self.settings.stop_grace)
            process.reap_zombie_children(set())
        if self.cgroups is not None:
            self.cgroups.close()
        if self.settings.disk_images:
            for problem in diskimage.unmount_all(self.paths.plugin_data_root):
                log.warning("data image: %s", problem)

    # --- the loop -----------------------------------------------------------------

    def reconcile(self, force_reload: bool = False) -> None:
        """One pass: read changes, collect exits, stop and start to match."""
        now = time.monotonic()
        self.drain_logs()
        self._reload(force_reload)
        self._check_server()
        self._advance_stops()
        self._collect()
        self._track_descendants()
        wanted = self._wanted()
        # Stop what must not run, or runs an outdated version.
        for pid, s in self.slots.items():
            if s.proc is not None and (pid not in wanted or s.spec != _spec(wanted[pid])):
                self._begin_stop(s)
        self._enforce_wall_clock(now)
        self._protocol_pass(time.monotonic())
        for pid in list(self.slots):
            if pid not in self._entries and self.slots[pid].proc is None:  # once stopped
                log.info("%s: removed from the registry", pid)
                del self.slots[pid]
                self.protocol.forget(pid, "removed from the registry")
                self.dirty = True
        for pid, entry in self._entries.items():
            slot = self.slots.setdefault(pid, Slot(entry=entry))
            if slot.entry != entry:
                # A new version or new grants: start afresh.
                slot.entry, slot.crashes, slot.next_start = entry, 0, 0.0
                if slot.state in (status.FAILED, status.REFUSED, status.EXITED):
                    slot.state = status.BLOCKED
            self._settle(slot, pid in wanted, now)
            if slot.proc is None and (why := self._will_not_run(pid)) is not None:
                self.protocol.fail_waiting(pid, why)
        if any(s.proc is not None and not s.layers for s in self.slots.values()):
            # A run whose sandbox report was not there at the last status write:
            # write again at the next pass rather than at the next heartbeat.
            self.dirty = True

    def _enforce_wall_clock(self, now: float) -> None:
        """Stop every run older than ``max_runtime``; it counts as a crash (back-off)."""
        limit = self.settings.max_runtime
        if not limit:
            return
        for slot in self.slots.values():
            if (
                slot.proc
                and slot.standby is None
                and slot.stopping is None
                and now - slot.started_mono >= limit
            ):
                self._begin_stop(slot, CRASHED, f"killed at the wall-clock bound ({limit:g}s)")

    def _settle(self, slot: Slot, wanted: bool, now: float) -> None:
        """Move one slot toward its desired state."""
        entry = slot.entry
        starts = self._control.starts.get(entry.id, 0)
        if starts != slot.starts_seen:
            # `start <id>` from the operator: forget failures, start now.
            slot.starts_seen = starts
            slot.crashes, slot.next_start = 0, 0.0
            if slot.state in (status.FAILED, status.REFUSED, status.EXITED):
                slot.state = status.BLOCKED
        if slot.proc is not None:
            if slot.standby is not None and self.protocol.has_waiting(entry.id):
                self._wake(slot)
            return
        if not wanted:
            new = self._idle_state(entry)
            if (slot.state, slot.reason) != new:
                slot.state, slot.reason = new
                self.dirty = True
            return
        if slot.state in (status.FAILED, status.REFUSED, status.EXITED):
            return
        if now < slot.next_start:
            return
        standby = False
        if _on_call(entry) and not self.protocol.has_waiting(entry.id):
            if not self.settings.standby or now < slot.standby_after:
                if slot.state != status.IDLE:
                    slot.state = status.IDLE
                    slot.reason = slot.reason or "starts at its first call"
                    self.dirty = True
                return
            standby = True
        try:
            self._start(slot, standby=standby)
        except Exception as exc:  # one plugin's trouble never takes the loop down
            log.exception("%s: start failed", entry.id)
            if slot.proc is None:
                self._crashed(slot, time.monotonic(), f"supervisor error while starting: {exc}")
            self.dirty = True

    def _idle_state(self, entry: PluginEntry) -> tuple[str, str | None]:
        if entry.id in self._control.held:
            return status.HELD, "stopped by the operator (launcher start <id> to resume)"
        if entry.problem is not None:
            return status.BLOCKED, entry.problem
        return status.DISABLED, "not enabled in the registry"

    def _wanted(self) -> dict[str, PluginEntry]:
        return {
            pid: e
            for pid, e in self._entries.items()
            if e.enabled and e.runnable and pid not in self._control.held
        }

    def next_wakeup(self) -> float:
        """Seconds until the loop has something to do (at most the poll interval)."""
        now = time.monotonic()
        due = [
            s.next_start - now
            for s in self.slots.values()
            if s.proc is None and s.state == status.BACKOFF
        ]
        if self.settings.max_runtime:
            due += [
                s.started_mono + self.settings.max_runtime - now
                for s in self.slots.values()
                if s.proc is not None
            ]
        due.append(self.protocol.next_wakeup(now))
        for s in self.slots.values():  # the end of a grace period, then a close watch
            if s.stopping is not None:
                due.append(max(0.05, s.stopping.deadline - now) if not s.stopping.killed else 0.05)
        # The idle stop's deadline, for the runs _protocol_pass would stop: a standby or
        # a busy run past it must not make every pass due at once (the loop would spin).
        due += [
            self._idle_deadline(s) - now
            for s in self.slots.values()
            if s.proc is not None
            and s.standby is None
            and s.stopping is None
            and _on_call(s.entry)
            and not self.protocol.busy(s.entry.id)
        ]
        return max(0.0, min([self.settings.poll_interval, *due]))

    # --- reading the registry and the control file --------------------------------

    def _reload(self, force: bool) -> None:
        changed = False
        sig = registry.signature(self.paths.registry)
        if force or sig != self._registry_sig:
            self._registry_sig, changed = sig, True
            try:
                self._registered = registry.read_registry(self.paths.registry)
                self.registry_error = None
                log.info("registry %s: %d plugin(s)", self.paths.registry, len(self._registered))
            except RegistryError as exc:
                # Keep running the last good view: the file is replaced atomically,
                # so a bad one is an operator problem to report, not a stop signal.
                self.registry_error = str(exc)
                log.error("%s", exc)
        sig = registry.signature(self.paths.degraded)
        if force or sig != self._degraded_sig:
            self._degraded_sig, changed = sig, True
            try:
                self._degraded = degraded.read_allowed(self.paths.degraded)
                self.degraded_error = None
            except LauncherError as exc:
                # Fail closed: an unusable file allows nobody (pack03 then refuses
                # what it cannot fully confine), and says why in the status file.
                self._degraded, self.degraded_error = set(), str(exc)
                log.error("%s", exc)
        if changed:
            self._entries = {
                pid: dataclasses.replace(e, allow_degraded=True) if pid in self._degraded else e
                for pid, e in self._registered.items()
            }
            self.dirty = True
        sig = registry.signature(self.paths.limits)
        if force or sig != self._limits_sig:
            self._limits_sig = sig
            try:  # applied at each plugin's next start
                self._limit_settings, self.limits_error = (
                    limits.read_settings(self.paths.limits),
                    None,
                )
            except LauncherError as exc:  # the defaults, and say why
                self._limit_settings, self.limits_error = {}, str(exc)
                log.error("%s", exc)
            self.dirty = True
        sig = registry.signature(self.paths.control)
        if force or sig != self._control_sig:
            self._control_sig = sig
            try:
                self._control = read_control(self.paths.control)
            except LauncherError as exc:
                log.error("%s", exc)
            self.dirty = True

    # --- starting -----------------------------------------------------------------

    def _sandbox_command(self) -> sandbox.SandboxCommand:
        """pack03's launcher, resolved at each start (pack03 may have been upgraded)."""
        try:
            root = sandbox_root(self.paths, self._sandbox_env)
        except SandboxUnavailable as exc:
            self.sandbox_error = str(exc)
            raise
        if self.sandbox_error is not None or self._sandbox_root != root:
            log.info("sandbox: %s", root / "sandbox" / "launch.py")
        self.sandbox_error, self._sandbox_root = None, root
        return sandbox.SandboxCommand(self.settings.python, root)

    def _start(self, slot: Slot, standby: bool = False) -> None:
        """Start a run of ``slot``'s plugin; ``standby``: an on-call plugin's interpreter
        that waits for its first call (``aurora_common.standby``)."""
        entry = slot.entry
        assert entry.entrypoint is not None
        self.dirty = True
        try:
            sbx = self._sandbox_command()
        except SandboxUnavailable as exc:
            if slot.reason != f"not started: {exc}":
                log.error("%s: not started: %s", entry.id, exc)
            slot.state, slot.reason = status.BLOCKED, f"not started: {exc}"
            slot.next_start = time.monotonic() + 5.0
            return
        if not self._digest_ok(slot):
            return
        try:
            uid = identity.for_plugin(self.paths, entry.id)
        except (LauncherError, OSError) as exc:
            reason = f"not started: no host identity: {exc}"
            if slot.reason != reason:
                log.error("%s: %s", entry.id, reason)
            slot.state, slot.reason = status.BLOCKED, reason
            slot.next_start = time.monotonic() + 5.0
            return
        data_dir = self.paths.plugin_data(entry.id)
        run_dir = self.paths.plugin_run(entry.id)
        policy_file, report_file = run_dir / "policy.json", run_dir / "report.json"
        command = sandbox.plugin_argv(self.settings.python, entry.entrypoint)
        if standby:
            waiting = sandbox.standby_argv(self.settings.python, _sdk_root(), entry.entrypoint)
            if waiting is None:  # not Python: started cold at its first call
                slot.state, slot.reason = status.IDLE, "starts at its first call"
                slot.standby_after = math.inf
                return
            command = waiting
        bounds = limits.for_plugin(self._limit_settings, entry.id)
        sdk = _sdk_root() if entry.api is not None else None
        doc = sandbox.policy(entry, data_dir, bounds.policy_limits(self.settings.limits), uid, sdk)
        slot.disk_gap = None
        if self.settings.disk_images:
            try:
                if self._disk_error is not None:
                    raise diskimage.DiskUnavailable(self._disk_error)
                diskimage.ensure(self.paths.plugin_image(entry.id), data_dir,
                                 bounds.disk_bytes, bounds.inodes, uid)  # fmt: skip
            except (diskimage.DiskUnavailable, OSError) as exc:
                if not entry.allow_degraded:
                    slot.state = status.REFUSED
                    slot.reason = (
                        f"refused: its data dir cannot be bounded ({diskimage.LAYER}): {exc}; "
                        f"`aurora launcher degraded allow {entry.id}` runs it unbounded"
                    )
                    log.error("%s: %s", entry.id, slot.reason)
                    return
                slot.disk_gap = f"{diskimage.LAYER}: {exc}"
        server = self._server_for(sbx)
        cgroup = entry.id if self.cgroups is not None and server is None else None
        try:
            if moved := datadir.plugin_dir(data_dir, uid, uid):
                log.warning("%s: re-owned %d entries of %s to uid %d", entry.id, moved,
                            data_dir, uid)  # fmt: skip
            run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if server is None:
                atomic_write_json(policy_file, doc)
            report_file.unlink(missing_ok=True)
            if cgroup is not None and self.cgroups is not None:
                self.cgroups.make(cgroup)
            plog = PluginLog(self.paths.plugin_log(entry.id))
            log_fd = plog.open_pipe()
            # The plugin's end of its protocol connection becomes its fd 3 (pack03).
            ours, theirs = (
                socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                if entry.api is not None
                else (None, None)
            )
        except LauncherError as exc:  # its data dir is not a directory: counts, then failed
            log.error("%s: cannot prepare the run: %s", entry.id, exc)
            self._crashed(slot, time.monotonic(), f"cannot prepare the run: {exc}")
            return
        except OSError as exc:
            # A full disk, a lowered file-size limit, a cgroup that will not go away:
            # the host's fault, not the plugin's. Retried, never counted as a crash.
            self._host_fault(slot, f"cannot prepare the run: {exc}")
            return
        proc: subprocess.Popen[bytes] | ServerRun | None = None
        proto_fd = theirs.fileno() if theirs is not None else None
        try:
            plog.mark(f"start {entry.id} {entry.version} granted={list(entry.granted)} uid={uid}")
            if server is not None:
                proc = self._request(server, doc, command, report_file, log_fd, proto_fd)
            if proc is None:
                if server is not None:  # the server failed just now: one-shot, contained
                    atomic_write_json(policy_file, doc)
                    if self.cgroups is not None:
                        cgroup = entry.id
                        self.cgroups.make(cgroup)
                proc = self._popen(entry.id, sbx, policy_file, report_file, command, log_fd,
                                   data_dir, cgroup, proto_fd)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("%s: cannot start %s: %s", entry.id, sbx.launch, exc)
            os.close(log_fd)
            for end in (ours, theirs):
                if end is not None:
                    end.close()
            plog.close(f"cannot start: {exc}")
            if cgroup is not None and self.cgroups is not None:
                self.cgroups.kill(cgroup)
            self._crashed(slot, time.monotonic(), f"cannot start: {exc}")
            return
        os.close(log_fd)  # the plugin holds the only write end now
        if theirs is not None:
            theirs.close()  # likewise its protocol connection
        slot.standby = ours if standby else None
        if ours is not None and not standby:
            self._attach(entry, ours)
        slot.log = plog
        if isinstance(proc, ServerRun):
            # The server got the policy inline; the file is the operator's copy, written
            # once the plugin runs rather than before (its fsyncs cost about 1 ms).
            try:
                atomic_write_json(policy_file, doc)
            except OSError as exc:
                log.warning("%s: cannot write %s: %s", entry.id, policy_file, exc)
        slot.proc, slot.cgroup, slot.tracked, slot.sandbox = proc, cgroup, set(), sbx
        slot.mode = FORK_SERVER if isinstance(proc, ServerRun) else ONE_SHOT
        slot.ident = proc.ident if isinstance(proc, ServerRun) else process.identify(proc.pid)
        slot.started_at, slot.started_mono = time.time(), time.monotonic()
        slot.state, slot.reason, slot.spec = status.RUNNING, None, _spec(entry)
        if standby:
            slot.state, slot.reason = status.IDLE, "standing by: starts at its first call"
        slot.layers, slot.sandbox_cgroups, slot.degraded = [], [], []
        log.info("%s: started pid %d (granted %s, %s)",
                 entry.id, proc.pid, list(entry.granted), slot.mode)  # fmt: skip

    def _popen(
        self,
        plugin_id: str,
        sbx: sandbox.SandboxCommand,
        policy_file: Path,
        report_file: Path,
        command: list[str],
        log_fd: int,
        data_dir: Path,
        cgroup: str | None,
        protocol_fd: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """One-shot: ``launch.py --policy`` in its own session, in our cgroup ``cgroup``."""
        return subprocess.Popen(
            sbx.argv(policy_file, report_file, command, protocol_fd),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            cwd=data_dir,
            env={
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "AURORA_PLUGIN_ID": plugin_id,
                "AURORA_PLUGIN_DATA": str(data_dir),
            },
            close_fds=True,
            pass_fds=(protocol_fd,) if protocol_fd is not None else (),
            start_new_session=True,
            preexec_fn=self.cgroups.enter_hook(cgroup) if cgroup and self.cgroups else None,
        )

    def _request(
        self,
        server: ForkServer,
        doc: dict[str, Any],
        command: list[str],
        report_file: Path,
        log_fd: int,
        protocol_fd: int | None = None,
    ) -> ServerRun | None:
        """Ask the fork server for the run; None (one-shot instead) when it fails."""
        try:
            return server.run(doc, command, report_file, log_fd, protocol_fd)
        except ForkServerError as exc:
            log.error("%s: %s: starting it one-shot", doc["plugin_id"], exc)
            self.server_error = str(exc)
            self.dirty = True
            return None

    def _digest_ok(self, slot: Slot) -> bool:
        """True when the package is still the tree pack05 staged (or has no digest).

        A changed package is blocked until the registry changes or the operator
        asks for a start again: it is not re-hashed in a loop.
        """
        entry = slot.entry
        if entry.digest is None or entry.package_dir is None:
            return True
        try:
            found = tree_digest(entry.package_dir)
        except OSError as exc:
            found = f"unreadable ({exc})"
        if found == entry.digest:
            return True
        slot.state = status.BLOCKED
        slot.reason = (
            f"package {entry.package_dir} changed since it was staged: "
            f"registry digest {entry.digest}, found {found}{old_format_hint(entry.digest)}"
        )
        slot.next_start = math.inf
        log.error("%s: not started: %s", entry.id, slot.reason)
        return False

    # --- collecting exits ---------------------------------------------------------

    def _collect(self) -> None:
        now = time.monotonic()
        orphans: list[Slot] = []
        for slot in self.slots.values():
            if slot.proc is None or slot.stopping is not None:
                continue  # a stop under way collects its own exit
            try:
                self._collect_one(slot, now, orphans)
            except Exception as exc:  # retried at the next pass; the others go on
                log.exception("%s: collecting its exit failed", slot.entry.id)
                slot.reason = f"supervisor error while collecting its exit: {exc}"
                self.dirty = True
        if orphans:
            self._restart_orphans(orphans)
        if self.cgroups is None and self.settings.reap_orphans:
            process.reap_zombie_children(self._own_children())

    def _collect_one(self, slot: Slot, now: float, orphans: list[Slot]) -> None:
        """Handle one run's exit, if it has ended."""
        if slot.proc is not None:
            rc = slot.proc.poll()
            if isinstance(slot.proc, ServerRun) and slot.proc.lost:
                orphans.append(slot)  # its server died: no exit status will come
                return
            if rc is None:
                return
            self.dirty = True
            # The main process is gone: whatever it left behind goes with it (the
            # fork server has done so for its runs before it reported the exit).
            self._kill_tree(slot, sandbox_kill=None, by_sandbox=slot.mode != FORK_SERVER)
            error = slot.proc.error if isinstance(slot.proc, ServerRun) else None
            slot.proc, slot.ident, slot.last_exit = None, None, rc
            slot.layers, slot.sandbox_cgroups, slot.degraded = [], [], []
            pid = slot.entry.id
            self._mark_exit(slot, rc)
            self.protocol.detach(pid, f"its run ended ({_describe_exit(rc)})", restarting=True)
            if slot.standby is not None:  # before any call: no crash, no new standby soon
                slot.standby.close()
                slot.standby, slot.standby_after = None, now + STANDBY_RETRY_S
                slot.state = status.IDLE
                slot.reason = f"its standby ended ({_describe_exit(rc)}); starts at its next call"
                log.warning("%s: %s", pid, slot.reason)
            elif rc == 0 and _on_call(slot.entry):
                slot.state = status.IDLE
                slot.reason = "exited with status 0; starts at its next call"
                log.info("%s: exited with status 0 (on-call: idle)", pid)
            elif rc == 0:
                slot.state, slot.reason = status.EXITED, "exited with status 0"
                log.info("%s: exited with status 0", pid)
            elif rc == sandbox.SANDBOX_REFUSED and self._sandbox_refused(slot, error):
                slot.state = status.REFUSED
                slot.reason = "sandbox refused to start it: " + (
                    error or _last_line(self.paths.plugin_log(pid))
                )
                log.error("%s: %s", pid, slot.reason)
            else:
                self._crashed(slot, now, _describe_exit(rc))

    def _sandbox_refused(self, slot: Slot, error: str | None) -> bool:
        """Status 125 from the sandbox, not from a plugin that exits 125 to pass for it:
        the fork server says why it refused; one-shot, the report shows no exec."""
        if slot.mode == FORK_SERVER:
            return error is not None
        report = sandbox.read_report(self._report(slot))
        return not (report and report.get("status") == "running")

    def _own_children(self) -> set[int]:
        """Our children owned by a Popen: one-shot runs and the fork server."""
        mine = {s.proc.pid for s in self.slots.values() if isinstance(s.proc, subprocess.Popen)}
        if self.server is not None and self.server.pid is not None:
            mine.add(self.server.pid)
        return mine

    def _restart_orphans(self, orphans: list[Slot]) -> None:
        """Runs whose fork server died: stop what is left of them (their trees, found
        through the sandbox reports), then start them again through a new server."""
        log.error("%d plugin(s) lost their sandbox server: stopping and restarting them",
                  len(orphans))  # fmt: skip
        self._stop(orphans)
        for slot in orphans:
            slot.restarts += 1
            slot.next_start = 0.0
            slot.reason = "restarted: its sandbox fork server died"

    def _host_fault(self, slot: Slot, why: str) -> None:
        """A start the host prevented: retry after a fixed delay, no crash counted."""
        delay = min(5.0, self.settings.backoff_max)
        slot.state, slot.reason = status.BACKOFF, f"{why}; retry in {delay:g}s"
        slot.backoff, slot.next_start = delay, time.monotonic() + delay
        log.error("%s: %s", slot.entry.id, slot.reason)

    def _crashed(self, slot: Slot, now: float, why: str) -> None:
        """Schedule a restart with back-off, or give up after max_restarts."""
        if slot.started_mono and now - slot.started_mono >= self.settings.stable_after:
            slot.crashes = 0
        slot.started_mono = 0.0  # a run counts once; a failed start is no run at all
        slot.crashes += 1
        if slot.crashes > self.settings.max_restarts:
            slot.state = status.FAILED
            slot.reason = f"{why}; gave up after {self.settings.max_restarts} restart(s)"
            log.error("%s: failed: %s", slot.entry.id, slot.reason)
            return
        delay = min(self.settings.backoff_base * 2 ** (slot.crashes - 1), self.settings.backoff_max)
        slot.state, slot.reason = status.BACKOFF, f"{why}; restart in {delay:g}s"
        slot.backoff = delay
        slot.next_start = now + delay
        slot.restarts += 1
        log.warning("%s: %s", slot.entry.id, slot.reason)

    def _mark_exit(self, slot: Slot, rc: int) -> None:
        """Drain the run's pipe, note how it ended, close its log."""
        plog, slot.log = slot.log, None
        if plog is None:
            return
        plog.close(_describe_exit(rc))
        if plog.error:
            log.error("%s: log: %s", slot.entry.id, plog.error)

    def drain_logs(self) -> None:
        """One bounded read from every run's output pipe (never blocks)."""
        for slot in self.slots.values():
            plog = slot.log
            if plog is None:
                continue
            plog.drain()
            if plog.error and plog.error != slot.log_error:
                slot.log_error = plog.error
                log.error("%s: log: %s", slot.entry.id, plog.error)
                self.dirty = True

    # --- whole-tree tracking and stopping -----------------------------------------

    def _track_descendants(self) -> None:
        """Without cgroups: remember every descendant while its parent still lives."""
        if self.cgroups is not None:
            return
        mine = self._own_children()
        claimed: set[ProcessId] = set()
        for slot in self.slots.values():
            if slot.proc is None:
                continue
            slot.tracked = {p for p in slot.tracked if p.alive()}
            slot.tracked.update(process.descendants(slot.proc.pid))
            claimed |= slot.tracked
        if not self.settings.reap_orphans:
            return
        # Orphans re-parented to us that no plugin claims escaped tracking.
        for pid in process.children(os.getpid()):
            ident = process.identify(pid)
            if pid not in mine and ident is not None and ident not in claimed:
                log.warning("killing unclaimed orphan pid %d", pid)
                process.terminate([ident], 0.5)

    def _report(self, slot: Slot) -> Path:
        return self.paths.plugin_run(slot.entry.id) / "report.json"

    def _sandbox_kill(self, slot: Slot, grace: float) -> subprocess.Popen[bytes] | None:
        """Start pack03's ``--kill-tree`` for this run if the sandbox put it in a cgroup.

        The sandbox moves the plugin into its own cgroup, out of ours, so only it
        can find the tree; TERM, ``grace`` seconds, then KILL.
        """
        report = self._report(slot)
        if slot.sandbox is None or not sandbox.report_cgroups(sandbox.read_report(report)):
            return None
        argv = slot.sandbox.kill_tree_argv(report, grace)
        try:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError as exc:
            log.error("%s: cannot run %s: %s", slot.entry.id, slot.sandbox.launch, exc)
            return None

    def _kill_tree(
        self,
        slot: Slot,
        sandbox_kill: subprocess.Popen[bytes] | None = None,
        by_sandbox: bool = True,
    ) -> None:
        """KILL whatever is left of the run: the sandbox's cgroup, ours, tracked pids."""
        killer = sandbox_kill or (self._sandbox_kill(slot, 0.0) if by_sandbox else None)
        if killer is not None:
            try:
                rc = killer.wait(timeout=self.settings.stop_grace + 15.0)
            except subprocess.TimeoutExpired:
                killer.kill()
                rc = killer.wait()
            if rc != 0:
                log.error(
                    "%s: sandbox --kill-tree exited %d: processes may be left", slot.entry.id, rc
                )
        if slot.cgroup is not None and self.cgroups is not None:
            self.cgroups.kill(slot.cgroup)
            slot.cgroup = None
        elif slot.tracked:
            slot.tracked.update(d for p in list(slot.tracked) for d in process.descendants(p.pid))
            process.terminate(slot.tracked, 0.5)
            slot.tracked = set()

    def _stop(self, slots: Iterable[Slot]) -> None:
        """Stop several plugins now, waiting: TERM all, one grace period, KILL the rest
        (the launcher's own shutdown, a lost fork server). The loop itself stops plugins
        with ``_begin_stop``: a plugin that ignores TERM never holds it."""
        slots = [s for s in slots if s.proc is not None]
        for slot in slots:
            self._begin_stop(slot)
        while any(s.stopping is not None for s in slots):
            self._advance_stops()
            time.sleep(0.02)

    def _begin_stop(self, slot: Slot, then: str = status.STOPPED, why: str | None = None) -> None:
        """TERM the whole run and go on; ``_advance_stops`` finishes it (KILL after the
        grace period). ``then``: the state after, or ``CRASHED`` (back-off) for ``why``."""
        if slot.proc is None or slot.stopping is not None:
            return
        log.info("%s: stopping pid %d%s", slot.entry.id, slot.proc.pid, f" ({why})" if why else "")
        if slot.log is not None and why:
            slot.log.mark(f"stopping it: {why}")
        killer = self._sandbox_kill(slot, self.settings.stop_grace)
        if slot.cgroup is not None and self.cgroups is not None:
            self.cgroups.signal_all(slot.cgroup, signal.SIGTERM)
        for ident in [slot.ident, *slot.tracked]:
            if ident is not None:
                process.signal_identity(ident, signal.SIGTERM, group=True)
        slot.stopping = _Stopping(time.monotonic() + self.settings.stop_grace, killer, then, why)
        slot.state, slot.reason = status.STOPPING, why
        if slot.standby is not None:
            slot.standby.close()
            slot.standby = None
        self.protocol.detach(slot.entry.id, "stopped by the launcher", restarting=True)
        self.dirty = True

    def _advance_stops(self) -> None:
        """Finish the stops whose run has ended; KILL the runs past their grace period."""
        for slot in self.slots.values():
            if slot.stopping is None or slot.proc is None:
                continue
            try:
                self._advance_stop(slot, slot.stopping, time.monotonic())
            except Exception as exc:  # the others are stopped all the same
                log.exception("%s: stopping failed", slot.entry.id)
                with contextlib.suppress(Exception):
                    self._mark_exit(slot, LOST)
                self._stopped(slot, LOST, f"supervisor error while stopping: {exc}")

    def _advance_stop(self, slot: Slot, st: _Stopping, now: float) -> None:
        assert slot.proc is not None
        rc = slot.proc.poll()
        late = now >= st.deadline + _STOP_PATIENCE
        if rc is None:
            if now < st.deadline:
                return
            if not st.killed:
                log.warning(
                    "%s: no exit within %.1fs: SIGKILL", slot.entry.id, self.settings.stop_grace
                )
                st.killed = True
                if slot.cgroup is not None and self.cgroups is not None:
                    self.cgroups.kill(slot.cgroup)
                for ident in [slot.ident, *slot.tracked]:
                    if ident is not None:
                        process.signal_identity(ident, signal.SIGKILL, group=True)
            if not late:
                return
            log.error("%s: no exit status after KILL", slot.entry.id)
            rc = LOST
        # The main process is gone: the sandbox's kill of the rest, then ours.
        if st.killer is not None and st.killer.poll() is None:
            if not late:
                return
            st.killer.kill()  # hung: our own cgroup and tracked pids remain
        if slot.cgroup is not None and self.cgroups is not None:
            if self.cgroups.populated(slot.cgroup) and now < st.deadline:
                return
        elif slot.ident is not None:
            slot.tracked.add(slot.ident)
        self._kill_tree(slot, st.killer)
        self._mark_exit(slot, rc)
        self._stopped(slot, rc, None)

    def _stopped(self, slot: Slot, rc: int, error: str | None) -> None:
        st, slot.stopping = slot.stopping, None
        slot.proc, slot.ident, slot.last_exit = None, None, rc
        slot.layers, slot.sandbox_cgroups, slot.degraded = [], [], []
        then, why = (st.then, st.why) if st is not None else (status.STOPPED, None)
        if error is not None:
            then, why = status.STOPPED, error
        if then == CRASHED:
            self._crashed(slot, time.monotonic(), why or "stopped")
        else:
            slot.state, slot.reason = then, why
        self.dirty = True

    # --- pack03's fork server -----------------------------------------------------

    def _server_for(self, sbx: sandbox.SandboxCommand) -> ForkServer | None:
        """The fork server to start runs with (started if need be), or None: one-shot.

        A server that cannot start is not tried again for the same pack03 root (an
        upgraded pack03 gets a new try); one whose pack03 was upgraded is replaced
        once none of its runs is left.
        """
        if not self.settings.fork_server:
            return None
        srv = self.server
        if srv is not None and srv.root != sbx.root:
            if any(isinstance(s.proc, ServerRun) for s in self.slots.values()):
                return srv  # plugins started by it still run: keep it for now
            log.info("pack03 moved to %s: replacing the fork server", sbx.root)
            self._stop_server()
            srv = None
        if srv is not None or self._server_off == sbx.root:
            return srv
        srv = ForkServer(
            self.settings.python,
            sbx.root,
            self.paths.sandbox_socket,
            self.paths.sandbox_server_pidfile,
            self.settings.stop_grace,
            (
                self.paths.plugin_data_root,
                self.paths.registry.parent / "packages",
                self.paths.reports_root,
            ),
            _sdk_root(),
        )
        try:
            srv.start(self.paths.sandbox_server_log)
        except (ForkServerError, OSError) as exc:
            log.error("sandbox fork server: %s: plugins start one-shot", exc)
            self.server_error, self._server_off = str(exc), sbx.root
            self.dirty = True
            return None
        self.server, self._server_off, self.dirty = srv, None, True
        return srv

    def _check_server(self) -> None:
        """A server that died on its own: its runs are lost (restarted by _collect)."""
        srv = self.server
        if srv is None or srv.alive():
            return
        pid, rc = srv.pid, srv.stop()
        self.server = None
        self._server_restarts += 1
        self.server_error = f"fork server pid {pid} died (status {rc})"
        if self._server_restarts > _SERVER_RESTARTS:
            self._server_off = srv.root
            self.server_error += f"; died {self._server_restarts} times: plugins start one-shot"
        log.error("sandbox %s", self.server_error)
        self.dirty = True
        for slot in self.slots.values():
            if isinstance(slot.proc, ServerRun):
                slot.proc.mark_lost()

    def _stop_server(self) -> None:
        """SIGTERM the server (after its plugins were stopped) and wait for it."""
        srv, self.server = self.server, None
        if srv is not None:
            rc = srv.stop()
            if rc not in (0, None):
                log.warning("sandbox fork server exited with status %s", rc)

    def sandbox_mode(self) -> dict[str, Any]:
        """How plugins are started now (the service part of the status file)."""
        srv = self.server
        return {
            "mode": FORK_SERVER if srv is not None else ONE_SHOT,
            "server_pid": srv.pid if srv is not None else None,
            "socket": str(srv.sock) if srv is not None else None,
            "error": self.server_error,
        }

    def wait_fds(self, protocol_fds: list[int] | None = None) -> list[int]:
        """What to select on for reading: connections on which a fork server run's exit
        will arrive, the output pipes of runs within their log rate, the protocol
        connections and the call socket (``protocol_fds``, when the caller has them)."""
        if protocol_fds is None:
            protocol_fds = self.protocol_read_fds()
        fds = protocol_fds + [
            fd
            for s in self.slots.values()
            if isinstance(s.proc, ServerRun) and (fd := s.proc.fileno()) >= 0
        ]
        now = time.monotonic()
        fds += [
            s.log.fd
            for s in self.slots.values()
            if s.log is not None and s.log.fd >= 0 and not s.log.over_rate(now)
        ]
        return fds

    # --- the plugin protocol ---------------------------------------------------------

    def _attach(self, entry: PluginEntry, ours: socket.socket) -> None:
        assert entry.api is not None
        specs = {
            name: FunctionSpec(spec.get("parameters"), spec.get("result"))
            for name, spec in entry.api.functions().items()
        }
        health = None
        if entry.api.health:
            interval, timeout, failures = entry.api.health
            interval = max(interval, self.settings.min_health_interval)
            health = HealthPolicy(interval, min(timeout, interval), failures)
        self.protocol.attach(entry.id, ours, specs, health, time.monotonic())

    def _wake(self, slot: Slot) -> None:
        """A call for a standing-by plugin: its one wake byte, then the protocol as usual."""
        ours, slot.standby = slot.standby, None
        assert ours is not None
        try:
            ours.send(b"\0", socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        except OSError as exc:  # it died meanwhile: collected at the next pass
            log.warning("%s: cannot wake its standby: %s", slot.entry.id, exc.strerror or exc)
            ours.close()
            return
        self._attach(slot.entry, ours)
        slot.state, slot.reason = status.RUNNING, None
        slot.started_mono = time.monotonic()  # its idle time counts from now
        if slot.log is not None:
            slot.log.mark("woken by a call")
        self.dirty = True

    def _call_grants(self, plugin_id: str) -> tuple[str, ...]:
        self._refresh()
        entry = self._entries.get(plugin_id)
        return entry.calls if entry is not None else ()

    def _why_not_running(self, plugin_id: str) -> str | None:
        """None when a call to ``plugin_id`` may wait for it: it runs, is starting, will
        be restarted, or is an on-call plugin to start; else why it will not run.

        A "no" is checked against the registry as it is now (a few stats): a call made
        right after ``enable`` must not be refused for a change not read yet."""
        self._refresh()
        return self._will_not_run(plugin_id)

    def _refresh(self) -> None:
        """Re-read the registry now if it changed (one stat): a call right after
        ``enable``, ``disable`` or ``revoke`` sees that change."""
        if registry.signature(self.paths.registry) != self._registry_sig:
            self._reload(False)

    def _will_not_run(self, plugin_id: str) -> str | None:
        entry = self._entries.get(plugin_id)
        if entry is None:
            return "not in the registry"
        if entry.api is None:
            return "it does not speak the plugin protocol (its manifest declares no functions)"
        if not (entry.enabled and entry.runnable and plugin_id not in self._control.held):
            return self._idle_state(entry)[1]
        slot = self.slots.get(plugin_id)
        if slot is not None and slot.state in (
            status.FAILED, status.REFUSED, status.EXITED, status.BLOCKED
        ):  # fmt: skip
            return f"{slot.state}: {slot.reason}"
        if (
            slot is not None
            and slot.proc is not None
            and slot.standby is None
            and slot.stopping is None  # a stop under way: calls wait for the next start
        ):
            closed = self.protocol.closed_reason(plugin_id)
            if closed is not None:  # it runs on, but no longer speaks the protocol
                return f"its protocol connection is closed ({closed})"
        return None

    def _plugin_record(self, plugin_id: str, level: str, text: str, fields: dict[str, Any]) -> None:
        """An aurora.log record: into the plugin's log, its level kept."""
        slot = self.slots.get(plugin_id)
        if slot is not None and slot.log is not None:
            slot.log.record(level, text, fields)

    def _idle_deadline(self, slot: Slot) -> float:
        api = slot.entry.api
        idle = api.idle_seconds if api is not None else math.inf
        return max(self.protocol.idle_since(slot.entry.id), slot.started_mono) + idle

    def _protocol_pass(self, now: float) -> None:
        """Deadlines and health checks; restart who turned unhealthy, stop who is idle."""
        if self.api is not None:
            self.api.tick(now)
        restarts = self.protocol.tick(now)
        seen = self.protocol.states()
        if seen != self._protocol_seen:  # a handshake done, a health change: status now
            self._protocol_seen, self.dirty = seen, True
        for plugin_id, why in restarts:
            slot = self.slots.get(plugin_id)
            if slot is None or slot.proc is None:
                continue
            log.warning("%s: %s: restarting it", plugin_id, one_line(why))
            self._begin_stop(slot, CRASHED, why)
        for slot in self.slots.values():
            api = slot.entry.api
            if (
                slot.proc is not None
                and slot.standby is None
                and slot.stopping is None
                and api is not None
                and _on_call(slot.entry)
                and not self.protocol.busy(slot.entry.id)
                and now >= self._idle_deadline(slot)
            ):
                why = f"{api.idle_seconds:g} s without calls; starts at its next call"
                self._begin_stop(slot, status.IDLE, why)

    def protocol_pass(self) -> None:
        """The protocol's part of a pass alone: deadlines, health, idle stops."""
        self._protocol_pass(time.monotonic())

    def wants_pass(self) -> bool:
        """A whole pass is needed now: a call waits for a plugin to be started."""
        return bool(self.protocol.waiting_for())

    def protocol_read_fds(self) -> list[int]:
        fds = [c.fileno() for c in self.protocol.channels()]
        return fds + (self.api.read_fds() if self.api is not None else [])

    def write_fds(self) -> list[int]:
        """What to select on for writing: protocol bytes the peer has not taken yet."""
        fds = [c.fileno() for c in self.protocol.channels() if c.wants_write]
        return fds + (self.api.write_fds() if self.api is not None else [])

    def pump(self, readable: Iterable[int], writable: Iterable[int]) -> None:
        """Move protocol bytes: channels and callers that select said are ready."""
        readable, writable = set(readable), set(writable)
        if not readable and not writable:
            return
        now = time.monotonic()
        others = readable | writable
        for channel in self.protocol.channels():
            fd = channel.fileno()
            if fd not in others:
                continue
            others.discard(fd)
            if fd in readable:
                channel.on_readable(now)
            if fd in writable and channel.state != "closed":
                channel.on_writable()
        if self.api is not None:  # it ignores an fd not its own (a log pipe, a run's exit)
            for fd in others:
                self.api.on_ready(fd, fd in readable, fd in writable, now)

    # --- status -------------------------------------------------------------------

    def _bounded(self, slot: Slot) -> bool:
        return self.settings.disk_images and slot.disk_gap is None

    def status_doc(self) -> dict[str, Any]:
        """The plugin part of the status file."""
        plugins: dict[str, Any] = {}
        for pid, slot in sorted(self.slots.items()):
            if slot.proc is not None and not slot.layers:
                report = sandbox.read_report(self._report(slot))
                slot.layers = sandbox.active_layers(report)
                slot.sandbox_cgroups = sandbox.report_cgroups(report)
                slot.degraded = sandbox.report_degraded(report)
            plugins[pid] = {
                "state": slot.state,
                "reason": slot.reason,
                "mode": slot.mode,
                "version": slot.entry.version,
                "granted": list(slot.entry.granted),
                "allow_degraded": slot.entry.allow_degraded,
                "degraded": slot.degraded + ([slot.disk_gap] if slot.disk_gap else []),
                "pid": slot.ident.pid if slot.ident else None,
                "pid_start_time": slot.ident.start_time if slot.ident else None,
                "started_at": slot.started_at if slot.proc is not None else None,
                "restarts": slot.restarts,
                "starts_seen": slot.starts_seen,
                "backoff_s": slot.backoff if slot.state == status.BACKOFF else None,
                "last_exit": slot.last_exit,
                "layers": slot.layers
                + ([diskimage.LAYER] if slot.proc is not None and self._bounded(slot) else []),
                "cgroups": slot.sandbox_cgroups
                or ([str(self.cgroups.path(slot.cgroup))] if slot.cgroup and self.cgroups else []),
                "log": str(self.paths.plugin_log(pid)),
                "log_error": slot.log_error,
                "activation": slot.entry.api.activation if slot.entry.api else None,
                "standby": slot.standby is not None,
                **self._protocol_status(pid),
            }
        return plugins

    def _protocol_status(self, plugin_id: str) -> dict[str, Any]:
        """protocol (handshake | ready | closed | None), health (starting | healthy |
        unhealthy | None) and the plugin's own health message."""
        doc = self.protocol.status(plugin_id)
        return {
            "protocol": doc.get("protocol"),
            "protocol_reason": doc.get("reason"),
            "health": doc.get("health"),
            "health_message": doc.get("message") or None,
            "functions": doc.get("functions", []),
        }


def _on_call(entry: PluginEntry) -> bool:
    return entry.api is not None and entry.api.activation == ON_CALL


def _sdk_root() -> Path:
    """pack01's root, holding ``aurora_common`` (the SDK): read-only to protocol plugins."""
    return Path(aurora_common.__file__).resolve().parent.parent


def _describe_exit(rc: int) -> str:
    return f"killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"


def _last_line(path: Path) -> str:
    """The last line the plugin (or the sandbox) wrote before the launcher's mark."""
    try:
        # "\n" only: splitlines() would also cut at U+2028 and friends a plugin can write
        lines = path.read_bytes()[-4096:].decode(errors="replace").split("\n")
    except OSError:
        return "(no log)"
    for line in reversed(lines):
        text = plugin_text(line)
        if text is not None and text.strip():
            return one_line(text.strip(), 500)
    return "(no message)"


__all__ = ["FORK_SERVER", "ONE_SHOT", "Settings", "Slot", "Supervisor"]
