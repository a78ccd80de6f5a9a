"""Operator CLI: list, logs, start, stop, run and call plugins; allow degraded mode per plugin.

``python3 packs/pack04_launcher/launcher_cli.py <command>`` (or ``-m launcher.cli``).
With ``--json`` exactly one JSON document goes to stdout; messages go to stderr.
Exit codes are the EXIT_* constants below (listed in the README).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn, TextIO

# The launcher package (its __init__: launcher/aurora_boot.py) puts aurora_common on sys.path.
from launcher import aurora_boot  # noqa: F401

# isort: split
from aurora_common import calls
from aurora_common import cli as conventions
from aurora_common.cli import Exit
from aurora_common.lock import LockBusy

from launcher import (
    control,
    datadir,
    degraded,
    diskimage,
    identity,
    limits,
    process,
    registry,
    sandbox,
)
from launcher.cgroup import CgroupTree
from launcher.errors import ConfigError, LauncherError, PluginNotFound, SandboxUnavailable
from launcher.fsutil import atomic_write_json
from launcher.paths import Paths, sandbox_root
from launcher.pluginlog import one_line
from launcher.status import BLOCKED, DISABLED, FAILED, HELD, REFUSED, RUNNING, read_status

# The one exit-code table of every Aurora command line (aurora_common.cli.Exit).
EXIT_OK = Exit.OK
EXIT_ERROR = Exit.FAILED  # a file could not be read or written; details on stderr
EXIT_USAGE = Exit.USAGE  # bad command line
EXIT_NOT_RUNNING = Exit.NOT_RUNNING  # the launcher service is not running
EXIT_NOT_FOUND = Exit.NOT_FOUND  # no such plugin in the registry
EXIT_PLUGIN_FAILED = Exit.FAILED  # start: the plugin did not reach "running"; run: it failed
EXIT_CONFLICT = Exit.BUSY  # run: the service is running this plugin already
EXIT_BUSY = Exit.BUSY  # a lock stayed held for fsutil.LOCK_WAIT seconds (the holder is named)
EXIT_NO_SANDBOX = Exit.NOT_FOUND  # run: pack03's sandbox cannot be found
EXIT_SANDBOX_REFUSED = Exit.REFUSED  # run: pack03 refused to start it (its exit 125)
EXIT_TIMEOUT = Exit.TIMEOUT  # run --timeout: the plugin was stopped at the deadline
EXIT_INTERRUPTED = Exit.INTERRUPTED  # Ctrl-C while waiting; `run` stops the plugin first
PROG = "launcher_cli.py"
SANDBOX_REFUSED_STATUS = 125  # pack03's launch.py: refused to start (see its README)

_LOG_TAIL_BYTES = 1024 * 1024


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so a usage error gets the error line and the envelope."""

    def error(self, message: str) -> NoReturn:
        verb = self.prog.partition(" ")[2]  # the error line names the program already
        raise _UsageError(f"{verb}: {message}" if verb else message)


def _err(msg: str) -> None:
    conventions.emit(msg, sys.stderr)


def _emit(args: argparse.Namespace, doc: dict[str, Any], human: str, code: int = EXIT_OK) -> None:
    """The envelope on stdout with --json (``doc`` is its result), else the human text."""
    if args.json:
        conventions.emit_json(conventions.envelope(args.command, code, doc))
    elif human:
        conventions.emit(human)


def _fail(args: argparse.Namespace, code: int, msg: str) -> int:
    """The error line on stderr; with --json the envelope on stdout says it too."""
    _err(conventions.error_line(conventions.prog_name(PROG), msg))
    if getattr(args, "json", False):
        error = conventions.error_object(msg)
        conventions.emit_json(conventions.envelope(args.command, code, None, error))
    return code


def _check_id(plugin_id: str) -> None:
    if not registry.valid_plugin_id(plugin_id):
        raise PluginNotFound(plugin_id, "not a plugin id ('publisher.name', lowercase)")


def _service(paths: Paths) -> tuple[process.ProcessId | None, dict[str, Any] | None]:
    """The live service identity (None if down) and its last status document."""
    return process.running_from_pidfile(paths.pidfile), read_status(paths.status)


def _uptime(started_at: Any) -> float | None:
    return round(time.time() - started_at, 1) if isinstance(started_at, (int, float)) else None


# --- list -------------------------------------------------------------------------


