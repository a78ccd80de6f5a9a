"""The plugin's protocol connection: one end of the supervisor's socketpair, fd 3 in the plugin.

The supervisor (pack04) hands it over (a fork-server request's 4th fd, or the one-shot
``--protocol-fd N``); the plugin finds it as fd 3 with ``AURORA_PLUGIN_PROTOCOL_FD=3``
(docs/plugin-protocol-v1.md). Only a *connected AF_UNIX stream socket* is accepted: a
regular file, a listening socket or a network socket handed to a hostile plugin would
give it more than one conversation with its supervisor.

Between its arrival and the exec the descriptor sits on a high number, close-on-exec
(``take``): low numbers are taken by the seccomp memfd, spares' control sockets and
pipes, and a fork on the way (the PID namespace's waiter and init) must not keep a copy,
or the supervisor would never see EOF when the plugin dies. ``confine._exec`` dup2()s
it to fd 3 last.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat

#: The descriptor number the plugin finds its connection on, and the variable naming it.
FD = 3
ENV = "AURORA_PLUGIN_PROTOCOL_FD"
#: Where the descriptor waits for the exec: above everything the launcher opens itself.
_PARK = 100


def problem(fd: int, where: str) -> str | None:
    """Why `fd` may not be a plugin's protocol connection (None: a connected AF_UNIX
    SOCK_STREAM socket). `where` names it in the message (``fds[3]``, ``--protocol-fd 7``)."""
    expected = "expected a connected AF_UNIX SOCK_STREAM socket (one end of a socketpair)"
    try:
        st = os.fstat(fd)
    except OSError as exc:
        return f"{where}: not an open file descriptor ({exc.strerror}); {expected}"
    if not stat.S_ISSOCK(st.st_mode):
        return f"{where}: {_kind(st.st_mode)}, not a socket; {expected}"
    sock = socket.socket(fileno=os.dup(fd))  # a probe of its own: `fd` stays as it is
    try:
        family, kind = sock.family, sock.type
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if family != socket.AF_UNIX or kind != socket.SOCK_STREAM:
            return f"{where}: a socket of family {_name(family)}, type {_name(kind)}; {expected}"
        if listening:
            return f"{where}: a listening socket, not a connection; {expected}"
        try:
            sock.getpeername()
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return f"{where}: an unconnected socket; {expected}"
            raise
    except OSError as exc:
        return f"{where}: cannot inspect the socket ({exc.strerror}); {expected}"
    finally:
        sock.close()
    return None


def take(fd: int) -> int:
    """Move `fd` to a high number, close-on-exec, and close `fd`: the number returned is
    what confine passes to fd 3 at exec (module doc)."""
    try:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _PARK)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: _PARK is above RLIMIT_NOFILE
            raise
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FD + 1)
    os.close(fd)
    return high


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):  # fmt: skip
        if test(mode):
            return name
    return "not a socket"


def _name(value: int) -> str:
    return getattr(value, "name", str(value))


__all__ = ["ENV", "FD", "problem", "take"]
