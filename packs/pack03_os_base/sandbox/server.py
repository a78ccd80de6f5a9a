"""The fork server: one long-lived launcher that starts each plugin by forking itself.

A one-shot ``launch.py --policy`` pays a second interpreter start, its imports and
the kernel's cgroup migration (an RCU grace period, about 10 ms) before the plugin's
own start. The server pays them ahead: the library is imported once, and a few
*spares* - forked children already sitting in cgroups of their own - wait for work.
Per request a spare receives the policy and the plugin's stdio, applies every layer
in its own process (the code path of the one-shot launcher) and execs the plugin.
The server, its parent, tells the client the pid, and later the exit status.

Protocol (docs/contracts.md): AF_UNIX SOCK_SEQPACKET, one request message per
connection (JSON, with 0, 3 or 4 fds: stdio, and the plugin's protocol connection), then
event messages: ``started``,
``exited`` (or ``error`` for a malformed request).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import stat
import struct
import sys
import time

from sandbox import _libc, _log, cgroups, pidns, privileges, protocol
from sandbox.confine import BACKENDS, SYSTEM_READ, apply_and_exec, python_prefixes, seccomp_filters
from sandbox.errors import EXIT_REFUSED, PolicyError, RequestError, ServerError, exit_status
from sandbox.layout import Layout, check_request
from sandbox.policy import parse_policy, policy_from_json
from sandbox.report import write_report

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, NoReturn

PROTOCOL = "aurora-sandbox-server-v1"
#: Largest request accepted, in bytes (a message must fit a socket buffer).
MAX_MESSAGE = 1 << 16
#: Largest message read from a child (a report).
_MAX_CHILD_MESSAGE = 1 << 20
#: Connections waiting for their request at once; more are turned away.
MAX_PENDING = 64
#: fds a request may carry: stdin, stdout, stderr, the plugin's protocol connection.
_MAX_FDS = 4
_REQUEST_KEYS = ("policy", "argv", "backend", "report")
_PR_SET_PDEATHSIG = 1
#: Chores (replacing spares, removing ended runs' cgroups) wait until the server has
#: been idle this long (seconds) ...
IDLE_REFILL = 0.01
#: ... and every live run was handed over at least this long ago: a fork and a few
#: cgroup rmdirs (about 1 ms of kernel time each) must not take the CPU from a plugin
#: that is starting. With no spare left a request gets a fresh child at once.
SETTLE = 0.1
_UCRED = struct.Struct("3i")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def parse_request(
    raw: bytes,
    nfds: int,
    layout: Layout | None = None,
    system_paths: frozenset[str] = frozenset(),
    protocol_fd: int | None = None,
) -> dict[str, Any]:
    """Validate one request; raise RequestError naming every problem at once.

    With a `layout` (a server always has one) the policy's paths and the report must
    lie beneath its roots (sandbox.layout); `system_paths` are read paths the launcher
    adds itself and so may appear as they are. `protocol_fd`: the 4th fd received (the
    server always passes it), checked to be a connected AF_UNIX stream socket.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError([f"not a JSON document: {exc}"]) from None
    if not isinstance(doc, dict):
        raise RequestError([f"expected a JSON object, found {type(doc).__name__}"])
    problems = [
        f"{key}: unknown key (known: {', '.join(_REQUEST_KEYS)})"
        for key in doc
        if key not in _REQUEST_KEYS
    ]
    policy: dict[str, Any] | None = None
    if "policy" not in doc:
        problems.append("policy: missing (the policy document of docs/contracts.md)")
    else:
        try:
            policy = parse_policy(doc["policy"], source="policy").to_json()
        except PolicyError as exc:
            problems += [f"policy.{p}" if not p.startswith("expected") else f"policy: {p}"
                         for p in exc.problems]  # fmt: skip
    argv = doc.get("argv")
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
    ):
        problems.append("argv: expected a non-empty list of non-empty strings")
    backend = doc.get("backend", "auto")
    if backend not in BACKENDS:
        problems.append(f"backend: expected one of {', '.join(BACKENDS)}, found {backend!r}")
    report = doc.get("report")
    if report is not None and (
        not isinstance(report, str) or not os.path.isabs(report) or "\0" in report
    ):
        problems.append(f"report: expected an absolute path or null, found {report!r}")
    if nfds not in (0, 3, 4):
        problems.append(f"fds: expected 0, 3 (stdin, stdout, stderr) or 4 (and the plugin's "
                        f"protocol connection), received {nfds}")  # fmt: skip
    elif nfds == 4 and protocol_fd is not None:
        problem = protocol.problem(protocol_fd, "fds[3] (the protocol connection)")
        if problem:
            problems.append(problem)
    if layout is not None:
        for problem in check_request(layout, doc.get("policy"), report, system_paths):
            if problem not in problems:
                problems.append(problem)
    if problems:
        raise RequestError(problems)
    return {"policy": policy, "argv": argv, "backend": backend, "report": report}