def _cmd_list(args: argparse.Namespace, paths: Paths) -> int:
    ident, doc = _service(paths)
    plugins: dict[str, Any] = {}
    if ident is not None and doc is not None:
        for pid, rec in doc.get("plugins", {}).items():
            plugins[pid] = dict(rec, uptime_s=_uptime(rec.get("started_at")))
    ids = identity.read_identities(paths.identities)
    for pid, rec in plugins.items():
        rec["uid"] = rec["gid"] = ids.get(pid)
    allowed = sorted(degraded.read_allowed(paths.degraded))
    sandbox_mode = doc.get("service", {}).get("sandbox") if ident and doc else None
    out = {
        "service": {
            "running": ident is not None,
            "pid": ident.pid if ident else None,
            "sandbox": sandbox_mode,
        },
        "registry": str(paths.registry),
        "degraded_allowed": allowed,
        "plugins": plugins,
    }
    if ident is None:
        _err(f"launcher service is not running (no live process in {paths.pidfile})")
        if allowed:
            _err(f"degraded mode allowed for: {', '.join(allowed)}")
        _emit(args, out, "", EXIT_NOT_RUNNING)
        return EXIT_NOT_RUNNING
    rows = [("ID", "STATE", "HEALTH", "PID", "UID", "UPTIME", "RESTARTS", "DEGRADED", "LAYERS")]
    for pid, rec in sorted(plugins.items()):
        up = rec["uptime_s"]
        rows.append(
            (
                pid,
                rec.get("state", "?"),
                _health_cell(rec),
                str(rec.get("pid") or "-"),
                str(rec.get("uid") or "-"),
                f"{up:.0f}s" if up is not None else "-",
                str(rec.get("restarts", 0)),
                _degraded_cell(rec),
                ",".join(rec.get("layers") or []) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
    _emit(args, out, table if plugins else "no plugins in the registry")
    if isinstance(sandbox_mode, dict) and not args.json:  # --json: in service.sandbox
        how = sandbox_mode.get("mode")
        if sandbox_mode.get("server_pid"):
            how = f"{how} (pid {sandbox_mode['server_pid']})"
        if sandbox_mode.get("error"):
            how = f"{how}; {sandbox_mode['error']}"
        _err(f"sandbox: {how}")
    for pid, rec in sorted(plugins.items()):
        if rec.get("state") not in (RUNNING, DISABLED) and rec.get("reason"):
            _err(f"{pid}: {one_line(rec['reason'])}")
        elif rec.get("state") == RUNNING and rec.get("health") == "unhealthy":
            _err(f"{pid}: unhealthy: {one_line(rec.get('health_message') or 'no message')}")
        elif rec.get("state") == RUNNING and rec.get("protocol") == "closed":
            _err(f"{pid}: protocol: {one_line(rec.get('protocol_reason') or 'closed')}")
        for gap in rec.get("degraded") or []:
            _err(f"{pid}: DEGRADED, not enforced: {gap}")
    return EXIT_OK


def _health_cell(rec: dict[str, Any]) -> str:
    """From the plugin's own health checks (protocol plugins); '-' for the others."""
    if rec.get("state") != RUNNING:
        return "-"
    if rec.get("health"):
        return str(rec["health"])
    return {"handshake": "starting", "closed": "no-protocol"}.get(str(rec.get("protocol")), "-")


def _degraded_cell(rec: dict[str, Any]) -> str:
    """'no'; 'allowed' (nothing unenforced this run); 'YES (n)': n denials not enforced."""
    if rec.get("degraded"):
        return f"YES ({len(rec['degraded'])})"
    return "allowed" if rec.get("allow_degraded") else "no"


# --- call -------------------------------------------------------------------------


def _cmd_call(args: argparse.Namespace, paths: Paths) -> int:
    """Call a plugin's function through the running launcher (its API socket)."""
    _check_id(args.plugin_id)
    try:
        arguments = json.loads(args.args) if args.args is not None else None
    except ValueError as exc:
        return _fail(args, EXIT_USAGE, f"--args: not JSON: {exc}")
    except RecursionError:
        return _fail(args, EXIT_USAGE, "--args: nested too deeply")
    if not 0 < args.timeout <= 300:
        return _fail(
            args, EXIT_USAGE, f"--timeout: expected seconds in (0, 300], got {args.timeout!r}"
        )
    done: list[calls.CallOutcome] = []
    worker = threading.Thread(
        target=lambda: done.append(calls.call(str(paths.api_socket), args.plugin_id,
                                              args.function, arguments, args.timeout)),
        daemon=True,
    )  # fmt: skip
    worker.start()
    progress = conventions.Progress(as_json=args.json)
    started = time.monotonic()
    while worker.is_alive():
        worker.join(0.1)
        waited = time.monotonic() - started
        if waited >= 1.0:
            progress.update(f"waiting for {args.plugin_id} {args.function} ({waited:.0f} s)")
    progress.done()
    outcome = done[0]
    code = outcome.exit_code
    if outcome.kind == "result":
        _emit(args, outcome.to_json(), terminal_json(outcome.value))
        return code
    message = f"{args.plugin_id} {args.function}: {outcome.kind}: {one_line(outcome.message)}"
    _err(conventions.error_line(conventions.prog_name(PROG), message))
    if args.json:
        error = conventions.error_object(message)
        conventions.emit_json(conventions.envelope(args.command, code, outcome.to_json(), error))
    return code


# --- logs -------------------------------------------------------------------------


def _tail_lines(log_path: Path) -> bytes:
    """The whole lines of the log's last ``_LOG_TAIL_BYTES``: only lines that start at
    a line start of the file, so a plugin cannot place a cut inside its own line."""
    with open(log_path, "rb") as fh:
        # Only the end is needed: a plugin's log can reach the file-size limit.
        start = max(0, os.fstat(fh.fileno()).st_size - _LOG_TAIL_BYTES)
        if start == 0:
            return fh.read()
        fh.seek(start - 1)  # the byte before the cut tells whether it is a line start
        data = fh.read()
    cut = data.find(b"\n")
    return data[cut + 1 :] if cut >= 0 else b""


def _cmd_logs(args: argparse.Namespace, paths: Paths) -> int:
    _check_id(args.plugin_id)
    log_path = paths.plugin_log(args.plugin_id)
    if not log_path.is_file():
        return _fail(args, EXIT_NOT_FOUND, f"{args.plugin_id}: no log at {log_path}")
    lines = _tail_lines(log_path).decode(errors="replace").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    lines = lines[-args.lines :] if args.lines > 0 else []
    text = "\n".join(lines)
    if not args.json and sys.stdout.isatty():
        text = escape_controls(text)  # plugin bytes never drive the operator's terminal
    _emit(args, {"id": args.plugin_id, "log": str(log_path), "lines": lines}, text)
    return EXIT_OK


# --- start / stop -----------------------------------------------------------------


def _progress(
    progress: conventions.Progress, plugin_id: str, rec: dict[str, Any], t0: float
) -> None:
    """On a terminal only: what the wait has seen so far."""
    progress.update(f"{plugin_id}: {rec.get('state') or 'waiting'} ({time.monotonic() - t0:.0f} s)")


def _wait_state(
    paths: Paths, plugin_id: str, want: set[str], wait: float, progress: conventions.Progress
) -> dict[str, Any]:
    """Poll the status file until the plugin's state is in ``want`` (or time is up)."""
    t0 = time.monotonic()
    deadline = t0 + wait
    rec: dict[str, Any] = {}
    while True:
        doc = read_status(paths.status) or {}
        rec = doc.get("plugins", {}).get(plugin_id, {})
        if rec.get("state") in want or time.monotonic() >= deadline:
            progress.done()
            return rec
        _progress(progress, plugin_id, rec, t0)
        time.sleep(0.1)


def _wait_started(
    paths: Paths,
    plugin_id: str,
    request: int,
    wait: float,
    settle: float,
    progress: conventions.Progress,
) -> dict[str, Any]:
    """Wait until the service has seen start request ``request`` and the plugin has
    stayed running for ``settle`` seconds, or has ended in a state it cannot leave."""
    t0 = time.monotonic()
    deadline = t0 + wait
    rec: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = read_status(paths.status) or {}
        rec = doc.get("plugins", {}).get(plugin_id, {})
        if rec.get("starts_seen", 0) >= request:
            state = rec.get("state")
            if state in (FAILED, REFUSED, BLOCKED, DISABLED):
                break
            up = _uptime(rec.get("started_at"))
            if state == RUNNING and up is not None and up >= settle:
                break
        _progress(progress, plugin_id, rec, t0)
        time.sleep(0.1)
    progress.done()
    return rec


def _cmd_start(args: argparse.Namespace, paths: Paths) -> int:
    _check_id(args.plugin_id)
    entry = registry.get_plugin(paths.registry, args.plugin_id)
    ctl = control.request(paths.control, paths.control_lock, entry.id, start=True)
    ident = process.running_from_pidfile(paths.pidfile)
    if ident is None:
        _err("recorded; the launcher service is not running, so nothing was started")
        doc = {"id": entry.id, "state": None, "service_running": False}
        _emit(args, doc, "", EXIT_NOT_RUNNING)
        return EXIT_NOT_RUNNING
    if not entry.enabled or not entry.runnable:
        why = entry.problem or "not enabled in the registry (enable it with pack05's CLI)"
        _err(f"{entry.id}: cannot run: {why}")
        _emit(args, {"id": entry.id, "state": BLOCKED, "reason": why}, "", EXIT_PLUGIN_FAILED)
        return EXIT_PLUGIN_FAILED
    progress = conventions.Progress(as_json=args.json)
    rec = _wait_started(paths, entry.id, ctl.starts[entry.id], args.wait, args.settle, progress)
    state = rec.get("state")
    code = EXIT_OK if state == RUNNING else EXIT_PLUGIN_FAILED
    _emit(args, {"id": entry.id, **rec}, f"{entry.id}: {state} (pid {rec.get('pid')})", code)
    if state != RUNNING:
        _err(f"{entry.id}: {state}: {rec.get('reason')}")
        return EXIT_PLUGIN_FAILED
    return EXIT_OK


def _cmd_stop(args: argparse.Namespace, paths: Paths) -> int:
    _check_id(args.plugin_id)
    registry.get_plugin(paths.registry, args.plugin_id)  # a typo holds nothing
    control.request(paths.control, paths.control_lock, args.plugin_id, start=False)
    ident = process.running_from_pidfile(paths.pidfile)
    if ident is None:
        _err("recorded; the launcher service is not running")
        doc = {"id": args.plugin_id, "state": HELD, "service_running": False}
        _emit(args, doc, "", EXIT_NOT_RUNNING)
        return EXIT_NOT_RUNNING
    progress = conventions.Progress(as_json=args.json)
    rec = _wait_state(paths, args.plugin_id, {HELD}, args.wait, progress)
    state = rec.get("state")
    code = EXIT_OK if state == HELD else EXIT_ERROR
    _emit(args, {"id": args.plugin_id, **rec}, f"{args.plugin_id}: {state}", code)
    if state != HELD:
        _err(f"{args.plugin_id}: still {state} after {args.wait:.0f}s")
        return EXIT_ERROR
    return EXIT_OK


# --- degraded ---------------------------------------------------------------------


def _cmd_degraded(args: argparse.Namespace, paths: Paths) -> int:
    """Allow or deny degraded mode for one plugin; list who is allowed."""
    if args.action == "list":
        allowed = sorted(degraded.read_allowed(paths.degraded))
        _emit(args, {"allowed": allowed}, "\n".join(allowed))
        if not allowed:
            _err("no plugin is allowed to run degraded")
        return EXIT_OK
    plugin_id, allow = args.plugin_id, args.action == "allow"
    _check_id(plugin_id)
    if allow:
        registry.get_plugin(paths.registry, plugin_id)  # only a plugin the registry knows
    changed = degraded.set_allowed(
        paths.degraded, paths.degraded_lock, paths.audit_log, plugin_id, allow
    )
    word = "allowed" if allow else "denied"
    _emit(args, {"id": plugin_id, "allow_degraded": allow, "changed": changed}, "")
    if not changed:
        _err(f"{plugin_id}: degraded mode already {word}")
    elif allow:
        _err(
            f"{plugin_id}: degraded mode allowed: the sandbox will run it even where this host "
            "cannot enforce a denial (listed in `list`); a running plugin is restarted"
        )
    else:
        _err(f"{plugin_id}: degraded mode denied: refused where it cannot be fully confined")
    return EXIT_OK


# --- limits -----------------------------------------------------------------------


def _cmd_limits(args: argparse.Namespace, paths: Paths) -> int:
    """Set or show one plugin's resource limits (applied at its next start)."""
    if args.action == "show":
        settings = limits.read_settings(paths.limits)
        ids = [args.plugin_id] if args.plugin_id else sorted(settings)
        for plugin_id in ids:
            _check_id(plugin_id)
        shown = {i: dataclasses.asdict(limits.for_plugin(settings, i)) for i in ids}
        rows = [
            f"{i}: " + ", ".join(f"{k}={v}" for k, v in rec.items()) for i, rec in shown.items()
        ]
        defaults = dataclasses.asdict(limits.PluginLimits())
        _emit(args, {"defaults": defaults, "plugins": shown}, "\n".join(rows))
        _err("defaults: " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
        return EXIT_OK
    _check_id(args.plugin_id)
    registry.get_plugin(paths.registry, args.plugin_id)  # only a plugin the registry knows
    changes: dict[str, Any] = {}
    try:
        if args.disk is not None:
            changes["disk_bytes"] = limits.parse_size(args.disk)
        if args.memory is not None:
            changes["memory_bytes"] = limits.parse_size(args.memory)
    except ConfigError as exc:
        return _fail(args, EXIT_USAGE, f"error: {exc}")
    for name, field in (("inodes", "inodes"), ("cpu", "cpu_cores"), ("processes", "processes")):
        if getattr(args, name) is not None:
            changes[field] = getattr(args, name)
    if not changes:
        return _fail(
            args,
            EXIT_USAGE,
            "error: nothing to set (--disk, --inodes, --cpu, --memory, --processes)",
        )
    try:
        now = limits.set_limits(
            paths.limits, paths.limits_lock, paths.audit_log, args.plugin_id, changes
        )
    except ConfigError as exc:
        return _fail(args, EXIT_USAGE, f"error: {exc}")
    _emit(args, {"id": args.plugin_id, "limits": dataclasses.asdict(now)}, "")
    _err(f"{args.plugin_id}: limits recorded; applied at its next start")
    return EXIT_OK


# --- run --------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace, paths: Paths) -> int:
    """Run one plugin once in the foreground, in the sandbox, as the service would."""
    _check_id(args.plugin_id)
    entry = registry.get_plugin(paths.registry, args.plugin_id)
    if not entry.runnable:
        return _fail(args, EXIT_NOT_FOUND, f"{entry.id}: cannot run: {entry.problem}")
    ident, doc = _service(paths)
    if ident is not None and doc is not None:
        rec = doc.get("plugins", {}).get(entry.id, {})
        if rec.get("state") == RUNNING:
            why = f"the launcher service runs it (pid {rec.get('pid')}); stop it first"
            return _fail(args, EXIT_CONFLICT, f"{entry.id}: {why}")
    try:
        sbx = sandbox.SandboxCommand(sys.executable, sandbox_root(paths))
    except SandboxUnavailable as exc:
        return _fail(args, EXIT_NO_SANDBOX, f"{entry.id}: not run: {exc}")
    if entry.id in degraded.read_allowed(paths.degraded):
        entry = dataclasses.replace(entry, allow_degraded=True)
    assert entry.entrypoint is not None
    data_dir = paths.plugin_data(entry.id)
    bounds = limits.for_plugin(limits.read_settings(paths.limits), entry.id)
    uid = identity.for_plugin(paths, entry.id)
    gaps = []
    try:
        mounted_now = diskimage.ensure(
            paths.plugin_image(entry.id), data_dir, bounds.disk_bytes, bounds.inodes, uid
        )
    except (diskimage.DiskUnavailable, OSError) as exc:
        if not entry.allow_degraded:
            why = f"its data dir cannot be bounded ({diskimage.LAYER}): {exc}"
            return _fail(args, EXIT_SANDBOX_REFUSED, f"{entry.id}: refused: {why}")
        mounted_now, gaps = False, [f"{diskimage.LAYER}: {exc}"]
    try:
        datadir.plugin_dir(data_dir, uid, uid)
        rc, timed_out, report = _run_in(entry, paths, args, sbx, data_dir, bounds, uid)
    finally:
        if mounted_now:  # the service mounts it again at its next start
            diskimage.unmount(data_dir)
    layers, gaps = sandbox.active_layers(report), sandbox.report_degraded(report) + gaps
    code = _run_exit(rc, timed_out)
    out = {
        "id": entry.id,
        "exit_status": rc,
        "timed_out": timed_out,
        "layers": layers,
        "allow_degraded": entry.allow_degraded,
        "degraded": gaps,
    }
    _emit(args, out, "", code)
    for gap in gaps:
        _err(f"{entry.id}: DEGRADED, not enforced: {gap}")
    _err(f"{entry.id}: {_run_outcome(rc, timed_out)}; layers: {layers}")
    return code


def _run_exit(rc: int, timed_out: bool) -> int:
    """The table's code for a run; the plugin's own status is in the message and JSON."""
    if timed_out:
        return EXIT_TIMEOUT
    if rc == SANDBOX_REFUSED_STATUS:
        return EXIT_SANDBOX_REFUSED
    return EXIT_OK if rc == 0 else EXIT_PLUGIN_FAILED


def _run_outcome(rc: int, timed_out: bool) -> str:
    """How the run ended, in words: a plugin that exits by itself when --timeout's TERM
    arrives was stopped, not killed."""
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.valid_signals() else f"signal {-rc}"
        ended = f"killed by {name}"
    else:
        ended = f"exit {rc}"
    return f"--timeout reached, stopped ({ended})" if timed_out else ended


def _run_in(
    entry: registry.PluginEntry,
    paths: Paths,
    args: argparse.Namespace,
    sbx: sandbox.SandboxCommand,
    data_dir: Path,
    bounds: limits.PluginLimits,
    uid: int,
) -> tuple[int, bool, dict[str, Any] | None]:
    """One foreground run: exit status, whether --timeout hit, the sandbox's report."""
    assert entry.entrypoint is not None
    policy = sandbox.policy(entry, data_dir, bounds.policy_limits(sandbox.Limits()), uid)
    with tempfile.TemporaryDirectory(prefix=f"launcher-run-{entry.id}-") as tmp:
        policy_file, report_file = Path(tmp, "policy.json"), Path(tmp, "report.json")
        atomic_write_json(policy_file, policy)
        argv = sbx.argv(
            policy_file, report_file, sandbox.plugin_argv(sys.executable, entry.entrypoint)
        )
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "AURORA_PLUGIN_ID": entry.id,
            "AURORA_PLUGIN_DATA": str(data_dir),
        }
        rc, timed_out = _run_foreground(argv, env, data_dir, paths, args, sbx, report_file)
        return rc, timed_out, sandbox.read_report(report_file)


def _run_foreground(
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    paths: Paths,
    args: argparse.Namespace,
    sbx: sandbox.SandboxCommand,
    report_file: Path,
) -> tuple[int, bool]:
    """Run until exit, --timeout or Ctrl-C; then kill whatever is left of the tree."""
    tree = CgroupTree.create(str(paths.run) + ":foreground")
    name = f"run-{os.getpid()}"
    if tree is not None:
        tree.make(name)
    # The plugin gets pipes, never the operator's terminal; what it writes is relayed
    # escaped (to stderr with --json: stdout carries only the JSON document).
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            start_new_session=True,
            preexec_fn=tree.enter_hook(name) if tree else None,
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    timed_out = False
    relays = {out_r: sys.stderr if args.json else sys.stdout, err_r: sys.stderr}
    try:
        timed_out = _relay(proc, relays, args.timeout)
    except KeyboardInterrupt:
        _err("interrupted: stopping the plugin")
    finally:
        # The sandbox moves the plugin into its own cgroup: it alone can find the tree.
        if sandbox.report_cgroups(sandbox.read_report(report_file)):
            subprocess.run(
                sbx.kill_tree_argv(report_file, 5.0), stdout=subprocess.DEVNULL, check=False
            )
        if tree is not None:
            tree.terminate(name, 5.0)
            tree.close()
        idents = [i for i in [process.identify(proc.pid)] if i is not None]
        process.terminate(idents + process.descendants(proc.pid), 5.0)
        rc = proc.wait()
        os.close(out_r)
        os.close(err_r)
    return rc, timed_out


def escape_controls(text: str) -> str:
    """``text`` with every non-printable character but newline and tab as ``\\xNN``."""
    return "".join(
        ch
        if ch in "\n\t" or ch.isprintable()
        else f"\\x{ord(ch):02x}"
        if ord(ch) < 0x100
        else f"\\u{ord(ch):04x}"
        for ch in text
    )


def terminal_json(value: Any) -> str:
    """``value`` as indented JSON, readable (non-ASCII text kept) but with every
    non-printable character (C0, C1, bidi overrides, ...) as a JSON ``\\uXXXX`` escape:
    a plugin's result never drives the operator's terminal, and it is still valid JSON."""
    out: list[str] = []
    for ch in json.dumps(value, indent=2, ensure_ascii=False):
        if ch == "\n" or ch.isprintable():
            out.append(ch)
        elif ord(ch) > 0xFFFF:  # JSON spells these as a UTF-16 surrogate pair
            high, low = divmod(ord(ch) - 0x10000, 0x400)
            out.append(f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}")
        else:
            out.append(f"\\u{ord(ch):04x}")
    return "".join(out)


def _relay(proc: subprocess.Popen[bytes], relays: dict[int, TextIO], timeout: float | None) -> bool:
    """Copy the plugin's output, escaped, until it exits; True when ``timeout`` hit first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    decoders = {fd: codecs.getincrementaldecoder("utf-8")(errors="replace") for fd in relays}
    for fd in relays:
        os.set_blocking(fd, False)
    after_exit = 0  # bytes relayed once the plugin exited (a grandchild may go on)
    while True:
        exited = proc.poll() is not None
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0 and not exited:
            return True
        wait = 0 if exited else min(0.1, left if left is not None else 0.1)
        ready, _, _ = select.select(list(relays), [], [], wait)
        got = 0
        for fd in ready:
            data = b""
            with contextlib.suppress(BlockingIOError):
                data = os.read(fd, 65536)
            got += len(data)
            if data:
                relays[fd].write(escape_controls(decoders[fd].decode(data)))
                relays[fd].flush()
        after_exit += got if exited else 0
        if exited and (not got or after_exit > 1 << 20):
            for fd, out in relays.items():
                out.write(escape_controls(decoders[fd].decode(b"", final=True)))
                out.flush()
            return False


# --- main -------------------------------------------------------------------------


_EXAMPLES = {
    "list": "list --json",
    "logs": "logs acme.heartbeat -n 20",
    "start": "start acme.heartbeat --wait 15",
    "stop": "stop acme.heartbeat",
    "run": "run acme.heartbeat --timeout 5",
    "degraded": "degraded allow acme.heartbeat",
    "allow": "degraded allow acme.heartbeat",
    "deny": "degraded deny acme.heartbeat",
    "degraded list": "degraded list",
    "limits": "limits set acme.heartbeat --disk 2GiB --cpu 0.5",
    "limits set": "limits set acme.heartbeat --disk 2GiB --cpu 0.5",
    "limits show": "limits show acme.heartbeat",
    "call": """call acme.greeter greet --args '{"name": "Ada"}' --timeout 5""",
}


def _parser() -> argparse.ArgumentParser:
    prog = conventions.prog_name(PROG)
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="one JSON document on stdout")
    common.add_argument(
        "--registry",
        help="pack05's registry.json (default: $AURORA_PLUGIN_REGISTRY, else "
        "$AURORA_HOME/data/pack05_plugin_api/plugins/registry.json, else "
        "<packs>/pack05_plugin_api/data/plugins/registry.json beside this pack)",
    )

    def example(key: str) -> dict[str, Any]:
        return {
            "epilog": conventions.epilog([f"{prog} {_EXAMPLES[key]}"]),
            "formatter_class": argparse.RawDescriptionHelpFormatter,
        }

    p = _Parser(
        prog=prog,
        description="See and steer the plugins the pack04 launcher runs. Options go before "
        "or after the command.",
        epilog=conventions.epilog([f"{prog} list", f"{prog} logs acme.heartbeat"]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    text = "plugins: state, pid, uptime, restarts, degraded, layers"
    sub.add_parser("list", parents=[common], help=text, description=text, **example("list"))
    text = "show the end of a plugin's log"
    lg = sub.add_parser("logs", parents=[common], help=text, description=text, **example("logs"))
    lg.add_argument("plugin_id")
    lg.add_argument("-n", "--lines", type=int, default=50, help="how many lines (50)")
    for name, text in (
        ("start", "start a plugin (or retry a failed one) now"),
        ("stop", "stop a plugin and hold it stopped until `start`"),
    ):
        sp = sub.add_parser(name, parents=[common], help=text, description=text, **example(name))
        sp.add_argument("plugin_id")
        sp.add_argument("--wait", type=float, default=15.0, help="seconds to wait (15)")
        if name == "start":
            sp.add_argument(
                "--settle", type=float, default=1.0, help="running this long counts as started"
            )
    dg = sub.add_parser(
        "degraded",
        help="allow a plugin to run where a denial cannot be enforced (or deny it again)",
        description="pack03 refuses to start a plugin when this host cannot enforce the "
        "denial of a capability it was not granted. 'allow' lets that plugin run anyway "
        "(the unenforced denials are listed by `list`); 'deny' (the default) refuses again. "
        "Every change is recorded in the launcher's audit.log.",
        **example("degraded"),
    )
    dsub = dg.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, text in (
        ("allow", "let this plugin run degraded"),
        ("deny", "refuse it again where it cannot be fully confined"),
    ):
        dsub.add_parser(
            name, parents=[common], help=text, description=text, **example(name)
        ).add_argument("plugin_id")
    text = "plugins allowed to run degraded"
    dsub.add_parser(
        "list", parents=[common], help=text, description=text, **example("degraded list")
    )
    text = "set or show a plugin's resource limits (applied at its next start)"
    lm = sub.add_parser(
        "limits",
        help=text,
        description="Per-plugin bounds for all its processes together; recorded in the "
        "launcher's limits.json, audited, applied at the plugin's next start. Sizes take "
        "KiB/MiB/GiB (or k/M/G, powers of 1000).",
        **example("limits"),
    )
    lsub = lm.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = "set some limits of one plugin"
    ls = lsub.add_parser(
        "set", parents=[common], help=text, description=text, **example("limits set")
    )
    ls.add_argument("plugin_id")
    ls.add_argument("--disk", help="data dir size, e.g. 2GiB (default 1GiB)")
    ls.add_argument("--inodes", type=int, help="files in the data dir (default 100000)")
    ls.add_argument("--cpu", type=float, help="CPU bandwidth in cores, e.g. 0.5 (default 1)")
    ls.add_argument("--memory", help="memory of all its processes, e.g. 512MiB (default)")
    ls.add_argument("--processes", type=int, help="processes at once (default 64)")
    text = "limits in force (all set, or one)"
    lsh = lsub.add_parser(
        "show", parents=[common], help=text, description=text, **example("limits show")
    )
    lsh.add_argument("plugin_id", nargs="?")
    text = "call a plugin's function through the running launcher"
    cl = sub.add_parser(
        "call",
        parents=[common],
        help=text,
        description=text + ". Exit status by outcome: result 0, plugin error 1, invalid "
        "arguments 2, refused 4, not running 7, timeout 124.",
        **example("call"),
    )
    cl.add_argument("plugin_id")
    cl.add_argument("function")
    cl.add_argument("--args", help="the arguments, one JSON value (default: null)")
    cl.add_argument("--timeout", type=float, default=30.0, help="seconds (30; at most 300)")
    text = "run a plugin once in the foreground (for its author)"
    rn = sub.add_parser("run", parents=[common], help=text, description=text, **example("run"))
    rn.add_argument("plugin_id")
    rn.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="stop it after this many seconds (TERM, then KILL); exit 124",
    )
    return p


_COMMANDS = {
    "list": _cmd_list,
    "logs": _cmd_logs,
    "start": _cmd_start,
    "stop": _cmd_stop,
    "run": _cmd_run,
    "call": _cmd_call,
    "degraded": _cmd_degraded,
    "limits": _cmd_limits,
}


def main(argv: list[str] | None = None) -> int:
    want_json, arguments = conventions.pop_flag(
        list(sys.argv[1:] if argv is None else argv), "--json"
    )
    command = next((a for a in arguments if a in _COMMANDS), None)
    try:
        args = _parser().parse_args(arguments)
    except _UsageError as exc:
        return _fail(argparse.Namespace(json=want_json, command=command), EXIT_USAGE, str(exc))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    args.json = want_json
    paths = Paths.from_env(registry=args.registry)
    try:
        return _COMMANDS[args.command](args, paths)
    except PluginNotFound as exc:
        return _fail(args, EXIT_NOT_FOUND, str(exc))
    except LauncherError as exc:
        return _fail(args, EXIT_ERROR, str(exc))
    except LockBusy as exc:
        return _fail(args, EXIT_BUSY, str(exc))
    except OSError as exc:
        return _fail(args, EXIT_ERROR, f"{exc.filename or ''}: {exc.strerror}".lstrip(": "))
    except KeyboardInterrupt:
        return _fail(args, EXIT_INTERRUPTED, "interrupted")


if __name__ == "__main__":
    raise SystemExit(main())
