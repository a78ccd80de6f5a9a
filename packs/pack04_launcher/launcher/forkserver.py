"""pack03's fork server as the supervisor uses it: start it, ask it for runs, stop it.

The one-shot ``launch.py --policy`` pays a second interpreter start per plugin; the
server (``launch.py --serve SOCKET``, docs/contracts.md "pack03 fork server") pays it
once. The protocol: one ``AF_UNIX``/``SOCK_SEQPACKET`` connection per run, a JSON
request with the plugin's stdin/stdout/stderr as fds, then the events ``started``
and ``exited`` (or ``error``). The server, not the supervisor, is the plugin's
parent: a run's exit status arrives on its connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aurora_common.unixaddr import unix_address

from launcher import process
from launcher.errors import ForkServerError, LauncherError
from launcher.process import ProcessId

log = logging.getLogger(__name__)

#: Largest event read from the server (a report is a few KiB).
_MAX_EVENT = 1 << 20
#: Status of a run whose server died before it said how the run ended.
LOST = -int(signal.SIGKILL)
_PR_SET_PDEATHSIG = 1


def _term_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: the server gets SIGTERM when the supervisor dies (even by
    SIGKILL), so it stops the plugins it started rather than running on unsupervised."""

    def _set() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return _set


def _connect(path: Path, timeout: float) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.settimeout(timeout)
        with unix_address(path) as address:
            conn.connect(address)
    except BaseException:
        conn.close()
        raise
    return conn


