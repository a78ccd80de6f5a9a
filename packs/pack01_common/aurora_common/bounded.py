"""Bounded reads: a size cap, and nothing but a regular file is ever read.

``lstat`` first: a FIFO, device, socket, directory or symlink is refused before
it is opened (opening a FIFO blocks, opening a device can act). Then open with
``O_NOFOLLOW | O_NONBLOCK``, check with ``fstat`` that it is the same regular
file, and read at most ``limit + 1`` bytes. Every refusal names the file.
"""

from __future__ import annotations

import os
import stat

from aurora_common.errors import InputRefused, named_oserror

TYPE_CHECKING = False  # pathlib is dear to import and only named in annotations here
if TYPE_CHECKING:
    from pathlib import Path

_KINDS = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _refuse_unless_regular(path: str | Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise InputRefused(f"{path}: is {_kind(st.st_mode)}, not a regular file", str(path))


def read_bytes(path: str | Path, limit: int) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes.

    Raises FileNotFoundError when it is missing, InputRefused when it is not a
    regular file or is larger than ``limit``, OSError (naming it) otherwise.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise named_oserror(exc, "examine", path) from exc
    _refuse_unless_regular(path, before)
    if before.st_size > limit:
        raise InputRefused(
            f"{path}: {before.st_size} bytes exceeds the limit of {limit}", str(path)
        )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: replaced by a symlink since the lstat
            raise InputRefused(f"{path}: is a symlink, not a regular file", str(path)) from None
        raise named_oserror(exc, "open", path) from exc
    try:
        st = os.fstat(fd)
        _refuse_unless_regular(path, st)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise InputRefused(f"{path}: replaced while being read", str(path))
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise named_oserror(exc, "read", path) from exc
    finally:
        os.close(fd)
    if total > limit:
        raise InputRefused(f"{path}: larger than the limit of {limit} bytes", str(path))
    return b"".join(chunks)


def decode_utf8(data: bytes, where: str) -> str:
    """``data`` as text; non-UTF-8 (including encoded surrogates) is refused with its offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputRefused(f"{where}: not UTF-8 text (byte {exc.start})", where) from None


def read_text(path: Path, limit: int) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``limit`` bytes."""
    return decode_utf8(read_bytes(path, limit), str(path))
