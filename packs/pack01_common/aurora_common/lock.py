"""The lock file: an exclusive ``flock`` on a file that is never deleted.

The kernel releases the lock when its holder dies, so it never goes stale; the
file is never deleted (two processes could otherwise lock two different inodes).
Acquiring writes nothing: on a full disk the lock is still taken (an existing
lock file needs no space). The holder is named from ``/proc/locks`` (the kernel's
own record of who holds the flock); the pid written into the file after
acquiring is best effort, only a fallback where ``/proc/locks`` is unreadable.

The file is its owner's alone (0600): ``flock`` needs only a descriptor, so a lock
file another uid can open (even read-only) is a lock that uid can hold for ever. An
existing lock file with a wider mode is narrowed; one owned by another uid is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from aurora_common.errors import named_oserror


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is its pid when known."""

    def __init__(self, message: str, path: Path, holder: int | None) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


def _proc_locks_holder(st: os.stat_result) -> int | None:
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            lines = fh.read(1 << 20).splitlines()
    except OSError:
        return None
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (dev numbers in hex)
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        dev_ino = fields[5].split(":")
        if len(dev_ino) != 3:
            continue
        try:
            same = (int(dev_ino[0], 16), int(dev_ino[1], 16), int(dev_ino[2])) == (
                major,
                minor,
                st.st_ino,
            )
            if same:
                return int(fields[4])
        except ValueError:
            continue
    return None


def _written_holder(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            text = fh.read(64).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def holder_of(path: Path) -> int | None:
    """The pid holding the flock on ``path``, if any is known."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _proc_locks_holder(st) or _written_holder(path)


class LockUnsafe(OSError):
    """The lock file belongs to another uid: whoever owns it can hold the lock for ever."""


def _own_only(fd: int, path: Path) -> None:
    """Narrow ``fd``'s file to 0600; refuse a file another uid owns (it could re-widen it)."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        raise LockUnsafe(
            f"{path}: the lock file belongs to uid {st.st_uid}, not {os.geteuid()}; "
            "remove it (it is re-created, the owner's alone)"
        )
    if st.st_mode & 0o7077:
        os.fchmod(fd, 0o600)


def private_dir(path: Path, mode: int = 0o700) -> Path:
    """Make ``path`` (and missing parents) with ``mode``; narrow an existing one we own.

    For the directories of lock files, registries and logs: another uid that cannot
    reach a lock file cannot open it, so cannot hold the lock (nor read what lies
    beside it). A directory another uid owns is left alone (not ours to change).
    """
    path = Path(path)
    path.mkdir(mode=mode, parents=True, exist_ok=True)  # an OSError names the path
    st = os.stat(path)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & ~mode:
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    return path


class FileLock:
    """Exclusive flock on ``path``, waited for up to ``wait`` seconds (0: only try once)."""

    def __init__(self, path: Path, wait: float) -> None:
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock; raises LockBusy after ``wait`` seconds, OSError naming the file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # No O_TRUNC: the current holder's pid stays readable until we hold the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise named_oserror(exc, "open the lock file", self.path) from exc
        try:
            _own_only(fd, self.path)
        except LockUnsafe:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            raise named_oserror(exc, "narrow the mode of the lock file", self.path) from exc
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = holder_of(self.path)
                    os.close(fd)
                    who = f"pid {holder}" if holder else "another process"
                    raise LockBusy(
                        f"{who} holds {self.path}; waited {self.wait:g} s", self.path, holder
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        with contextlib.suppress(OSError):  # best effort: the lock is held either way
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
