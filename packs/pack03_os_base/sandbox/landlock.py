"""Landlock: unprivileged filesystem, TCP and signal restrictions for this process tree."""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from sandbox import _libc

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# Filesystem access rights, by the ABI version that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
ALL_FS_ABI5 = (1 << 16) - 1
# Rights that make sense on a regular file (the kernel rejects the others there).
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = EXECUTE | READ_FILE | READ_DIR
WRITE = ALL_FS_ABI5  # everything, masked to what the ABI handles


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    """The Landlock ABI this kernel offers, 0 when it has none (or it is disabled)."""
    try:
        return _libc.syscall(_libc.SYS_LANDLOCK_CREATE_RULESET, None, 0, CREATE_RULESET_VERSION)
    except OSError:
        return 0


def handled_fs(abi: int) -> int:
    """Every filesystem right this ABI can restrict."""
    return _FS_BY_ABI.get(abi, ALL_FS_ABI5) if abi > 0 else 0


class Ruleset:
    """Rules collected before the ruleset is created, so a failure leaves nothing half-made."""

    def __init__(
        self,
        abi: int,
        restrict_tcp: bool = False,
        scope_signals: bool = False,
        scope_abstract_unix: bool = False,
    ) -> None:
        self.abi = abi
        self.restrict_tcp = restrict_tcp
        self.scope_signals = scope_signals
        self.scope_abstract_unix = scope_abstract_unix
        self.rules: list[tuple[str, int]] = []
        self.skipped: list[str] = []
        self._fd = -1  # the kernel's ruleset, once created
        self._added = 0  # rules already added to it

    def allow(self, path: str, access: int) -> None:
        """Allow `access` beneath `path`; a path that does not exist is skipped (noted)."""
        self.rules.append((path, access))

    def create(self) -> None:
        """Create the kernel's ruleset now and add the rules so far (a server's spare, ahead
        of its request: a rule holds the inode its path names now); restrict_self adds
        the later ones. Raises OSError when the kernel refuses."""
        if self._fd < 0:
            fs = handled_fs(self.abi)
            net = NET_BIND_TCP | NET_CONNECT_TCP if self.restrict_tcp and self.abi >= 4 else 0
            scoped = 0
            if self.abi >= 6:
                scoped |= SCOPE_SIGNAL if self.scope_signals else 0
                scoped |= SCOPE_ABSTRACT_UNIX_SOCKET if self.scope_abstract_unix else 0
            attr = _RulesetAttr(fs, net, scoped)
            size = 8 if self.abi < 4 else 16 if self.abi < 6 else 24
            self._fd = _libc.syscall(  # close-on-exec, as every Landlock ruleset fd
                _libc.SYS_LANDLOCK_CREATE_RULESET, ctypes.c_void_p(ctypes.addressof(attr)), size, 0
            )
        fs = handled_fs(self.abi)
        try:
            while self._added < len(self.rules):
                path, access = self.rules[self._added]
                self._add(self._fd, path, access & fs)
                self._added += 1
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def restrict_self(self) -> None:
        """Create the ruleset (unless made ahead), add every rule and restrict this process
        (needs no_new_privs)."""
        self.create()
        try:
            _libc.syscall(_libc.SYS_LANDLOCK_RESTRICT_SELF, self._fd, 0)
        finally:
            self.close()

    def _add(self, ruleset_fd: int, path: str, access: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            self.skipped.append(path)
            return
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= FILE_RIGHTS
            if not access:
                return
            rule = _PathBeneathAttr(access, fd)
            try:
                _libc.syscall(
                    _libc.SYS_LANDLOCK_ADD_RULE,
                    ruleset_fd,
                    RULE_PATH_BENEATH,
                    ctypes.c_void_p(ctypes.addressof(rule)),
                    0,
                )
            except OSError as exc:
                # EBADFD: not a filesystem Landlock can tag (a pipe behind /dev/stdin,
                # for one). Skipping only takes access away: it fails closed.
                if exc.errno != errno.EBADFD:
                    raise
                self.skipped.append(path)
        finally:
            os.close(fd)
