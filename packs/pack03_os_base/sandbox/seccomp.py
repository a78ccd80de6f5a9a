"""seccomp through libseccomp (ctypes): a second layer that keeps non-Unix sockets closed."""

from __future__ import annotations

import ctypes
import errno
import functools

SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_ACT_ERRNO = 0x00050000
_SCMP_CMP_NE = 1
_SCMP_CMP_MASKED_EQ = 7
_AF_UNIX = 1
#: The socket type bits of socketpair()'s second argument (SOCK_NONBLOCK/CLOEXEC masked off).
_SOCK_TYPE_MASK = 0xF
#: socketpair() types a plugin without `network` keeps: SOCK_STREAM, SOCK_SEQPACKET.
_PAIR_TYPES = (1, 5)
#: Every CLONE_NEW* flag, one by one (libseccomp compares "(arg & mask) == value").
CLONE_NEW_FLAGS = (0x00000080, 0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                   0x20000000, 0x40000000)  # fmt: skip

#: S_ISUID, S_ISGID: never on a file the plugin makes or changes (a setuid file of the
#: plugin's uid on a host-visible path lets any host user run as that uid).
SETID_BITS = (0o4000, 0o2000)
#: Syscalls that take a mode, and which argument it is.
MODE_ARG = {
    "chmod": 1, "fchmod": 1, "fchmodat": 2, "fchmodat2": 2, "open": 2, "openat": 3,
    "creat": 1, "mkdir": 1, "mkdirat": 2, "mknod": 1, "mknodat": 2,
}  # fmt: skip

#: Syscalls denied whenever the layer is on: they reach around the socket rules
#: (io_uring can open sockets) or change what confines the process.
HARDENING = (
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "setns", "unshare", "keyctl", "add_key",
    "request_key", "userfaultfd", "swapon", "swapoff", "reboot",
    # the new mount API, chroot, and calls that tune the host (all need a capability
    # the plugin lacks: denied anyway, so a kernel bug behind them is out of reach)
    "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr",
    "chroot", "open_by_handle_at", "name_to_handle_at", "fanotify_init", "quotactl",
    "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    "vhangup", "lookup_dcookie", "uselib",
    # native AIO: its events come from one host-wide budget (fs.aio-max-nr) with no
    # per-uid or cgroup bound; a plugin could take all of it (glibc's aio_* use threads)
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents",
)  # fmt: skip

#: MSG_OOB, and where each socket call has its flags: out-of-band data (TCP urgent data,
#: AF_UNIX OOB) is refused. AF_UNIX's OOB code is rarely used and has been the kernel's
#: weak spot (CVE-2025-38236, used to escape a browser sandbox); the protocol fd is AF_UNIX.
MSG_OOB = 0x1
FLAGS_ARG = {"sendto": 3, "recvfrom": 3, "sendmsg": 2, "recvmsg": 2, "sendmmsg": 3,
             "recvmmsg": 3}  # fmt: skip


_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _errno(code: int) -> int:
    return _SCMP_ACT_ERRNO | (code & 0xFFFF)


@functools.cache
def library() -> ctypes.CDLL | None:
    """libseccomp loaded through ctypes, or None when the machine has none."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        from ctypes import util  # slow (imports subprocess): only when the name differs

        name = util.find_library("seccomp")
        if name is None:
            return None
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            return None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]  # fmt: skip
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    return lib


def version() -> str | None:
    """libseccomp's version string, or None when unavailable."""
    lib = library()
    if lib is None:
        return None

    class _Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    v = lib.seccomp_version().contents
    return f"{v.major}.{v.minor}.{v.micro}"


