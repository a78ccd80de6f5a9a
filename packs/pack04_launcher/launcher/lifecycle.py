"""What install.sh, start.sh, stop.sh and health_check.sh do, in Python.

``python -m launcher.lifecycle {install --dry-run|--install, start, stop, health}``.
The scripts only pass arguments and exit codes through.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher import diskimage, process
from launcher.cgroup import CgroupTree
from launcher.errors import ConfigError, LauncherError, SandboxUnavailable
from launcher.forkserver import stop_leftover
from launcher.paths import Paths, sandbox_root
from launcher.service import max_runtime_from_env
from launcher.status import FAILED, RUNNING, read_status

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _say(msg: str) -> None:
    print(f"[pack04] {msg}", file=sys.stderr)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_bytes()[-8192:].decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# --- install ----------------------------------------------------------------------


def install(paths: Paths, dry_run: bool) -> int:
    """Check what the launcher needs; with ``dry_run`` False, create its dirs."""
    problems: list[str] = []
    # $PYTHON is whatever the operator's python3 is when a script is run by hand.
    if sys.version_info < (3, 11):  # noqa: UP036
        problems.append(f"python {sys.version.split()[0]}: 3.11 or newer required")
    _say(f"registry: {paths.registry} ({'present' if paths.registry.exists() else 'absent yet'})")
    try:
        _say(f"sandbox: {sandbox_root(paths)}/sandbox/launch.py")
    except SandboxUnavailable as exc:
        # Not fatal: pack03 may be installed later; the service runs nothing until then.
        _say(f"warning: {exc}; plugins stay blocked until pack03 is installed")
    dirs = [paths.data / "plugin-data", paths.run, paths.logs / "plugins"]
    for problem in problems:
        _say(f"error: {problem}")
    if problems:
        return EXIT_FAILED
    if dry_run:
        _say("dry-run: would create " + ", ".join(str(d) for d in dirs))
        return EXIT_OK
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True, mode=0o750)
    _say("installed: " + ", ".join(str(d) for d in dirs))
    return EXIT_OK


# --- start ------------------------------------------------------------------------


def _ready(paths: Paths, pid: int) -> bool:
    ident = process.read_pidfile(paths.pidfile)
    if ident is None or ident.pid != pid or not ident.alive():
        return False
    try:
        doc = read_status(paths.status)
    except LauncherError:
        return False
    svc = doc.get("service", {}) if doc else {}
    return bool(svc.get("pid") == pid and svc.get("running"))


def start(paths: Paths, wait: float, service_args: list[str]) -> int:
    """Start the service in its own session, detached; wait until it is ready."""
    try:
        # The service reads it too; checked here so that a bad value starts nothing.
        max_runtime_from_env()
    except ConfigError as exc:
        _say(f"error: {exc}; launcher not started")
        return EXIT_FAILED
    running = process.running_from_pidfile(paths.pidfile)
    if running is not None:
        _say(f"launcher already running (pid {running.pid})")
        return EXIT_OK
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(paths.root) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    with open(paths.service_log, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.service", *service_args],
            cwd=paths.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            _say(f"launcher exited with status {rc} while starting; {paths.service_log}:")
            print(_tail(paths.service_log), file=sys.stderr)
            return EXIT_FAILED
        if _ready(paths, proc.pid):
            _say(f"launcher started (pid {proc.pid}), log {paths.service_log}")
            return EXIT_OK
        time.sleep(0.05)
    _say(f"launcher pid {proc.pid} not ready after {wait:.0f}s: stopping it")
    process.terminate([i for i in [process.identify(proc.pid)] if i is not None], 5.0)
    print(_tail(paths.service_log), file=sys.stderr)
    return EXIT_FAILED


# --- stop -------------------------------------------------------------------------


def stop(paths: Paths, timeout: float) -> int:
    """TERM the service (it stops every plugin), wait, KILL; then sweep leftovers."""
    try:
        ident = process.read_pidfile(paths.pidfile)
    except LauncherError as exc:
        _say(f"error: {exc}")
        return EXIT_FAILED
    if ident is None:
        _say("launcher not running (no pidfile)")
    elif not ident.alive():
        _say(f"launcher not running (stale pidfile for pid {ident.pid}): removing it")
        paths.pidfile.unlink(missing_ok=True)
    else:
        _say(f"stopping launcher pid {ident.pid}")
        process.signal_identity(ident, signal.SIGTERM, group=True)
        if process.wait_gone([ident], timeout):
            _say(f"launcher pid {ident.pid} ignored SIGTERM for {timeout:.0f}s: SIGKILL")
            if process.terminate([ident], 0.0):
                _say(f"error: launcher pid {ident.pid} survived SIGKILL")
                return EXIT_FAILED
        if process.read_pidfile(paths.pidfile) == ident:
            paths.pidfile.unlink(missing_ok=True)
    # A launcher that was killed leaves its sandbox fork server, which stops the
    # plugins it started when TERMed, and its one-shot plugins in their cgroups.
    if stop_leftover(paths.sandbox_server_pidfile, grace=5.0):
        _say("stopped the sandbox fork server a killed launcher left (and its plugins)")
    tree = CgroupTree.create(str(paths.run))
    if tree is not None:
        for name in tree.leftovers():
            _say(f"killing leftover plugin cgroup {name}")
            tree.kill(name)
        tree.close()
    # A killed launcher also leaves the plugins' data images mounted.
    for problem in diskimage.unmount_all(paths.plugin_data_root):
        _say(f"warning: {problem}")
    _say("launcher stopped")
    return EXIT_OK


# --- health -----------------------------------------------------------------------


def health(paths: Paths, max_age: float) -> int:
    """Healthy: the pidfile's process is alive and its heartbeat is recent."""
    try:
        ident = process.running_from_pidfile(paths.pidfile)
        doc = read_status(paths.status)
    except LauncherError as exc:
        _say(f"unhealthy: {exc}")
        return EXIT_FAILED
    if ident is None:
        _say(f"unhealthy: launcher not running ({paths.pidfile})")
        return EXIT_FAILED
    svc = doc.get("service", {}) if doc else {}
    if svc.get("pid") != ident.pid or not svc.get("running"):
        _say(f"unhealthy: {paths.status} is not from launcher pid {ident.pid}")
        return EXIT_FAILED
    age = time.time() - float(svc.get("heartbeat_at", 0))
    if age > max_age:
        _say(f"unhealthy: last heartbeat {age:.0f}s ago (limit {max_age:.0f}s)")
        return EXIT_FAILED
    assert doc is not None
    plugins = doc.get("plugins", {})
    states = [p.get("state") for p in plugins.values()]
    summary = {
        "pid": ident.pid,
        "heartbeat_age_s": round(age, 1),
        "running": states.count(RUNNING),
        "failed": states.count(FAILED),
        "registry_error": svc.get("registry_error"),
        "sandbox_error": svc.get("sandbox_error"),
    }
    _say(f"healthy: {json.dumps(summary)}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.lifecycle")
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="check (--dry-run) or create the launcher's dirs")
    mode = inst.add_mutually_exclusive_group(required=True)
    mode.add_argument("--dry-run", action="store_true")
    mode.add_argument("--install", action="store_true")
    st = sub.add_parser("start", help="start the service detached and wait until ready")
    st.add_argument("--wait", type=float, default=20.0)
    st.add_argument("service_args", nargs=argparse.REMAINDER, help="passed to launcher.service")
    sp = sub.add_parser("stop", help="stop the service and every plugin")
    sp.add_argument("--timeout", type=float, default=30.0)
    he = sub.add_parser("health", help="process alive and heartbeat recent")
    he.add_argument("--max-age", type=float, default=10.0)
    args = p.parse_args(argv)
    paths = Paths.from_env()
    if args.command == "install":
        return install(paths, dry_run=args.dry_run)
    if args.command == "start":
        extra = args.service_args[1:] if args.service_args[:1] == ["--"] else args.service_args
        return start(paths, args.wait, extra)
    if args.command == "stop":
        return stop(paths, args.timeout)
    return health(paths, args.max_age)


if __name__ == "__main__":
    raise SystemExit(main())
