"""installer.lock: one installer at a time changes state (pack01_common's flock lock).

The lock file is never deleted and acquiring it writes nothing, so every locking
command (uninstall, which frees space, included) works on a full disk; the holder
is named from /proc/locks (``aurora_common.lock``). The home is closed to other uids
(``Home.secure``) before the lock is taken: a lock file another uid can open is a lock
it can hold.
"""

from __future__ import annotations

from pathlib import Path

from aurora_common.lock import FileLock, LockBusy, holder_of

from aurora.errors import LockBusyError
from aurora.home import Home


def read_holder(path: Path) -> int | None:
    """The pid holding the lock on ``path``, if any is known."""
    return holder_of(path)


class InstallerLock(FileLock):
    """Exclusive flock on ``path``, waited for up to ``wait`` seconds."""

    def acquire(self) -> None:
        # The lock's directory is the home: closed to other uids (a plugin's included)
        # before anything in it is opened (Home.secure).
        Home(self.path.parent).secure()
        try:
            super().acquire()
        except LockBusy as exc:
            who = f"pid {exc.holder}" if exc.holder else "another process"
            raise LockBusyError(
                f"another installer ({who}) holds {self.path}; "
                f"waited {self.wait:g} s (use --wait SECONDS to wait longer)",
                exc.holder,
            ) from None

    def __enter__(self) -> InstallerLock:
        self.acquire()
        return self
