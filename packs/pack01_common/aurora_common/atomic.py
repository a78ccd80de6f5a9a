"""Atomic replace of a file: a reader sees the old content or the new, never a mix.

Temp file ``.<name>.<random>.tmp`` in the target's own directory, write all of it,
fsync, set the mode, rename over the target, fsync the directory. The temp file
is removed on any error, and the error names the target file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from aurora_common.errors import named_oserror

# mkstemp's random part is 8 characters of [a-z0-9_].
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the temp file of an (interrupted) atomic replace."""
    return _TEMP_NAME.fullmatch(name) is not None


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_bytes(path: Path, data: bytes, mode: int = 0o644, *, parents: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Raises OSError naming ``path`` (errno kept) when any step fails; the target
    is then unchanged and no temp file is left behind.
    """
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise named_oserror(exc, "create a temp file for", path) from exc
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        if isinstance(exc, OSError):
            raise named_oserror(exc, "write", path) from exc
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        raise named_oserror(exc, "sync the directory of", path) from exc


def replace_json(path: Path, document: Any, mode: int = 0o644) -> None:
    """Atomically replace ``path`` with ``document`` as indented, key-sorted JSON."""
    text = json.dumps(document, indent=2, sort_keys=True, allow_nan=False) + "\n"
    replace_bytes(path, text.encode(), mode)


def remove_temps(directory: Path, target_name: str) -> list[Path]:
    """Remove the temp files an interrupted replace of ``directory/target_name`` left.

    Returns what was removed. Only regular files (not symlinks) are removed.
    """
    removed: list[Path] = []
    prefix = f".{target_name}."
    with os.scandir(directory) as it:
        names = [e.name for e in it if e.is_file(follow_symlinks=False)]
    for name in names:
        if name.startswith(prefix) and is_temp_name(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
                removed.append(directory / name)
    return removed