class Filter:
    """A filter being built: allow by default, deny what the policy does not grant."""

    def __init__(self) -> None:
        lib = library()
        if lib is None:
            raise OSError(errno.ENOSYS, "libseccomp is not available")
        self._lib = lib
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        if not ctx:
            raise OSError(errno.ENOMEM, "seccomp_init failed")
        self._ctx = ctypes.c_void_p(ctx)
        self.denied: list[str] = []
        # The BPF program, once compiled (compile()): seccomp_load generates it anew on
        # every load, about 0.4 ms a start.
        self._program: ctypes.Array[ctypes.c_char] | None = None
        self._fprog: _SockFprog | None = None

    def _rule(self, action: int, name: str, cmps: list[_ArgCmp]) -> None:
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not on this architecture
            return
        array = (_ArgCmp * max(1, len(cmps)))(*cmps)
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(cmps), array)
        if rc < 0:
            raise OSError(-rc, f"seccomp_rule_add({name}) failed")
        self.denied.append(name)

    def deny(self, name: str, code: int = errno.EPERM) -> None:
        self._rule(_errno(code), name, [])

    def deny_namespaces(self) -> None:
        """No namespace by any route: clone() with a CLONE_NEW* flag fails with EPERM,
        clone3() with ENOSYS (its flags sit in memory, out of the filter's sight; glibc
        then falls back to clone, as under container runtimes). unshare/setns: HARDENING."""
        for flag in CLONE_NEW_FLAGS:
            self._rule(_errno(errno.EPERM), "clone", [_ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag)])
        self.deny("clone3", errno.ENOSYS)

    def deny_setid_modes(self) -> None:
        """No setuid/setgid bit by any route: a chmod/open/mkdir/mknod call whose mode has
        S_ISUID or S_ISGID fails with EPERM; openat2() with ENOSYS (its mode sits in
        memory; glibc then falls back to openat)."""
        for name, arg in MODE_ARG.items():
            for bit in SETID_BITS:
                self._rule(_errno(errno.EPERM), name, [_ArgCmp(arg, _SCMP_CMP_MASKED_EQ, bit, bit)])
        self.deny("openat2", errno.ENOSYS)

    def deny_out_of_band(self) -> None:
        """Any send/receive with MSG_OOB fails with EPERM (``FLAGS_ARG``)."""
        for name, arg in FLAGS_ARG.items():
            oob = _ArgCmp(arg, _SCMP_CMP_MASKED_EQ, MSG_OOB, MSG_OOB)
            self._rule(_errno(errno.EPERM), name, [oob])

    def deny_sockets(self) -> None:
        """socket() fails with EACCES for every family; socketpair() only works for AF_UNIX
        SOCK_STREAM/SOCK_SEQPACKET (a datagram pair's end can sendto() a host socket path).

        Denying AF_UNIX socket() too matters: the network namespace does not hide
        pathname sockets (a root daemon's /run/*.sock), and Landlock cannot restrict
        connect() on them. socketpair() stays, for in-process plumbing (asyncio).
        """
        self._rule(_errno(errno.EACCES), "socket", [])
        self._rule(_errno(errno.EACCES), "socketpair", [_ArgCmp(0, _SCMP_CMP_NE, _AF_UNIX, 0)])
        for kind in range(_SOCK_TYPE_MASK + 1):  # datagram pairs can carry a host address
            if kind not in _PAIR_TYPES:
                self._rule(_errno(errno.EACCES), "socketpair",
                           [_ArgCmp(1, _SCMP_CMP_MASKED_EQ, _SOCK_TYPE_MASK, kind)])  # fmt: skip

    def compile(self) -> None:
        """Generate the BPF program now (seccomp_export_bpf: the very program seccomp_load
        would generate and load); load() then only installs it. No rule may follow."""
        import os

        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                self.export(w)  # at most 4096 instructions (32 KiB): fits a pipe's buffer
            finally:
                os.close(w)
            data = b""
            while chunk := os.read(r, 1 << 16):
                data += chunk
        finally:
            os.close(r)
        if not data or len(data) % 8:
            raise OSError(errno.EINVAL, f"seccomp_export_bpf: {len(data)} bytes, no program")
        self._program = ctypes.create_string_buffer(data, len(data))
        self._fprog = _SockFprog(len(data) // 8, ctypes.addressof(self._program))

    def load(self) -> None:
        """Install the filter on this process (needs no_new_privs); children inherit it."""
        if self._fprog is not None:  # compiled ahead: what libseccomp does without flags
            from sandbox import _libc

            _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog))
            return
        rc = self._lib.seccomp_load(self._ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load failed")

    def export(self, fd: int) -> None:
        """Write the compiled BPF program to `fd` (bubblewrap's --seccomp FD)."""
        rc = self._lib.seccomp_export_bpf(self._ctx, fd)
        if rc < 0:
            raise OSError(-rc, "seccomp_export_bpf failed")

    def release(self) -> None:
        if self._ctx:
            self._lib.seccomp_release(self._ctx)
            self._ctx = ctypes.c_void_p(None)