class _Child:
    """A forked child: a spare waiting for work, or a run (layers, then the plugin)."""

    def __init__(self, pid: int, pidfd: int, ctrl: socket.socket, spare: bool) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.ctrl: socket.socket | None = ctrl
        self.spare = spare  # not yet given a request
        self.ready = False  # a spare in its cgroups, waiting
        self.dirs: list[str] = []  # its cgroups, once it says so
        self.conn: socket.socket | None = None  # the client, once claimed
        self.request: dict[str, Any] = {}
        self.report: dict[str, Any] | None = None
        self.error: tuple[int, str] | None = None
        self.started = False
        self.claimed_at = 0.0  # monotonic time it was given its request


class Server:
    """Serve run requests on a Unix socket until SIGTERM, SIGINT or SIGHUP (module doc)."""

    def __init__(self, path: str, layout: Layout, spares: int = 1, grace: float = 5.0) -> None:
        self.path = os.path.abspath(path)
        self.layout = layout
        self._system_paths = frozenset([*SYSTEM_READ, *python_prefixes(os.path.realpath(
            sys.executable))])  # fmt: skip
        # The only client served: the process that started the server (the supervisor),
        # known by its pid and its start time (a recycled pid has another one).
        self._parent = os.getppid()
        self._parent_start = start_time(self._parent)
        self.spares = max(0, spares)
        self.grace = grace
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._pending: set[socket.socket] = set()
        self._children: dict[int, _Child] = {}
        self._wake_r, self._wake_w = -1, -1
        self._transient: list[int] = []  # fds received for a request being handed over
        self._remove: list[str] = []  # empty cgroup dirs of ended runs, removed when idle
        self._last: tuple[bytes, int] | None = None  # the last valid request, for _warm_up
        self._stopping = False
        self._spare_failures = 0
        self._inode: tuple[int, int] | None = None  # the socket file, once bound

    # --- life cycle -------------------------------------------------------------

    def serve(self) -> None:
        """Listen, keep the spares, answer requests; on SIGTERM/SIGINT/SIGHUP stop every run."""
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old = {s: signal.signal(s, self._on_signal) for s in _STOP_SIGNALS}
        old_wake = signal.set_wakeup_fd(self._wake_w)
        try:
            self._listen()
            self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
            cgroups.prune_pool()
            seccomp_filters()  # built once here, inherited by every child
            privileges.last_cap()  # read once here too
            # Imported (and compiled) once here, not per run: a module a child imports
            # first costs its compilation on every start (no bytecode is written).
            import fnmatch  # noqa: F401

            from sandbox import bwrap, identity, mounts  # noqa: F401

            self._fill()
            _log.info(__name__, "listening on %s (%d spare(s))", self.path, self.spares)
            while not self._stopping:
                events = self._sel.select(self._chores_in())
                for key, _ in events:
                    self._dispatch(*key.data)
                if not events and self._settle_in() <= 0:
                    self._idle()
        finally:
            signal.set_wakeup_fd(old_wake)
            for s, handler in old.items():
                signal.signal(s, handler)
            self._shutdown()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _listen(self) -> None:
        _check_free(self.path)
        # Bind a temporary name, then rename: the socket appears only once it accepts.
        tmp = os.path.join(os.path.dirname(self.path), f".{os.path.basename(self.path)}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            old_umask = os.umask(0o177)  # the socket is the server's owner's only
            try:
                with unix_address(tmp) as address:
                    sock.bind(address)
            finally:
                os.umask(old_umask)
            sock.listen(MAX_PENDING)
            os.replace(tmp, self.path)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        sock.setblocking(False)
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ, ("listen", None))

    def _shutdown(self) -> None:
        """Stop listening; end every spare and run (TERM, grace, KILL); leave nothing."""
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # still ours, not a successor's
                    os.unlink(self.path)
        for conn in list(self._pending):
            self._close_conn(conn)
        runs = [c for c in self._children.values() if not c.spare]
        for child in self._children.values():
            if child.spare:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)  # our unreaped child: the pid is its
        dirs = [d for c in runs for d in self._dirs_of(c)]
        if dirs:
            cgroups.kill_dirs(dirs, grace=self.grace)
        for child in runs:
            with contextlib.suppress(ProcessLookupError):  # no cgroup: its group, then it
                os.killpg(child.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        for child in list(self._children.values()):
            _, status = os.waitpid(child.pid, 0)
            self._ended(child, status)
        cgroups.remove_dirs(self._remove)
        self._remove = []
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._sel.close()
        _log.info(__name__, "stopped")

    # --- events -----------------------------------------------------------------

    def _dispatch(self, kind: str, obj: Any) -> None:
        if kind == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
        elif kind == "listen":
            self._accept()
        elif kind == "conn":
            self._on_request(obj)
        elif kind == "ctrl":
            self._on_child_message(obj)
        elif kind == "exit":
            self._on_child_exit(obj)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        pid, uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        refusal = self._peer_refusal(pid, uid)
        if refusal is not None:
            _log.warning(__name__, "refused a client (pid %d, uid %d): %s", pid, uid, refusal)
            _send(conn, {"event": "error", "error": refusal, "problems": [refusal]})
            conn.close()
            return
        if len(self._pending) >= MAX_PENDING:
            _send(conn, {"event": "error", "error": "busy: too many pending connections"})
            conn.close()
            return
        conn.setblocking(False)
        self._pending.add(conn)
        self._sel.register(conn, selectors.EVENT_READ, ("conn", conn))
        self._on_request(conn)  # a client sends right after connecting: no extra round

    def _peer_refusal(self, pid: int, uid: int) -> str | None:
        """Why this peer may not use the server (None: it is the supervisor that started it)."""
        if uid not in (0, os.geteuid()):
            return f"uid {uid} may not use this server"
        if pid != self._parent:
            return f"pid {pid} is not the server's parent ({self._parent}): only it is served"
        if self._parent_start is None or start_time(pid) != self._parent_start:
            return f"pid {pid} is not the process that started the server (start time differs)"
        return None

    def _on_request(self, conn: socket.socket) -> None:
        if conn not in self._pending:
            return
        try:
            msg, fds, flags, _ = socket.recv_fds(conn, MAX_MESSAGE + 1, _MAX_FDS + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            _log.debug(__name__, "client: %s", exc)
            self._close_conn(conn)
            return
        try:
            if not msg and not fds:  # the client left without asking
                self._close_conn(conn)
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(msg) > MAX_MESSAGE:
                raise RequestError(
                    [f"request too large (at most {MAX_MESSAGE} bytes, {_MAX_FDS} fds)"]
                )
            request = parse_request(msg, len(fds), self.layout, self._system_paths,
                                    fds[3] if len(fds) == 4 else None)  # fmt: skip
        except RequestError as exc:
            for fd in fds:
                os.close(fd)
            _log.warning(__name__, "bad request: %s", "; ".join(exc.problems))
            _send(conn, {"event": "error", "error": str(exc), "problems": exc.problems})
            self._close_conn(conn)
            return
        self._last = (msg, len(fds))
        self._transient = fds
        try:
            self._start(conn, request, fds)
        finally:
            self._transient = []
            for fd in fds:
                os.close(fd)
        self._sel.unregister(conn)
        self._pending.discard(conn)

    def _start(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        """Hand the request and the client's fds to a spare (or a fresh child when none is
        left); the spare is replaced later, with the chores."""
        spares = sorted((c for c in self._children.values() if c.spare and c.ctrl),
                        key=lambda c: not c.ready)  # fmt: skip
        child = spares[0] if spares else self._fork(prepare=False)
        child.spare = False
        child.claimed_at = time.monotonic()
        child.conn = conn
        child.request = request
        try:
            assert child.ctrl is not None
            socket.send_fds(child.ctrl, [json.dumps(request).encode()], fds)
        except OSError as exc:  # it died meanwhile: its exit event answers the client
            _log.warning(__name__, "child %d: cannot hand over the request: %s", child.pid, exc)
        _log.info(__name__, "run %s: pid %d", request["policy"]["plugin_id"], child.pid)

    def _on_child_message(self, child: _Child) -> None:
        if child.ctrl is None:  # reaped earlier in this round
            return
        try:
            msg = child.ctrl.recv(_MAX_CHILD_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        if msg:
            self._child_said(child, msg)
            return
        # EOF: the child exec'd (its close-on-exec end closed) or died.
        self._sel.unregister(child.ctrl)
        child.ctrl.close()
        child.ctrl = None
        if not child.spare and child.error is None and child.report is not None:
            self._started(child)

    def _child_said(self, child: _Child, msg: bytes) -> None:
        try:
            doc = json.loads(msg)
            event = doc["event"]
        except (ValueError, KeyError, TypeError):
            _log.warning(__name__, "child %d: unreadable message", child.pid)
            return
        if event == "ready":
            child.ready = True
            child.dirs = [str(d) for d in doc.get("dirs", [])]
            self._spare_failures = 0
        elif event == "report":
            child.report = doc.get("report")
        elif event == "error":
            child.error = (int(doc.get("status", EXIT_REFUSED)), str(doc.get("error", "")))

    def _started(self, child: _Child) -> None:
        child.started = True
        out: dict[str, Any] = {"event": "started", "pid": _plugin_pid(child),
                               "report": child.report}  # fmt: skip
        path = child.request.get("report")
        if path and child.report is not None:
            try:
                write_report(path, child.report)
            except OSError as exc:
                out["report_error"] = f"{path}: {exc.strerror or exc}"
        if child.conn is not None and not _send(child.conn, out):
            child.conn = None  # the client left: the plugin runs on, its exit is not told

    def _on_child_exit(self, child: _Child) -> None:
        if child.pid not in self._children:  # reaped earlier in this round
            return
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = child.pid, 0
        if pid == 0:
            return
        self._ended(child, status)

    def _ended(self, child: _Child, status: int) -> None:
        """A child is reaped: read what it said last, remove its cgroups, tell the client."""
        if child.ctrl is not None:
            # What it said is queued by now: the plugin process of a spare's namespace
            # speaks before its exec or its end, and those come before the child's end.
            # Never wait for EOF here: a process of the namespace that outlives the child
            # (killed while its init was not yet bound to it) holds the other end.
            child.ctrl.setblocking(False)
            while msg := _recv_or_eof(child.ctrl):
                self._child_said(child, msg)
            self._sel.unregister(child.ctrl)
            child.ctrl.close()
            child.ctrl = None
            if not child.spare and child.error is None and child.report is not None:
                self._started(child)  # exec'd and ended before we looked
        self._sel.unregister(child.pidfd)
        os.close(child.pidfd)
        del self._children[child.pid]
        dirs = self._dirs_of(child)
        # Whatever the main process left behind goes with it; the client hears of the
        # exit once nothing is left, and the (slow) removal of the dirs comes after.
        left = cgroups.kill_dirs(dirs, grace=0.0, remove=False) if dirs else []
        if left:
            _log.warning(__name__, "run %d: still alive after KILL: %s", child.pid, left)
        if child.spare:
            self._remove += dirs
            if not child.ready and not self._stopping:
                self._spare_failures += 1
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if child.error is not None and child.request.get("report") and child.report:
            with contextlib.suppress(OSError):  # the refusal's report, like the one-shot's
                write_report(child.request["report"], child.report)
        out = {
            "event": "exited",
            "pid": _plugin_pid(child),
            "returncode": code,
            "error": child.error[1] if child.error else None,
            "report": None if child.started else child.report,
        }
        if child.conn is not None:  # the client first, the log line after
            _send(child.conn, out)
            child.conn.close()
            child.conn = None
        _log.info(__name__, "run %d exited: %d", child.pid, code)
        self._remove += dirs

    def _dirs_of(self, child: _Child) -> list[str]:
        cg = (child.report or {}).get("cgroup") or {}
        dirs = list(child.dirs) or [str(d) for d in cg.get("dirs") or []]
        if not dirs and (not child.spare or not child.ready):  # died before it reported
            dirs = cgroups.find_run_dirs(child.pid)
        return dirs

    def _close_conn(self, conn: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn)
        self._pending.discard(conn)
        conn.close()

    # --- children -----------------------------------------------------------------

    def _chores_in(self) -> float | None:
        """How long to wait before the chores may run (None: there are none)."""
        if not (self._remove or self._short_of_spares()):
            return None
        return max(IDLE_REFILL, self._settle_in())

    def _settle_in(self) -> float:
        """Seconds until every live run was handed over at least SETTLE ago (<= 0: now)."""
        now = time.monotonic()
        return max((c.claimed_at + SETTLE - now for c in self._children.values()
                    if not c.spare), default=0.0)  # fmt: skip

    def _idle(self) -> None:
        """Chores that would delay a start: remove ended runs' cgroups, replace spares."""
        dirs, self._remove = self._remove, []
        cgroups.remove_dirs(dirs)
        if self._short_of_spares():
            self._fill()
            self._warm_up()

    def _warm_up(self) -> None:
        """Right after a fork, validate the last request again, for nothing: a fork
        shares every page copy-on-write, and the first write to each (a refcount is
        one) copies it. Done here, the next request's ~200 copies are already made:
        its validation took 0.77 ms after a fork instead of 0.24. (No side effect:
        parsing only reads; the pages would be copied by the next request anyway.)"""
        if self._last is None:
            return
        msg, nfds = self._last
        with contextlib.suppress(Exception):
            request = parse_request(msg, min(nfds, 3), self.layout, self._system_paths)
            json.dumps(request).encode()

    def _short_of_spares(self) -> bool:
        if self._stopping or self._spare_failures >= 3:  # spares that keep dying: go cold
            return False
        return sum(1 for c in self._children.values() if c.spare) < self.spares

    def _fill(self) -> None:
        """Keep `spares` spare children (none while stopping, or after repeated failures)."""
        while self._short_of_spares():
            self._fork(prepare=True)

    def _fork(self, prepare: bool) -> _Child:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(mine.detach())
            self._child_main(theirs, prepare)
        theirs.close()
        child = _Child(pid, os.pidfd_open(pid), mine, spare=True)
        self._children[pid] = child
        mine.setblocking(False)
        self._sel.register(mine, selectors.EVENT_READ, ("ctrl", child))
        self._sel.register(child.pidfd, selectors.EVENT_READ, ("exit", child))
        return child

    def _server_fds(self) -> list[int]:
        """Every descriptor of the server a child must not keep (they hold sockets open)."""
        fds = [self._wake_r, self._wake_w, self._sel.fileno(), *self._transient]
        fds += [s.fileno() for s in self._pending]
        if self._listener is not None:
            fds.append(self._listener.fileno())
        for c in self._children.values():
            fds.append(c.pidfd)
            fds += [s.fileno() for s in (c.ctrl, c.conn) if s is not None]
        return [fd for fd in fds if fd >= 0]

    def _child_main(self, ctrl: socket.socket, prepare: bool) -> NoReturn:
        code = EXIT_REFUSED
        try:
            signal.set_wakeup_fd(-1)
            for s in _STOP_SIGNALS:
                signal.signal(s, signal.SIG_DFL)
            for fd in self._server_fds():
                with contextlib.suppress(OSError):
                    os.close(fd)
            code = _child(ctrl, prepare, os.getppid(), self._last)
        except BaseException as exc:  # nothing may escape into the server's loop
            with contextlib.suppress(BaseException):
                os.write(2, f"sandbox: server child: {exc!r}\n".encode())
        finally:
            os._exit(code)


def _plugin_pid(child: _Child) -> int:
    """The plugin's host pid: the report's (the native backend's plugin is a grandchild of
    the server's child, in its own PID namespace), else the child's own."""
    try:
        return int((child.report or {})["pid"])
    except (KeyError, TypeError, ValueError):
        return child.pid


def _child(
    ctrl: socket.socket, prepare: bool, server: int, last: tuple[bytes, int] | None = None
) -> int:
    """In the child: wait for the request, apply the layers, exec (returns only on failure)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # a waiting spare dies with the server
    if os.getppid() != server:
        return 0
    ctrl.setblocking(True)
    cg: cgroups.RunCgroup | None = None
    side: pidns.Relay | pidns.Launcher | None = None
    if prepare:
        cg = cgroups.prepare_run(cgroups.POOL, os.getpid(), memory=True, pids=True, prune=False,
                                 cpu=True)  # fmt: skip
        try:
            cg.join(os.getpid())
        except OSError as exc:
            cg.problems.append(f"join: {exc.strerror}")
            cgroups.leave(cg, os.getpid())
            cg = cgroups.RunCgroup(problems=cg.problems)
        if os.geteuid() == 0:  # the PID namespace and its two forks, ahead of any request
            with contextlib.suppress(OSError):
                os.setsid()
            side = pidns.prefork()
            if isinstance(side, pidns.Relay):
                return _plugin_side(ctrl, cg, side, last)
        _send(ctrl, {"event": "ready", "dirs": cg.dirs})

    def publish(doc: dict[str, Any]) -> None:
        _send(ctrl, {"event": "report", "report": doc})

    if isinstance(side, pidns.Launcher):  # the plugin process talks to the server
        ctrl.close()
        side.wait(on_claim=_outlive_the_server)
    try:
        msg, fds, _, _ = socket.recv_fds(ctrl, MAX_MESSAGE, _MAX_FDS)
        if not msg:  # the server stops
            return 0
        _libc.prctl(_PR_SET_PDEATHSIG, 0)  # a plugin outlives the server like a one-shot one
        conn_fd = _take_stdio(fds)
        request = json.loads(msg)
        policy = policy_from_json(request["policy"])  # validated by the server
        apply_and_exec(
            policy,
            request["argv"],
            backend=request["backend"],
            cgroup=cg,
            publish=publish,
            keep_fd=ctrl.fileno(),
            protocol_fd=conn_fd,
        )
    except Exception as exc:
        status = exit_status(exc) or (EXIT_REFUSED, f"launcher error: {exc!r}")
        with contextlib.suppress(OSError):
            os.write(2, f"sandbox: {status[1]}\n".encode())
        _send(ctrl, {"event": "error", "status": status[0], "error": status[1]})
        return status[0]


def _ahead(relay: pidns.Relay) -> None:
    """More of a spare's plugin process made before its request: Landlock's rules that no
    policy changes (both network variants), and the bounding set emptied of what no
    request needs (privileges.NEEDED_AFTER_CLAIM: not all of it, a bwrap request execs
    bwrap as root). A failure is left for the request, which then does it itself and
    reports what fails."""
    from sandbox import landlock
    from sandbox.confine import landlock_ahead

    try:
        relay.landlock = landlock_ahead(landlock.abi_version())
    except OSError as exc:
        _log.debug(__name__, "spare: landlock ahead: %s", exc)
    try:  # the request drops the rest (sandbox.identity), this process alone
        privileges.drop_bounding_set(keep=privileges.NEEDED_AFTER_CLAIM)
    except OSError as exc:
        _log.debug(__name__, "spare: bounding set ahead: %s", exc)


def _rehearse(msg: bytes) -> None:
    """A spare's plugin process, before its request: the start's pure steps on the
    server's last request, for nothing (Server._warm_up: the pages they write are copied
    now, not between the request and exec). Nothing is applied or kept."""
    from sandbox.confine import Run, environment

    with contextlib.suppress(Exception):
        doc = json.loads(msg)
        policy = policy_from_json(parse_policy(doc["policy"]).to_json())
        environment(policy)
        json.dumps({"event": "report", "report": Run(policy, doc["argv"], "native").to_json()})


def _outlive_the_server() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, 0)  # a plugin outlives the server like a one-shot one


def _take_stdio(fds: list[int]) -> int | None:
    """The request's fds as the plugin's stdio (none: /dev/null); a 4th, the protocol
    connection, parked high until exec (sandbox.protocol.take): its number."""
    conn = protocol.take(fds[3]) if len(fds) > 3 else None
    if fds:
        for target, fd in enumerate(fds[:3]):
            os.dup2(fd, target)
            os.close(fd)
    else:
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.close(null)
    return conn


def _plugin_side(
    ctrl: socket.socket,
    cg: cgroups.RunCgroup,
    relay: pidns.Relay,
    last: tuple[bytes, int] | None = None,
) -> int:
    """A pre-forked spare's plugin process (pid 2 of its namespace): it makes its other
    namespaces ahead, takes the request itself, tells its launcher (which then outlives
    the server), applies the layers and talks to the server itself: its report, or its
    refusal, on the spare's channel, which closes on exec (the server's "started")."""
    relay.unshare_ahead(_libc.CLONE_NEWNS | _libc.CLONE_NEWUTS | _libc.CLONE_NEWIPC
                        | _libc.CLONE_NEWNET)  # fmt: skip
    with contextlib.suppress(OSError):  # its own session ahead: setsid makes a scheduler
        os.setsid()  # autogroup, several ms (the session layer finds it made)
    if relay.unshared:  # the generic part of its root too
        from sandbox import mounts
        from sandbox.confine import BASIC_DEVICES

        try:
            relay.prepared = mounts.prepare(SYSTEM_READ, list(BASIC_DEVICES))
        except OSError as exc:  # the request will see the same failure, and say it
            _log.debug(__name__, "spare: mount view ahead: %s", exc)
    _ahead(relay)

    def publish(doc: dict[str, Any]) -> None:
        _send(ctrl, {"event": "report", "report": doc})

    def refused(status: int, message: str, doc: dict[str, Any] | None) -> None:
        if doc is not None:
            publish(doc)
        _send(ctrl, {"event": "error", "status": status, "error": message})

    relay.direct, relay.on_fail = True, refused
    if last is not None:
        _rehearse(last[0])
    msg, fds, _, _ = socket.recv_fds(ctrl, MAX_MESSAGE, _MAX_FDS)
    if not msg:  # the server stops
        return 0
    relay.claimed()
    conn_fd = _take_stdio(fds)
    try:
        request = json.loads(msg)
        policy = policy_from_json(request["policy"])  # validated by the server
        apply_and_exec(policy, request["argv"], backend=request["backend"], cgroup=cg,
                       publish=publish, keep_fd=ctrl.fileno(), relay=relay,
                       protocol_fd=conn_fd)  # fmt: skip
    except Exception as exc:  # before the layers took over the relay (a missing command)
        status = exit_status(exc) or (EXIT_REFUSED, f"launcher error: {exc!r}")
        relay.fail(status[0], status[1], None)


#: Longest path a sockaddr_un holds (108 bytes with its NUL).
_SUN_PATH_MAX = 107


@contextlib.contextmanager
def unix_address(path: str) -> Iterator[str]:
    """An address for ``path`` that fits a sockaddr_un (108 bytes).

    A longer path (a deep run dir) is reached through its directory's descriptor:
    ``/proc/self/fd/<fd>/<name>``; the descriptor is closed on leaving the block.
    """
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def _check_free(path: str) -> None:
    """Refuse a path that is not a socket, or a socket another server still answers on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ServerError(f"{path}: exists and is not a socket (not replaced)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        with unix_address(path) as address:
            probe.connect(address)
    except OSError:
        return  # a stale socket of a server that is gone: replaced
    finally:
        probe.close()
    raise ServerError(f"{path}: another server is listening there")


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (clock ticks after boot), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def _send(sock: socket.socket, doc: dict[str, Any]) -> bool:
    """Send one message; False when the peer is gone."""
    try:
        sock.sendmsg([json.dumps(doc).encode()], [], socket.MSG_NOSIGNAL)
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN):
            _log.debug(__name__, "send: %s", exc)
        return False
    return True


def _recv_or_eof(sock: socket.socket) -> bytes:
    try:
        return sock.recv(_MAX_CHILD_MESSAGE)
    except OSError:
        return b""


__all__ = ["MAX_MESSAGE", "PROTOCOL", "Server", "parse_request", "start_time", "unix_address"]
