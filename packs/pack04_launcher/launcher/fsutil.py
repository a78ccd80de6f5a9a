"""Durable file writes (a reader sees the old or the new file, never half) and their lock.

The write is pack01's one implementation; this module only sets pack04's defaults
(mode 0600, indented JSON).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aurora_common.atomic import replace_bytes
from aurora_common.lock import FileLock


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: pack01's atomic replace (``aurora_common.atomic``:
    temp file, fsync, rename, fsync of the directory), root's alone by default."""
    replace_bytes(path, data, mode)


def atomic_write_json(path: Path, doc: Any, mode: int = 0o600) -> None:
    """Write ``doc`` as indented JSON, atomically and durably (root's alone by default)."""
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode(), mode)


#: How long a read-modify-write waits for its lock before LockBusy names the holder.
LOCK_WAIT = 60.0


@contextlib.contextmanager
def locked(lock: Path, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold ``aurora_common.lock``'s exclusive flock on ``lock`` (0600, created, never
    deleted) for a read-modify-write; LockBusy naming the holder after ``wait`` seconds."""
    with FileLock(lock, wait):
        yield
