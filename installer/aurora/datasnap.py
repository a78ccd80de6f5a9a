"""A copy of data/<id> taken before install.sh --install runs, so that an install that
fails or is killed before its commit point leaves the pack's data as the version still
in force left it (install.sh writes data/<id> in place: migrations, first-run files).

The copy is ``data/.before-install-<id>-<random>``, named in the pending install record
(``pending.data``; ``ABSENT`` when there was no data/<id> to copy, ``UNTRACKED`` when
data/<id> is not a real directory and is left alone). A failed install.sh or the
recovery of an uncommitted install puts it back; a committed install removes it; a
copy no pending record names is a leftover, removed by recovery. It costs one copy of
the pack's data per install.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from aurora.errors import OperationFailed
from aurora.fsutil import fsync_dir, remove_tree
from aurora.home import Home

PREFIX = ".before-install-"
ABSENT = ""  # no data/<id> before install.sh: one it creates is removed on failure
UNTRACKED = "-"  # data/<id> is a symlink or not a directory: never copied nor replaced


def take(home: Home, pack_id: str) -> str:
    """Copy data/<id> durably; returns what the pending record keeps (see above)."""
    data = home.data(pack_id)
    if data.is_symlink() or (data.exists() and not data.is_dir()):
        return UNTRACKED
    if not data.exists():
        return ABSENT
    name = f"{PREFIX}{pack_id}-{secrets.token_hex(4)}"
    copy = data.parent / name
    try:
        shutil.copytree(data, copy, symlinks=True)
        os.sync()  # the copy is on disk before install.sh may change the original
    except (OSError, shutil.Error) as exc:
        remove_tree(copy)
        raise OperationFailed(
            f"cannot copy {data} to {copy} before install.sh runs (nothing changed): {exc}"
        ) from exc
    return name


def restore(home: Home, pack_id: str, taken: str) -> list[str]:
    """Put data/<id> back as ``take`` found it; returns what was done."""
    if taken == UNTRACKED:
        return []
    data = home.data(pack_id)
    if taken == ABSENT:
        if not (data.exists() or data.is_symlink()):
            return []
        remove_tree(data)
        return [f"removed {data}: the failed install created it"]
    copy = data.parent / taken
    if copy.is_symlink() or not copy.is_dir():
        return [f"{copy} is not there (already put back?): {data} left as it is"]
    remove_tree(data)
    os.rename(copy, data)
    fsync_dir(data.parent)
    return [f"put back {data} as it was before the failed install"]


def discard(home: Home, taken: str) -> None:
    """Remove the copy once the install is committed (or never ran install.sh)."""
    if taken not in (ABSENT, UNTRACKED) and taken.startswith(PREFIX):
        remove_tree(home.root / "data" / taken)


def leftovers(home: Home, named: set[str]) -> list[Path]:
    """Copies in data/ that no pending install names (a kill while one was taken)."""
    parent = home.root / "data"
    if parent.is_symlink() or not parent.is_dir():
        return []
    return [
        p
        for p in sorted(parent.iterdir())
        if p.name.startswith(PREFIX) and p.name not in named and not p.is_symlink()
    ]
