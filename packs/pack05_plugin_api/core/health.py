"""Is the loader service healthy? Reads the pidfile, the process identity, the heartbeat.

The read side of the lifecycle, run by ``health_check.sh`` as ``$PYTHON -S
core/health.py``: by path, so that the plugin core (and its dependencies) is not
imported, and small, because a script run by path is compiled on every run. It
imports cheap standard modules and, through ``aurora_boot``, pack01_common's process
identity and bounded reads (standard library only): the whole check must cost little
more than starting the interpreter (the target is 2x). ``process`` builds start and
stop on it.
"""

from __future__ import annotations

import errno
import os
import sys
import time

try:
    from . import aurora_boot
except ImportError:  # run by path (health_check.sh): core/ itself is on sys.path
    import aurora_boot  # type: ignore[no-redef]  # noqa: F401

from aurora_common import bounded as _bounded
from aurora_common import identity as _identity
from aurora_common.errors import InputRefused as _InputRefused

TYPE_CHECKING = False  # typing costs 4 ms at import; mypy still reads the block below
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LifecycleError",
    "Paths",
    "ProcessRecord",
    "check_health",
    "current_identity",
    "identity_problem",
    "loads",
    "main",
    "read_pidfile",
    "read_small",
    "read_status",
]

# Exit codes of the lifecycle commands (and so of the scripts).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

PIDFILE_NAME = "service.pid"
STATUS_NAME = "service.status.json"
LIFECYCLE_LOCK_NAME = "lifecycle.lock"
SERVICE_LOCK_NAME = "service.lock"
LOG_NAME = "service.log"
STATUS_SCHEMA = "aurora-pack05-service-status-v1"
REGISTRY_SCHEMA = "aurora-plugin-registry-v1"  # registry.REGISTRY_SCHEMA, not imported: too dear
# A heartbeat older than max(3 intervals, this floor) means the service is stuck; the
# floor leaves room for one large package being staged between two heartbeats.
STALE_FLOOR_SECONDS = 10.0
CHECK_TIMEOUT = 5.0  # the check ends itself after this long (the installer's limit is 10 s)
_MAX_STATE_FILE = 1 << 20  # pidfile and status file are tiny; refuse anything huge
_MAX_REGISTRY = 256 << 20


class LifecycleError(Exception):
    """Base of the lifecycle errors: a state file is unreadable, a start or stop failed."""


class Paths:
    """Where the lifecycle files live, from the environment contract or its defaults."""

    __slots__ = ("data_dir", "logs_dir", "root", "run_dir")

    def __init__(self, root: str, data_dir: str, run_dir: str, logs_dir: str) -> None:
        self.root = root
        self.data_dir = data_dir
        self.run_dir = run_dir
        self.logs_dir = logs_dir

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Paths:
        """``$AURORA_PACK_{DATA,RUN,LOGS}``, else ``data``, ``run``, ``logs`` in the pack."""
        env = os.environ if environ is None else environ
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return cls(
            root=root,
            data_dir=os.path.abspath(env.get("AURORA_PACK_DATA") or os.path.join(root, "data")),
            run_dir=os.path.abspath(env.get("AURORA_PACK_RUN") or os.path.join(root, "run")),
            logs_dir=os.path.abspath(env.get("AURORA_PACK_LOGS") or os.path.join(root, "logs")),
        )

    @property
    def pidfile(self) -> str:
        return os.path.join(self.run_dir, PIDFILE_NAME)

    @property
    def status_file(self) -> str:
        return os.path.join(self.run_dir, STATUS_NAME)

    @property
    def lifecycle_lock(self) -> str:
        return os.path.join(self.run_dir, LIFECYCLE_LOCK_NAME)

    @property
    def service_lock(self) -> str:
        return os.path.join(self.run_dir, SERVICE_LOCK_NAME)

    @property
    def log_file(self) -> str:
        return os.path.join(self.logs_dir, LOG_NAME)

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for the service: the contract's variables, resolved."""
        env = dict(os.environ if base is None else base)
        env.setdefault("AURORA_PACK_ID", "pack05_plugin_api")
        env["AURORA_PACK_ROOT"] = self.root
        env["AURORA_PACK_DATA"] = self.data_dir
        env["AURORA_PACK_RUN"] = self.run_dir
        env["AURORA_PACK_LOGS"] = self.logs_dir
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = self.root + (os.pathsep + old if old else "")
        return env