def _private_dir(path: Path) -> None:
    """Make ``path`` a directory of this uid with mode 0700 (the socket's home)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = os.lstat(path)
    if st.st_uid != os.geteuid():
        raise ForkServerError(f"{path}: owned by uid {st.st_uid}, not {os.geteuid()}")
    os.chmod(path, 0o700, follow_symlinks=False)


class ServerRun:
    """One plugin run started through the server; polled like a ``subprocess.Popen``.

    ``returncode`` follows ``subprocess`` (``-N``: killed by signal N; 125: the sandbox
    refused, with ``error`` saying why). When the server dies first the run is
    ``lost``: it may still be running, re-parented; it ends for us once that process
    is gone (``LOST``).
    """

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn: socket.socket | None = conn
        self.pid = pid
        self.ident: ProcessId | None = process.identify(pid) if pid > 0 else None
        self.returncode: int | None = None
        self.error: str | None = None
        self.lost = False

    def fileno(self) -> int:
        """The connection, to wait on with select (-1 once the run has ended)."""
        return self.conn.fileno() if self.conn is not None else -1

    def _ended(self, returncode: int, error: str | None) -> None:
        self.returncode, self.error = returncode, error
        self._close()

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def mark_lost(self) -> None:
        """The server is gone: from now on the run lives as long as its process."""
        if self.returncode is None and not self.lost:
            self.lost = True
            self._close()

    def _event(self, msg: bytes) -> None:
        try:
            doc = json.loads(msg)
        except ValueError:
            log.warning("fork server: unreadable event for pid %d", self.pid)
            return
        if isinstance(doc, dict) and doc.get("event") == "exited":
            rc = doc.get("returncode")
            err = doc.get("error")
            self._ended(rc if isinstance(rc, int) else LOST, err if isinstance(err, str) else None)

    def _read(self, timeout: float | None) -> None:
        """Read events until the run ends or ``timeout`` passes (0: what is there)."""
        assert self.conn is not None
        self.conn.settimeout(timeout)
        try:
            msg = self.conn.recv(_MAX_EVENT)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return
        except OSError:
            msg = b""
        if msg:
            self._event(msg)
        else:  # closed without `exited`: the server died
            log.warning("fork server: connection of pid %d closed: run lost", self.pid)
            self.mark_lost()

    def poll(self) -> int | None:
        """The exit status, or None while the run is on."""
        while self.returncode is None and self.conn is not None:
            before = self.returncode, self.lost
            self._read(0.0)
            if (self.returncode, self.lost) == before:
                break
        if self.returncode is None and self.lost and not (self.ident and self.ident.alive()):
            self.returncode = LOST
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"fork server run {self.pid}", timeout or 0.0)
            if self.conn is not None:
                self._read(left)
            else:
                time.sleep(0.02 if left is None else min(0.02, left))
        return rc


class ForkServer:
    """``$PYTHON -I -S <pack03>/sandbox/launch.py --serve SOCKET``, the supervisor's child."""

    def __init__(
        self,
        python: str,
        root: Path,
        sock: Path,
        pidfile: Path,
        grace: float,
        layout: tuple[Path, Path, Path],
        sdk_root: Path | None = None,
    ) -> None:
        self.python = python
        self.root = root  # pack03's root this server runs from
        self.sock = sock
        self.pidfile = pidfile
        self.grace = grace
        # (data root, packages root, report root): every request must lie beneath them.
        self.layout = layout
        self.sdk_root = sdk_root  # the only sdk_dir a request may name (pack01's root)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ident: ProcessId | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        launch = self.root / "sandbox" / "launch.py"
        data_root, packages_root, report_root = self.layout
        sdk = ["--sdk-root", str(self.sdk_root)] if self.sdk_root is not None else []
        return [self.python, "-I", "-S", str(launch), "--serve", str(self.sock),
                "--grace", f"{self.grace:g}", "--data-root", str(data_root),
                "--packages-root", str(packages_root),
                "--report-root", str(report_root), *sdk]  # fmt: skip

    def start(self, log_file: Path, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts; ForkServerError when it does not."""
        stop_leftover(self.pidfile, self.grace)
        _private_dir(self.sock.parent)
        for root in self.layout:
            root.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "ab") as out:
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    close_fds=True,
                    start_new_session=True,  # a Ctrl-C to the supervisor is not its
                    preexec_fn=_term_with_parent(os.getpid()),
                )
            except OSError as exc:
                raise ForkServerError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise ForkServerError(f"{argv[3]} --serve exited with status {rc} (see {log_file})")
            with contextlib.suppress(OSError):
                _connect(self.sock, 1.0).close()  # the server drops a silent client
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ForkServerError(
                    f"{argv[3]} --serve: no answer on {self.sock} in {timeout:g}s"
                )
            time.sleep(0.01)
        self.ident = process.identify(self.proc.pid)
        if self.ident is not None:
            process.write_pidfile(self.pidfile, self.ident)
        log.info("sandbox fork server pid %d on %s", self.proc.pid, self.sock)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(
        self,
        policy: dict[str, Any],
        argv: list[str],
        report: Path,
        log_fd: int,
        protocol_fd: int | None = None,
    ) -> ServerRun:
        """Ask for one run (stdin /dev/null, stdout and stderr ``log_fd``; the plugin's
        protocol connection, when given, becomes its fd 3).

        Returns once the plugin runs (``started``) or the sandbox refused it (an ended
        run). Raises ForkServerError when the server does not answer or rejects the
        request: nothing ran.
        """
        request = {"policy": policy, "argv": argv, "report": str(report)}
        try:
            conn = _connect(self.sock, 5.0)
        except OSError as exc:
            raise ForkServerError(f"{self.sock}: cannot connect: {exc.strerror or exc}") from exc
        try:
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fds = [null, log_fd, log_fd] + ([protocol_fd] if protocol_fd is not None else [])
                socket.send_fds(conn, [json.dumps(request).encode()], fds)
            finally:
                os.close(null)
            conn.settimeout(30.0)  # the layers take milliseconds; a hung server is dead
            msg = conn.recv(_MAX_EVENT)
        except OSError as exc:
            conn.close()
            raise ForkServerError(f"{self.sock}: request failed: {exc.strerror or exc}") from exc
        try:
            doc = json.loads(msg) if msg else {}
        except ValueError:
            doc = {}
        event = doc.get("event") if isinstance(doc, dict) else None
        pid = doc.get("pid") if isinstance(doc, dict) else None
        if event == "started" and isinstance(pid, int):
            return ServerRun(conn, pid)
        if event == "exited" and isinstance(pid, int):  # refused: no `started`
            run = ServerRun(conn, pid)
            run._event(msg)
            return run
        conn.close()
        if event == "error":
            raise ForkServerError(f"fork server rejected the request: {doc.get('error')}")
        raise ForkServerError(f"fork server: no answer to the request ({msg[:200]!r})")

    def stop(self) -> int | None:
        """SIGTERM (it stops every run it started: TERM, grace, KILL), wait, KILL if stuck."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=self.grace + 15.0)
            except subprocess.TimeoutExpired:
                log.error("fork server pid %d: no exit after SIGTERM: SIGKILL", proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(OSError, LauncherError):
            if process.read_pidfile(self.pidfile) == self.ident:
                self.pidfile.unlink()
        return proc.returncode


def stop_leftover(pidfile: Path, grace: float) -> bool:
    """TERM the server a killed supervisor left (pidfile identity checked); it stops its runs.

    Returns True when there was one.
    """
    try:
        ident = process.running_from_pidfile(pidfile)
    except LauncherError as exc:
        log.warning("%s", exc)
        ident = None
    if ident is not None:
        log.warning("stopping sandbox fork server pid %d left by a previous launcher", ident.pid)
        left = process.terminate([ident], grace + 10.0)
        if left:
            log.error("fork server pid %d survived SIGKILL", ident.pid)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return ident is not None


__all__ = ["LOST", "ForkServer", "ServerRun", "stop_leftover"]
