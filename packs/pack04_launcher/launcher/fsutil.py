"""Durable file writes (a reader sees the old or the new file, never half) and their lock.

The write is pack01's one implementation; this module only sets pack04's defaults
(mode 0600, indented JSON).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aurora_common.atomic import replace_bytes


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: pack01's atomic replace (``aurora_common.atomic``:
    temp file, fsync, rename, fsync of the directory), root's alone by default."""
    replace_bytes(path, data, mode)


def atomic_write_json(path: Path, doc: Any, mode: int = 0o600) -> None:
    """Write ``doc`` as indented JSON, atomically and durably (root's alone by default)."""
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode)


@contextlib.contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock`` (created, never deleted) for a read-modify-write."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
