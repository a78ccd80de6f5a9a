"""How a package is staged: copied or extracted safely, checked, hashed, then registered.

The loader never runs plugin code.
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import errno
import gzip
import hashlib
import logging
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal

from aurora_common.digest import Entry, digest_entries, file_sha256
from aurora_common.errors import InputRefused
from packaging.version import Version

from . import paths
from .api import MANIFEST_NAMES, load_manifest, validate_manifest
from .errors import ManifestError, PluginError, StagingError
from .permissions import recover_policy
from .registry import REPLACED_MARK, PluginRegistry
from .storage import fsync_dir, is_io_failure, locked, named_oserror, private_dir
from .txn import left_behind

__all__ = ["PluginLoader", "tree_digest"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MAX_LINK = 4096
# Archive metadata is read into memory by tarfile: a GNU long name/link or pax header
# larger than this is refused before it is read, and all of them together are capped.
MAX_TAR_META = 64 * 1024
MAX_TAR_META_TOTAL = 16 * 2**20
# What may follow the end-of-archive marker of a .tar.gz (writers pad to 10 KiB records).
_MAX_TAR_TRAILER = 1 << 20
# staging/rm~<id>[~<version dir>]: a plugin or version being removed (see ``remove``).
_TOMB = "rm~"
# staging/del~<tomb>~<unique>: what a decided removal left; only ever deleted, and never
# in the way of the next removal of the same plugin (its name is its own).
_DEBRIS = "del~"
_REPORTED: set[str] = set()  # leftovers already named by this process
# plugins/space.reserve*: space and inodes kept free so that ``remove`` works on a full disk.
RESERVE = "space.reserve"
_RESERVE_MIN = 64 * 1024
_RESERVE_INODES = 4
# At most this many metadata headers (long name, long link, pax) before one member: a
# real member has at most three.
MAX_TAR_META_RUN = 16
_TAR_META_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)
# A zip's central directory is read whole by zipfile: it is measured and its entries
# counted first (10,000 entries with 300-character names take about 3.5 MiB).
MAX_ZIP_DIRECTORY = 16 * 2**20
_ZIP_DIR_ENTRY = struct.Struct("<4s24sHHH12s")  # signature ... name, extra, comment lengths
_ZIP_DIR_SIGNATURE = b"PK\x01\x02"
# zipfile's end record (``_EndRecData``): the fields used, as zipfile numbers them.
_ECD_SIGNATURE, _ECD_ENTRIES_TOTAL, _ECD_SIZE, _ECD_LOCATION = 0, 4, 5, 9
_ZIP64_END = b"PK\x06\x06"
_ZIP64_END_SIZES = 56 + 20  # the zip64 end record and its locator
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


class _CappedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized metadata headers before tarfile reads them, and
    long runs of them: tarfile reads a metadata header's member by recursing, so a
    flood of them (a few KiB compressed) would end in a RecursionError."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo | None:
        if self.type not in _TAR_META_TYPES:
            result: tarfile.TarInfo | None = super()._proc_member(tarfile_)  # type: ignore[misc]
            return result
        seen = getattr(tarfile_, "_aurora_meta", 0) + self.size
        if self.size > MAX_TAR_META or seen > MAX_TAR_META_TOTAL:
            raise tarfile.SubsequentHeaderError(  # type: ignore[attr-defined]
                f"a {self.size}-byte metadata header at offset {self.offset} "
                f"(at most {MAX_TAR_META} bytes each, {MAX_TAR_META_TOTAL} in all)"
            )
        depth = getattr(tarfile_, "_aurora_run", 0) + 1
        if depth > MAX_TAR_META_RUN:
            raise tarfile.SubsequentHeaderError(  # type: ignore[attr-defined]
                f"more than {MAX_TAR_META_RUN} metadata headers in a row at offset {self.offset}"
            )
        tarfile_._aurora_meta = seen  # type: ignore[attr-defined]
        tarfile_._aurora_run = depth  # type: ignore[attr-defined]
        try:
            meta: tarfile.TarInfo | None = super()._proc_member(tarfile_)  # type: ignore[misc]
        finally:
            tarfile_._aurora_run = depth - 1  # type: ignore[attr-defined]
        return meta


@dataclass
class _Entry:
    """One member of a package tree, relative to its root (POSIX separators)."""

    path: str
    kind: str  # "dir" | "file" | "link"
    size: int = 0
    link: str = ""
    sha256: str = ""
    mode: int = 0o644
    dev_ino: tuple[int, int] = (0, 0)
    mtime_ns: int = 0
    nlink: int = 1

    def common(self) -> Entry:
        """This entry as the shared tree digest records it."""
        if self.kind == "dir":
            return Entry(self.path, "d")
        if self.kind == "link":
            return Entry(self.path, "l", target=self.link)
        kind = "x" if self.mode & 0o111 else "f"
        return Entry(self.path, kind, size=self.size, sha256=self.sha256)

    def record(self) -> dict[str, Any]:
        if self.kind == "link":
            return {"path": self.path, "link": self.link}
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def tree_digest(entries: list[_Entry]) -> str:
    """The ``tree-v1`` digest of a package tree (pack01_common, docs/primitives.md):
    every directory, file (executable or not) and link, unambiguously encoded."""
    return digest_entries([e.common() for e in entries])


def _check_name(rel: str, source: str) -> None:
    """Refuse names that are absolute, climb with '..', or cannot be stored (control chars)."""
    if "\\" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise StagingError(f"absolute path {rel!r} in the package", source=source)
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StagingError(f"path {rel!r} escapes the package ('..')", source=source)
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise StagingError(f"file name {rel!r} contains control characters", source=source)
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        raise StagingError(f"file name {rel!r} is not valid UTF-8", source=source) from None


def _check_link(rel: str, target: str, source: str) -> None:
    """A symlink may point only inside the package, by a relative path."""
    if any(ord(c) < 32 or ord(c) == 127 for c in target):
        raise StagingError(
            f"symlink {rel!r} -> {target!r} contains control characters", source=source
        )
    if os.path.isabs(target):
        raise StagingError(f"symlink {rel!r} -> {target!r} is absolute", source=source)
    resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../"):
        raise StagingError(f"symlink {rel!r} -> {target!r} leads out of the package", source=source)


#: Links followed in resolving one symlink before it counts as a loop (the kernel's 40).
_MAX_HOPS = 40


def _check_links_resolved(links: dict[str, str], source: str) -> None:
    """Refuse a symlink that resolves out of the package through other links in it.

    ``_check_link`` is lexical: ``s -> .`` then ``esc -> s/s/../../etc/shadow`` passes it
    (``normpath`` drops ``s/..``), while the kernel resolves ``s`` first and climbs out.
    So resolve each link as the kernel would, with the package as the whole world:
    every component that is itself a link in ``links`` (path -> target, relative to the
    package root) is replaced by its target, and no ``..`` may climb above the root.
    """
    for rel, target in links.items():
        where = [p for p in rel.split("/")[:-1] if p]  # its directory: real dirs (_walk)
        todo = collections.deque(target.split("/"))
        hops = 0
        while todo:
            part = todo.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if not where:
                    raise StagingError(
                        f"symlink {rel!r} -> {target!r} leads out of the package "
                        "(through the links in it)",
                        source=source,
                    )
                where.pop()
                continue
            step = "/".join([*where, part])
            if step in links:
                hops += 1
                if hops > _MAX_HOPS:
                    raise StagingError(
                        f"symlink {rel!r} -> {target!r}: more than {_MAX_HOPS} links to "
                        "follow (a loop)",
                        source=source,
                    )
                todo.extendleft(reversed(links[step].split("/")))  # relative to `where`
                continue
            where.append(part)


def _special(mode: int) -> str | None:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


def _tree_changes(recorded: list[dict[str, Any]], entries: list[_Entry]) -> str:
    """Which files differ from the ones the registry recorded, in words ('' if unknown)."""
    before = {str(f.get("path")): f for f in recorded}
    after = {e.path: e.record() for e in entries if e.kind != "dir"}
    parts = [
        (what, sorted(paths))
        for what, paths in (
            ("changed", [p for p in before.keys() & after.keys() if before[p] != after[p]]),
            ("missing", list(before.keys() - after.keys())),
            ("extra", list(after.keys() - before.keys())),
        )
        if paths
    ]
    return "; ".join(f"{what}: {', '.join(paths)}" for what, paths in parts)


def _tar_mode(magic: bytes) -> Literal["r:gz", "r:bz2", "r:xz", "r:"]:
    """The tarfile mode for an archive starting with ``magic`` (so that an error says what
    is wrong instead of "could not be opened" by any of the methods tried)."""
    if magic.startswith(b"\x1f\x8b"):
        return "r:gz"
    if magic.startswith(b"BZh"):
        return "r:bz2"
    if magic.startswith(b"\xfd7zXZ\x00"):
        return "r:xz"
    return "r:"


@contextlib.contextmanager
def _open_archive(src: Path, source: str) -> Iterator[BinaryIO]:
    """The archive file, opened without blocking: a FIFO or device is refused, never read."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if is_io_failure(exc):
            raise named_oserror(exc, "open", src) from None
        raise StagingError(f"cannot open the archive: {exc.strerror}", source=source) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise StagingError(
                f"is a {_special(mode) or 'directory'}, not an archive file", source=source
            )
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def _symlink(link: str, target: Path) -> None:
    """Create a symlink; an error names the link written (OSError's first name would be
    the text it points to)."""
    try:
        os.symlink(link, target)
    except OSError as exc:
        if is_io_failure(exc):
            raise named_oserror(exc, "write", target) from None
        exc.filename, exc.filename2 = str(target), None  # the place _refused_by_the_fs shows
        raise


