"""A pack's file tree: which files belong to it, their digest, and a copy that hashes as it goes.

The digest is pack01_common's ``tree-v1`` (``aurora_common.digest``, docs/primitives.md);
this module decides which members belong to a pack and copies trees.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aurora_common import digest as shared_digest
from aurora_common.atomic import is_temp_name
from aurora_common.errors import InputRefused, named_oserror

ProgressSink = Callable[[int, int], None]  # (members copied, members in all)

# Runtime directories a pack gets when its scripts are run by hand from the
# source tree (see docs/contracts.md), and caches: never part of the pack.
EXCLUDED_TOP_LEVEL = frozenset({"data", "run", "logs"})
EXCLUDED_NAMES = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", ".git"}
)
EXCLUDED_SUFFIXES = (".pyc", ".pyo")

# One read per file for the common case (packs are mostly small files); large
# files are streamed in chunks of this size.
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One member of a pack tree, as recorded in its digest."""

    rel: str
    kind: str  # "dir", "file", "exec" (executable file) or "link"
    value: str = ""  # sha256 hex for files, target for links

    def record(self) -> str:
        """The entry as one record token (what `verify` compares)."""
        return f"{self.kind}:{self.value}" if self.value else self.kind


@dataclass(frozen=True)
class TreeDigest:
    """The digest of a whole tree plus its per-entry records."""

    digest: str  # "sha256:<hex>"
    entries: dict[str, str]  # rel path -> record token
    files: int
    size: int

    def file_sha256(self, rel: str) -> str | None:
        """The sha256 hex of a regular file in the tree, if it is one."""
        token = self.entries.get(rel, "")
        kind, _, value = token.partition(":")
        return value if kind in ("file", "exec") else None


def is_excluded(rel_parts: tuple[str, ...]) -> bool:
    """Whether a path (as parts relative to the pack root) is left out of the pack.

    Besides runtime directories and caches, the temp file of an interrupted atomic
    replace (``.manifest.yaml.<random>.tmp`` left by a killed ``seal``) is never
    part of a pack.
    """
    if not rel_parts:  # the pack root itself
        return False
    if rel_parts[0] in EXCLUDED_TOP_LEVEL:
        return True
    return (
        any(p in EXCLUDED_NAMES for p in rel_parts)
        or rel_parts[-1].endswith(EXCLUDED_SUFFIXES)
        or is_temp_name(rel_parts[-1])
    )


def walk(root: Path) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
    """List the members of the tree at ``root`` in a stable order, with their lstat.

    Returns (members, problems): a symlink that is absolute or leads out of the
    pack, and anything that is not a file, directory or symlink, is a problem.
    """
    members: list[tuple[str, os.stat_result]] = []
    problems: list[str] = []
    real_root = root.resolve()

    def visit(directory: Path, prefix: tuple[str, ...]) -> None:
        with os.scandir(directory) as it:
            names = sorted(e.name for e in it)
        for name in names:
            parts = (*prefix, name)
            if is_excluded(parts):
                continue
            rel = "/".join(parts)
            path = directory / name
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(f"{rel.encode('utf-8', 'surrogateescape')!r}: name is not UTF-8")
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if os.path.isabs(target):
                    problems.append(f"{rel}: symlink to an absolute path ({target}) is not allowed")
                    continue
                try:
                    resolved = (path.parent / target).resolve()
                except (RuntimeError, OSError):  # a symlink loop
                    problems.append(f"{rel}: symlink loop ({target})")
                    continue
                if not resolved.is_relative_to(real_root):
                    problems.append(f"{rel}: symlink leads out of the pack ({target})")
                    continue
                members.append((rel, st))
            elif stat.S_ISDIR(st.st_mode):
                members.append((rel, st))
                visit(path, parts)
            elif stat.S_ISREG(st.st_mode):
                members.append((rel, st))
            else:
                problems.append(f"{rel}: not a regular file, directory or symlink")

    visit(root, ())
    return members, problems


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a regular file's content (OSError for anything else)."""
    try:
        return shared_digest.file_sha256(path)[0]
    except InputRefused as exc:
        raise OSError(str(exc)) from None


