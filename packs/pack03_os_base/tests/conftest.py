"""Factories for the sandbox tests: policies, an attack plugin, listeners, runs that clean up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PACK = Path(__file__).resolve().parents[1]
LAUNCH = PACK / "sandbox" / "launch.py"
PYTHON = sys.executable
# The tests import the library as `sandbox` (the pack root is what launch.py puts first).
if str(PACK) not in sys.path:
    sys.path.insert(0, str(PACK))
if str(PACK / "tests") not in sys.path:
    sys.path.insert(0, str(PACK / "tests"))

from sandbox.server import unix_address  # noqa: E402
from sandbox_testing import PLUGIN_GID, PLUGIN_UID  # noqa: E402

# The attack plugin: one forbidden action per call, one JSON line on stdout.
ATTACK = r"""
import json, os, resource, signal, socket, sys, time

def out(outcome, **kw):
    print(json.dumps({"outcome": outcome, **kw}), flush=True)

def quiet():
    # A child that lingers must not hold the caller's pipes open.
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

def denied(exc):
    out("denied", error=f"{type(exc).__name__}: {exc}")

action, args = sys.argv[1], sys.argv[2:]
if action == "tcp":
    try:
        s = socket.create_connection((args[0], int(args[1])), timeout=5)
        s.sendall(b"attack-tcp")
        s.close()
        out("allowed")
    except OSError as exc:
        denied(exc)
elif action == "udp":
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"attack-udp", (args[0], int(args[1])))
        out("allowed")
    except OSError as exc:
        denied(exc)
elif action == "unix":
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(args[0])
        s.sendall(b"attack-unix")
        s.close()
        out("allowed")
    except OSError as exc:
        denied(exc)
elif action == "write":
    try:
        with open(args[0], "w") as fh:
            fh.write("attack")
        out("allowed")
    except OSError as exc:
        denied(exc)
elif action == "read":
    try:
        with open(args[0]) as fh:
            out("allowed", data=fh.read())
    except OSError as exc:
        denied(exc)
