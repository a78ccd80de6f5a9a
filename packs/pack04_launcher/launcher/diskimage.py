"""Each plugin's data directory is its own ext4 filesystem image: bytes and inodes bounded.

``$AURORA_PACK_DATA/images/<id>.img`` (sparse, mode 0600) holds a filesystem made with
``mkfs.ext4 -N <inodes>`` on a file of ``<disk bytes>``, its root owned by the plugin's
uid:gid; it is mounted (``mount -o loop``: the loop device is autocleared when
unmounted) ``nosuid,nodev`` on ``plugin-data/<id>/``. A plugin at its bound gets ENOSPC;
the host filesystem holding the image only ever gives the image its size. This host
kernel has no quota support (``CONFIG_QUOTA``), which rules out per-uid quotas on one
shared filesystem; a filesystem per plugin needs no quota support at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

from launcher.errors import LauncherError

log = logging.getLogger(__name__)

#: The name of this layer in the status file's ``layers`` and ``degraded`` lists.
LAYER = "disk-quota"
_MOUNT_OPTIONS = "loop,nosuid,nodev,noatime"


class DiskUnavailable(LauncherError):
    """The host cannot bound this plugin's data directory (no loop device, not root...)."""


def mounted(path: Path) -> bool:
    """True when ``path`` is a mount point (from /proc/self/mountinfo, field 5)."""
    target = os.fsencode(str(path))
    try:
        lines = Path("/proc/self/mountinfo").read_bytes().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4 and _unescape(fields[4]) == target:
            return True
    return False


def _unescape(field: bytes) -> bytes:
    """mountinfo octal-escapes space, tab, newline and backslash."""
    out, i = bytearray(), 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i : i + 1]
            i += 1
    return bytes(out)


def _run(argv: list[str], what: str) -> None:
    try:
        res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
                             check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise DiskUnavailable(f"{what}: cannot run {argv[0]}: {exc}") from exc
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()
        raise DiskUnavailable(f"{what}: {argv[0]} exited {res.returncode}: {' '.join(msg)[-300:]}")


def _host_can() -> None:
    """Raise DiskUnavailable naming what this host lacks."""
    if os.geteuid() != 0:
        raise DiskUnavailable("not root: cannot attach loop devices")
    if not os.path.exists("/dev/loop-control"):
        raise DiskUnavailable("no /dev/loop-control: this host has no loop devices")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            raise DiskUnavailable(f"{tool} not found (e2fsprogs / util-linux)")


#: Inodes are bounded to one per this many bytes of the image (what ext4 can fit).
BYTES_PER_INODE_MIN = 8192


def _make_image(image: Path, disk_bytes: int, inodes: int, uid: int) -> None:
    """A sparse file holding a new ext4 filesystem whose root is uid:gid's."""
    inodes = min(inodes, disk_bytes // BYTES_PER_INODE_MIN)
    image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = image.with_name(f".{image.name}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, disk_bytes)
    finally:
        os.close(fd)
    try:
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-N", str(inodes), "-E",
              f"root_owner={uid}:{uid},lazy_itable_init=1,lazy_journal_init=1,nodiscard",
              str(tmp)], f"{image}: making its filesystem")  # fmt: skip
        os.replace(tmp, image)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _mount(image: Path, target: Path) -> None:
    _run(["mount", "-t", "ext4", "-o", _MOUNT_OPTIONS, str(image), str(target)],
         f"mounting {image} on {target}")  # fmt: skip
    with contextlib.suppress(OSError):
        (target / "lost+found").rmdir()  # mkfs's; e2fsck makes it again if it must


def _grow(image: Path, target: Path, disk_bytes: int) -> None:
    """Grow a mounted image to ``disk_bytes`` (online resize); shrinking is not done.

    Where the kernel refuses an online resize (some containers) the image keeps its
    size, with a warning: the plugin still runs, bounded by the old size.
    """
    old = image.stat().st_size
    dev = _device_of(target)
    if old >= disk_bytes or dev is None:
        return
    try:
        os.truncate(image, disk_bytes)
        _run(["losetup", "-c", dev], f"{image}: growing its loop device")
        _run(["resize2fs", dev], f"{image}: growing its filesystem")
    except (DiskUnavailable, OSError) as exc:
        with contextlib.suppress(OSError):
            os.truncate(image, old)
            subprocess.run(["losetup", "-c", dev], capture_output=True, check=False)
        log.warning("%s: kept at %d bytes, not grown to %d: %s", image, old, disk_bytes, exc)


