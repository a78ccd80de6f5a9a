"""Ownership of what the launcher lays out: plugin data dirs are the plugin's, the rest root's.

A plugin's ``plugin-data/<id>/`` is owned by its uid:gid, mode 0700. A data dir of
other ownership (from before plugins had identities: root-owned files inside) is
re-owned as a whole tree with fd-based walks that never follow a symlink. Every other
directory of the launcher is root's and closed to plugin uids (``private_dirs``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from launcher.errors import LauncherError

#: Directories only the supervisor (root) uses: mode 0700.
PRIVATE = 0o700
#: Directories a plugin process may have to traverse to reach its own data dir:
#: search only, no listing (the other plugins' ids stay unlisted).
TRAVERSE = 0o711


def root_dir(path: Path, mode: int) -> None:
    """Make ``path`` a real directory of this uid with exactly ``mode``."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            os.fchown(fd, os.geteuid(), os.getegid())
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _reown_tree(top: int, uid: int, gid: int) -> int:
    """chown everything beneath the open directory ``top``; never through a symlink."""
    count = 0
    for _dir, dirs, files, dfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
        for name in (*dirs, *files):
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)
            count += 1
    return count


def plugin_dir(path: Path, uid: int, gid: int, force: bool = False) -> int:
    """Make ``path`` the plugin's data dir (owner uid:gid, mode 0700).

    Returns how many entries beneath it were re-owned (0 when it already was the
    plugin's; ``force``: re-own the tree whatever the top's owner). Raises
    LauncherError when ``path`` is a symlink or not a directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=PRIVATE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise LauncherError(f"{path}: not a plain directory ({exc.strerror})") from exc
    try:
        st = os.fstat(fd)
        moved = 0
        if force or (st.st_uid, st.st_gid) != (uid, gid):
            moved = _reown_tree(fd, uid, gid)
            os.fchown(fd, uid, gid)
        if stat.S_IMODE(st.st_mode) != PRIVATE:
            os.fchmod(fd, PRIVATE)
        return moved
    finally:
        os.close(fd)
