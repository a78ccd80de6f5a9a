"""Ownership of what the launcher lays out: plugin data dirs are the plugin's, the rest root's.

A plugin's ``plugin-data/<id>/`` is owned by its uid:gid, mode 0700. A data dir of
other ownership (from before plugins had identities: root-owned files inside) is
re-owned as a whole tree with fd-based walks that never follow a symlink. Every other
directory of the launcher is root's and closed to plugin uids (``private_dirs``).
"""

from __future__ import annotations

import contextlib
import errno
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _ids(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _chown_entries(fd: int, uid: int, gid: int) -> tuple[int, list[str]]:
    """chown every entry of the open directory ``fd`` (links themselves); its subdirs."""
    count, subdirs = 0, []
    with os.scandir(fd) as it:
        for entry in it:
            os.chown(entry.name, uid, gid, dir_fd=fd, follow_symlinks=False)
            count += 1
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
    return count, subdirs


def _reown_tree(top: int, uid: int, gid: int) -> int:
    """chown everything beneath the open directory ``top``; never through a symlink.

    Iterative (a plugin-made chain 1500 deep made os.fwalk's recursion fail) and with
    one directory open at a time: it goes down with openat(O_NOFOLLOW) and back up with
    ``..``, checked to be the directory it came from (a tree moved meanwhile stops it).
    """
    fd = os.dup(top)
    try:
        count, subdirs = _chown_entries(fd, uid, gid)
        trail, pending = [_ids(fd)], [subdirs]
        while pending:
            if not pending[-1]:
                pending.pop()
                trail.pop()
                if not pending:
                    break
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
                if _ids(fd) != trail[-1]:
                    raise LauncherError("the data dir changed while it was being re-owned")
                continue
            try:
                down = os.open(pending[-1].pop(), _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # gone, or replaced by a file or a symlink meanwhile: not followed
                raise
            os.close(fd)
            fd = down
            moved, subdirs = _chown_entries(fd, uid, gid)
            count += moved
            trail.append(_ids(fd))
            pending.append(subdirs)
        return count
    finally:
        os.close(fd)


def plugin_dir(path: Path, uid: int, gid: int) -> int:
    """Make ``path`` the plugin's data dir (owner uid:gid, mode 0700).

    Returns how many entries beneath it were re-owned: 0 when its top already is the
    plugin's, so a tree the plugin made is never walked at a (re)start. The plugin
    cannot give its top to another owner (no CAP_CHOWN); only the launcher does, when it
    moves an older tree in (``diskimage.ensure``) or the plugin's uid changed. Raises
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
        if (st.st_uid, st.st_gid) != (uid, gid):
            moved = _reown_tree(fd, uid, gid)
            os.fchown(fd, uid, gid)
        if stat.S_IMODE(st.st_mode) != PRIVATE:
            os.fchmod(fd, PRIVATE)
        return moved
    finally:
        os.close(fd)
