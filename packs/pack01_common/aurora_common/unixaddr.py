"""Addresses of Unix sockets whose path is longer than a ``sockaddr_un`` holds.

A socket deep in a run directory (a test's temporary home, a long ``AURORA_HOME``)
can exceed the 107 bytes of ``sun_path``; it is then bound and connected through
the directory's descriptor, ``/proc/self/fd/<fd>/<name>``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

#: Longest path a sockaddr_un holds (108 bytes with its NUL).
SUN_PATH_MAX = 107


@contextlib.contextmanager
def unix_address(path: str | os.PathLike[str]) -> Iterator[str]:
    """``path``, or ``/proc/self/fd/<dir fd>/<name>`` while the block runs when too long."""
    text = os.fspath(path)
    if len(os.fsencode(text)) <= SUN_PATH_MAX:
        yield text
        return
    fd = os.open(os.path.dirname(text) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(text)}"
    finally:
        os.close(fd)