def _device_of(target: Path) -> str | None:
    """The source device of the mount at ``target`` (/dev/loopN), from mountinfo."""
    want = os.fsencode(str(target))
    for line in Path("/proc/self/mountinfo").read_bytes().splitlines():
        left, _, right = line.partition(b" - ")
        fields = left.split(b" ")
        if len(fields) > 4 and _unescape(fields[4]) == want:
            parts = right.split(b" ")
            return os.fsdecode(parts[1]) if len(parts) > 1 else None
    return None


def ensure(image: Path, target: Path, disk_bytes: int, inodes: int, uid: int) -> bool:
    """Make ``target`` the mount of the plugin's image; True when it was mounted now.

    An existing mount is reused (a service killed with SIGKILL left it): it is grown if
    the operator raised ``disk_bytes``. A directory with files from before images were
    used is moved onto the new filesystem. Raises DiskUnavailable naming what is missing.
    """
    if mounted(target):
        _grow(image, target, disk_bytes)
        return False
    _host_can()
    if not image.exists():
        _make_image(image, disk_bytes, inodes, uid)
    old = None
    if target.is_dir() and not target.is_symlink() and any(target.iterdir()):
        old = target.with_name(f".{target.name}.before-image")
        os.replace(target, old)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        _mount(image, target)
    except DiskUnavailable:
        if old is not None:
            target.rmdir()
            os.replace(old, target)
        raise
    if old is not None:
        # Links as links; fifos, sockets and devices are not carried over. A tree that
        # does not fit stays where it was moved (the error names it) for the operator.
        shutil.copytree(old, target, symlinks=True, dirs_exist_ok=True, ignore=_special)
        shutil.rmtree(old)
        # Copied as root: a top that is root's makes datadir.plugin_dir re-own the tree
        # (once; an image whose top is the plugin's is never walked).
        os.chown(target, 0, 0)
    _grow(image, target, disk_bytes)
    return True


def _special(directory: str, names: list[str]) -> set[str]:
    """Entries that are neither directories, regular files nor symlinks."""
    skip = set()
    for name in names:
        try:
            mode = os.lstat(os.path.join(directory, name)).st_mode
        except OSError:
            continue
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            log.warning("%s: not moved into the data image (not a file)", name)
            skip.add(name)
    return skip


def unmount(target: Path) -> str | None:
    """Unmount ``target`` if mounted (lazily when busy); None, or what went wrong."""
    if not mounted(target):
        return None
    res = subprocess.run(["umount", str(target)], capture_output=True, check=False)
    if res.returncode == 0:
        return None
    lazy = subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)
    why = res.stderr.decode(errors="replace").strip()
    return f"{target}: busy, detached lazily ({why})" if lazy.returncode == 0 else why


def share_root(root: Path) -> None:
    """Make ``root`` (plugin-data) a shared mount of its own: bound onto itself.

    pack03's fork server makes a spare's mount namespace ahead of the request that uses
    it; a namespace copied from a shared mount is its peer, so an image mounted under
    ``root`` later still appears in it (until pack03 makes its view private). Raises
    DiskUnavailable when it cannot be done: then no image is used.
    """
    _host_can()
    root.mkdir(parents=True, exist_ok=True)
    if not mounted(root):
        _run(["mount", "--bind", str(root), str(root)], f"binding {root} onto itself")
    _run(["mount", "--make-shared", str(root)], f"making {root} a shared mount")


def unmount_all(root: Path) -> list[str]:
    """Unmount every plugin data image under ``root``, then ``root``'s own bind."""
    problems = []
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    for name in names:
        if (why := unmount(root / name)) is not None:
            problems.append(why)
    if (why := unmount(root)) is not None:
        problems.append(why)
    return problems
