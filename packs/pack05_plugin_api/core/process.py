"""Start and stop the loader service: own session, pidfile, TERM the group, wait, KILL.

Only the standard library, pack01_common (standard library only), ``health`` (the read
side: pidfile, process identity, heartbeat) and ``storage`` (atomic writes, locks) are
used, so ``start.sh`` and
``stop.sh`` run this file by path without importing the plugin core: stopping works
even when the core's dependencies do not.
The pidfile holds pid, start time, boot id and executable, all read from ``/proc``;
nothing is signalled unless the pid is still that very process. Never by pattern.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

try:
    from .health import (
        EXIT_FAILED,
        EXIT_OK,
        LifecycleError,
        Paths,
        ProcessRecord,
        current_identity,
        identity_problem,
        read_pidfile,
        read_small,
        read_status,
    )
    from .storage import LockBusy, atomic_write, locked
except ImportError:  # run by path from the scripts: core/ itself is sys.path[0]
    from health import (  # type: ignore[no-redef, import-not-found]
        EXIT_FAILED,
        EXIT_OK,
        LifecycleError,
        Paths,
        ProcessRecord,
        current_identity,
        identity_problem,
        read_pidfile,
        read_small,
        read_status,
    )
    from storage import LockBusy, atomic_write, locked  # type: ignore[no-redef, import-not-found]

__all__ = [
    "StartError",
    "StopError",
    "json_bytes",
    "main",
    "remove_pidfile_if",
    "start_service",
    "stop_service",
    "write_pidfile",
]

SERVICE_MODULE = "core.service"

# Defaults, each overridable from the environment (seconds).
START_TIMEOUT_ENV = "AURORA_PACK05_START_TIMEOUT"
STOP_TIMEOUT_ENV = "AURORA_PACK05_STOP_TIMEOUT"
DEFAULT_START_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 10.0
KILL_WAIT = 5.0
LOG_TAIL_LINES = 20
_POLL = 0.02


class StartError(LifecycleError):
    """The service did not become ready; ``log_tail`` holds the last lines of its log."""

    def __init__(self, message: str, log_tail: str = "", pid: int | None = None) -> None:
        self.log_tail = log_tail
        self.pid = pid
        super().__init__(message)


class StopError(LifecycleError):
    """The service is still running after TERM, KILL and the waits."""


def json_bytes(value: Any) -> bytes:
    import json

    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _uptime_of(record: ProcessRecord) -> float:
    """Seconds since the process started, from its start time in clock ticks."""
    data = read_small("/proc/uptime")
    boot_seconds = float(data.split()[0]) if data else 0.0
    return max(0.0, boot_seconds - record.start_time / os.sysconf("SC_CLK_TCK"))


# --- pidfile and status file ------------------------------------------------------------


def write_pidfile(path: str, record: ProcessRecord) -> None:
    atomic_write(path, json_bytes(record.as_dict()))


def remove_pidfile_if(path: str, record: ProcessRecord) -> bool:
    """Remove the pidfile when it still names ``record`` (never someone else's)."""
    try:
        if read_pidfile(path) != record:
            return False
    except LifecycleError:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --- start ------------------------------------------------------------------------------


def _service_ready(status: dict[str, Any] | None, record: ProcessRecord) -> bool:
    return (
        status is not None
        and status.get("pid") == record.pid
        and status.get("start_time") == record.start_time
        and status.get("state") == "running"
    )


def _open_log(path: str) -> BinaryIO:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log = open(path, "ab")  # noqa: SIM115 (handed to the child, closed by the caller)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    log.write(f"--- {stamp} start.sh: starting {SERVICE_MODULE}\n".encode())
    log.flush()
    return log


def start_service(
    paths: Paths,
    *,
    command: Sequence[str] | None = None,
    timeout: float = DEFAULT_START_TIMEOUT,
    environ: Mapping[str, str] | None = None,
) -> tuple[ProcessRecord, bool]:
    """Start the service detached in its own session and wait until it reports ready.

    Returns (record, started): ``started`` is False when it was already running.
    Raises StartError, with the log's last lines, when it dies or never gets ready;
    a service that is not ready in time is stopped again.
    """
    import subprocess

    os.makedirs(paths.run_dir, exist_ok=True)
    with locked(paths.lifecycle_lock):
        try:
            existing = read_pidfile(paths.pidfile)
        except LifecycleError:
            existing = None  # unreadable: nobody can be signalled through it; replace it
        if existing is not None and identity_problem(existing) is None:
            return existing, False
        argv = list(command) if command else [sys.executable, "-m", SERVICE_MODULE]
        log = _open_log(paths.log_file)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=paths.root,
                env=paths.child_env(environ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own session and group: TERM reaches it all
                close_fds=True,
            )
        finally:
            log.close()
        record = current_identity(proc.pid)
        if record is None:  # already gone: report how it ended
            proc.wait()
            raise StartError(
                f"service exited with status {proc.returncode} at start",
                _log_tail(paths.log_file),
                proc.pid,
            )
        write_pidfile(paths.pidfile, record)
        deadline = time.monotonic() + timeout
        while True:
            code = proc.poll()
            if code is not None:
                remove_pidfile_if(paths.pidfile, record)
                raise StartError(
                    f"service exited with status {code} during start",
                    _log_tail(paths.log_file),
                    proc.pid,
                )
            if _service_ready(read_status(paths.status_file), record):
                proc.returncode = 0  # detached on purpose: no "still running" warning
                return record, True
            if time.monotonic() > deadline:
                _terminate(record, timeout=DEFAULT_STOP_TIMEOUT)
                proc.wait()
                remove_pidfile_if(paths.pidfile, record)
                raise StartError(
                    f"service not ready after {timeout:g} s; stopped it again",
                    _log_tail(paths.log_file),
                    proc.pid,
                )
            time.sleep(_POLL)


# --- stop -------------------------------------------------------------------------------


def _signal_group(record: ProcessRecord, sig: int) -> bool:
    """Signal the service's process group (its own pid, as session leader) if still it."""
    if identity_problem(record) is not None:
        return False
    try:
        if os.getpgid(record.pid) == record.pid:
            os.killpg(record.pid, sig)
        else:  # started by hand without its own group: only the process itself
            os.kill(record.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
            os.waitpid(record.pid, os.WNOHANG)
        # Gone means no process (or a zombie) or another process at that pid. Not a
        # changed exe alone: an exiting process loses /proc/<pid>/exe before it is a zombie.
        now = current_identity(record.pid)
        if now is None or now.start_time != record.start_time:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)


def _terminate(record: ProcessRecord, *, timeout: float) -> str:
    """TERM the group, wait, KILL, confirm gone. Returns how it ended."""
    import signal

    started = time.monotonic()
    if not _signal_group(record, signal.SIGTERM) or _wait_gone(record, timeout):
        return f"after TERM in {time.monotonic() - started:.2f} s"
    _signal_group(record, signal.SIGKILL)
    if not _wait_gone(record, KILL_WAIT):
        raise StopError(f"pid {record.pid} is still running after TERM and KILL")
    return f"with KILL after TERM was ignored for {timeout:g} s"


def stop_service(paths: Paths, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> str:
    """Stop the service named by the pidfile; returns what happened, for the operator.

    Nothing is signalled unless the pid is still the process that was started; a
    stale pidfile is removed. Raises StopError when the process outlives KILL.
    """
    if not os.path.isdir(paths.run_dir):
        return "not running (no run directory)"
    with locked(paths.lifecycle_lock):
        try:
            record = read_pidfile(paths.pidfile)
        except LifecycleError as exc:
            # The service removes its own pidfile as it exits, without our lock.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths.pidfile)
            return f"not running; removed an unreadable pidfile ({exc})"
        if record is None:
            return "not running"
        problem = identity_problem(record)
        if problem is not None:
            remove_pidfile_if(paths.pidfile, record)
            return f"not running; removed stale pidfile ({problem}; not signalled)"
        how = _terminate(record, timeout=timeout)
        remove_pidfile_if(paths.pidfile, record)
        return f"stopped pid {record.pid} {how}"


# --- command line -----------------------------------------------------------------------


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LifecycleError(f"{name}={raw!r}: expected a number of seconds") from None
    if not 0 < value < 86400:
        raise LifecycleError(f"{name}={raw!r}: expected between 0 and 86400 seconds")
    return value


def _emit(text: str, doc: dict[str, Any], as_json: bool, *, err: bool = False) -> None:
    """Human text (stdout, or stderr with --json); with --json one document on stdout."""
    if as_json:
        print(text, file=sys.stderr)
        sys.stdout.write(json_bytes(doc).decode())
    else:
        print(text, file=sys.stderr if err else sys.stdout)


def _cmd_start(paths: Paths, as_json: bool) -> int:
    timeout = _env_seconds(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT)
    try:
        record, started = start_service(paths, timeout=timeout)
    except StartError as exc:
        tail = f"\nlast lines of {paths.log_file}:\n{exc.log_tail}" if exc.log_tail else ""
        _emit(f"start FAILED: {exc}{tail}", {"started": False, "error": str(exc)}, as_json)
        return EXIT_FAILED
    text = (
        f"started pack05 loader service (pid {record.pid}; log {paths.log_file})"
        if started
        else f"already running (pid {record.pid}); nothing to do"
    )
    _emit(text, {"started": started, "running": True, "pid": record.pid}, as_json)
    return EXIT_OK


def _cmd_stop(paths: Paths, as_json: bool) -> int:
    timeout = _env_seconds(STOP_TIMEOUT_ENV, DEFAULT_STOP_TIMEOUT)
    try:
        text = stop_service(paths, timeout=timeout)
    except StopError as exc:
        _emit(f"stop FAILED: {exc}", {"stopped": False, "error": str(exc)}, as_json)
        return EXIT_FAILED
    _emit(text, {"stopped": True, "message": text}, as_json)
    return EXIT_OK


def _cmd_status(paths: Paths, as_json: bool) -> int:
    problem: str | None
    try:
        record = read_pidfile(paths.pidfile)
    except LifecycleError as exc:
        record, problem = None, str(exc)
    else:
        problem = "no pidfile" if record is None else identity_problem(record)
    status = read_status(paths.status_file)
    doc: dict[str, Any] = {"running": problem is None, "reason": problem, "status": status}
    if record is not None and problem is None:
        doc["pid"] = record.pid
        doc["uptime_seconds"] = round(_uptime_of(record), 1)
        text = f"running (pid {record.pid}, up {doc['uptime_seconds']:g} s)"
        if status:
            counts = status.get("counts") or {}
            shown = " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"
            text += (
                f"; scans {status.get('scans')}, {shown}"
                f", last error: {status.get('last_error') or 'none'}"
            )
    else:
        text = f"not running ({problem})"
    _emit(text, doc, as_json)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``process.py {start,stop,status} [--json]``: what start.sh and stop.sh run."""
    import argparse  # here: not at import, so importing this module stays cheap

    parser = argparse.ArgumentParser(
        prog="process.py", description="Start, stop and check the pack05 loader service."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in (
        ("start", "start the service detached and wait until it is ready"),
        ("stop", "stop the service named by the pidfile (TERM, wait, KILL)"),
        ("status", "say whether it runs, its pid, uptime and last heartbeat"),
    ):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--json", action="store_true", help="print one JSON document")
    ns = parser.parse_args(argv)
    handlers = {"start": _cmd_start, "stop": _cmd_stop, "status": _cmd_status}
    try:
        return handlers[ns.command](Paths.from_env(), ns.json)
    except (LifecycleError, LockBusy, OSError) as exc:
        print(f"{ns.command} FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
