"""Lifecycle scripts die with the installer that runs them.

Each script runs in its own process group with ``PR_SET_PDEATHSIG`` = SIGKILL, so
the kernel kills the script itself when the installer dies. What the script
started in its group (not covered by the death signal) is found by the next run:
while a script runs, ``logs/<id>/.<script>.running.json`` names its group
(best effort: written after the start, removed after the end), and recovery
SIGKILLs every process still in that group whose environment has this
``AURORA_HOME`` (a reused group id can never match both).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: SIGKILL me when the installer dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def mark(marker: Path, pgid: int, argv: list[str]) -> None:
    """Record the running script's group (best effort: never fails the script)."""
    with contextlib.suppress(OSError):
        marker.write_text(json.dumps({"pgid": pgid, "argv": argv}))


def unmark(marker: Path) -> None:
    with contextlib.suppress(OSError):
        marker.unlink()


def markers(home: Path) -> list[Path]:
    return sorted(home.glob("logs/*/.*.running.json"))


def _pgrp(pid: int) -> int | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        return int(data.rpartition(b")")[2].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def has_home(pid: int, home: Path) -> bool:
    """Whether ``pid``'s environment names this AURORA_HOME (what the installer's scripts,
    and what they start, carry)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"AURORA_HOME={home}".encode() in environ.split(b"\0")


def kill_left_behind(home: Path) -> list[str]:
    """SIGKILL what scripts of a killed installer left running; remove the markers."""
    notes: list[str] = []
    for marker in markers(home):
        try:
            doc = json.loads(marker.read_text())
            pgid, argv = int(doc["pgid"]), doc.get("argv")
        except (OSError, ValueError, KeyError, TypeError):
            unmark(marker)
            continue
        killed = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and _pgrp(int(entry)) == pgid and has_home(int(entry), home):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(entry), signal.SIGKILL)
                    killed.append(int(entry))
        if killed:
            notes.append(
                f"killed {argv} (process group {pgid}) left by an interrupted run: {killed}"
            )
        unmark(marker)
    return notes
