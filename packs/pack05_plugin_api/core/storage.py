"""Durable files: atomic replacement and flock locks (os and fcntl only).

The lifecycle scripts import this module by path (``process.py``), without the plugin core,
so it stays cheap to import: no pathlib, no json.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: StrPath, data: bytes, *, backup: StrPath | None = None) -> os.stat_result:
    """Replace ``path`` with ``data`` atomically and durably; return the new file's stat.

    Temp file in the same directory, write, fsync, (hard-link the old file as ``backup``),
    rename, fsync the directory. The temp file is removed on any exception, so a crash
    leaves the old or the new content, never a mix and never neither.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            stat = os.fstat(fd)
        finally:
            os.close(fd)
        if backup is not None:
            _link_backup(path, os.fspath(backup))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return stat


def _link_backup(path: str, backup: str) -> None:
    """Keep the current file as ``backup``; a hard link costs nothing since files are replaced."""
    tmp = os.path.join(os.path.dirname(backup), f".{os.path.basename(backup)}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except FileNotFoundError:
        return  # first write: nothing to keep yet
    except OSError:  # no hard links on this filesystem: copy instead
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            dst.write(src.read())
    try:
        os.replace(tmp, backup)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class FileLock:
    """An exclusive ``flock`` on a lock file that is created if needed and never deleted.

    The kernel drops the lock when the holder dies, so it cannot go stale.
    """

    def __init__(self, path: StrPath, *, blocking: bool = True) -> None:
        self.path = path
        self.blocking = blocking
        self.fd = -1

    def acquire(self) -> bool:
        """Take the lock; False (without waiting) when non-blocking and someone holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def locked(lock_path: StrPath) -> FileLock:
    """Hold an exclusive flock on ``lock_path`` for a ``with`` block (waits for it)."""
    return FileLock(lock_path)
