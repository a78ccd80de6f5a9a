"""The tree digest pack05 records for a staged package (schemas/plugin-registry-v1.json).

``sha256:`` over one line per file, ``<sha256> <size> <path>``, or symlink,
``-> <target> <path>``, sorted by the UTF-8 bytes of the relative POSIX path;
directories are implied. The launcher recomputes it before each start so that
what runs is what the operator enabled, not a package changed since.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

_CHUNK = 1024 * 1024


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """The digest of the tree at ``root`` (symlinks recorded, never followed).

    Raises OSError if the tree cannot be read.
    """
    lines: list[tuple[bytes, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        # A symlink to a directory is listed among dirnames: record it as a link.
        for name in [*dirnames, *filenames]:
            full = base / name
            rel = full.relative_to(root).as_posix()
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                lines.append((rel.encode(), f"-> {os.readlink(full)} {rel}\n"))
            elif stat.S_ISREG(st.st_mode):
                lines.append((rel.encode(), f"{_file_sha256(full)} {st.st_size} {rel}\n"))
    h = hashlib.sha256()
    for _key, line in sorted(lines):
        h.update(line.encode())
    return "sha256:" + h.hexdigest()
