"""The launcher service: ``python -m launcher.service`` runs the reconcile loop.

One service per run dir (an flock on ``launcher.lock`` held for its life). It
writes its pidfile (pid + start time) once it holds the lock, a status file
with a heartbeat at least every ``--heartbeat`` seconds, and on SIGTERM or
SIGINT stops every plugin (whole trees) before it exits. SIGHUP forces a
re-read of the registry.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from launcher import aurora_boot  # noqa: F401  # puts aurora_common on sys.path

# isort: split
from aurora_common.lock import FileLock, LockBusy

from launcher import process, sandbox, status
from launcher.errors import ConfigError, LauncherError, ServiceError
from launcher.fsutil import atomic_write_json
from launcher.paths import Paths
from launcher.supervisor import Settings, Supervisor

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_ALREADY_RUNNING = 3

#: The wall-clock bound per plugin run (s) for a service started by start.sh, which the
#: installer runs without arguments; ``--max-runtime`` wins over it.
MAX_RUNTIME_ENV = "AURORA_LAUNCHER_MAX_RUNTIME"


#: Uids besides root allowed on the call socket, for a service started by start.sh:
#: comma-separated (``--allow-caller`` adds to them).
CALLERS_ENV = "AURORA_LAUNCHER_CALLERS"


def callers_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, ...]:
    """``AURORA_LAUNCHER_CALLERS`` as uids; ConfigError naming the bad item."""
    raw = (os.environ if environ is None else environ).get(CALLERS_ENV, "")
    uids: list[int] = []
    for item in (i.strip() for i in raw.split(",")):
        if not item:
            continue
        if not item.isdigit() or not 0 <= int(item) < 2**32 - 1:
            raise ConfigError(f"{CALLERS_ENV}={raw!r}: {item!r} is not a uid")
        uids.append(int(item))
    return tuple(uids)


def max_runtime_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """``AURORA_LAUNCHER_MAX_RUNTIME`` in seconds; None (no bound) when unset, empty or 0.

    Raise ConfigError when it is anything but a finite number >= 0.
    """
    raw = (os.environ if environ is None else environ).get(MAX_RUNTIME_ENV, "")
    if not raw.strip():
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{MAX_RUNTIME_ENV}={raw!r}: expected a number of seconds >= 0 "
            "(unset, empty or 0: no bound)"
        )
    return value or None


@contextlib.contextmanager
def _service_lock(path: Path) -> Iterator[None]:
    """Hold the one-service-per-run-dir lock (never deleted; the kernel frees it)."""
    lock = FileLock(path, 0)
    try:
        lock.acquire()
    except LockBusy as exc:
        who = f" (pid {exc.holder})" if exc.holder else ""
        raise ServiceError(f"{path}: another launcher service holds this run dir{who}") from exc
    try:
        yield
    finally:
        lock.release()


@dataclass
class _Signals:
    """Signals noted by handlers, woken up through a self-pipe (set_wakeup_fd)."""

    read_fd: int
    stop: bool = False
    reload: bool = False

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop = True
        elif signum == signal.SIGHUP:
            self.reload = True

    def wait(
        self, timeout: float, fds: list[int] | None = None, write_fds: list[int] | None = None
    ) -> tuple[list[int], list[int], bool]:
        """Sleep until a signal arrives (SIGCHLD included), one of ``fds`` is readable
        (a fork server run's exit, a log pipe, a protocol connection) or one of
        ``write_fds`` writable, or ``timeout`` passes; return the ready fds, and
        whether a signal came."""
        try:
            ready, writable, _ = select.select(
                [self.read_fd, *(fds or [])], write_fds or [], [], timeout
            )
        except ValueError:  # an fd above FD_SETSIZE: poll instead
            ready, writable = _poll([self.read_fd, *(fds or [])], write_fds or [], timeout)
        signalled = self.read_fd in ready
        if signalled:
            with contextlib.suppress(BlockingIOError):
                os.read(self.read_fd, 512)
            ready = [fd for fd in ready if fd != self.read_fd]
        return ready, writable, signalled


def _poll(reads: list[int], writes: list[int], timeout: float) -> tuple[list[int], list[int]]:
    poller = select.poll()
    for fd in set(reads) | set(writes):
        poller.register(fd, (select.POLLIN if fd in reads else 0)
                        | (select.POLLOUT if fd in writes else 0))  # fmt: skip
    ready, writable = [], []
    for fd, events in poller.poll(timeout * 1000):
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR) and fd in reads:
            ready.append(fd)
        if events & (select.POLLOUT | select.POLLERR) and fd in writes:
            writable.append(fd)
    return ready, writable


def raise_soft_limits() -> None:
    """Soft RLIMIT_FSIZE and RLIMIT_NOFILE up to their hard limits: a lowered soft limit
    (inherited, or set on us by ``prlimit``) does not make writes or opens fail."""
    for which in (resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE):
        soft, hard = resource.getrlimit(which)
        if soft != hard:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(which, (hard, hard))


#: On wakes by protocol bytes alone, the protocol pass runs at most this often (seconds).
PROTOCOL_PASS_S = 0.005


def serve(paths: Paths, settings: Settings, heartbeat: float = 2.0) -> None:
    """Run until SIGTERM/SIGINT; raise ServiceError if it cannot start."""
    raise_soft_limits()
    with _service_lock(paths.lockfile):
        me = process.identify(os.getpid())
        assert me is not None
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        sigs = _Signals(read_fd=r)
        old_fd = signal.set_wakeup_fd(w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, sigs.handler)
        sup = Supervisor(paths, settings)
        started_at = time.time()
        try:
            sup.open()
            process.write_pidfile(paths.pidfile, me)
            log.info(
                "launcher pid %d: registry %s, cgroups %s, sandbox %s, max runtime %s",
                me.pid,
                paths.registry,
                "on" if sup.cgroups else "off",
                sup.sandbox_mode()["mode"],
                f"{settings.max_runtime:g}s" if settings.max_runtime else "off",
            )
            last_beat = 0.0
            due = 0.0  # monotonic time of the next reconcile pass
            protocol_due = 0.0  # and of the next protocol pass, on wakes by protocol bytes
            deferred = False  # a protocol pass was put off to protocol_due
            woken = True  # by a signal or an fd that is not a protocol connection
            while not sigs.stop:
                reload, sigs.reload = sigs.reload, False
                now = time.monotonic()
                # A wake by protocol bytes alone (a call, an answer) moves them and meets
                # the protocol's deadlines, not a whole pass (registry stats, exits):
                # that pass costs more than the call itself. Under a stream of calls the
                # protocol pass (deadlines, health, idle stops) runs every
                # PROTOCOL_PASS_S, not at every message; at once while calls wait for a
                # plugin to be ready.
                if woken or reload or now >= due or sup.wants_pass():
                    try:
                        sup.reconcile(force_reload=reload)
                    except Exception:  # a bug or a host fault: report it, keep supervising
                        log.exception(
                            "reconcile pass failed; next pass in %.1fs", settings.poll_interval
                        )
                        sigs.wait(settings.poll_interval)
                        continue
                    now = time.monotonic()
                    due, protocol_due, deferred = (
                        now + sup.next_wakeup(),
                        now + PROTOCOL_PASS_S,
                        False,
                    )
                elif now >= protocol_due or sup.protocol.any_waiting():
                    try:
                        sup.protocol_pass()
                    except Exception:  # never: a channel contains its plugin's faults
                        log.exception("protocol pass failed")
                    now = time.monotonic()
                    due = min(due, now + sup.next_wakeup())
                    protocol_due, deferred = now + PROTOCOL_PASS_S, False
                else:
                    deferred = True
                now = time.monotonic()
                if sup.dirty or now - last_beat >= heartbeat:
                    _write_status(paths, sup, me, started_at, running=True)
                    sup.dirty, last_beat = False, now
                protocol_fds = sup.protocol_read_fds()
                wake = min(due, protocol_due) if deferred else due
                readable, writable, signalled = sigs.wait(
                    max(0.0, min(wake - now, heartbeat - (now - last_beat))),
                    sup.wait_fds(protocol_fds),
                    sup.write_fds(),
                )
                woken = signalled or not set(protocol_fds).issuperset(readable)
                try:
                    sup.pump(readable, writable)
                except Exception:  # never: a channel contains its plugin's faults
                    log.exception("protocol pass failed")
            log.info("launcher pid %d: stopping every plugin", me.pid)
        finally:
            sup.close()
            _write_status(paths, sup, me, started_at, running=False)
            with contextlib.suppress(FileNotFoundError):
                current = process.read_pidfile(paths.pidfile)
                if current == me:
                    paths.pidfile.unlink()
            signal.set_wakeup_fd(old_fd)
            os.close(r)
            os.close(w)
            log.info("launcher pid %d: stopped", me.pid)


def _write_status(
    paths: Paths, sup: Supervisor, me: process.ProcessId, started_at: float, *, running: bool
) -> None:
    doc: dict[str, Any] = {
        "schema": status.SCHEMA,
        "service": {
            "pid": me.pid,
            "start_time": me.start_time,
            "running": running,
            "started_at": started_at,
            "heartbeat_at": time.time(),
            "registry": str(paths.registry),
            "registry_error": sup.registry_error,
            "sandbox_error": sup.sandbox_error,
            "degraded_error": sup.degraded_error,
            "limits_error": sup.limits_error,
            "cgroups": str(sup.cgroups.base) if sup.cgroups else None,
            "sandbox": sup.sandbox_mode(),
        },
        "plugins": sup.status_doc(),
    }
    try:
        atomic_write_json(paths.status, doc)
    except OSError as exc:
        log.error("%s: cannot write status: %s", paths.status, exc)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m launcher.service",
        description="Supervise the enabled plugins of pack05's registry in the pack03 sandbox.",
    )
    p.add_argument("--registry", help="registry.json (default: from AURORA_HOME, see README)")
    p.add_argument("--poll", type=float, default=1.0, help="registry re-check, s (1.0)")
    p.add_argument("--heartbeat", type=float, default=2.0, help="status file refresh, s (2.0)")
    p.add_argument("--backoff-base", type=float, default=1.0, help="first restart delay, s")
    p.add_argument("--backoff-max", type=float, default=60.0, help="longest restart delay, s")
    p.add_argument("--max-restarts", type=int, default=5, help="restarts before 'failed'")
    p.add_argument("--stable-after", type=float, default=60.0, help="run time that resets it")
    p.add_argument("--stop-grace", type=float, default=5.0, help="SIGTERM to SIGKILL, s")
    p.add_argument(
        "--max-runtime",
        type=float,
        default=None,
        help="wall-clock bound of one plugin run, s; past it the run is stopped and "
        f"restarted with back-off like a crash (0: unbounded; default: ${MAX_RUNTIME_ENV}, "
        "unset or empty: unbounded)",
    )
    p.add_argument("--no-cgroup", action="store_true", help="track trees through /proc only")
    p.add_argument(
        "--no-fork-server",
        action="store_true",
        help="start each plugin with pack03's one-shot launch.py, not its fork server",
    )
    p.add_argument(
        "--no-disk-images",
        action="store_true",
        help="do not bound data dirs by a filesystem image each (every plugin degraded)",
    )
    p.add_argument(
        "--no-standby",
        action="store_true",
        help="start an idle on-call plugin cold at its first call (no interpreter kept "
        "waiting for it)",
    )
    p.add_argument(
        "--allow-caller",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="a uid besides root that may call plugins through the call socket (repeatable)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        # Checked even when --max-runtime is given: a bad setting is the operator's to fix.
        max_runtime = max_runtime_from_env()
        callers = callers_from_env()
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    if args.max_runtime is not None:
        max_runtime = args.max_runtime if args.max_runtime > 0 else None
    paths = Paths.from_env(registry=args.registry)
    settings = Settings(
        python=sys.executable,
        poll_interval=args.poll,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
        max_restarts=args.max_restarts,
        stable_after=args.stable_after,
        stop_grace=args.stop_grace,
        max_runtime=max_runtime,
        limits=sandbox.Limits(),
        use_cgroup=not args.no_cgroup,
        reap_orphans=True,
        fork_server=not args.no_fork_server,
        disk_images=not args.no_disk_images,
        api_callers=callers + tuple(args.allow_caller),
        standby=not args.no_standby,
    )
    try:
        serve(paths, settings, heartbeat=args.heartbeat)
    except ServiceError as exc:
        log.error("%s", exc)
        return EXIT_ALREADY_RUNNING
    except LauncherError as exc:
        log.error("%s", exc)
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
