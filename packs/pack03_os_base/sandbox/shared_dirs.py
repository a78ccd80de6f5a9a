"""The host's world-writable directories, made private for a plugin with ``fs-write``.

``fs-write`` binds the host read-write, but a world-writable directory (``/var/tmp``,
``/run/lock``) would take any amount of the plugin's files onto the host disk, outside
its data image's quota, and keep them after the run. Each such existing directory
becomes a private, size-bounded tmpfs in the plugin's view (like ``/tmp``): its pages
are charged to the plugin's memory cgroup and vanish with the run.

Found without walking the host: the known ones, plus the world-writable entries one
level below the usual places (``/var``, ``/run``, ``/var/lib``, ``/var/spool``,
``/var/cache``). ``/tmp`` and ``/dev`` are private already; ``/proc`` and ``/sys`` are not
the plugin's to write.
"""

from __future__ import annotations

import os
import stat

#: Known shared directories (FHS and Debian): made private when they exist.
KNOWN = ("/var/tmp", "/run/lock", "/var/lock", "/var/crash", "/run/shm", "/var/lib/php/sessions")
#: Directories whose entries are looked at (one level, no recursion).
SCANNED = ("/", "/var", "/run", "/var/lib", "/var/spool", "/var/cache")
_SKIP = ("/tmp", "/dev", "/proc", "/sys")
#: Size of each private one (as /tmp's).
SIZE = 16 * 1024 * 1024


def _shared(path: str) -> os.stat_result | None:
    """The stat of `path` when it is a directory anyone may write into, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_IWOTH:
        return st
    return None


def _skipped(path: str) -> bool:
    return any(path == s or path.startswith(s + "/") for s in _SKIP)


def find() -> dict[str, int]:
    """Real paths of the host's world-writable directories -> their mode (``0o1777``),
    outermost only (one below another is covered by it)."""
    candidates = set(KNOWN)
    for top in SCANNED:
        try:
            with os.scandir(top) as entries:
                candidates.update(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    found: dict[str, int] = {}
    for path in candidates:
        real = os.path.realpath(path)
        st = None if _skipped(real) else _shared(real)
        if st is not None:
            found[real] = stat.S_IMODE(st.st_mode)
    return {
        p: mode
        for p, mode in sorted(found.items())
        if not any(p.startswith(q.rstrip("/") + "/") for q in found if q != p)
    }


__all__ = ["KNOWN", "SCANNED", "SIZE", "find"]
