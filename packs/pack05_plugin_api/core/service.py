"""The loader service: stages what is dropped in ``plugins/inbox/``, quarantines the rest.

Run as ``python -m core.service`` from the pack root (``start.sh`` does). An inbox
entry is taken once it is complete: nothing in it (size, file count, mtimes and
ctimes) changed for a settle period (default 0.25 s; a rename into the inbox is the
last change). Writers should build under a name starting with ``.`` (ignored) and
rename it in. Plugin code is never run: the loader only copies, checks and registers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import health, process
from .storage import FileLock, LockBusy, atomic_write, is_io_failure

__all__ = ["InboxService", "Stager", "StopSignal", "main"]

# Named for the module even when run as __main__ (python -m core.service).
log = logging.getLogger("core.service")

# Exit codes of ``python -m core.service``: the lifecycle's own (health.py), plus one.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = health.EXIT_OK, health.EXIT_FAILED, health.EXIT_USAGE
EXIT_ALREADY_RUNNING = 3

POLL_ENV = "AURORA_PACK05_POLL_SECONDS"
SETTLE_ENV = "AURORA_PACK05_SETTLE_SECONDS"
DEFAULT_INTERVAL = 1.0
# How long an item that met a disk-full or I/O failure waits before it is tried again.
IO_RETRY_SECONDS = 5.0
# Long enough that a copy in progress shows a change, short enough that a renamed-in
# item is picked up within the poll interval plus staging time.
DEFAULT_SETTLE = 0.25
_DONE_PREFIX = ".done-"  # accepted items are renamed to this (ignored) name, then deleted
_MAX_WALK = 100_000  # a signature stops counting here; the loader refuses such a tree anyway


class Stager(Protocol):
    """What the service needs from the loader (``core.loader.PluginLoader``)."""

    def stage_package(self, path: Any) -> dict[str, Any]: ...


class StopSignal(Protocol):
    """Set by SIGTERM/SIGINT (or a test); ``wait`` returns early once it is set."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class _SignalStop:
    """A StopSignal set by SIGTERM and SIGINT; waits wake through a self-pipe."""

    def __init__(self) -> None:
        self._set = False
        self._rfd, self._wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def install(self) -> None:
        signal.set_wakeup_fd(self._wfd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if not self._set:
            name = signal.Signals(signum).name
            log.info("received %s: finishing the item in hand, then exiting", name)
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        if not self._set:
            select.select([self._rfd], [], [], timeout)
            with contextlib.suppress(BlockingIOError):
                os.read(self._rfd, 512)
        return self._set


class _Pending:
    __slots__ = ("signature", "since")

    def __init__(self, signature: tuple[int, ...], since: float) -> None:
        self.signature = signature
        self.since = since


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _signature(path: str) -> tuple[int, ...] | None:
    """What changes while an entry is still being written; None when it vanished.

    Symlinks are not followed. Type, inode and size of the entry, and for a directory
    the file count and total size of the tree; the last field is the newest mtime or
    ctime (ns) of anything in it. A rename into the inbox sets the entry's ctime.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    newest = max(st.st_mtime_ns, st.st_ctime_ns)
    count = size = 0
    stack = [path] if stat.S_ISDIR(st.st_mode) else []
    while stack and count < _MAX_WALK:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    est = entry.stat(follow_symlinks=False)
                    count += 1
                    size += est.st_size
                    newest = max(newest, est.st_mtime_ns, est.st_ctime_ns)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except FileNotFoundError:
            continue  # removed while we looked: the next scan sees a new signature
    return (stat.S_IFMT(st.st_mode), st.st_ino, st.st_size, count, size, newest)


def _reason_of(exc: BaseException) -> tuple[str, list[str]]:
    problems = getattr(exc, "problems", None)
    reason = getattr(exc, "reason", None)
    text = reason if isinstance(reason, str) else str(exc)
    return text, [str(p) for p in problems] if isinstance(problems, list) else []


class InboxService:
    """Watches ``<plugins>/inbox``; each complete entry is staged or quarantined."""

    def __init__(
        self,
        plugins_dir: Path,
        paths: health.Paths,
        stager: Stager,
        *,
        interval: float = DEFAULT_INTERVAL,
        settle: float = DEFAULT_SETTLE,
        is_refusal: Callable[[BaseException], bool] | None = None,
        registry_check: Callable[[], object] | None = None,
        identity: health.ProcessRecord | None = None,
    ) -> None:
        self.plugins_dir = plugins_dir
        self.inbox = plugins_dir / "inbox"
        self.quarantine = plugins_dir / "quarantine"
        self.paths = paths
        self.stager = stager
        self.interval = interval
        self.settle = settle
        self._is_refusal = is_refusal or (lambda exc: False)
        self._registry_check = registry_check
        self.identity = identity or health.current_identity(os.getpid())
        self.started_at = time.time()
        self.scans = 0
        self.last_scan: float | None = None
        self.counts = {"staged": 0, "quarantined": 0, "errors": 0}
        self.current: str | None = None
        self.last_error: dict[str, Any] | None = None
        self.registry_error: str | None = None
        self._registry_seen: tuple[int, ...] | None = None
        self._pending: dict[str, _Pending] = {}
        # Entries we could not move out of the inbox: skipped until they change.
        self._stuck: dict[str, tuple[int, ...] | None] = {}
        # Entries that met a disk-full or I/O failure: retried after this (monotonic) time.
        self._retry_at: dict[str, float] = {}

    # -- status ------------------------------------------------------------------

    def status(self, state: str) -> dict[str, Any]:
        ident = self.identity
        return {
            "schema": health.STATUS_SCHEMA,
            "state": state,
            "pid": ident.pid if ident else os.getpid(),
            "start_time": ident.start_time if ident else None,
            "started_at": _utc(self.started_at),
            "heartbeat_at": time.time(),
            "interval": self.interval,
            "settle": self.settle,
            "scans": self.scans,
            "last_scan": _utc(self.last_scan) if self.last_scan else None,
            "counts": dict(self.counts),
            "current": self.current,
            "pending": sorted(self._pending),
            "last_error": self.last_error,
            "registry_error": self.registry_error,
            "plugins_dir": str(self.plugins_dir),
        }

    def write_status(self, state: str = "running") -> None:
        atomic_write(self.paths.status_file, process.json_bytes(self.status(state)))

    # -- one scan ----------------------------------------------------------------

    def prepare(self) -> None:
        """Create the inbox and quarantine; finish deleting accepted items from a crash."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.quarantine.mkdir(parents=True, exist_ok=True)
        for entry in self.inbox.iterdir():
            if entry.name.startswith(_DONE_PREFIX):
                self._delete(entry)

    def _settled_at(self, seen: _Pending, now: float, wall_ns: int) -> float:
        """When (monotonic) an entry counts as complete: unchanged for ``settle`` seconds
        by its own timestamps (a renamed-in entry: ``settle`` after the rename), or by
        our own looks when its timestamps are in the future."""
        by_looks = seen.since + self.settle
        quiet_for = (wall_ns - seen.signature[-1]) / 1e9
        if quiet_for < 0:
            return by_looks
        return min(by_looks, now + max(0.0, self.settle - quiet_for))

    def scan_once(self, stop: StopSignal | None = None) -> None:
        """Look at the inbox once; stage or quarantine every entry that is complete."""
        now, wall_ns = time.monotonic(), time.time_ns()
        ready: list[str] = []
        self.inbox.mkdir(parents=True, exist_ok=True)  # an operator may have removed it
        names = sorted(n for n in os.listdir(self.inbox) if not n.startswith("."))
        for name in names:
            sig = _signature(str(self.inbox / name))
            if sig is None:
                continue
            if name in self._stuck:
                if self._stuck[name] == sig:
                    continue
                del self._stuck[name]
            if self._retry_at.get(name, now) > now:
                continue
            seen = self._pending.get(name)
            if seen is None or seen.signature != sig:
                seen = self._pending[name] = _Pending(sig, now)
                if not (stat.S_ISDIR(sig[0]) or stat.S_ISREG(sig[0])):
                    ready.append(name)  # a link, FIFO or device never becomes a package
                    continue
            if self._settled_at(seen, now, wall_ns) <= now:
                ready.append(name)
        for gone in set(self._pending) - set(names):
            del self._pending[gone]
        for name in ready:
            if stop is not None and stop.is_set():
                break  # not started: it stays in the inbox for the next run
            self._pending.pop(name, None)
            self._handle(name)
        self._check_registry()
        self.scans += 1
        self.last_scan = time.time()

    def next_wait(self) -> float:
        """Until the next scan: the interval, or sooner when an item finishes settling."""
        now, wall_ns = time.monotonic(), time.time_ns()
        settled = [self._settled_at(p, now, wall_ns) - now for p in self._pending.values()]
        return max(min([self.interval, *settled]), 0.01)

    def run(self, stop: StopSignal) -> None:
        """Scan until ``stop`` is set; the first status written says "ready"."""
        self.prepare()
        self.write_status("running")
        log.info(
            "watching %s every %g s (settle %g s); pid %d",
            self.inbox,
            self.interval,
            self.settle,
            os.getpid(),
        )
        while not stop.is_set():
            try:
                self.scan_once(stop)
                self.write_status("stopping" if stop.is_set() else "running")
            except OSError as exc:  # e.g. the data dir went unwritable: report, keep going
                log.error("scan failed: %s", exc)
                self._note_error("(scan)", f"{type(exc).__name__}: {exc}")
            stop.wait(self.next_wait())
        try:
            self.write_status("stopped")
        except OSError as exc:
            log.error("could not write the final status: %s", exc)

    # -- one item ----------------------------------------------------------------

    def _handle(self, name: str) -> None:
        path = self.inbox / name
        self.current = name
        self.write_status("running")
        try:
            mode = os.lstat(path).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                self._reject(
                    name,
                    "inbox entries must be a directory or a regular file (an archive); "
                    "symlinks, FIFOs, sockets and devices are refused",
                    [],
                    "UnsupportedEntry",
                )
                return
            try:
                result = self.stager.stage_package(path)
            except Exception as exc:
                if is_io_failure(exc) or isinstance(exc, LockBusy):
                    # Disk full, I/O error, a lock held past storage.LOCK_WAIT: not the
                    # package's fault. It stays in the inbox and is tried again later,
                    # never quarantined.
                    self._note_error(name, f"{type(exc).__name__}: {exc}")
                    self._retry_at[name] = time.monotonic() + max(IO_RETRY_SECONDS, self.interval)
                    log.error("could not stage inbox/%s (retried later): %s", name, exc)
                    return
                if not os.path.lexists(path):
                    log.warning("inbox/%s vanished while it was being staged", name)
                    return
                reason, problems = _reason_of(exc)
                if not self._is_refusal(exc):
                    log.exception("unexpected error staging inbox/%s", name)
                    self.counts["errors"] += 1
                    reason = f"unexpected error: {type(exc).__name__}: {reason}"
                self._reject(name, reason, problems, type(exc).__name__)
                return
            self._retry_at.pop(name, None)
            log.info("staged %s %s from inbox/%s", result.get("id"), result.get("version"), name)
            self.counts["staged"] += 1
            self._remove_accepted(name)
        except OSError as exc:
            self._note_error(name, f"{type(exc).__name__}: {exc}")
            log.error("could not process inbox/%s: %s", name, exc)
            if is_io_failure(exc):  # disk full: try again later, as it is
                self._retry_at[name] = time.monotonic() + max(IO_RETRY_SECONDS, self.interval)
            else:
                self._stuck[name] = _signature(str(path))
        finally:
            self.current = None

    def _note_error(self, name: str, reason: str) -> None:
        self.last_error = {"at": _utc(time.time()), "item": name, "reason": reason}

    def _remove_accepted(self, name: str) -> None:
        # Rename first: a crash mid-delete leaves an ignored ".done-" entry, never a
        # half-deleted package that the next scan would try to stage again.
        done = self.inbox / f"{_DONE_PREFIX}{name}.{os.getpid()}.{time.monotonic_ns()}"
        os.rename(self.inbox / name, done)
        self._delete(done)

    @staticmethod
    def _delete(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def _quarantine_name(self, name: str) -> str:
        candidate, n = name, 0
        while os.path.lexists(self.quarantine / candidate) or os.path.lexists(
            self.quarantine / f"{candidate}.reason.json"
        ):
            n += 1
            candidate = f"{name}.{n}"
        return candidate

    def _reject(self, name: str, reason: str, problems: list[str], error: str) -> None:
        """Move the entry to quarantine/ with ``<name>.reason.json`` beside it."""
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = self._quarantine_name(name)
        doc = {
            "item": name,
            "quarantined_as": target,
            "quarantined_at": _utc(time.time()),
            "error": error,
            "reason": reason,
            "problems": problems,
        }
        # The reason first: a crash in between leaves the item in the inbox, to be
        # looked at again, rather than an item in quarantine without its reason.
        atomic_write(str(self.quarantine / f"{target}.reason.json"), process.json_bytes(doc))
        os.rename(self.inbox / name, self.quarantine / target)
        self.counts["quarantined"] += 1
        self._note_error(name, reason)
        log.warning("quarantined inbox/%s as quarantine/%s: %s", name, target, reason)

    def _check_registry(self) -> None:
        """Read the registry through the real reader whenever the file changes."""
        if self._registry_check is None:
            return
        try:
            st = os.stat(self.plugins_dir / "registry.json")
            seen: tuple[int, ...] = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = ()
        except OSError as exc:
            self.registry_error = f"registry.json: {exc}"
            return
        if seen == self._registry_seen:
            return
        self._registry_seen = seen
        try:
            self._registry_check()
        except Exception as exc:
            self.registry_error = str(exc)
            log.error("registry is not readable: %s", exc)
        else:
            self.registry_error = None


# --- command line -----------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds") from None
    if not 0.01 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0.01 to 3600 seconds")
    return value


def _env_default(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    return _seconds(raw) if raw else default


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core.service",
        description="Watch plugins/inbox/ and stage what is dropped there (never runs it).",
    )
    parser.add_argument(
        "--interval",
        type=_seconds,
        help=f"seconds between inbox scans (default ${POLL_ENV} or {DEFAULT_INTERVAL:g})",
    )
    parser.add_argument(
        "--settle",
        type=_seconds,
        help=f"seconds an entry must stay unchanged (default ${SETTLE_ENV} or {DEFAULT_SETTLE:g})",
    )
    parser.add_argument("--plugins-dir", type=Path, help="default: $AURORA_PACK_DATA/plugins")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="check the interpreter and the code can run the service; write nothing",
    )
    mode.add_argument(
        "--init",
        action="store_true",
        help="create the plugin data layout and the run and log directories",
    )
    return parser


def _layout(plugins_dir: Path, paths: health.Paths) -> list[Path]:
    return [
        plugins_dir / "inbox",
        plugins_dir / "quarantine",
        plugins_dir / "packages",
        Path(paths.run_dir),
        Path(paths.logs_dir),
    ]


def _cmd_check(plugins_dir: Path, paths: health.Paths) -> int:
    """What ``install.sh --dry-run`` runs: imports only, nothing written."""
    problems = []
    for module in ("yaml", "packaging.version", "jsonschema", "core.api", "core.loader",
                   "core.registry", "core.permissions"):  # fmt: skip
        try:
            __import__(module)
        except Exception as exc:
            problems.append(f"cannot import {module}: {type(exc).__name__}: {exc}")
    for directory in _layout(plugins_dir, paths):
        parent = directory
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            problems.append(f"{directory}: cannot be created ({parent} is not writable)")
    print(f"interpreter: {sys.executable} (Python {sys.version.split()[0]})")
    print(f"plugins: {plugins_dir}\nrun: {paths.run_dir}\nlogs: {paths.logs_dir}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("dry-run OK" if not problems else f"dry-run FAILED: {len(problems)} problem(s)")
    return EXIT_OK if not problems else EXIT_FAILED


def _cmd_init(plugins_dir: Path, paths: health.Paths) -> int:
    for directory in _layout(plugins_dir, paths):
        directory.mkdir(parents=True, exist_ok=True)
        print(f"ready: {directory}")
    return EXIT_OK


def _cmd_run(plugins_dir: Path, paths: health.Paths, interval: float, settle: float) -> int:
    from .errors import PluginError
    from .loader import PluginLoader
    from .registry import PluginRegistry

    os.makedirs(paths.run_dir, exist_ok=True)
    lock = FileLock(Path(paths.service_lock), 0)
    try:
        lock.acquire()
    except LockBusy as exc:
        log.error("%s; not starting a second loader service", exc)
        return EXIT_ALREADY_RUNNING
    me = health.current_identity(os.getpid())
    if me is None:
        log.error("cannot read this process's identity from /proc")
        return EXIT_FAILED
    try:
        if health.read_pidfile(paths.pidfile) != me:
            process.write_pidfile(paths.pidfile, me)
    except health.LifecycleError:
        process.write_pidfile(paths.pidfile, me)  # unreadable and we hold the lock: ours now
    stop = _SignalStop()
    stop.install()
    try:
        service = InboxService(
            plugins_dir,
            paths,
            PluginLoader(plugins_dir),
            interval=interval,
            settle=settle,
            is_refusal=lambda exc: isinstance(exc, PluginError),
            registry_check=lambda: PluginRegistry(plugins_dir).list(),
            identity=me,
        )
        service.run(stop)
    except Exception:
        log.exception("the loader service failed")
        return EXIT_FAILED
    finally:
        process.remove_pidfile_if(paths.pidfile, me)
        lock.release()
    log.info("stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service in the foreground until SIGTERM or SIGINT (or --check, --init)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    )
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        interval = args.interval or _env_default(os.environ, POLL_ENV, DEFAULT_INTERVAL)
        settle = args.settle or _env_default(os.environ, SETTLE_ENV, DEFAULT_SETTLE)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    paths = health.Paths.from_env()
    if args.plugins_dir is not None:
        plugins_dir = args.plugins_dir.resolve()
    else:
        from .paths import plugins_dir as default_plugins_dir

        plugins_dir = default_plugins_dir()
    if args.check:
        return _cmd_check(plugins_dir, paths)
    if args.init:
        return _cmd_init(plugins_dir, paths)
    return _cmd_run(plugins_dir, paths, interval, settle)


if __name__ == "__main__":
    raise SystemExit(main())
