"""A few hundred KiB of disk kept in reserve so that uninstall works on a full disk.

Every state-changing command that succeeds makes sure ``$AURORA_HOME/.reserve``
exists (best effort: on a full disk it is simply not made). When uninstall
cannot record its intent or write state.json because the disk is full, it
frees the reserve and tries once more: removing a pack is how an operator gets
the space back, so it must not need any.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

RESERVE_BYTES = 512 * 1024


def ensure(path: Path) -> None:
    """Create the reserve file if missing (never raises)."""
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_size >= RESERVE_BYTES:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            except OSError:
                os.ftruncate(fd, 0)  # a partial reserve would only mislead
                raise
        finally:
            os.close(fd)


def release(path: Path) -> bool:
    """Free the reserve; True if there was one."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is ENOSPC or EDQUOT."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
