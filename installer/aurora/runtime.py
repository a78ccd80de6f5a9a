"""What runs: pidfiles written by a pack's start.sh, and the health state of a pack."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aurora_common import bounded, identity, structured
from aurora_common.errors import InputRefused

from aurora.errors import StateError
from aurora.fsutil import atomic_write_json, fsync_dir, remove_tree
from aurora.runner import ScriptResult


@dataclass(frozen=True)
class HealthPolicy:
    """Docker HEALTHCHECK semantics; the overall bound comes from the manifest.

    ``start_period``: failures in this window after start do not count;
    ``interval``: pause between checks; ``timeout``: one check longer than this
    is killed with its process group and counts as a failure; ``retries``:
    consecutive counted failures that make the pack unhealthy.
    """

    interval: float = 1.0
    timeout: float = 10.0
    start_period: float = 5.0
    retries: int = 3


def proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22)."""
    return identity.start_time(pid)


def uptime_of(start_ticks: int) -> float | None:
    """Seconds since a process with this start time began."""
    try:
        boot_uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, boot_uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


@dataclass(frozen=True)
class PidInfo:
    """One pidfile and whether it still names the process that wrote it."""

    path: Path
    pid: int
    start_time: int | None
    alive: bool

    def as_dict(self) -> dict[str, Any]:
        uptime = uptime_of(self.start_time) if self.alive and self.start_time else None
        return {
            "pidfile": str(self.path),
            "pid": self.pid,
            "alive": self.alive,
            "uptime_seconds": None if uptime is None else round(uptime, 1),
        }


def _read_small_file(path: Path, limit: int = 1 << 16) -> str | None:
    """A small regular file's text; None for anything else (a FIFO is never waited on)."""
    try:
        return bounded.read_text(path, limit)
    except (OSError, InputRefused):
        return None


def _parse_pidfile(text: str, where: str) -> tuple[int, int | None, dict[str, Any]] | None:
    """Accept pack05's JSON (``aurora_common.identity``) or the text ``PID [START]``."""
    text = text.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            doc = json.loads(text)
            # boot_id and exe are checked when the pidfile has them.
            full = {"boot_id": "", "exe": "", **doc} if isinstance(doc, dict) else doc
            ident = identity.ProcessIdentity.from_dict(full, where)
        except (ValueError, InputRefused):
            return None
        return ident.pid, ident.start_time, ident.as_dict()
    parts = text.split()
    try:
        pid = int(parts[0])
        start_time = int(parts[1]) if len(parts) > 1 else None
    except ValueError:
        return None
    return (pid, start_time, {}) if pid > 0 else None


def _same_process(pid: int, start_time: int | None, extra: dict[str, Any]) -> bool:
    """Whether ``pid`` is still the process the pidfile describes (never a reused pid)."""
    actual = identity.start_time(pid)
    if actual is None:
        return False
    recorded = identity.ProcessIdentity(
        pid,
        actual if start_time is None else start_time,
        str(extra.get("boot_id") or ""),
        str(extra.get("exe") or ""),
    )
    return identity.matches(recorded)


def read_pidfiles(run_dir: Path) -> list[PidInfo]:
    """Every *.pid file in ``run_dir``; alive means the pid still is that process."""
    infos: list[PidInfo] = []
    if not run_dir.is_dir():
        return infos
    for path in sorted(run_dir.glob("*.pid")):
        text = _read_small_file(path)
        parsed = None if text is None else _parse_pidfile(text, str(path))
        if parsed is None:
            continue
        pid, start_time, extra = parsed
        infos.append(PidInfo(path, pid, start_time, _same_process(pid, start_time, extra)))
    return infos


