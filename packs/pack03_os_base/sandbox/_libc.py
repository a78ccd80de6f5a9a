"""Thin ctypes wrappers over the libc calls the stdlib of Python 3.11 does not offer."""

from __future__ import annotations

import ctypes
import functools
import os

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
#: Every namespace flag of clone/unshare (what seccomp refuses to a plugin).
CLONE_NEW_ANY = (
    CLONE_NEWTIME | CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC
    | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)  # fmt: skip

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 2
#: pivot_root's number differs per architecture (x86_64, aarch64 and the generic table).
SYS_PIVOT_ROOT = {"x86_64": 155, "i686": 217, "aarch64": 41, "riscv64": 41}.get(
    os.uname().machine, 41
)
SYS_MOUNT_SETATTR = 442  # generic table
MOUNT_ATTR_RDONLY = 0x1
AT_RECURSIVE = 0x8000

PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Syscall numbers of Landlock are the same on every architecture (generic table).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

_LINUX_CAPABILITY_VERSION_3 = 0x20080522


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library of this process, with errno kept for OSError."""
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def syscall(number: int, *args: int | ctypes.c_void_p | None) -> int:
    """Call a raw syscall; negative results raise OSError with errno."""
    fn = libc().syscall
    fn.restype = ctypes.c_long
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(int(fn(ctypes.c_long(number), *converted)), f"syscall {number}")


@functools.cache
def _prctl() -> Any:
    fn = libc().prctl
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]  # typed once: dozens of calls per run
    return fn


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(int(_prctl()(option, arg2, arg3, arg4, arg5)), f"prctl({option})")


def unshare(flags: int) -> None:
    fn = libc().unshare
    fn.restype = ctypes.c_int
    _check(int(fn(ctypes.c_int(flags))), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:  # fmt: skip
    fn = libc().mount
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                   ctypes.c_char_p]  # fmt: skip
    enc = [None if v is None else os.fsencode(v) for v in (source, target, fstype, data)]
    _check(int(fn(enc[0], enc[1], enc[2], flags, enc[3])), f"mount {target}")


def setns(fd: int, nstype: int) -> None:
    fn = libc().setns
    fn.restype = ctypes.c_int
    _check(int(fn(ctypes.c_int(fd), ctypes.c_int(nstype))), "setns")


def umount2(target: str, flags: int) -> None:
    fn = libc().umount2
    fn.restype = ctypes.c_int
    _check(int(fn(os.fsencode(target), ctypes.c_int(flags))), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    a, b = ctypes.c_char_p(os.fsencode(new_root)), ctypes.c_char_p(os.fsencode(put_old))
    fn = libc().syscall
    fn.restype = ctypes.c_long
    _check(int(fn(ctypes.c_long(SYS_PIVOT_ROOT), a, b)), "pivot_root")


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]  # fmt: skip


def mount_setattr_rdonly_recursive(path: str) -> None:
    """Make the mount at `path` and every mount below it read-only (Linux >= 5.12)."""
    attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
    fn = libc().syscall
    fn.restype = ctypes.c_long
    rc = fn(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_long(-100),
            ctypes.c_char_p(os.fsencode(path)), ctypes.c_long(AT_RECURSIVE),
            ctypes.byref(attr), ctypes.c_long(ctypes.sizeof(attr)))  # fmt: skip
    _check(int(rc), f"mount_setattr {path}")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset_zero() -> None:
    """Clear the effective, permitted and inheritable capability sets of this thread."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    fn = libc().capset
    fn.restype = ctypes.c_int
    _check(int(fn(ctypes.byref(header), ctypes.byref(data))), "capset")
