"""The native backend's private mount namespace: a minimal root built on a tmpfs.

Called as root, in a process that already has its own mount (and PID) namespace.
Propagation slave first (host mounts come in, such as the data image the launcher
mounts just before a request; nothing goes out to the host); a tmpfs mounted at /dev/shm of
this namespace (no bind source can be below it) is filled with bind mounts of host
paths at the *same paths* (so the paths in the policy and the environment stay
valid), then made the root with ``pivot_root``; the old root stays, covered by an
empty read-only tmpfs. ``prepare`` builds what no policy changes (system dirs
read-only, a fresh /proc, a minimal /dev, small private /tmp and /dev/shm): a server's
spare does it ahead. ``finish`` adds the policy's part: interpreter prefixes and
``read_paths`` read-only, ``data_dir`` read-write, granted device nodes; with
``fs-read``/``fs-write`` the host's top-level directories (read-only for ``fs-read``);
with ``fs-write`` the host's world-writable directories become private tmpfs
(``shared_dirs``).
Directories the plugin's uid could not traverse on the host (``/root`` mode 0700
holding the interpreter) become tmpfs directories holding only the binds below them.
The namespace dies with its last process: nothing stays.
"""

from __future__ import annotations

import os
import stat

from sandbox import _libc, shared_dirs
from sandbox.bwrap import traversable  # one check of host reachability for both views

#: Where the new root is built, in this process's own mount namespace (the host's is
#: untouched): a directory no bind source can lie beneath (the plugin gets a private
#: /dev/shm; a policy's paths cannot be under /dev).
_NEW = "/dev/shm"
#: Where the old root stays, covered (see finish()).
_PUT_OLD = "/.oldroot"
#: Size of the private /tmp and /dev/shm (each), and of the tree of mount points.
TMP_SIZE = 16 * 1024 * 1024
_TREE_SIZE = 1024 * 1024
_RO = _libc.MS_RDONLY | _libc.MS_NOSUID | _libc.MS_NODEV
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2"}  # fmt: skip


class View:
    """What the plugin's root holds; built by `build()`."""

    def __init__(self, base: str | None, uid: int, gid: int) -> None:
        self.base = base  # None (minimal), "ro" (fs-read) or "rw" (fs-write)
        self.uid = uid
        self.gid = gid
        self.read: list[str] = []  # bound read-only
        self.write: list[str] = []  # bound read-write
        self.devices: list[str] = []  # device nodes, read-write
        self.private: list[str] = []  # fs-write: host world-writable dirs made tmpfs

    def describe(self) -> str:
        base = {None: "minimal root on tmpfs", "ro": "host / read-only",
                "rw": "host / read-write"}[self.base]  # fmt: skip
        return (
            f"{base}; {len(self.read)} read-only, {len(self.write)} read-write binds; "
            f"/dev minimal ({len(self.devices)} nodes), fresh /proc, private /tmp "
            f"and /dev/shm ({TMP_SIZE >> 20} MiB)"
            + (f", {' '.join(self.private)} private too" if self.private else "")
            + "; pivot_root, propagation slave"
        )


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind(src: str, dst: str, readonly: bool, recursive: bool = True) -> bool:
    """Bind host `src` (resolved on the host) at `dst` in the new root; False when the
    source does not exist."""
    source = src
    try:
        st = os.stat(source)
    except OSError:
        return False
    target = _NEW + dst
    if os.path.islink(target):  # fs modes: a link of the bound base, reachable through it
        return True
    if stat.S_ISDIR(st.st_mode):
        _mkdirs(target)
    elif not os.path.lexists(target):
        _mkdirs(os.path.dirname(target))
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    flags = _libc.MS_BIND | (_libc.MS_REC if recursive else 0)
    _libc.mount(source, target, None, flags)
    if readonly:
        try:
            _libc.mount_setattr_rdonly_recursive(target)
        except OSError:  # an older kernel: at least the top mount
            _libc.mount(None, target, None, _libc.MS_REMOUNT | _libc.MS_BIND | _RO)
    return True


def _node(src: str, dst: str, view: View) -> None:
    """A granted device: the same node (type, major/minor) made in the private /dev, owned
    by the plugin; a directory (/dev/dri, /dev/bus) is made with the nodes below it."""
    st = os.stat(src)
    target = _NEW + dst
    if stat.S_ISDIR(st.st_mode):
        _mkdirs(target)
        for name in sorted(os.listdir(src)):
            _node(f"{src}/{name}", f"{dst}/{name}", view)
        return
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        return
    _mkdirs(os.path.dirname(target))
    os.mknod(target, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev)
    os.chown(target, view.uid, view.gid)
    view.devices.append(dst)


def _tmpfs(target: str, size: int, mode: int) -> None:
    _mkdirs(target)
    _libc.mount("tmpfs", target, "tmpfs", _libc.MS_NOSUID | _libc.MS_NODEV,
                f"size={size},mode={mode:o}")  # fmt: skip