elif action == "open-device":
    try:
        os.close(os.open(args[0], os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
        out("allowed")
    except OSError as exc:
        denied(exc)
elif action == "raise-limits":
    results = {}
    for name in ("RLIMIT_NOFILE", "RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_CORE"):
        which = getattr(resource, name)
        soft, hard = resource.getrlimit(which)
        try:
            resource.setrlimit(which, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            results[name] = "raised"
        except (ValueError, OSError) as exc:
            results[name] = f"denied: {exc}"
    for line in open("/proc/self/cgroup"):
        path = line.strip().split(":", 2)[2]
        for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids"):
            target = mount + path + "/pids.max"
            if os.path.exists(target):
                try:
                    with open(target, "w") as fh:
                        fh.write("max")
                    results[target] = "raised"
                except OSError as exc:
                    results[target] = f"denied: {exc}"
    caps = {l.split(":")[0]: l.split()[1] for l in open("/proc/self/status") if l.startswith("Cap")}
    raised = [k for k, v in results.items() if v == "raised"]
    out("allowed" if raised else "denied", results=results, caps=caps)
elif action == "memory":
    chunks, total = [], 0
    try:
        while total < int(args[0]):
            chunks.append(bytearray(16 * 1024 * 1024))
            total += 16 * 1024 * 1024
        out("allowed", allocated=total)
    except MemoryError:
        out("denied", allocated=total, error="MemoryError")
elif action == "fork":
    children = []
    error = None
    for _ in range(int(args[0])):
        try:
            pid = os.fork()
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
            break
        if pid == 0:
            quiet()
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    out("denied" if error else "allowed", forked=len(children), error=error)
elif action == "spin":
    while True:
        pass
elif action == "escape":
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.close(w)
            quiet()
            time.sleep(60)
            os._exit(0)
        os._exit(0)
    os.close(w)
    grandchild = int(os.read(r, 64))
    out("escaped-child", pid=grandchild)
elif action == "ptrace":
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    PTRACE_ATTACH, PTRACE_DETACH = 16, 17
    if libc.ptrace(PTRACE_ATTACH, int(args[0]), None, None) == 0:
        libc.ptrace(PTRACE_DETACH, int(args[0]), None, None)
        out("allowed")
    else:
        out("denied", error=os.strerror(ctypes.get_errno()))
elif action == "signal":
    try:
        os.kill(int(args[0]), signal.SIGTERM)
        out("allowed")
    except OSError as exc:
        denied(exc)
elif action == "spin-children":
    kids = []
    for _ in range(int(args[0])):
        pid = os.fork()
        if pid == 0:
            quiet()
            while True:
                pass
        kids.append(pid)
    out("holding", children=len(kids))
    sys.stdin.read()
    for pid in kids:
        os.kill(pid, signal.SIGKILL)
elif action == "hold":  # stay alive until stdin closes (the test judges from the host)
    out("holding", pid=os.getpid())
    sys.stdin.read()
elif action == "metadata":
    results = {}
    for name, call in (("chmod", lambda: os.chmod(args[0], 0o6777)),
                       ("utime", lambda: os.utime(args[0], (0, 0))),
                       ("setxattr", lambda: os.setxattr(args[0], "user.attack", b"1"))):
        try:
            call()
            results[name] = "allowed"
        except OSError as exc:
            results[name] = f"denied: {exc}"
    out("allowed" if "allowed" in results.values() else "denied", results=results)
elif action == "host-process":
    victim, results = int(args[0]), {}
    for name, call in (
        ("prlimit-cpu", lambda: resource.prlimit(victim, resource.RLIMIT_CPU, (1, 1))),
        ("prlimit-fsize", lambda: resource.prlimit(victim, resource.RLIMIT_FSIZE, (0, 0))),
        ("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, victim, 19)),
        ("getsid", lambda: os.getsid(victim)),
    ):
        try:
            call()
            results[name] = "allowed"
        except OSError as exc:
            results[name] = f"denied: {type(exc).__name__}: {exc}"
    out("allowed" if "allowed" in results.values() else "denied", results=results,
        hostname=socket.gethostname())
elif action == "dgram-pair":
    results = {}
    try:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        results["socketpair"] = "allowed"
        try:
            a.sendto(b"attack-dgram", args[0])
            results["sendto"] = "allowed"
        except OSError as exc:
            results["sendto"] = f"denied: {exc}"
    except OSError as exc:
        results["socketpair"] = f"denied: {exc}"
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.sendto(b"attack-dgram", args[0])
        results["socket"] = "allowed"
    except OSError as exc:
        results["socket"] = f"denied: {exc}"
    out("allowed" if "allowed" in results.values() else "denied", results=results)
elif action == "namespaces":
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    results = {}
    marker = os.path.join(os.environ["AURORA_PLUGIN_DATA"], "in-new-userns")
    SYS_clone, SYS_clone3, SIGCHLD = 56, 435, 17
    for name, flags in (("clone-newuser", 0x10000000), ("clone-newns", 0x00020000),
                        ("clone-newnet", 0x40000000), ("clone-newpid", 0x20000000)):
        pid = libc.syscall(SYS_clone, ctypes.c_long(flags | SIGCHLD), None, None, None, None)
        if pid == 0:
            with open(marker, "w") as fh:
                fh.write(name)
            os._exit(0)
        if pid > 0:
            os.waitpid(pid, 0)
            results[name] = "allowed"
        else:
            results[name] = f"denied: {os.strerror(ctypes.get_errno())}"
    args3 = (ctypes.c_uint64 * 11)(0x10000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0)
    pid = libc.syscall(SYS_clone3, ctypes.byref(args3), ctypes.c_long(88))
    if pid == 0:
        os._exit(0)
    results["clone3"] = "allowed" if pid > 0 else f"denied: {os.strerror(ctypes.get_errno())}"
    if pid > 0:
        os.waitpid(pid, 0)
    try:
        os.unshare(os.CLONE_NEWUSER) if hasattr(os, "unshare") else None
        results["unshare"] = "allowed" if hasattr(os, "unshare") else "denied: n/a"
    except OSError as exc:
        results["unshare"] = f"denied: {exc}"
    out("allowed" if "allowed" in results.values() else "denied", results=results)
elif action == "aio":  # take native AIO contexts (host-wide fs.aio-max-nr), then hold
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    SYS_io_setup = 206
    taken, nr, error = 0, 65536, None
    while nr >= 1:
        ctx = ctypes.c_ulong(0)
        if libc.syscall(SYS_io_setup, ctypes.c_uint(nr), ctypes.byref(ctx)) == 0:
            taken += nr
            continue
        error = os.strerror(ctypes.get_errno())
        if ctypes.get_errno() in (1, 38):  # EPERM, ENOSYS: the filter said no
            break
        nr //= 2
    out("holding", taken=taken, error=error)
    sys.stdin.read()
elif action == "oob":  # out-of-band data on a Unix stream pair
    import socket
    a, b = socket.socketpair()
    try:
        a.send(b"x", socket.MSG_OOB)
        out("allowed")
    except OSError as exc:
        out("denied", error=str(exc))
elif action == "pty":  # take pseudo-terminals, then hold
    fds, error = [], None
    for _ in range(int(args[0])):
        try:
            fds.append(os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY))
        except OSError as exc:
            error = str(exc)
            break
    out("holding", taken=len(fds), error=error)
    sys.stdin.read()
elif action == "host-view":  # what names the host: cgroup paths, host-wide /proc files
    seen = {}
    with open("/proc/self/cgroup") as fh:
        seen["cgroup"] = fh.read()
    for name in ("meminfo", "loadavg", "diskstats", "kallsyms", "sys/kernel/random/boot_id"):
        try:
            with open("/proc/" + name) as fh:
                seen[name] = fh.read(4096)
        except OSError as exc:
            seen[name] = None
    out("seen", seen=seen)
elif action == "inotify":
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fds = []
    while len(fds) < int(args[0]):
        fd = libc.inotify_init1(0)
        if fd < 0:
            break
        fds.append(fd)
    short = len(fds) < int(args[0])
    out("holding", held=len(fds), error=os.strerror(ctypes.get_errno()) if short else None)
    sys.stdin.read()
else:
    out("unknown action", action=action)
    sys.exit(2)
"""


def probe_once() -> dict[str, Any]:
    """The host's probe (launch.py --probe --json), run in a child."""
    proc = subprocess.run(
        [PYTHON, str(LAUNCH), "--probe", "--json"], capture_output=True, text=True, timeout=120
    )
    return dict(json.loads(proc.stdout))


class Probe(dict[str, Any]):
    """The probe document, plus the skip rule every layer-dependent test uses."""

    def require(self, *layers: str) -> None:
        """Skip with the probe's own reason when a layer this test relies on is missing."""
        for name in layers:
            layer = self["layers"][name]
            if not layer["available"]:
                pytest.skip(f"{name} not available on this host: {layer['detail']}")


@pytest.fixture(scope="session")
def probe() -> Probe:
    return Probe(probe_once())


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]
    pid: int

    @property
    def outcome(self) -> dict[str, Any]:
        lines = [ln for ln in self.stdout.splitlines() if ln.startswith("{")]
        assert lines, f"no result from the plugin (exit {self.returncode}): {self.stderr}"
        return dict(json.loads(lines[-1]))


@dataclass
class Sandbox:
    """Runs commands through launch.py in tmp_path; kills every run's tree at teardown."""

    tmp: Path
    backend: str = "native"
    pids: list[int] = field(default_factory=list)
    served = False  # the one-shot launcher (ServedSandbox: the fork server)

    def __post_init__(self) -> None:
        self.plugin_dir = self.tmp / "plugin"
        self.plugin_dir.mkdir(exist_ok=True)
        self.attack = self.plugin_dir / "attack.py"
        self.attack.write_text(ATTACK)
        self.data_dir = self.tmp / "data"
        # Unique per test: a concurrent test session's start must not prune our runs.
        self.plugin_id = f"test.attack-{uuid.uuid4().hex[:12]}"

    def policy(self, granted: list[str] | None = None, **limits: int) -> Path:
        doc = {
            "plugin_id": self.plugin_id,
            "granted": granted or [],
            "data_dir": str(self.data_dir),
            "read_paths": [str(self.plugin_dir)],
            "limits": {
                "cpu_seconds": 10,
                "memory_bytes": 256 * 1024 * 1024,
                "open_files": 64,
                "file_size_bytes": 16 * 1024 * 1024,
                "processes": 16,
                **limits,
            },
            "allow_degraded": False,
            "uid": PLUGIN_UID,
            "gid": PLUGIN_GID,
        }
        path = self.tmp / "policy.json"
        path.write_text(json.dumps(doc))
        return path

    def run(
        self, argv: list[str], granted: list[str] | None = None, timeout: float = 60, **limits: int
    ) -> Result:
        report = self.tmp / "report.json"
        report.unlink(missing_ok=True)
        cmd = [PYTHON, str(LAUNCH), "--policy", str(self.policy(granted, **limits)),
               "--report", str(report), "--backend", self.backend, "--", *argv]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pids.append(proc.pid)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_tree(proc.pid)
            stdout, stderr = proc.communicate()
            raise AssertionError(f"sandboxed run exceeded {timeout}s: {stderr}") from None
        doc = json.loads(report.read_text()) if report.exists() else {}
        return Result(proc.returncode, stdout, stderr, doc, proc.pid)

    def start(self, *args: str, granted: list[str] | None = None, **limits: Any) -> Held:
        """Start the attack plugin and leave it running (actions "hold", "inotify"): the
        test judges from the host while it lives, then calls `Held.finish()`."""
        report = self.tmp / "report.json"
        report.unlink(missing_ok=True)
        cmd = [PYTHON, str(LAUNCH), "--policy", str(self.policy(granted, **limits)),
               "--report", str(report), "--backend", self.backend, "--",
               PYTHON, "-I", str(self.attack), *args]  # fmt: skip
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
        self.pids.append(proc.pid)
        assert proc.stdout is not None and proc.stdin is not None
        line = _readline(proc.stdout.fileno(), 60)
        deadline = time.monotonic() + 10
        while not report.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        doc = json.loads(report.read_text()) if report.exists() else {}

        def finish() -> int:
            proc.communicate(timeout=60)  # closes its stdin: "hold" ends
            return proc.returncode

        return Held(int(doc.get("pid", proc.pid)), line, doc, finish, proc.pid)

    def attack_run(self, *args: str, granted: list[str] | None = None, **limits: int) -> Result:
        return self.run([PYTHON, "-I", str(self.attack), *args], granted, **limits)

    def kill_tree(self, pid: int) -> dict[str, Any]:
        proc = subprocess.run(
            [PYTHON, str(LAUNCH), "--kill-tree", "--pid", str(pid), "--grace", "0", "--json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    @staticmethod
    def alive(pid: int) -> bool:
        """True while `pid` exists and is not a zombie."""
        try:
            with open(f"/proc/{pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def cleanup(self) -> None:
        for pid in self.pids:
            self.kill_tree(pid)


class ServerProc:
    """A ``launch.py --serve`` process and a client of its protocol (docs/contracts.md)."""

    def __init__(
        self,
        directory: Path,
        spares: int = 1,
        grace: float = 2.0,
        root: Path | None = None,
        extra: tuple[str, ...] = (),
        launcher: Path = LAUNCH,
    ) -> None:
        """Started by this (the test) process: the server serves only its parent.
        `root` (default `directory`) is its data, packages and report root; `extra`:
        more start arguments (``--sdk-root DIR``); `launcher`: a script run instead of
        launch.py (with its arguments)."""
        self.sock = directory / "s.sock"
        self.log = directory / "server.log"
        self.root = root or directory
        self.started: list[int] = []  # pids to kill at teardown, if a test let them live
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [PYTHON, str(launcher), "--serve", str(self.sock), "--spares", str(spares),
                 "--grace", str(grace), "--data-root", str(self.root),
                 "--packages-root", str(self.root), "--report-root", str(self.root), *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"server did not start: {self.log.read_text()}")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            self.connect().close()  # the server drops a connection that sends nothing
        except OSError:
            return False
        return True

    def connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with unix_address(str(self.sock)) as address:
            conn.connect(address)
        return conn

    def request(
        self,
        doc: dict[str, Any] | bytes,
        fds: list[int] | None = None,
        timeout: float = 60,
        started: list[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Send one request; every event until the server closes (pids go to `started`)."""
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        events: list[dict[str, Any]] = []
        with self.connect() as conn:
            socket.send_fds(conn, [raw], fds or [])
            conn.settimeout(timeout)
            while msg := conn.recv(1 << 20):
                events.append(json.loads(msg))
                if started is not None and events[-1].get("pid"):
                    started.append(int(events[-1]["pid"]))
        return events

    def children(self) -> list[int]:
        """The server's child processes (spares and runs)."""
        try:
            path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
            with open(path) as fh:
                return [int(p) for p in fh.read().split()]
        except OSError:
            return []

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One fork server for the session's served sandboxes; must stop cleanly (exit 0)."""
    srv = ServerProc(tmp_path_factory.mktemp("srv"), root=tmp_path_factory.getbasetemp())
    yield srv
    assert srv.stop() == 0, srv.log.read_text()
    assert not srv.sock.exists()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProc]]:
    """Start servers in given directories (keywords: ServerProc's); each is stopped
    (SIGTERM) at teardown."""
    started: list[ServerProc] = []

    def start(directory: Path, **options: Any) -> ServerProc:
        started.append(ServerProc(directory, **options))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProc]:
    """A server of the test's own (2 spares), which the test may stop or kill; whatever it
    leaves (plugins, cgroups of killed spares) is killed and removed at teardown."""
    srv = ServerProc(tmp_path, spares=2, grace=1.0)
    yield srv
    srv.stop(signal.SIGTERM)  # a live server removes its spares (and runs) itself
    for pid in srv.started:
        subprocess.run([PYTHON, str(LAUNCH), "--kill-tree", "--pid", str(pid), "--grace", "0"],
                       capture_output=True, timeout=60, check=False)  # fmt: skip


@dataclass
class ServedSandbox(Sandbox):
    """The same runs, through the fork server instead of the one-shot launcher."""

    server: ServerProc | None = None
    served = True

    def run(
        self, argv: list[str], granted: list[str] | None = None, timeout: float = 60, **limits: int
    ) -> Result:
        assert self.server is not None
        report = self.tmp / "report.json"
        report.unlink(missing_ok=True)
        doc = {"policy": json.loads(self.policy(granted, **limits).read_text()), "argv": argv,
               "backend": self.backend, "report": str(report)}  # fmt: skip
        (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        out, err = _Drain(out_r), _Drain(err_r)
        started: list[int] = []
        try:
            events = self.server.request(doc, [null, out_w, err_w], timeout, started)
        except TimeoutError:
            for pid in started:
                self.kill_tree(pid)
            raise AssertionError(f"served run exceeded {timeout}s") from None
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
            self.pids += started
        last = events[-1]
        assert last["event"] == "exited", events
        doc_report = json.loads(report.read_text()) if report.exists() else {}
        return Result(last["returncode"], out.text(), err.text(), doc_report, last["pid"])

    def start(self, *args: str, granted: list[str] | None = None, **limits: Any) -> Held:
        assert self.server is not None
        argv = [PYTHON, "-I", str(self.attack), *args]
        doc = {"policy": json.loads(self.policy(granted, **limits).read_text()), "argv": argv,
               "backend": self.backend, "report": None}  # fmt: skip
        (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
        conn = self.server.connect()
        socket.send_fds(conn, [json.dumps(doc).encode()], [in_r, out_w, err_w])
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        conn.settimeout(60)
        started = json.loads(conn.recv(1 << 20))
        assert started["event"] == "started", started
        self.pids.append(int(started["pid"]))
        line = _readline(out_r, 60)
        _Drain(err_r)

        def finish() -> int:
            os.close(in_w)
            exited = json.loads(conn.recv(1 << 20))
            conn.close()
            os.close(out_r)
            return int(exited["returncode"])

        return Held(int(started["pid"]), line, started["report"], finish, int(started["pid"]))


def _readline(fd: int, timeout: float) -> dict[str, Any]:
    """The plugin's first JSON line on `fd` (raw reads: the pipe stays open after it)."""
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"no line from the plugin in {timeout}s: {data!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"the plugin ended without a line: {data!r}")
        data += chunk
    return dict(json.loads(data.split(b"\n", 1)[0]))


@dataclass
class Held:
    """A running plugin: its host pid, its first line, its report; `finish` ends it."""

    pid: int
    line: dict[str, Any]
    report: dict[str, Any]
    finish: Callable[[], int]
    launcher: int  # the pid its starter started (one-shot: the launcher's)

    def plugin_pids(self, attack: Path) -> list[int]:
        """The run's processes running the attack script (found through its cgroups: under
        bwrap the report's pid is bwrap's), as the host sees them."""
        from sandbox import cgroups

        found = []
        for pid in cgroups.members(self.report["cgroup"]["dirs"]):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[1:3] == [b"-I", str(attack).encode()]:
                found.append(pid)
        return found


class _Drain:
    """Read a pipe to its end in a thread, so a chatty plugin never blocks on it."""

    def __init__(self, fd: int) -> None:
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, args=(fd,), daemon=True)
        self.thread.start()

    def _read(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as fh:
            while chunk := fh.read1(65536):
                self.chunks.append(chunk)

    def text(self) -> str:
        self.thread.join(30)
        return b"".join(self.chunks).decode(errors="replace")


@pytest.fixture(scope="session")
def kit() -> Any:
    """This conftest's classes, for tests that build their own (in a full run another
    pack's conftest holds the module name `conftest`: importing from it would not work)."""
    import types

    return types.SimpleNamespace(Sandbox=Sandbox, ServedSandbox=ServedSandbox,
                                 ServerProc=ServerProc)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path, server: ServerProc) -> Iterator[Sandbox]:
    """The native backend through the session's fork server."""
    box = ServedSandbox(tmp_path, backend="native", server=server)
    yield box
    box.cleanup()


@pytest.fixture(params=["native", "bwrap", "native-served", "bwrap-served"])
def sandbox(request: pytest.FixtureRequest, tmp_path: Path, probe: Probe) -> Iterator[Sandbox]:
    """A sandbox per backend, one-shot and through the fork server; bwrap is skipped (with
    the probe's reason) where missing."""
    backend, _, served = str(request.param).partition("-")
    if backend == "bwrap":
        probe.require("bwrap")
    box: Sandbox
    if served:
        box = ServedSandbox(tmp_path, backend=backend, server=request.getfixturevalue("server"))
    else:
        box = Sandbox(tmp_path, backend=backend)
    yield box
    box.cleanup()


@pytest.fixture
def native(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path, backend="native")
    yield box
    box.cleanup()


@dataclass
class Listener:
    port: int
    received: list[bytes]
    udp_port: int


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A TCP and a UDP socket on 127.0.0.1 (outside the sandbox) recording what arrives."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
                with conn:
                    conn.settimeout(2)
                    got.append(conn.recv(100))
            except OSError:
                pass
            with contextlib.suppress(OSError):
                got.append(udp.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield Listener(tcp.getsockname()[1], got, udp.getsockname()[1])
    stop.set()
    thread.join(5)
    tcp.close()
    udp.close()


@pytest.fixture
def unix_listener(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket a host daemon would offer (like /run/docker.sock), outside the sandbox."""
    path = tmp_path / "host.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen()
    yield path
    srv.close()


@pytest.fixture
def plugin_owned_dir() -> Iterator[Path]:
    """A host directory owned by the plugins' uid, outside /tmp and /var/tmp (private in
    the sandbox, the latter with fs-write: shared_dirs)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="aurora-test-", dir="/var/lib"))
    os.chown(path, PLUGIN_UID, PLUGIN_GID)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def outside_process() -> Iterator[subprocess.Popen[bytes]]:
    """A process outside every sandbox, for a plugin to try to signal."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session", autouse=True)
def uid_claims_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Plugin uids are claimed host-wide (pack04 README "Plugin identity"): every launcher
    this session starts claims them in a temp dir, never in /var/lib/aurora."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AURORA_UID_CLAIMS", str(tmp_path_factory.mktemp("uid-claims") / "plugin-uids"))
        yield
