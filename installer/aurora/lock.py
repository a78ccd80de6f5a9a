"""installer.lock: one installer at a time changes state (flock, never deleted)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from aurora.errors import LockBusyError


def read_holder(path: Path) -> int | None:
    """The pid written into the lock file by its current holder, if readable."""
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


class InstallerLock:
    """Exclusive flock on ``path``, waited for up to ``wait`` seconds.

    The kernel releases the lock when the holder dies, so it cannot go stale;
    the file itself is never deleted (deleting it would let two holders lock
    two different inodes).
    """

    def __init__(self, path: Path, wait: float) -> None:
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the current holder's pid stays readable until we hold the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    holder = read_holder(self.path)
                    who = f"pid {holder}" if holder else "another process"
                    raise LockBusyError(
                        f"another installer ({who}) holds {self.path}; "
                        f"waited {self.wait:g} s (use --wait SECONDS to wait longer)",
                        holder,
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> InstallerLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
