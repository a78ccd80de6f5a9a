"""Durable files: atomic replacement and flock locks (os and fcntl only).

The lifecycle scripts import this module by path (``process.py``), without the plugin core,
so it stays cheap to import: no pathlib, no json.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat

StrPath = str | os.PathLike[str]

# errno values that mean "this machine could not do it now", never "the input is bad":
# disk full, quota, inodes, I/O, read-only or out of memory. Callers report them as I/O
# failures (retried later), not as refused input.
IO_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
)


def is_io_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a resource or I/O failure of this machine (see ``IO_ERRNOS``)."""
    return isinstance(exc, OSError) and exc.errno in IO_ERRNOS


class UnsafeFile(OSError):
    """A path that should be a small regular file is something else, or too large."""

    def __init__(self, path: StrPath, what: str) -> None:
        super().__init__(errno.EINVAL, what, os.fspath(path))
        self.what = what

    def __str__(self) -> str:
        return f"{self.filename}: {self.what}"


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def open_regular(path: StrPath) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking and without following a final symlink.

    Returns the descriptor (the caller closes it) and its stat. FileNotFoundError passes
    through; a symlink, FIFO, device, socket or directory raises ``UnsafeFile``: a FIFO in
    place of a state file never hangs a reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(path, "is a symbolic link, expected a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(path, f"is {_kind(st.st_mode)}, expected a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_fd(fd: int, path: StrPath, max_bytes: int) -> bytes:
    """At most ``max_bytes`` from ``fd``; UnsafeFile when there is more."""
    chunks: list[bytes] = []
    left = max_bytes + 1
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise UnsafeFile(path, f"is larger than {max_bytes} bytes")
    return data


def read_bounded(path: StrPath, max_bytes: int) -> bytes:
    """The content of a regular file of at most ``max_bytes`` (see ``open_regular``)."""
    fd, st = open_regular(path)
    try:
        if st.st_size > max_bytes:
            raise UnsafeFile(path, f"is larger than {max_bytes} bytes ({st.st_size})")
        return read_fd(fd, path, max_bytes)
    finally:
        os.close(fd)


def append_durable(path: StrPath, record: bytes) -> None:
    """Append one whole record to ``path`` and make it durable, or leave the file as it was.

    The file is locked (``flock`` on the log itself) while appending, every write is checked,
    and a short or failed write (disk full) is undone by truncating back to the old size, so
    a record is never cut and never glued to the next one. A last line left unterminated by
    a power loss gets its newline first.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(path, f"is {_kind(st.st_mode)}, expected a regular file")
        start = st.st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":
            record = b"\n" + record
        try:
            view = memoryview(record)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise named(exc, path) from None
    finally:
        os.close(fd)


def named(exc: BaseException, path: StrPath) -> BaseException:
    """``exc`` as an OSError naming ``path`` when it named no file (os.write errors)."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, os.fspath(path))
    return exc


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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if backup is not None:
            _link_backup(path, os.fspath(backup))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise named(exc, path) from None
    fsync_dir(directory)
    return st


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
