"""Durable file primitives: atomic writes, locks, audit (standard library only).

The lifecycle scripts import this module by path (``process.py``), without the plugin core.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def utc_now() -> str:
    """The current time as ISO 8601 UTC with microseconds (``2026-01-01T12:00:00.000000Z``)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_actor() -> str:
    """Who is acting: the login name, else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes, *, backup: Path | None = None) -> os.stat_result:
    """Replace ``path`` with ``data`` atomically and durably; return the new file's stat.

    Temp file in the same directory, write, fsync, (hard-link the old file as ``backup``),
    rename, fsync the directory. The temp file is removed on any exception, so a crash
    leaves the old or the new content, never a mix and never neither.
    """
    path = Path(path)
    directory = path.parent
    tmp = directory / f".{path.name}.tmp-{os.getpid()}"
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
            _link_backup(path, backup)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
    return stat


def _link_backup(path: Path, backup: Path) -> None:
    """Keep the current file as ``backup``; a hard link costs nothing since files are replaced."""
    tmp = backup.with_name(f".{backup.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except FileNotFoundError:
        return  # first write: nothing to keep yet
    except OSError:  # no hard links on this filesystem: copy instead
        tmp.write_bytes(path.read_bytes())
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

    def __init__(self, path: Path | str, *, blocking: bool = True) -> None:
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


def locked(lock_path: Path) -> FileLock:
    """Hold an exclusive flock on ``lock_path`` for a ``with`` block (waits for it)."""
    return FileLock(lock_path)


def audit_entry(
    actor: str | None, action: str, plugin_id: str | None, version: str | None, **details: Any
) -> dict[str, Any]:
    """One audit record: time, actor (default: the login name), action, id, version, details."""
    return {
        "time": utc_now(),
        "actor": actor or default_actor(),
        "action": action,
        "id": plugin_id,
        "version": version,
        **details,
    }


def append_audit(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to the audit log and make it durable.

    One ``write`` on an O_APPEND descriptor, so concurrent writers never interleave lines.
    """
    line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fdatasync(fd)
    finally:
        os.close(fd)


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every record of an audit log (empty when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