# --- JSON without the json package ------------------------------------------------


class _ScanContext:
    """What ``_json.make_scanner`` reads from a decoder; the values ``json.loads`` uses."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        raise ValueError(f"{name} is not valid JSON")


def loads(data: bytes) -> Any:
    """``json.loads`` through the same C scanner, without importing ``json``.

    ``import json`` pulls in ``re`` and ``enum`` (8 ms here), close to the cost of the
    whole interpreter start; the health check would then miss its 2x target.
    """
    text = data.decode("utf-8")
    stripped = text.strip(" \t\n\r")
    try:
        from _json import make_scanner
    except ImportError:  # an interpreter without the C accelerator
        import json

        return json.loads(text)
    try:
        value, end = make_scanner(_ScanContext())(stripped, 0)  # type: ignore[arg-type]
    except StopIteration:
        raise ValueError("not a JSON document") from None
    if end != len(stripped):
        raise ValueError(f"extra data after the JSON document at offset {end}")
    return value


def read_small(path: str, limit: int = _MAX_STATE_FILE) -> bytes | None:
    """The bytes of a regular file, or None when it does not exist.

    ``aurora_common.bounded``: a FIFO or a symlink planted in place of a state file
    cannot make a check hang or wander; anything but a small regular file is an OSError.
    """
    try:
        return _bounded.read_bytes(path, limit)
    except FileNotFoundError:
        return None
    except _InputRefused as exc:
        raise OSError(errno.EINVAL, str(exc).removeprefix(f"{path}: "), path) from None


# --- process identity -----------------------------------------------------------------


#: pack01_common's process identity (pid, start time, boot id, exe): the one
#: implementation shared by the installer and the packs, under pack05's old name.
ProcessRecord = _identity.ProcessIdentity


def current_identity(pid: int) -> ProcessRecord | None:
    """The identity of the live process ``pid``; None when there is none or a zombie."""
    return _identity.live(pid)


def identity_problem(record: ProcessRecord) -> str | None:
    """Why ``record`` is not a live process (None when it is that very process)."""
    return _identity.mismatch(record)


def read_pidfile(path: str) -> ProcessRecord | None:
    """The record in the pidfile, None when there is none; LifecycleError when unreadable."""
    try:
        data = read_small(path)
    except OSError as exc:
        raise LifecycleError(f"{path}: cannot read pidfile: {exc.strerror or exc}") from exc
    if data is None:
        return None
    try:
        parsed = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LifecycleError(f"{path}: pidfile is not valid JSON: {exc}") from exc
    try:
        return ProcessRecord.from_dict(parsed, path)
    except _InputRefused as exc:
        raise LifecycleError(str(exc)) from None


def read_status(path: str) -> dict[str, Any] | None:
    """The service's heartbeat/status document, None when absent or unreadable."""
    try:
        data = read_small(path)
        value = loads(data) if data is not None else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


# --- health -----------------------------------------------------------------------------


