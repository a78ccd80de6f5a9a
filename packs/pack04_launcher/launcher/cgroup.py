"""Whole-tree containment with cgroup v2: every plugin in its own cgroup.

A process that double-forks and calls ``setsid`` leaves its process group and
session, but not its cgroup; ``cgroup.kill`` (Linux 5.14+) kills every process
in the cgroup and its descendants at once. Where no writable cgroup v2
hierarchy exists the supervisor falls back to tracking descendants through
/proc (see README, "Limits").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def _cgroup2_mount() -> Path | None:
    """Mount point of the cgroup v2 hierarchy (pure v2 or the hybrid 'unified')."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def _own_cgroup2_path() -> str | None:
    """This process's cgroup v2 path (the '0::' line of /proc/self/cgroup)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        return None
    return None


class CgroupTree:
    """A directory of per-plugin cgroups owned by one supervisor (one run dir)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    @classmethod
    def create(cls, owner_key: str) -> CgroupTree | None:
        """Make (or adopt) the supervisor's base cgroup; None when unavailable.

        The name is derived from ``owner_key`` (the run dir), which one
        supervisor holds locked, so a base left by a supervisor that was killed
        is adopted and its leftover plugins are killed by the caller.
        """
        mount, own = _cgroup2_mount(), _own_cgroup2_path()
        if mount is None or own is None:
            log.info("no cgroup v2 hierarchy: tracking plugin trees through /proc")
            return None
        digest = hashlib.sha256(owner_key.encode()).hexdigest()[:12]
        base = mount / own.lstrip("/") / f"aurora-launcher-{digest}"
        try:
            base.mkdir(exist_ok=True)
            probe = base / ".probe"
            probe.mkdir(exist_ok=True)
            ok = (probe / "cgroup.kill").exists()
            probe.rmdir()
        except OSError as exc:
            log.info("cgroup v2 at %s not writable (%s): tracking through /proc", mount, exc)
            return None
        if not ok:
            log.info("cgroup v2 without cgroup.kill (kernel < 5.14): tracking through /proc")
            with contextlib.suppress(OSError):
                base.rmdir()
            return None
        return cls(base)

    def leftovers(self) -> list[str]:
        """Names of plugin cgroups already present (left by a killed supervisor)."""
        try:
            return sorted(p.name for p in self.base.iterdir() if p.is_dir())
        except OSError:
            return []

    def path(self, name: str) -> Path:
        return self.base / name

    def make(self, name: str) -> Path:
        """Create the cgroup ``name`` (empty) and return its path."""
        path = self.base / name
        if path.exists():
            self.kill(name)
        path.mkdir()
        return path

    def enter_hook(self, name: str) -> Callable[[], None]:
        """A ``preexec_fn`` that moves the new child into cgroup ``name`` before exec.

        Done in the child, between fork and exec, so the plugin cannot fork
        before it is contained.
        """
        procs = str(self.base / name / "cgroup.procs")

        def _enter() -> None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

        return _enter

    def pids(self, name: str) -> list[int]:
        """Every pid in cgroup ``name`` and its sub-cgroups."""
        out: list[int] = []
        root = self.base / name
        for dirpath, _dirs, _files in os.walk(root):
            with contextlib.suppress(OSError):
                out.extend(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
        return out

    def populated(self, name: str) -> bool:
        try:
            text = (self.base / name / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in text

    def signal_all(self, name: str, sig: int) -> None:
        """Send ``sig`` to every process in the cgroup (they cannot leave it)."""
        for pid in self.pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self, name: str, timeout: float = 5.0) -> bool:
        """SIGKILL the whole cgroup, wait until it is empty, remove it.

        Returns True when the cgroup is gone (or never existed).
        """
        path = self.base / name
        if not path.exists():
            return True
        with contextlib.suppress(OSError):
            (path / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + timeout
        while self.populated(name) and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.remove(name)

    def remove(self, name: str) -> bool:
        """rmdir the cgroup and its sub-cgroups (deepest first); True when gone."""
        path = self.base / name
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -len(t[0])):
            try:
                os.rmdir(dirpath)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                log.warning("cgroup %s still busy", dirpath)
                return False
        return True

    def terminate(self, name: str, grace: float) -> bool:
        """TERM every process in the cgroup, wait ``grace``, then kill the rest."""
        self.signal_all(name, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.populated(name) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.kill(name)

    def close(self) -> None:
        """Remove the base cgroup if it is empty."""
        with contextlib.suppress(OSError):
            self.base.rmdir()
