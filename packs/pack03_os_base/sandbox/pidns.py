"""The native backend's PID namespace: three processes, and only one of them is the plugin.

``unshare(CLONE_NEWPID)`` only moves the caller's *children*, so a run forks:

* the **launcher** (the pid the supervisor or the server started, in the host's
  namespaces but for mount/UTS/IPC/network) stays as a small waiter: it relays the
  plugin's report, forwards TERM/INT/HUP/QUIT/USR1/USR2 to the plugin, and ends with
  the plugin's own status (exit code, or the same signal);
* **init**, pid 1 of the namespace: it reaps orphans and holds the namespace; a
  process that is pid 1 ignores every signal it has no handler for, which is why
  the plugin is not pid 1 (a plugin without a TERM handler must still die of TERM).
  When the plugin ends, init passes its wait status to the launcher and exits: the
  kernel then kills whatever is left in the namespace. It dies with the launcher
  (``PR_SET_PDEATHSIG``), and takes the namespace with it;
* the **plugin**, pid 2 inside, which builds its mount view, switches identity,
  applies the last layers and execs. Its host pid is the report's ``pid``.

The plugin tells the launcher how the start went through a pipe (close-on-exec:
EOF right after a successful exec): its report, or an error with its exit status.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import struct

from sandbox import _libc
from sandbox.errors import Relayed

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

#: Signals the launcher passes on to the plugin.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip
HOSTNAME = "aurora-sandbox"
_PR_SET_PDEATHSIG = 1
_STATUS = struct.Struct("i")


class Relay:
    """The plugin's side: how it tells the launcher its report, or why it stops."""

    def __init__(self, fd: int, host_pid: int) -> None:
        self.fd = fd
        self.host_pid = host_pid
        # A pre-forked spare's launcher does not hold the plugin's stderr: the plugin
        # process says why it stops itself (a one-shot launcher prints it).
        self.speak = True
        # Namespaces a pre-forked spare unshared ahead (sandbox.pidns.unshare_ahead), and
        # the host's network namespace to go back to when `network` is granted.
        self.unshared = 0
        self.host_net: int | None = None
        # A server's spare: the plugin process talks to the server itself (its report,
        # its refusal through `on_fail`); the launcher only waits.
        self.direct = False
        # The generic part of the mount view, built ahead (sandbox.mounts.prepare): the
        # device nodes it bound, or None.
        self.prepared: list[str] | None = None
        # Landlock rulesets made ahead, by `network` granted (sandbox.confine.landlock_ahead).
        self.landlock: dict[bool, Any] = {}
        self.on_fail: Callable[[int, str, dict[str, Any] | None], None] | None = None

    def unshare_ahead(self, flags: int) -> None:
        """A spare, before any request: unshare `flags` now (a network namespace too:
        most plugins get one; a request granting `network` returns to the host's)."""
        host_net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _libc.unshare(flags)
        except OSError:
            os.close(host_net)
            return
        self.unshared, self.host_net = flags, host_net

    def report(self, doc: dict[str, Any]) -> None:
        _write_all(self.fd, json.dumps({"report": doc}).encode() + b"\n")

    def claimed(self) -> None:
        """A pre-forked spare's plugin process took a request (the launcher stops dying
        with the server)."""
        _write_all(self.fd, b'{"claimed": true}\n')

    def fail(self, status: int, message: str, doc: dict[str, Any] | None) -> NoReturn:
        if self.speak:
            with contextlib.suppress(OSError):
                os.write(2, f"sandbox: {message}\n".encode())
        if self.on_fail is not None:
            with contextlib.suppress(OSError):
                self.on_fail(status, message, doc)
            os._exit(status)
        with contextlib.suppress(OSError):
            msg = {"error": {"status": status, "message": message}, "report": doc}
            _write_all(self.fd, json.dumps(msg).encode() + b"\n")
        os._exit(status)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class Launcher:
    """The launcher's side of a forked namespace: `run` waits and relays, never returns."""

    def __init__(self, init: int, status_r: int, exit_r: int) -> None:
        self.init = init
        self.status_r = status_r
        self.exit_r = exit_r

    def run(
        self,
        keep_fd: int | None,
        deliver: Callable[[dict[str, Any]], None],
        on_failure: Callable[[dict[str, Any] | None], None],
        on_claim: Callable[[], None] | None = None,
    ) -> NoReturn:
        """Deliver the plugin's report (or call `on_failure` and raise Relayed), wait, and
        end as the plugin ended. `on_claim`: the plugin process took a request (a
        server's pre-forked spare)."""
        _launcher(self, keep_fd, deliver, on_failure, on_claim)

    def wait(self, on_claim: Callable[[], None]) -> NoReturn:
        """A server's spare: the plugin process talks to the server itself; only wait
        (signals go to init, which passes them on), and end as the plugin ended."""

        def forward(sig: int, _frame: object) -> None:
            _kill(self.init, sig)

        for sig in FORWARDED:
            signal.signal(sig, forward)
        _read_relay(self.status_r, on_claim)  # "claimed", then EOF at exec (or death)
        os.close(self.status_r)
        _reap(self.init)
        data = b""
        with contextlib.suppress(OSError):
            data = os.read(self.exit_r, _STATUS.size)
        _mirror(_STATUS.unpack(data)[0] if len(data) == _STATUS.size else None)