def _kind(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "link"
    return "exec" if st.st_mode & 0o111 else "file"


_SHARED_KIND = {"dir": "d", "file": "f", "exec": "x", "link": "l"}


def _shared(entry: Entry, size: int) -> shared_digest.Entry:
    kind = _SHARED_KIND[entry.kind]
    if kind in ("f", "x"):
        return shared_digest.Entry(entry.rel, kind, size=size, sha256=entry.value)
    if kind == "l":
        return shared_digest.Entry(entry.rel, kind, target=entry.value)
    return shared_digest.Entry(entry.rel, kind)


def _finish(entries: list[Entry], size: int, sizes: dict[str, int]) -> TreeDigest:
    files = sum(1 for e in entries if e.kind in ("file", "exec"))
    shared = [_shared(e, sizes.get(e.rel, 0)) for e in entries]
    return TreeDigest(
        digest=shared_digest.digest_entries(shared),
        entries={e.rel: e.record() for e in entries},
        files=files,
        size=size,
    )


def digest_tree(root: Path) -> tuple[TreeDigest, list[str]]:
    """Hash the tree at ``root`` in place; returns the digest and walk problems."""
    members, problems = walk(root)
    entries: list[Entry] = []
    sizes: dict[str, int] = {}
    for rel, st in members:
        kind = _kind(st)
        value = ""
        if kind == "link":
            value = os.readlink(root / rel)
        elif kind in ("file", "exec"):
            value, sizes[rel] = shared_digest.file_sha256(root / rel)
        entries.append(Entry(rel, kind, value))
    return _finish(entries, sum(sizes.values()), sizes), problems


def _copy_hashing(src: Path, dst: Path, mode: int, buf: memoryview) -> tuple[str, int]:
    """Copy one file reading it once, hashing what is written; (sha256 hex, size)."""
    h = hashlib.sha256()
    size = 0
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while n := os.readv(fd_in, [buf]):
                chunk = buf[:n]
                h.update(chunk)
                size += n
                view = chunk
                while view:
                    written = os.write(fd_out, view)
                    view = view[written:]
            os.fchmod(fd_out, mode)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return h.hexdigest(), size


def copy_tree(
    src: Path, dst: Path, on_progress: ProgressSink | None = None
) -> tuple[TreeDigest, list[str]]:
    """Copy the pack tree ``src`` into the new directory ``dst`` and digest what was copied.

    Each file is read once; the digest describes the bytes written, so it can be
    compared with a digest recorded earlier to prove the copy is that tree.
    Returns (digest, problems); on problems the copy is incomplete and the
    caller discards it. ``on_progress(done, total)`` is told after each member.
    """
    members, problems = walk(src)
    if problems:
        return _finish([], 0, {}), problems
    try:
        dst.mkdir(mode=0o755)
    except OSError as exc:
        raise named_oserror(exc, "create", dst) from exc
    buf = memoryview(bytearray(_CHUNK))
    entries: list[Entry] = []
    sizes: dict[str, int] = {}
    for done, (rel, st) in enumerate(members, 1):
        if on_progress is not None:
            on_progress(done, len(members))
        kind = _kind(st)
        target = dst / rel
        try:
            if kind == "dir":
                target.mkdir(mode=0o755)
                entries.append(Entry(rel, kind))
            elif kind == "link":
                link = os.readlink(src / rel)
                os.symlink(link, target)
                entries.append(Entry(rel, kind, link))
            else:
                value, sizes[rel] = _copy_hashing(
                    src / rel, target, stat.S_IMODE(st.st_mode) & 0o755, buf
                )
                entries.append(Entry(rel, kind, value))
        except OSError as exc:  # ENOSPC, EDQUOT...: the message names the file
            raise named_oserror(exc, "copy to", target) from exc
    return _finish(entries, sum(sizes.values()), sizes), []


def compare(recorded: dict[str, str], actual: dict[str, str]) -> dict[str, list[str]]:
    """Changed, missing and extra paths between a recorded tree and the one found."""
    return {
        "changed": sorted(r for r in recorded if r in actual and actual[r] != recorded[r]),
        "missing": sorted(r for r in recorded if r not in actual),
        "extra": sorted(r for r in actual if r not in recorded),
    }