class _Plan:
    """The policy's part of the view, read from the host (symlinks resolve there)."""

    def __init__(self, view: View, granted: list[str]) -> None:
        self.links: dict[str, str] = {}  # fs modes: top-level symlinks: path -> target
        self.binds: list[tuple[str, str, bool]] = []  # (host source, path inside, read-only)
        self.dirs: list[str] = []  # fs modes: top-level dirs made, not bound
        self.nodes = [(os.path.realpath(d), d) for d in granted if os.path.exists(d)]
        # fs-write: the host's world-writable dirs as private tmpfs (path -> mode), mounted
        # over the base binds and below the policy's own binds (shared_dirs).
        self.private = shared_dirs.find() if view.base == "rw" else {}
        if view.base is not None:
            self._base(view, [*view.read, *view.write])
        self.base_binds = len(self.binds)
        write = set(view.write)
        self._add([p for p in view.read if p not in write], True)
        self._add(sorted(write), False)

    def _add(self, paths: list[str], readonly: bool) -> None:
        for path in sorted(paths, key=lambda p: p.count("/")):
            real = os.path.realpath(path)
            if os.path.exists(real):
                self.binds.append((real, path, readonly))

    def _base(self, view: View, needed: list[str]) -> None:
        """fs-read/fs-write: every top-level host entry, but /dev, /proc, /tmp (private)."""
        for name in sorted(os.listdir("/")):
            path = "/" + name
            if name in ("dev", "proc", "tmp"):
                continue
            if os.path.islink(path):
                self.links[path] = os.readlink(path)
                continue
            below = [n for n in needed if n == path or n.startswith(path + "/")]
            if any(not traversable(n, view.uid, view.gid) for n in below):
                self.dirs.append(path)  # only the needed binds below it (module doc)
            elif os.path.isdir(path):
                self.binds.append((path, path, view.base == "ro" or name == "sys"))


def prepare(system: tuple[str, ...], devices: list[str]) -> list[str]:
    """The part of the view no policy changes, built ahead (a server's spare does it
    before any request): propagation slave (host mounts come in, none go out), a tmpfs
    at /dev/shm as the new root with the system dirs read-only, /proc, a minimal /dev,
    private /tmp and /dev/shm. Returns the device nodes bound. Needs a mount (and PID)
    namespace of its own."""
    if not os.path.isdir(_NEW):
        raise OSError(2, f"{_NEW} does not exist: no place to build the plugin's root")
    # Slave, not private: a spare is prepared before its request, and the launcher mounts
    # the plugin's data image on the host (under a shared mount) just before the request;
    # a slave receives that mount and never sends one of its own back to the host.
    _libc.mount(None, "/", None, _libc.MS_REC | _libc.MS_SLAVE)
    _libc.mount("tmpfs", _NEW, "tmpfs", _libc.MS_NOSUID | _libc.MS_NODEV,
                f"size={_TREE_SIZE},mode=755")  # fmt: skip
    links = {p: os.readlink(p) for p in system if os.path.dirname(p) == "/" and os.path.islink(p)}
    for path, target in links.items():
        os.symlink(target, _NEW + path)
    for path in system:
        if path not in links:
            real = os.path.realpath(path)
            if os.path.exists(real):
                _bind(real, path, readonly=True)
    _mkdirs(_NEW + "/proc")
    _libc.mount("proc", _NEW + "/proc", "proc",
                _libc.MS_NOSUID | _libc.MS_NODEV | _libc.MS_NOEXEC)  # fmt: skip
    _mkdirs(_NEW + "/dev")
    _libc.mount("tmpfs", _NEW + "/dev", "tmpfs", _libc.MS_NOSUID | _libc.MS_NOEXEC,
                f"size={_TREE_SIZE},mode=755")  # fmt: skip
    bound = [d for d in devices if os.path.exists(d)
             and _bind(os.path.realpath(d), d, readonly=False, recursive=False)]  # fmt: skip
    for name, target in _DEV_LINKS.items():
        os.symlink(target, f"{_NEW}/dev/{name}")
    _tmpfs(_NEW + "/dev/shm", TMP_SIZE, 0o1777)
    _tmpfs(_NEW + "/tmp", TMP_SIZE, 0o1777)
    return bound


def finish(view: View, devices: list[str], granted: list[str] | None = None) -> None:
    """Add the policy's part (module doc) to a prepared view and make it the root.

    `devices`: what prepare() bound. `granted` device nodes (gpu/io) are made anew in
    the private /dev, owned by the plugin's uid (the host node keeps its owner and
    mode; the plugin cannot make nodes itself).
    """
    plan = _Plan(view, list(granted or []))
    view.devices = list(devices)
    for path, target in plan.links.items():
        if not os.path.lexists(_NEW + path):
            os.symlink(target, _NEW + path)
    for path in plan.dirs:
        _mkdirs(_NEW + path)
    for src, dst, readonly in plan.binds[: plan.base_binds]:
        _bind(src, dst, readonly)
    for path, mode in plan.private.items():
        if os.path.isdir(_NEW + path):  # seen through the bound host dirs
            _tmpfs(_NEW + path, shared_dirs.SIZE, mode)
            view.private.append(path)
    for src, dst, readonly in plan.binds[plan.base_binds :]:
        _bind(src, dst, readonly)
    for src, dst in plan.nodes:
        _node(src, dst, view)
    os.mkdir(_NEW + _PUT_OLD, 0o000)
    os.chdir(_NEW)
    _libc.pivot_root(".", _PUT_OLD[1:])
    # The old root is not detached (umount2 costs an RCU grace period, ~10 ms, on every
    # start): an empty read-only tmpfs covers it. Reaching under a mount needs umount
    # (CAP_SYS_ADMIN and seccomp both say no); the kernel drops it with the namespace.
    _libc.mount("tmpfs", _PUT_OLD, "tmpfs", _RO | _libc.MS_NOEXEC, "size=4k,mode=0")
    os.chdir("/")


def build(
    view: View, system: tuple[str, ...], devices: list[str], granted: list[str] | None = None
) -> None:
    """prepare() then finish(): the whole view at once (the one-shot launcher)."""
    finish(view, prepare(system, devices), granted)


__all__ = ["TMP_SIZE", "View", "build", "finish", "prepare"]
