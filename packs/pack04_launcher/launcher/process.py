"""Process identity and termination: pidfiles, start times, TERM then KILL.

A pid alone is not an identity (pids are reused), so every pid we keep is
paired with the process start time from ``/proc/<pid>/stat`` (field 22) and
checked again before any signal. The service's pidfile, which outlives a
reboot, also records the boot id and the executable (as pack05's does).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import ServiceError
from launcher.fsutil import atomic_write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessId:
    """A process as identified by its pid and its start time (clock ticks since boot).

    ``boot_id`` and ``exe``, when known (read from a pidfile), must match too: a
    start time only means something within one boot.
    """

    pid: int
    start_time: int
    boot_id: str | None = field(default=None, compare=False)
    exe: str | None = field(default=None, compare=False)

    def alive(self) -> bool:
        """True while this very process exists and is not a zombie."""
        if start_time(self.pid) != self.start_time or is_zombie(self.pid):
            return False
        if self.boot_id is not None and self.boot_id != boot_id():
            return False
        return self.exe is None or self.exe == executable(self.pid)


def boot_id() -> str | None:
    """This boot's id (/proc/sys/kernel/random/boot_id)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def executable(pid: int) -> str | None:
    """The program ``pid`` runs (/proc/<pid>/exe), or None when it cannot be read."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` (field 22 of /proc/<pid>/stat), or None if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def is_zombie(pid: int) -> bool:
    """True when ``pid`` has exited but not been reaped yet."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] in ("Z", "X")


def identify(pid: int) -> ProcessId | None:
    """The identity of a live ``pid``, or None if it does not exist."""
    st = start_time(pid)
    return None if st is None else ProcessId(pid, st)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all threads), from /proc/<pid>/task/*/children."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out.extend(int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    return out


def descendants(pid: int) -> list[ProcessId]:
    """Every live descendant of ``pid`` with its identity (not ``pid`` itself)."""
    found: list[ProcessId] = []
    seen: set[int] = set()
    todo = children(pid)
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        ident = identify(p)
        if ident is not None:
            found.append(ident)
            todo.extend(children(p))
    return found


# --- pidfiles -------------------------------------------------------------------


def write_pidfile(path: Path, ident: ProcessId) -> None:
    """Record ``ident`` atomically: {"pid", "start_time", "boot_id", "exe"} (as pack05)."""
    atomic_write_json(
        path,
        {
            "pid": ident.pid,
            "start_time": ident.start_time,
            "boot_id": boot_id(),
            "exe": executable(ident.pid),
        },
    )


def read_pidfile(path: Path) -> ProcessId | None:
    """The identity recorded in ``path``; None when there is no pidfile.

    Raises ServiceError when the file exists but is not a pidfile we wrote.
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ServiceError(f"{path}: unreadable pidfile ({exc})") from exc
    pid, st = (doc.get("pid"), doc.get("start_time")) if isinstance(doc, dict) else (None, None)
    if not isinstance(pid, int) or not isinstance(st, int) or pid <= 0:
        raise ServiceError(f"{path}: expected {{'pid': int, 'start_time': int}}, found {doc!r}")
    boot, exe = doc.get("boot_id"), doc.get("exe")
    # Missing (an older pidfile) or unreadable when written: not checked.
    return ProcessId(
        pid,
        st,
        boot_id=boot if isinstance(boot, str) and boot else None,
        exe=exe if isinstance(exe, str) and exe else None,
    )


def running_from_pidfile(path: Path) -> ProcessId | None:
    """The process recorded in ``path`` if it is still that process, else None."""
    ident = read_pidfile(path)
    return ident if ident is not None and ident.alive() else None


# --- signalling -----------------------------------------------------------------


def signal_identity(ident: ProcessId, sig: int, *, group: bool = False) -> bool:
    """Send ``sig`` to ``ident`` (its process group if ``group``) after checking it.

    Returns False when the process is gone or is no longer the same process.
    The group is only signalled when the process still leads it, so a reused
    pgid is never hit.
    """
    if not ident.alive():
        return False
    try:
        if group and os.getpgid(ident.pid) == ident.pid:
            os.killpg(ident.pid, sig)
        else:
            os.kill(ident.pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(idents: Iterable[ProcessId], timeout: float, poll: float = 0.02) -> list[ProcessId]:
    """Wait up to ``timeout`` seconds; return the processes still alive."""
    left = [i for i in idents if i.alive()]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(poll)
        left = [i for i in left if i.alive()]
    return left


def terminate(idents: Iterable[ProcessId], grace: float, kill_wait: float = 5.0) -> list[ProcessId]:
    """TERM each process (and the group it leads), wait ``grace``, KILL, confirm.

    Returns the processes that survived KILL (should be empty; a process in
    uninterruptible sleep can linger).
    """
    targets = list(idents)
    for ident in targets:
        signal_identity(ident, signal.SIGTERM, group=True)
    left = wait_gone(targets, grace)
    for ident in left:
        log.warning("pid %d did not exit within %.1fs of SIGTERM: SIGKILL", ident.pid, grace)
        signal_identity(ident, signal.SIGKILL, group=True)
    return wait_gone(left, kill_wait)


def reap_zombie_children(keep: Collection[int]) -> None:
    """Reap our exited children except those in ``keep`` (owned by a Popen).

    Orphans handed to us as subreaper are waited for one by one, so the exit
    status of a child still owned by a ``subprocess.Popen`` is never stolen.
    """
    for pid in children(os.getpid()):
        if pid not in keep and is_zombie(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
