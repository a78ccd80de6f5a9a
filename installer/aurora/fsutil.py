"""File operations of the installer: the shared durable writes, tree removal, crash points.

Atomic replace and directory fsync are pack01_common's (``aurora_common.atomic``,
docs/primitives.md); this module only re-exports them under the installer's names.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

from aurora_common.atomic import fsync_dir, is_temp_name, remove_temps
from aurora_common.atomic import replace_bytes as atomic_write_bytes
from aurora_common.atomic import replace_json as atomic_write_json

__all__ = [
    "CRASH_ENV",
    "atomic_write_bytes",
    "atomic_write_json",
    "crash_point",
    "fsync_dir",
    "is_temp_name",
    "remove_temps",
    "remove_tree",
    "remove_what_can_be",
]

CRASH_ENV = "AURORA_TEST_CRASH_AT"


def remove_tree(path: Path) -> None:
    """Remove a file or directory tree if it exists (symlinks are removed, not followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def remove_what_can_be(path: Path) -> list[str]:
    """Remove a file or tree like remove_tree, but go on past what cannot be removed (a
    mount point inside it, an immutable file): returns each thing left behind, as
    ``<full path>: <reason>`` (a directory left only because of those is not named)."""
    left: list[tuple[str, OSError]] = []

    def note(_func: object, where: str, info: tuple[type, BaseException, object]) -> None:
        error = info[1]
        left.append((os.path.abspath(where), error if isinstance(error, OSError) else OSError()))

    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path, onerror=note)
    except OSError as exc:
        left.append((str(path), exc))
    named = [w for w, e in left if e.errno != errno.ENOTEMPTY]
    return [
        f"{where}: {error.strerror or error}"
        for where, error in left
        if error.errno != errno.ENOTEMPTY or not any(n.startswith(where + "/") for n in named)
    ]


def crash_point(name: str) -> None:
    """Die like a power cut at ``name`` when the crash tests ask for it.

    The tests set AURORA_TEST_CRASH_AT to a point name to prove that a crash
    there leaves a usable state; nothing happens otherwise.
    """
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
