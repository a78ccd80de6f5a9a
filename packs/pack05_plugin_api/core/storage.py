"""Durable files of pack05: the shared primitives (pack01_common) plus what only pack05 needs.

Atomic replace, fsync of a directory and bounded reads are ``aurora_common``'s
(docs/primitives.md); this module adds the registry's backup hard link, pack05's wait
for ``aurora_common.lock`` (the one lock primitive), and which errors count as I/O
failures. The lifecycle scripts import this module by path (``process.py``), without
the plugin core.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

try:
    from . import aurora_boot
except ImportError:  # imported by path (process.py): core/ itself is on sys.path
    import aurora_boot  # type: ignore[no-redef]  # noqa: F401

from aurora_common.atomic import fsync_dir as _fsync_dir
from aurora_common.atomic import replace_bytes
from aurora_common.bounded import read_bytes
from aurora_common.errors import InputRefused, named_oserror
from aurora_common.lock import FileLock, LockBusy, private_dir

__all__ = [
    "IO_ERRNOS",
    "LOCK_WAIT",
    "FileLock",
    "InputRefused",
    "LockBusy",
    "atomic_write",
    "fsync_dir",
    "is_io_failure",
    "locked",
    "named_oserror",
    "private_dir",
    "read_bytes",
    "refusal_reason",
]

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


def refusal_reason(exc: InputRefused, path: StrPath) -> str:
    """The reason of a bounded-read refusal without the file name it starts with."""
    text, prefix = str(exc), f"{os.fspath(path)}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def fsync_dir(path: StrPath) -> None:
    """Make a rename or a new entry in ``path`` durable; an error names the directory."""
    try:
        _fsync_dir(Path(path))
    except OSError as exc:
        raise named_oserror(exc, "sync the directory", path) from None


def atomic_write(path: StrPath, data: bytes, *, backup: StrPath | None = None) -> os.stat_result:
    """Replace ``path`` with ``data`` atomically and durably; return the new file's stat.

    ``aurora_common.atomic.replace_bytes``, after hard-linking the current file as
    ``backup`` (the last good copy: files are only ever replaced, so a link costs nothing).
    A crash leaves the old or the new content, never a mix and never neither.
    """
    target = Path(path)
    if backup is not None:
        _link_backup(target, Path(backup))
    replace_bytes(target, data, 0o600, parents=False)  # root's alone: grants are nobody's business
    return os.stat(target)


def _link_backup(path: Path, backup: Path) -> None:
    tmp = backup.with_name(f".{backup.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(path, tmp)
    except FileNotFoundError:
        return  # first write: nothing to keep yet
    except OSError as exc:
        if exc.errno in IO_ERRNOS:
            raise named_oserror(exc, "keep the backup", backup) from None
        replace_bytes(backup, read_bytes(path, 1 << 30), parents=False)  # no hard links here
        return
    try:
        os.replace(tmp, backup)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: How long a pack05 command waits for one of its locks before it fails naming the holder
#: (exit 5, busy): a holder that never lets go must not block the operator for ever.
LOCK_WAIT = 60.0


def locked(lock_path: StrPath, wait: float | None = None) -> FileLock:
    """Hold ``aurora_common.lock``'s exclusive flock on ``lock_path`` for a ``with`` block:
    waits up to ``wait`` (default ``LOCK_WAIT``) seconds, then raises LockBusy naming the
    holder."""
    return FileLock(Path(lock_path), LOCK_WAIT if wait is None else wait)