@contextlib.contextmanager
def _refused_by_the_fs(tree: Path, source: str) -> Iterator[None]:
    """A name or layout the file system refuses while the package is written out or
    walked (too long, deeper than PATH_MAX, a file where a directory must be) is a
    refused package naming the member, never an internal temp path; a disk-full or I/O
    failure stays an OSError (exit 1, retried by the inbox)."""
    try:
        yield
    except OSError as exc:
        if is_io_failure(exc) and not exc.filename:  # a write without a name: say where
            raise named_oserror(exc, "write into", tree) from None
        if is_io_failure(exc) or exc.errno in (errno.EACCES, errno.EPERM) or exc.errno is None:
            raise
        where = ""
        if isinstance(exc.filename, str):
            rel = os.path.relpath(exc.filename, tree)
            shown = rel if not rel.startswith("..") else exc.filename
            where = f" {shown[:200]!r}" + ("..." if len(shown) > 200 else "")
        raise StagingError(f"cannot write{where}: {exc.strerror}", source=source) from None


def _mounts_under(root: str) -> set[str]:
    """The mount points at or below ``root`` (a real path); empty when none can be read."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    found: set[str] = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:  # field 5 is the mount point, with \ooo escapes
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
            if point == root or point.startswith(root + "/"):
                found.add(point)
    return found


def delete_tree(root: Path) -> list[str]:
    """Delete ``root`` and all in it, never into a file system mounted inside (its files
    are not ours); return what could not be deleted, each as ``<full path>: <why>``."""
    problems: list[str] = []

    def failed(func: Any, path: str, exc_info: Any) -> None:
        exc = exc_info[1]
        if func is os.rmdir and getattr(exc, "errno", None) == errno.ENOTEMPTY and problems:
            return  # not empty because of what is reported already
        problems.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")

    if not os.path.lexists(root):
        return problems
    real = os.path.realpath(root)
    mounts = _mounts_under(real)

    def delete(path: str) -> None:
        if path in mounts:
            problems.append(f"{path}: a file system is mounted here (unmount it)")
            return
        if not any(m.startswith(path + "/") for m in mounts):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, onerror=failed)
            else:
                try:
                    os.unlink(path)
                except OSError as exc:
                    failed(os.unlink, path, (type(exc), exc, None))
            return
        try:
            names = os.listdir(path)
        except OSError as exc:
            failed(os.listdir, path, (type(exc), exc, None))
            return
        for name in names:
            delete(os.path.join(path, name))
        with contextlib.suppress(OSError):
            os.rmdir(path)  # not empty: the mount inside is reported

    delete(real)
    return problems


class PluginLoader:
    """Stage plugin packages into ``<plugins_dir>/packages/<id>/<version>/`` and register them.

    A package is a directory, a ``.zip`` or a ``.tar.gz``. Staging happens in a temp directory
    under ``<plugins_dir>/staging/`` (same filesystem), is checked, then renamed into place;
    the registry is written last, so a crash leaves an unregistered leftover, never a
    registered half. One stager at a time (``staging.lock``).
    """

    def __init__(
        self,
        plugins_dir: Path | str | None = None,
        *,
        max_files: int = 10_000,
        max_bytes: int = 100 * 2**20,
        actor: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """``progress``: told what staging is at, file by file (a terminal shows it)."""
        self.progress = progress
        self.plugins_dir = Path(plugins_dir) if plugins_dir is not None else paths.plugins_dir()
        self.packages_dir = self.plugins_dir / "packages"
        self.staging_dir = self.plugins_dir / "staging"
        self.lock_path = self.plugins_dir / "staging.lock"
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.registry = PluginRegistry(self.plugins_dir, actor=actor)

    def _tell(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    # -- scanning --------------------------------------------------------------------------

    def _walk(self, root: Path, source: str) -> list[_Entry]:
        """Every member under root (symlinks not followed), checked for type, name and limits."""
        entries: list[_Entry] = []
        files = 0
        total = 0
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                children = sorted(it, key=lambda e: e.name)
            for child in children:
                rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
                _check_name(rel, source)
                st = child.stat(follow_symlinks=False)
                special = _special(st.st_mode)
                if special:
                    raise StagingError(f"{rel!r} is a {special}", source=source)
                files += 1  # directories count too: a million empty ones is no package
                if files > self.max_files:
                    raise StagingError(f"more than {self.max_files} files", source=source)
                if stat.S_ISDIR(st.st_mode):
                    entries.append(_Entry(rel, "dir", mode=0o755))
                    stack.append(rel)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(root / rel)
                    _check_link(rel, target, source)
                    entries.append(_Entry(rel, "link", link=target))
                    continue
                total += st.st_size
                if total > self.max_bytes:
                    raise StagingError(f"larger than {self.max_bytes} bytes", source=source)
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(
                    _Entry(
                        rel,
                        "file",
                        size=st.st_size,
                        mode=mode,
                        dev_ino=(st.st_dev, st.st_ino),
                        mtime_ns=st.st_mtime_ns,
                        nlink=st.st_nlink,
                    )
                )
        # Every source kind (directory, zip, tar) is walked here: links checked by resolution.
        _check_links_resolved({e.path: e.link for e in entries if e.kind == "link"}, source)
        seen: dict[tuple[int, int], int] = {}
        for e in entries:
            if e.kind == "file" and e.nlink > 1:
                seen[e.dev_ino] = seen.get(e.dev_ino, 0) + 1
        for e in entries:
            if e.kind == "file" and e.nlink > seen.get(e.dev_ino, 1):
                raise StagingError(
                    f"{e.path!r} is a hard link leading out of the package", source=source
                )
        return entries

    # -- copying ---------------------------------------------------------------------------

    @staticmethod
    def _copy_file(src: Path, dest: Path, entry: _Entry, source: str) -> None:
        """Copy and hash one file in a single pass; the source must not change meanwhile."""
        try:
            # O_NONBLOCK: a file swapped for a FIFO since the walk must not hang the stager
            sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise StagingError(
                f"cannot read {entry.path!r}: {exc.strerror}", source=source
            ) from None
        try:
            st = os.fstat(sfd)
            same = (st.st_dev, st.st_ino) == entry.dev_ino and st.st_mtime_ns == entry.mtime_ns
            if not same or not stat.S_ISREG(st.st_mode):
                raise StagingError(f"{entry.path!r} changed while staging", source=source)
            dfd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, entry.mode)
            try:
                h = hashlib.sha256()
                buf = bytearray(_CHUNK)
                view = memoryview(buf)
                copied = 0
                while True:
                    n = os.readv(sfd, [buf])
                    if not n:
                        break
                    copied += n
                    if copied > entry.size:
                        raise StagingError(f"{entry.path!r} grew while staging", source=source)
                    chunk = view[:n]
                    h.update(chunk)
                    while chunk:
                        chunk = chunk[os.write(dfd, chunk) :]
                if copied != entry.size:
                    raise StagingError(f"{entry.path!r} shrank while staging", source=source)
                os.fsync(dfd)
            except OSError as exc:
                raise named_oserror(exc, "write", dest) from None
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        entry.sha256 = h.hexdigest()

    def _copy_tree(self, src: Path, dest: Path, source: str) -> list[_Entry]:
        entries = self._walk(src, source)
        dest.mkdir()
        for done, e in enumerate(entries, 1):
            self._tell(f"copying {source}: {done}/{len(entries)}")
            target = dest / e.path
            if e.kind == "dir":
                target.mkdir(mode=0o755)
            elif e.kind == "link":
                _symlink(e.link, target)
            else:
                self._copy_file(src / e.path, target, e, source)
        return entries

    @staticmethod
    def _hash_tree(root: Path, entries: list[_Entry], source: str | None = None) -> None:
        """Hash every file (opened without following links or blocking on a FIFO)."""
        source = str(root) if source is None else source
        for e in entries:
            if e.kind != "file":
                continue
            try:
                e.sha256, size = file_sha256(root / e.path)
            except InputRefused:
                raise StagingError(f"{e.path!r} is not a regular file", source=source) from None
            if size != e.size:
                raise StagingError(f"{e.path!r} changed while hashing", source=source)

    # -- archives --------------------------------------------------------------------------

    def _check_zip_directory(self, f: BinaryIO, source: str) -> None:
        """Refuse a central directory that is too large or lists too many members, before
        ``zipfile`` parses it into memory (a million empty members take 600 MB there).

        The end record is found the way ``zipfile`` finds it; its entry count may lie, so
        the entries themselves are counted (a few bytes read for each).
        """
        end = getattr(zipfile, "_EndRecData")(f)  # noqa: B009 - private, same as ZipFile's
        if end is None:
            return  # not a zip: ZipFile says so
        size_cd = end[_ECD_SIZE]
        start = end[_ECD_LOCATION] - size_cd  # where ZipFile looks for it
        if end[_ECD_SIGNATURE] == _ZIP64_END:
            start -= _ZIP64_END_SIZES
        if end[_ECD_ENTRIES_TOTAL] > self.max_files:
            raise StagingError(f"more than {self.max_files} files", source=source)
        if size_cd > MAX_ZIP_DIRECTORY:
            raise StagingError(
                f"a {size_cd}-byte central directory (at most {MAX_ZIP_DIRECTORY})",
                source=source,
            )
        if start < 0:
            return  # ZipFile refuses it
        f.seek(start)
        directory = f.read(size_cd)
        pos = count = 0
        while pos + _ZIP_DIR_ENTRY.size <= len(directory):
            sig, _, name, extra, comment, _ = _ZIP_DIR_ENTRY.unpack_from(directory, pos)
            if sig != _ZIP_DIR_SIGNATURE:
                break  # ZipFile refuses it
            count += 1
            if count > self.max_files:
                raise StagingError(f"more than {self.max_files} files", source=source)
            pos += _ZIP_DIR_ENTRY.size + name + extra + comment
        f.seek(0)

    def _extract_zip(self, src: Path, dest: Path, source: str) -> None:
        with _open_archive(src, source) as f:
            self._check_zip_directory(f, source)
            try:
                zf = zipfile.ZipFile(f)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise StagingError(f"not a readable zip archive: {exc}", source=source) from None
            self._extract_zip_members(zf, dest, source)

    def _extract_zip_members(self, zf: zipfile.ZipFile, dest: Path, source: str) -> None:
        with zf:
            infos = zf.infolist()
            if len(infos) > self.max_files:
                raise StagingError(f"more than {self.max_files} files", source=source)
            if sum(i.file_size for i in infos) > self.max_bytes:
                raise StagingError(f"larger than {self.max_bytes} bytes", source=source)
            seen: set[str] = set()
            dest.mkdir()
            for done, info in enumerate(infos, 1):
                self._tell(f"extracting {source}: {done}/{len(infos)}")
                name = info.filename
                _check_name(name, source)
                rel = "/".join(p for p in name.split("/") if p not in ("", "."))
                if not rel:
                    continue
                if rel in seen:
                    raise StagingError(f"duplicate member {rel!r}", source=source)
                seen.add(rel)
                mode = info.external_attr >> 16
                special = _special(mode)
                if special:
                    raise StagingError(f"member {rel!r} is a {special}", source=source)
                target = dest / rel
                self._check_parent(dest, rel, source)
                if info.is_dir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                elif stat.S_ISLNK(mode):
                    if info.file_size > _MAX_LINK:
                        raise StagingError(f"symlink {rel!r} target is too long", source=source)
                    try:
                        link = zf.read(info).decode("utf-8", "replace")
                    except _ZIP_ERRORS as exc:
                        raise StagingError(f"member {rel!r}: {exc}", source=source) from None
                    _check_link(rel, link, source)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    _symlink(link, target)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._extract_zip_member(zf, info, target, rel, source)

    @staticmethod
    def _check_parent(root: Path, rel: str, source: str) -> None:
        """Refuse a member that would be written through a symlink extracted earlier."""
        rel_parent = os.path.dirname(rel)
        if not rel_parent:
            return
        expected = os.path.normpath(os.path.join(os.path.realpath(root), rel_parent))
        if os.path.realpath(os.path.join(root, rel_parent)) != expected:
            raise StagingError(f"member {rel!r} is written through a symlink", source=source)

    @staticmethod
    def _extract_zip_member(
        zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, rel: str, source: str
    ) -> None:
        mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
        written = 0
        try:
            with zf.open(info) as src, open(target, "xb") as out:
                os.chmod(target, mode)
                while True:
                    try:
                        chunk = src.read(_CHUNK)  # CRC and deflate errors surface here
                    except _ZIP_ERRORS as exc:
                        raise StagingError(f"member {rel!r}: {exc}", source=source) from None
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > info.file_size:  # the header lied: a zip bomb
                        raise StagingError(f"member {rel!r} is larger than declared", source=source)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
        except _ZIP_ERRORS as exc:  # opening the member: bad local header, encryption
            raise StagingError(f"member {rel!r}: {exc}", source=source) from None
        except OSError as exc:
            raise named_oserror(exc, "write", target) from None

    def _extract_tar(self, src: Path, dest: Path, source: str) -> None:
        """Extract a tar archive: headers capped, members counted, the gzip CRC checked.

        A disk-full or I/O error while writing is an OSError naming the file (exit 1, the
        inbox retries); anything wrong with the archive is a StagingError with its place.
        """
        with _open_archive(src, source) as f:
            try:
                mode = _tar_mode(f.read(6))
                f.seek(0)
                tf = tarfile.open(fileobj=f, mode=mode, tarinfo=_CappedTarInfo)  # noqa: SIM115
            except (tarfile.TarError, EOFError, zlib.error, RecursionError) as exc:
                raise StagingError(f"not a readable tar archive: {exc}", source=source) from None
            except OSError as exc:
                if exc.errno is not None:
                    raise
                raise StagingError(f"not a readable tar archive: {exc}", source=source) from None
            self._extract_tar_members(tf, dest, source)

    def _extract_tar_members(self, tf: tarfile.TarFile, dest: Path, source: str) -> None:
        with tf:
            tf.errorlevel = 2
            members: list[tarfile.TarInfo] = []
            seen: dict[str, bool] = {}  # member -> is a directory
            total = 0
            try:
                for member in tf:  # reads (decompresses) the whole archive
                    _check_name(member.name, source)
                    # As for zip: the last of two same-named members would win, so what a
                    # reviewer reads (the first manifest.json) would not be what is staged.
                    rel = "/".join(p for p in member.name.split("/") if p not in ("", "."))
                    if rel in seen and not (seen[rel] and member.isdir()):
                        raise StagingError(f"duplicate member {rel!r}", source=source)
                    seen[rel] = member.isdir()
                    members.append(member)
                    self._tell(f"reading {source}: {len(members)} members, {total >> 20} MiB")
                    if len(members) > self.max_files:
                        raise StagingError(f"more than {self.max_files} files", source=source)
                    total += member.size if member.isreg() else 0
                    if total > self.max_bytes:
                        raise StagingError(f"larger than {self.max_bytes} bytes", source=source)
                    tarfile.data_filter(member, str(dest))
                self._check_trailer(tf, source)
                dest.mkdir()
                for member in members:  # one at a time: a failing write names its member
                    try:
                        # directories as extractall leaves them (their mode is not the
                        # archive's: the data filter), so that their members can be written
                        tf.extract(member, dest, set_attrs=not member.isdir(), filter="data")
                    except OSError as exc:
                        if is_io_failure(exc):  # tarfile's writes carry no file name
                            raise named_oserror(exc, "write", dest / member.name) from None
                        raise
            except tarfile.FilterError as exc:
                raise StagingError(f"refused archive member: {exc}", source=source) from None
            except (tarfile.TarError, EOFError, zlib.error, RecursionError) as exc:
                raise StagingError(f"cannot extract: {exc}", source=source) from None
            except OSError as exc:
                if exc.errno is not None:
                    raise  # a name the file system refuses: _refused_by_the_fs says which
                raise StagingError(f"cannot extract: {exc}", source=source) from None

    @staticmethod
    def _check_trailer(tf: tarfile.TarFile, source: str) -> None:
        """Read a compressed archive to its end, so that gzip checks its CRC and length.

        tarfile stops at the end-of-archive marker and never reads the gzip trailer.
        """
        stream = tf.fileobj
        if not isinstance(stream, gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile):
            return  # an uncompressed tar: nothing to verify
        left = _MAX_TAR_TRAILER
        while True:
            chunk = stream.read(min(left + 1, _CHUNK))
            if not chunk:
                return
            left -= len(chunk)
            if left < 0:
                raise StagingError(
                    f"more than {_MAX_TAR_TRAILER} bytes after the end of the archive",
                    source=source,
                )

    # -- staging ---------------------------------------------------------------------------

    @staticmethod
    def _find_root(tree: Path, source: str) -> tuple[Path, Path]:
        """The package root (the tree, or its single top directory) and its manifest."""
        candidates = [tree]
        children = list(tree.iterdir())
        if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
            candidates.append(children[0])
        for root in candidates:
            found = [root / n for n in MANIFEST_NAMES if os.path.lexists(root / n)]
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                raise StagingError(f"several manifests ({names})", source=source)
            if found:
                if not stat.S_ISREG(os.lstat(found[0]).st_mode):
                    raise StagingError(f"{found[0].name} is not a regular file", source=source)
                return root, found[0]
        raise StagingError(
            f"no manifest ({', '.join(MANIFEST_NAMES)}) at the package root", source=source
        )

    @staticmethod
    def _check_entrypoint(root: Path, manifest: dict[str, Any], source: str) -> None:
        entry = str(manifest["entrypoint"])
        path = root / PurePosixPath(entry)
        if not os.path.lexists(path):
            raise StagingError(f"entrypoint {entry!r} does not exist in the package", source=source)
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if not real.startswith(real_root + os.sep):
            raise StagingError(f"entrypoint {entry!r} leads outside the package", source=source)
        if not os.path.isfile(real):
            raise StagingError(f"entrypoint {entry!r} is not a regular file", source=source)

    def _clean_staging(self) -> None:
        """Settle what dead stagers and removers left (we hold the staging lock).

        ``rm~`` entries are removals in progress: finished, or put back when the registry
        still names them (the remover died before unregistering). Other entries are temp
        dirs of stagers: deleted.
        """
        try:
            children = sorted(os.listdir(self.staging_dir))
        except FileNotFoundError:
            return
        for name in children:
            if name.startswith(_TOMB):
                self._settle_tomb(name)
            else:
                self._report_left(delete_tree(self.staging_dir / name))

    def _tomb_name(self, plugin_id: str, rel: str | None) -> str:
        """``rm~<id>`` for a whole plugin, ``rm~<id>~<version dir>`` for one version."""
        return _TOMB + plugin_id + ("" if rel is None else "~" + PurePosixPath(rel).name)

    def _settle_tomb(self, name: str) -> None:
        plugin_id, _, dirname = name[len(_TOMB) :].partition("~")
        tomb = self.staging_dir / name
        record = self.registry.get(plugin_id)  # an unreadable registry: stop, delete nothing
        versions = (record or {}).get("versions", {})
        if dirname:
            dest = self.packages_dir / plugin_id / dirname
            wanted = any(v.get("path") == self._rel(dest) for v in versions.values())
        else:
            dest = self.packages_dir / plugin_id
            wanted = record is not None
        if wanted and not os.path.lexists(dest):
            dest.parent.mkdir(exist_ok=True)
            os.rename(tomb, dest)  # the remover died before unregistering: roll back
            fsync_dir(dest.parent)
            log.warning("rolled back an interrupted removal: %s is registered", dest)
            return
        if self._discard(tomb):  # unregistered: finish the removal
            log.info("finished an interrupted removal of %s", name[len(_TOMB) :])

    def _discard(self, tomb: Path) -> bool:
        """Delete the tomb of a decided removal; True when nothing is left.

        It is first renamed to a name of its own (``del~``), so that what cannot be
        deleted (an immutable file, a mount inside) never blocks a later removal of the
        same plugin; each such file is named, with its full path, in a warning.
        """
        debris = self.staging_dir / f"{_DEBRIS}{tomb.name[len(_TOMB) :]}~{uuid.uuid4().hex[:12]}"
        try:
            os.rename(tomb, debris)
        except OSError:
            debris = tomb  # delete it where it is
        left = delete_tree(debris)
        self._report_left(left)
        return not left

    @staticmethod
    def _report_left(left: list[str]) -> None:
        left = [p for p in left if p not in _REPORTED]  # once a process: every command tries
        _REPORTED.update(left)
        if left:
            shown = "; ".join(left[:5]) + (f"; and {len(left) - 5} more" if len(left) > 5 else "")
            log.warning(
                "warning: could not delete what a removal or a staging left (it is in "
                "nobody's way; delete it by hand): %s",
                shown,
            )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The staging lock, with what dead stagers and removers left settled first."""
        private_dir(self.plugins_dir)  # 0700: no other uid opens (so holds) its locks
        self.packages_dir.mkdir(exist_ok=True)
        self.staging_dir.mkdir(exist_ok=True)
        with locked(self.lock_path):
            recover_policy(self.plugins_dir, actor=self.registry.actor)
            self.registry.recover()
            self._clean_staging()
            self._sweep_unregistered()
            yield

    def _sweep_unregistered(self) -> None:
        """Delete what no registered version names from ``packages/`` (only a stager killed
        between placing a tree and registering it leaves such a thing; we hold the lock)."""
        try:
            ids = os.listdir(self.packages_dir)
        except FileNotFoundError:
            return
        plugins = self.registry.list()  # unreadable: raises, and nothing is deleted
        for plugin_id in ids:
            id_dir = self.packages_dir / plugin_id
            record = plugins.get(plugin_id)
            if record is None:
                shutil.rmtree(id_dir, ignore_errors=True)
                continue
            wanted = {str(v.get("path")) for v in record["versions"].values()}
            with contextlib.suppress(NotADirectoryError):
                for child in os.listdir(id_dir):
                    if f"packages/{plugin_id}/{child}" not in wanted:
                        shutil.rmtree(id_dir / child, ignore_errors=True)

    @contextlib.contextmanager
    def _staging_area(self) -> Iterator[Path]:
        with self._locked():
            self._keep_reserve()
            tmp = Path(tempfile.mkdtemp(prefix="stage-", dir=self.staging_dir))
            try:
                yield tmp
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def needs_recovery(self) -> bool:
        """Whether an interrupted change or removal waits to be settled (cheap: no lock)."""
        try:
            names = os.listdir(self.plugins_dir)  # one read for every file's leftovers
        except OSError:
            return False
        policy = self.plugins_dir / "permissions.json"
        if self.registry.left_behind(names) or left_behind(policy, names):
            return True
        try:
            return any(n.startswith((_TOMB, _DEBRIS)) for n in os.listdir(self.staging_dir))
        except OSError:
            return False

    def recover(self, *, always: bool = False) -> None:
        """Settle an interrupted change of the registry, interrupted removals and stagings.

        Without ``always``, only when ``needs_recovery`` says something waits (no lock
        taken otherwise); a killed stager's unregistered tree is also removed by the next
        ``stage`` or ``remove``.
        """
        if always or self.needs_recovery():
            with self._locked():
                pass

    # -- the space reserve ------------------------------------------------------------------

    def _reserve_size(self) -> int:
        try:
            size = os.stat(self.registry.path).st_size
        except OSError:
            size = 0
        return _RESERVE_MIN + size

    def _keep_reserve(self) -> None:
        """Keep ``space.reserve`` (space for one registry write) and ``space.reserve.i`` (an
        inode) allocated, so that ``remove`` can free space on a full disk. Best effort."""
        with contextlib.suppress(OSError):  # so that a first `policy` needs no new inode
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(self.plugins_dir / "permissions.lock", flags, 0o600))
        path = self.plugins_dir / RESERVE
        want = self._reserve_size()
        try:
            if os.stat(path).st_size >= want and os.path.lexists(self._reserve_names()[-1]):
                return
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, want)
            finally:
                os.close(fd)
            for name in self._reserve_names()[1:]:
                flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                os.close(os.open(name, flags, 0o600))
        except OSError:
            self._release_reserve()  # no room for it: never keep half a reserve

    def _reserve_names(self) -> list[Path]:
        """The space file, then empty files holding inodes: a registry write needs three
        (its marker, its temp file, the backup's hard link, which tmpfs counts)."""
        base = self.plugins_dir / RESERVE
        return [base] + [base.with_name(f"{RESERVE}.i{i}") for i in range(_RESERVE_INODES)]

    def _release_reserve(self) -> None:
        for path in self._reserve_names():
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _make_room(self) -> None:
        """Free the reserve when the disk is too full for the writes of a removal."""
        try:
            st = os.statvfs(self.plugins_dir)
        except OSError:
            return
        if st.f_bavail * st.f_frsize < self._reserve_size() or st.f_favail < _RESERVE_INODES:
            self._release_reserve()
            log.warning("%s: the disk is full; used the space reserve", self.plugins_dir)

    def stage_package(self, path: Path | str, *, replace: bool = False) -> dict[str, Any]:
        """Stage a package directory, ``.zip`` or ``.tar.gz``; return what was staged.

        Raises StagingError (with ``reason``) or ManifestError when the package is refused;
        nothing is left behind then. Staging identical content again changes nothing;
        different content under a registered version needs ``replace=True``.
        """
        src = Path(path)
        source = str(src)
        name = src.name.lower()
        if not os.path.lexists(src):
            raise StagingError("does not exist", source=source)
        if src.is_dir():
            kind = "dir"
        elif name.endswith(".zip"):
            kind = "zip"
        elif name.endswith((".tar.gz", ".tgz")):
            kind = "tar"
        else:
            raise StagingError("expected a directory, a .zip or a .tar.gz", source=source)
        with self._staging_area() as tmp:
            tree = tmp / "tree"
            with _refused_by_the_fs(tree, source):
                if kind == "dir":
                    entries = self._copy_tree(src, tree, source)
                    root, manifest_path = self._find_root(tree, source)
                else:
                    if kind == "zip":
                        self._extract_zip(src, tree, source)
                    else:
                        self._extract_tar(src, tree, source)
                    root, manifest_path = self._find_root(tree, source)
                    entries = self._walk(root, source)
                    self._hash_tree(root, entries, source)
            if kind == "dir" and root != tree:
                prefix = root.name + "/"
                entries = [e for e in entries if e.path.startswith(prefix)]
                for e in entries:
                    e.path = e.path[len(prefix) :]
            # Errors name the operator's path, never the temp copy being checked.
            try:
                manifest = load_manifest(manifest_path)
            except ManifestError as exc:
                where = f"{source}/{manifest_path.relative_to(tree).as_posix()}"
                raise ManifestError(exc.problems, source=where) from None
            try:
                validate_manifest(manifest)
            except ManifestError as exc:
                raise ManifestError(exc.problems, source=source) from None
            self._check_entrypoint(root, manifest, source)
            files = [e.record() for e in entries if e.kind != "dir"]
            digest = tree_digest(entries)
            return self._place(root, manifest, files, digest, replace, source, tmp)

    def _place(
        self,
        root: Path,
        manifest: dict[str, Any],
        files: list[dict[str, Any]],
        digest: str,
        replace: bool,
        source: str,
        tmp: Path,
    ) -> dict[str, Any]:
        """Move the checked tree into ``packages/`` and register it (we hold the staging lock).

        The registry always names a directory holding exactly its digest: new content goes
        to a directory no registered version uses, the registry is switched to it, and only
        then is the replaced copy removed. A crash at any point leaves unregistered
        leftovers, which the next staging of the plugin removes.
        """
        plugin_id, version = manifest["id"], manifest["version"]
        id_dir = self.packages_dir / plugin_id
        canonical = id_dir / version
        if (
            id_dir.parent != self.packages_dir
            or canonical.parent != id_dir
            or version in (".", "..")
        ):
            raise StagingError(
                f"id/version {plugin_id!r}/{version!r} escape packages/", source=source
            )
        record = self.registry.get(plugin_id)
        staged = (record or {}).get("versions", {})
        existing = staged.get(version)
        for other in staged:
            if other != version and Version(other) == Version(version):
                raise StagingError(
                    f"{plugin_id} {version} is the same version as the staged {other}",
                    source=source,
                )
        if existing is not None and existing.get("digest") != digest and not replace:
            raise StagingError(
                f"{plugin_id} {version} is already staged with different content "
                "(`stage --replace` overwrites it)",
                source=source,
            )
        registered = {str(v.get("path")) for v in staged.values()}
        self._sweep(id_dir, registered, tmp)
        old = self._own_dir(id_dir, existing.get("path") if existing is not None else None)
        if existing is not None and existing.get("digest") == digest and old is not None:
            target = old  # same content: same place (restored if it went missing)
            if target.is_dir():
                status = self.registry.register_version(
                    manifest, files, digest=digest, path=self._rel(target)
                )
                return {**self._result(manifest, target, files, digest), **status}
        elif old == canonical:
            target = id_dir / f"{version}{REPLACED_MARK}{digest.rpartition(':')[2][:16]}"
        else:
            target = canonical
        if os.path.lexists(target):
            os.rename(target, tmp / "leftover")  # missing or half a copy: never registered
        id_dir.mkdir(exist_ok=True)
        os.rename(root, target)
        fsync_dir(id_dir)
        fsync_dir(self.packages_dir)
        try:
            status = self.registry.register_version(
                manifest, files, digest=digest, replace=replace, path=self._rel(target)
            )
        except BaseException:
            if not self._registered_at(plugin_id, version, target, digest):
                os.rename(target, tmp / "refused")
                with contextlib.suppress(OSError):
                    id_dir.rmdir()  # only if empty: nothing of this plugin was there before
            raise
        if old is not None and old != target and os.path.lexists(old):
            # No longer registered: out of packages/. The change is made (registered and
            # audited): a failure here is a leftover the next staging sweeps, not a failure.
            try:
                os.rename(old, tmp / "replaced")
                fsync_dir(id_dir)
            except OSError as exc:
                log.warning(
                    "%s: staged; the replaced copy %s is left for later: %s", plugin_id, old, exc
                )
        log.info("staged %s %s (%s) in %s", plugin_id, version, digest, target)
        return {**self._result(manifest, target, files, digest), **status}

    def _registered_at(self, plugin_id: str, version: str, target: Path, digest: str) -> bool:
        """Whether the registry names ``target`` (a write can fail after the rename, e.g.
        appending to audit.log); unreadable counts as yes: a leftover is swept later, a
        registered directory that is gone is not."""
        try:
            record = self.registry.get(plugin_id)
        except (PluginError, OSError):  # any doubt keeps the directory
            return True
        entry: dict[str, Any] = (record or {}).get("versions", {}).get(version) or {}
        return entry.get("path") == self._rel(target) and entry.get("digest") == digest

    def _own_dir(self, id_dir: Path, rel: object) -> Path | None:
        """The registered directory ``rel`` when it is an entry of ``id_dir`` (else None)."""
        if not isinstance(rel, str):
            return None
        path = self.plugins_dir / rel
        if path.parent != id_dir or path.name in ("", ".", "..") or "\\" in rel:
            return None
        return path

    def _rel(self, path: Path) -> str:
        """A path under ``plugins/`` as the registry spells it."""
        return path.relative_to(self.plugins_dir).as_posix()

    @staticmethod
    def _result(
        manifest: dict[str, Any], target: Path, files: list[dict[str, Any]], digest: str
    ) -> dict[str, Any]:
        return {
            "ok": True,
            "id": manifest["id"],
            "version": manifest["version"],
            "digest": digest,
            "path": str(target),
            "files": len(files),
            "bytes": sum(int(f.get("size", 0)) for f in files),
        }

    def _sweep(self, id_dir: Path, registered: set[str], tmp: Path) -> None:
        """Move out of ``packages/<id>/`` every entry no registered version names.

        Only a stager killed mid-way leaves such entries, and we hold the staging lock.
        """
        try:
            children = sorted(id_dir.iterdir())
        except FileNotFoundError:
            return
        swept = False
        for i, child in enumerate(children):
            if self._rel(child) not in registered:
                os.rename(child, tmp / f"swept-{i}")
                swept = True
        if swept:
            fsync_dir(id_dir)

    def remove(self, plugin_id: str, version: str | None = None) -> bool:
        """Unregister a plugin (or one version) and delete its staged files; False if unknown.

        Tracked while it runs: the directory is first renamed out of ``packages/`` to
        ``staging/rm~<id>[~<version dir>]`` (the pending record, which costs no disk space),
        then the registry is changed (audited), then the directory is deleted. Whoever takes
        the staging lock next finishes a removal that was unregistered, or puts the
        directory back if the registry still names it. Works on a full disk: the space
        reserve is released first when it is needed.
        """
        if self.registry.get(plugin_id) is None:
            return False
        private_dir(self.plugins_dir)  # 0700: no other uid opens (so holds) its locks
        self.packages_dir.mkdir(exist_ok=True)
        self.staging_dir.mkdir(exist_ok=True)
        self._make_room()
        with self._locked():
            record = self.registry.get(plugin_id)
            if record is None or (version is not None and version not in record["versions"]):
                return False
            id_dir = self.packages_dir / plugin_id
            whole = version is None or len(record["versions"]) == 1
            rel = None if whole else str(record["versions"][version]["path"])
            source = id_dir if rel is None else self.plugins_dir / rel
            tomb = self.staging_dir / self._tomb_name(plugin_id, rel)
            try:
                if os.path.lexists(source):
                    os.rename(source, tomb)
                    fsync_dir(source.parent)
                self.registry.unregister(plugin_id, version)
            except BaseException:
                if os.path.lexists(tomb):
                    self._settle_tomb(tomb.name)  # still registered: put back
                raise
            # Unregistered (audited): what follows only tidies up, and never fails the removal.
            if os.path.lexists(tomb):
                self._discard(tomb)
            with contextlib.suppress(OSError):
                if not whole and id_dir.is_dir() and not any(id_dir.iterdir()):
                    id_dir.rmdir()
            # Space was just freed: re-make the reserve (best effort), so that the next
            # removal works too when the disk fills again.
            self._keep_reserve()
        return True

    def verify(self, plugin_id: str, version: str | None = None) -> list[str]:
        """Re-hash a staged version; return the problems (empty when it matches the registry)."""
        record = self.registry.get(plugin_id)
        if record is None:
            return [f"{plugin_id}: not registered"]
        version = version or record["active_version"]
        entry = record["versions"].get(version)
        if entry is None:
            return [f"{plugin_id} {version}: not registered"]
        root = self.plugins_dir / entry["path"]
        if not root.is_dir():
            return [f"{plugin_id} {version}: {root} is missing"]
        try:
            entries = self._walk(root, str(root))
            self._hash_tree(root, entries, str(root))
        except (StagingError, OSError) as exc:
            return [f"{plugin_id} {version}: {exc}"]
        digest = tree_digest(entries)
        if digest != entry["digest"]:
            where = _tree_changes(entry.get("files") or [], entries)
            return [f"{plugin_id} {version}: content differs from the registry ({where or digest})"]
        return []