class HealthRecord:
    """The health state machine of one pack, kept in a small JSON file.

    starting -> healthy on a passing check; -> unhealthy after ``retries``
    consecutive failing checks outside the start period; a passing check makes
    an unhealthy pack healthy again (Docker's model).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def problem(self) -> str | None:
        """Why the file on disk is not a health record (None: valid or missing)."""
        if not (self.path.is_symlink() or self.path.exists()):
            return None
        try:
            doc = structured.read_json(self.path, 1 << 16, max_depth=8)
        except (OSError, InputRefused) as exc:
            return str(exc)
        return health_problem(doc, str(self.path))

    def read(self) -> dict[str, Any] | None:
        """The record, or None when missing or not a valid record (see ``problem``)."""
        try:
            doc = structured.read_json(self.path, 1 << 16, max_depth=8)
        except (OSError, InputRefused):
            return None
        return doc if health_problem(doc, str(self.path)) is None else None

    def reset(self, status: str = "starting") -> dict[str, Any]:
        problem = self.problem()
        if problem is not None:
            raise StateError(f"{self.path}: not a health record; not overwritten", [problem])
        doc: dict[str, Any] = {
            "status": status,
            "failing_streak": 0,
            "last_check": None,
            "since": time.time(),
        }
        atomic_write_json(self.path, doc)
        return doc

    def remove(self) -> bool:
        """Delete the record, durably (the pack it described is gone); False if there was none.

        A symlink is removed, never followed; anything else at the path goes too: it is
        not data, and a check writes a fresh record.
        """
        if not (self.path.is_symlink() or self.path.exists()):
            return False
        remove_tree(self.path)
        fsync_dir(self.path.parent)
        return True

    def update(
        self, ok: bool, output: str, exit_code: int | None, *, counted: bool, retries: int
    ) -> dict[str, Any]:
        """Apply one check's result; returns the new record.

        Refuses (StateError naming the file) to write over a file that is not a
        health record: it is evidence, moved aside or removed by the operator.
        """
        problem = self.problem()
        if problem is not None:
            raise StateError(f"{self.path}: not a health record; not overwritten", [problem])
        doc = self.read() or {"status": "unknown", "failing_streak": 0, "since": time.time()}
        previous = doc.get("status", "unknown")
        if ok:
            doc["failing_streak"] = 0
            status = "healthy"
        else:
            if counted:
                doc["failing_streak"] = int(doc.get("failing_streak", 0)) + 1
            # A pack that was starting or healthy keeps that state until the
            # failures reach `retries`; one that was not (stopped, unknown) fails at once.
            status = previous if previous in ("starting", "healthy") else "unhealthy"
            if doc["failing_streak"] >= retries:
                status = "unhealthy"
        if status != previous:
            doc["since"] = time.time()
        doc["status"] = status
        doc["last_check"] = {"at": time.time(), "ok": ok, "exit_code": exit_code, "output": output}
        atomic_write_json(self.path, doc)
        return doc


HEALTH_STATES = ("starting", "healthy", "unhealthy", "stopped", "unknown")


def health_problem(doc: Any, where: str) -> str | None:
    """What makes ``doc`` not a health record (status, failing_streak, since, last_check)."""
    if not isinstance(doc, dict):
        return f"{where}: expected a JSON object"
    if doc.get("status") not in HEALTH_STATES:
        return f"{where}: status: expected one of {', '.join(HEALTH_STATES)}"
    streak = doc.get("failing_streak", 0)
    if not isinstance(streak, int) or isinstance(streak, bool) or streak < 0:
        return f"{where}: failing_streak: expected a non-negative integer, found {streak!r}"
    since = doc.get("since", 0)
    if not isinstance(since, int | float) or isinstance(since, bool):
        return f"{where}: since: expected a number, found {since!r}"
    last = doc.get("last_check")
    if last is not None and not isinstance(last, dict):
        return f"{where}: last_check: expected an object or null"
    return None


def last_output(result: ScriptResult) -> str:
    """What a health check said, for the record (its last lines)."""
    if result.timed_out:
        return f"check timed out after {result.duration:.1f} s and was killed"
    return "\n".join(result.output_tail[-3:]).strip()


def poll_until_healthy(
    check: Callable[[float], ScriptResult],
    record: HealthRecord,
    policy: HealthPolicy,
    bound: float,
    on_change: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``check(timeout)`` every interval until healthy, unhealthy or ``bound`` seconds.

    Returns the final health record with ``checks`` and ``reason``; a pack
    still starting when the bound is reached is recorded as unhealthy.
    """
    started = time.monotonic()
    deadline = started + bound
    status = "starting"
    checks = 0
    while True:
        remaining = deadline - time.monotonic()
        result = check(max(0.1, min(policy.timeout, remaining)))
        checks += 1
        in_start_period = time.monotonic() - started < policy.start_period
        out_of_time = time.monotonic() + policy.interval >= deadline
        doc = record.update(
            result.ok,
            last_output(result),
            result.returncode,
            counted=not in_start_period or out_of_time,
            # At the bound a pack that is not healthy is unhealthy, whatever the streak.
            retries=1 if out_of_time else policy.retries,
        )
        if doc["status"] != status and on_change is not None:
            on_change(doc)
        status = doc["status"]
        if status == "healthy":
            return {**doc, "checks": checks, "reason": "check passed"}
        if out_of_time:
            reason = f"not healthy within {bound:g} s (health_check_timeout_seconds)"
            return {**doc, "checks": checks, "reason": reason}
        if status == "unhealthy":
            reason = f"{policy.retries} consecutive failing checks"
            return {**doc, "checks": checks, "reason": reason}
        time.sleep(policy.interval)
