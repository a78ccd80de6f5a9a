"""Durable file operations: atomic replace, directory fsync, append-only lines."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

CRASH_ENV = "AURORA_TEST_CRASH_AT"


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: a reader sees the old or the new file, never half.

    Temp file in the same directory, write, flush, fsync, rename, fsync the
    directory; the temp file is removed on any exception.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, document: Any) -> None:
    """Atomically write ``document`` as indented JSON."""
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())


def append_line(path: Path, line: str) -> None:
    """Append one line durably (O_APPEND: concurrent appenders never interleave a line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree if it exists (symlinks are removed, not followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def crash_point(name: str) -> None:
    """Die like a power cut at ``name`` when the crash tests ask for it.

    The tests set AURORA_TEST_CRASH_AT to a point name to prove that a crash
    there leaves a usable state; nothing happens otherwise.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