def _registry_problem(path: str) -> str | None:
    """A cheap structural check of the fields pack04 reads (the service validates fully)."""
    try:
        data = read_small(path, _MAX_REGISTRY)
    except OSError as exc:
        return f"{path}: unreadable: {exc.strerror or exc}"
    if data is None:
        return None  # nothing staged yet
    try:
        doc = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"{path}: not valid JSON: {exc}"
    if not isinstance(doc, dict) or doc.get("schema") != REGISTRY_SCHEMA:
        return f"{path}: schema: expected {REGISTRY_SCHEMA!r}"
    plugins = doc.get("plugins")
    if not isinstance(plugins, dict):
        return f"{path}: plugins: expected an object"
    for pid, rec in plugins.items():
        where = f"{path}: plugins[{pid!r}]"
        if not isinstance(rec, dict):
            return f"{where}: expected an object"
        if not isinstance(rec.get("enabled"), bool):
            return f"{where}.enabled: expected true or false"
        versions = rec.get("versions")
        if not isinstance(versions, dict):
            return f"{where}.versions: expected an object"
        active = rec.get("active_version")
        if active is not None and active not in versions:
            return f"{where}.active_version: {active!r} is not among its versions"
        for ver, entry in versions.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                return f"{where}.versions[{ver!r}].path: expected a string"
    return None


def check_health(paths: Paths, *, now: float | None = None) -> str | None:
    """None when the service runs, is the process that was started, has a fresh
    heartbeat and a readable, valid registry; else the first reason it is not healthy."""
    try:
        record = read_pidfile(paths.pidfile)
    except LifecycleError as exc:
        return str(exc)
    if record is None:
        return f"not running (no pidfile at {paths.pidfile})"
    problem = identity_problem(record)
    if problem is not None:
        return f"not running: {problem} (stale pidfile {paths.pidfile})"
    status = read_status(paths.status_file)
    if status is None:
        return f"no heartbeat in {paths.status_file}"
    if status.get("pid") != record.pid or status.get("start_time") != record.start_time:
        return f"heartbeat in {paths.status_file} is not from pid {record.pid}"
    if status.get("state") != "running":
        return f"service state is {status.get('state')!r}, not 'running'"
    interval = status.get("interval")
    last = status.get("heartbeat_at")
    if not isinstance(interval, (int, float)) or not isinstance(last, (int, float)):
        return f"heartbeat in {paths.status_file} lacks interval or heartbeat_at"
    age = (time.time() if now is None else now) - last
    limit = max(3 * interval, STALE_FLOOR_SECONDS)
    if age > limit:
        return f"heartbeat is {age:.1f} s old (limit {limit:g} s): the service is stuck"
    if status.get("registry_error"):
        return f"registry: {status['registry_error']}"
    plugins_dir = status.get("plugins_dir")
    if not isinstance(plugins_dir, str):
        return f"heartbeat in {paths.status_file} lacks plugins_dir"
    return _registry_problem(os.path.join(plugins_dir, "registry.json"))


# --- command line -----------------------------------------------------------------------

_USAGE = (
    "usage: health.py [--json]\nPrint 'health OK' (exit 0) or 'health FAIL: <reason>' (exit 1)."
)


def main(argv: Sequence[str] | None = None) -> int:
    """``health.py [--json]``: the one check ``health_check.sh`` runs.

    No argparse here: it costs 3 ms at import, a third of the budget. The check takes no
    lock, waits for nothing and opens state files non-blocking (a FIFO planted as a
    pidfile is refused, not waited on); should a read still block (/proc of a process
    stuck in the kernel), a watchdog thread ends the check after CHECK_TIMEOUT seconds
    with exit status 1 and the stack on stderr.
    """
    import faulthandler  # built in: no import cost

    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):
        print(_USAGE)
        return EXIT_OK
    if args not in ([], ["--json"]):
        print(f"{_USAGE}\nhealth.py: unrecognized arguments: {' '.join(args)}", file=sys.stderr)
        return EXIT_USAGE
    # The process's own stderr (fd 2): sys.stderr may be replaced by one without a fileno.
    faulthandler.dump_traceback_later(CHECK_TIMEOUT, exit=True, file=sys.__stderr__ or 2)
    try:
        reason = check_health(Paths.from_env())
    finally:
        faulthandler.cancel_dump_traceback_later()
    text = "health OK" if reason is None else f"health FAIL: {reason}"
    if args:
        import json

        print(text, file=sys.stderr)
        print(json.dumps({"healthy": reason is None, "reason": reason}))
    else:
        print(text)
    return EXIT_OK if reason is None else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
