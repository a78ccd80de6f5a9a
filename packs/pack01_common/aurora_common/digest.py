"""The tree digest: one unambiguous encoding of a directory tree (format ``tree-v1``).

The digest string is ``tree-v1:sha256:<64 hex>``: SHA-256 over the encoding
below. An older digest (plain ``sha256:<hex>``, the ambiguous line format used
before) is recognised by its missing prefix and refused with "restage", never
compared as if it meant the same thing.

Encoding (docs/primitives.md has it byte by byte, with test vectors)::

    b"aurora-tree-v1\\0"
    then for each entry, sorted by the UTF-8 bytes of its path:
      type    1 byte: b"d" directory, b"f" file, b"x" executable file, b"l" symlink
      path    u32 big-endian length, then the UTF-8 bytes (relative, "/"-separated)
      d:      nothing more
      f, x:   u64 big-endian size, then the 32 raw bytes of the content's SHA-256
      l:      u32 big-endian length, then the UTF-8 bytes of the link target

Every variable-length field is length-prefixed and the type fixes what follows,
so two different trees never share an encoding (names may hold ``\\n``, ``\\t``,
`` -> ``). A file is executable ("x") when any execute bit is set; no other mode
bit is recorded. Symlinks are recorded, never followed. The root itself is not
an entry; an empty directory below it is.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from aurora_common.errors import InputRefused

FORMAT = "tree-v1"
PREFIX = "tree-v1:sha256:"
HEADER = b"aurora-tree-v1\0"
PATTERN = re.compile(r"tree-v1:sha256:[0-9a-f]{64}")
_OLD = re.compile(r"sha256:[0-9a-f]{64}")
_CHUNK = 1 << 20
KINDS = ("d", "f", "x", "l")


class DigestFormatError(InputRefused):
    """A recorded digest is not a ``tree-v1`` digest (an old one: restage)."""


@dataclass(frozen=True)
class Entry:
    """One member of a tree. ``sha256`` (hex) and ``size`` for files, ``target`` for links."""

    path: str
    kind: str
    size: int = 0
    sha256: str = ""
    target: str = ""


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputRefused(f"{what} {text!r} is not valid UTF-8") from None


def check_path(path: str) -> bytes:
    """The UTF-8 bytes of a relative entry path; refuses empty, absolute, '.', '..' parts."""
    parts = path.split("/")
    if not path or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise InputRefused(f"entry path {path!r} is not a clean relative path")
    return _utf8(path, "entry path")


def encode_entry(entry: Entry) -> bytes:
    """The bytes of one entry."""
    path = check_path(entry.path)
    head = entry.kind.encode("ascii") + struct.pack(">I", len(path)) + path
    if entry.kind == "d":
        return head
    if entry.kind in ("f", "x"):
        if entry.size < 0 or not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
            raise InputRefused(f"entry {entry.path!r}: needs a size and a sha256 hex")
        return head + struct.pack(">Q", entry.size) + bytes.fromhex(entry.sha256)
    if entry.kind == "l":
        target = _utf8(entry.target, "link target")
        if not target or b"\0" in target:
            raise InputRefused(f"entry {entry.path!r}: empty link target")
        return head + struct.pack(">I", len(target)) + target
    raise InputRefused(f"entry {entry.path!r}: unknown kind {entry.kind!r}")


def encode(entries: Iterable[Entry]) -> bytes:
    """The whole encoding (header + entries sorted by path bytes); duplicates refused."""
    items = sorted(entries, key=lambda e: check_path(e.path))
    for a, b in itertools.pairwise(items):
        if a.path == b.path:
            raise InputRefused(f"entry path {a.path!r} appears twice")
    return HEADER + b"".join(encode_entry(e) for e in items)


def digest_entries(entries: Iterable[Entry]) -> str:
    """The ``tree-v1:sha256:<hex>`` digest of ``entries``."""
    return PREFIX + hashlib.sha256(encode(entries)).hexdigest()


def check_format(digest: object, where: str = "digest") -> str:
    """``digest`` if it is a tree-v1 digest; DigestFormatError otherwise (old ones: restage)."""
    if isinstance(digest, str) and PATTERN.fullmatch(digest):
        return digest
    if isinstance(digest, str) and _OLD.fullmatch(digest):
        raise DigestFormatError(
            f"{where}: {digest[:23]}... is an old-format tree digest (before {FORMAT}); "
            "restage the package to record a current one",
            where,
        )
    raise DigestFormatError(f"{where}: {digest!r} is not a {FORMAT} tree digest", where)


def hex_part(digest: str) -> str:
    """The 64 hex digits of a tree-v1 digest."""
    return check_format(digest)[len(PREFIX) :]


def file_sha256(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a regular file, opened without following a symlink."""
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputRefused(f"{path}: not a regular file")
        while chunk := os.read(fd, _CHUNK):
            h.update(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest(), size


def kind_of(st: os.stat_result) -> str | None:
    """The entry kind of an lstat result, None for anything else (FIFO, device...)."""
    if stat.S_ISDIR(st.st_mode):
        return "d"
    if stat.S_ISLNK(st.st_mode):
        return "l"
    if stat.S_ISREG(st.st_mode):
        return "x" if st.st_mode & 0o111 else "f"
    return None


Exclude = Callable[[tuple[str, ...]], bool]


def scan(root: Path, exclude: Exclude | None = None) -> list[Entry]:
    """The entries of the tree at ``root`` (symlinks recorded, never followed).

    ``exclude(parts)`` leaves out a path (and everything below it). Raises
    InputRefused for a special file or a name that is not UTF-8, OSError when
    the tree cannot be read.
    """
    entries: list[Entry] = []

    def visit(directory: Path, prefix: tuple[str, ...]) -> None:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            parts = (*prefix, name)
            if exclude is not None and exclude(parts):
                continue
            rel = "/".join(parts)
            full = directory / name
            st = os.lstat(full)
            kind = kind_of(st)
            if kind is None:
                raise InputRefused(f"{full}: not a regular file, directory or symlink")
            if kind == "d":
                entries.append(Entry(rel, "d"))
                visit(full, parts)
            elif kind == "l":
                entries.append(Entry(rel, "l", target=os.readlink(full)))
            else:
                sha, size = file_sha256(full)
                entries.append(Entry(rel, kind, size=size, sha256=sha))

    visit(root, ())
    for e in entries:
        check_path(e.path)
    return entries


def tree_digest(root: Path, exclude: Exclude | None = None) -> str:
    """The tree-v1 digest of the tree at ``root``."""
    return digest_entries(scan(root, exclude))