def prefork() -> Relay | Launcher:
    """A PID namespace and the two forks (module doc): the plugin process gets a Relay,
    the launcher a Launcher. A server's spare does this ahead of any request."""
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    _libc.unshare(_libc.CLONE_NEWPID)
    init = os.fork()
    if init == 0:
        os.close(status_r)
        os.close(exit_r)
        plugin = _init_forks(status_w, exit_w)
        # In the plugin: it unshares the other namespaces itself (the launcher keeps
        # the host's root: it writes the report).
        return Relay(status_w, plugin)
    os.close(status_w)
    os.close(exit_w)
    return Launcher(init, status_r, exit_r)


def enter(
    keep_fd: int | None,
    deliver: Callable[[dict[str, Any]], None],
    on_failure: Callable[[dict[str, Any] | None], None],
    plugin_only: int | None = None,
) -> Relay:
    """prefork(), then: returns only in the plugin process. In the launcher it delivers
    the report (or, when the plugin failed, calls `on_failure` with its refused report
    and raises Relayed), then waits and ends with the plugin's status: it never returns.
    `keep_fd` (the server's status channel) stays with the launcher alone;
    `plugin_only` (the protocol connection) with the plugin alone: a copy in the
    waiter would keep the supervisor from seeing EOF when the plugin dies (init closes
    every fd it does not need itself).
    """
    side = prefork()
    if isinstance(side, Launcher):
        if plugin_only is not None:
            os.close(plugin_only)
        side.run(keep_fd, deliver, on_failure)
    if keep_fd is not None:
        os.close(keep_fd)
    side.speak = False
    return side


def _init_forks(status_w: int, exit_w: int) -> int:
    """In init (pid 1): fork the plugin; returns its host pid in the plugin, never in init."""
    # The launcher is outside the namespace: getppid() says 0. Had it died before the
    # death signal was set, the plugin's first report would hit a closed pipe and end it.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if _reader_gone(exit_w):  # it died before: no signal will come, and no one waits for
        os._exit(1)  # us (a spare's plugin process would hold the server's channel forever)
    plugin = os.fork()
    if plugin == 0:
        os.close(exit_w)
        return int(os.readlink("/proc/self"))  # the host's /proc still: the host pid
    os.close(status_w)
    try:
        _init_main(plugin, exit_w)
    finally:
        os._exit(1)


def _reader_gone(fd: int) -> bool:
    """Whether the read end of the pipe `fd` writes to is closed everywhere. The launcher
    alone holds `exit_r`, and a dying process closes its files before its children are
    reparented (and sent their death signal): checked after ``PR_SET_PDEATHSIG``, either
    the signal comes or this says the launcher is gone."""
    import select

    poller = select.poll()
    poller.register(fd, 0)  # POLLERR (no reader left) is always reported
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _init_main(plugin: int, exit_w: int) -> NoReturn:
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, exit_w)
    os.closerange(exit_w + 1, 2**31 - 1)
    for sig in FORWARDED:  # pid 1 gets only signals it handles: pass them on
        signal.signal(sig, lambda s, _f: _kill(plugin, s))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == plugin:
            with contextlib.suppress(OSError):
                os.write(exit_w, _STATUS.pack(status))
            os._exit(0)  # the kernel kills the rest of the namespace


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def _launcher(
    side: Launcher,
    keep_fd: int | None,
    deliver: Callable[[dict[str, Any]], None],
    on_failure: Callable[[dict[str, Any] | None], None],
    on_claim: Callable[[], None] | None,
) -> NoReturn:
    target: list[int] = []  # the plugin's host pid, once known
    pending: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if target:
            _kill(target[0], sig)
        else:
            pending.append(sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    report, error = _read_relay(side.status_r, on_claim)
    os.close(side.status_r)
    if error is not None or report is None:
        _reap(side.init)
        os.close(side.exit_r)
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        on_failure(report)
        if error is None:
            raise Relayed(125, "launcher error: the sandboxed process died before exec")
        raise Relayed(int(error.get("status", 125)), str(error.get("message", "")))
    target.append(int(report["pid"]))
    for pending_sig in pending:
        _kill(target[0], pending_sig)
    try:
        deliver(report)
    finally:
        if keep_fd is not None:
            with contextlib.suppress(OSError):
                os.close(keep_fd)  # EOF: the server knows the plugin runs
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):  # the plugin alone holds its stdio
            os.dup2(null, fd)
        os.close(null)
    _reap(side.init)
    data = b""
    with contextlib.suppress(OSError):
        data = os.read(side.exit_r, _STATUS.size)
    _mirror(_STATUS.unpack(data)[0] if len(data) == _STATUS.size else None)


def _read_relay(
    fd: int, on_claim: Callable[[], None] | None = None
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    buffer = b""
    report = error = None
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("claimed") and on_claim is not None:
                on_claim()
            report = msg.get("report") or report
            error = msg.get("error") or error
    return report, error


def _reap(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return 0


def _mirror(status: int | None) -> NoReturn:
    """End this process the way the plugin ended."""
    if status is None or os.WIFSIGNALED(status):  # no status: init was killed, and so
        sig = signal.SIGKILL if status is None else os.WTERMSIG(status)  # the plugin
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    assert status is not None
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 125)


__all__ = ["FORWARDED", "HOSTNAME", "Launcher", "Relay", "Relayed", "enter", "prefork"]
