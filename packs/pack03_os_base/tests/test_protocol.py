"""The plugin's protocol connection (fd 3) and the SDK directory, through every backend.

A real plugin (``python -I``) talks over fd 3 with this test process, which holds the
other end of the socketpair as the supervisor would; what arrived is judged here, on
the host. Served runs use a server of this module started with ``--sdk-root``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sandbox import layout, protocol
from sandbox import server as server_lib
from sandbox.errors import PolicyError
from sandbox.policy import parse_policy
from sandbox_testing import PLUGIN_GID, PLUGIN_UID

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from conftest import Probe, Sandbox, ServerProc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root, like CI")

# The plugin: lists its open fds and environment, reads and tries to write the SDK,
# prints one JSON line, then talks on fd 3 when asked (a greeting, then the echo of what
# it receives); "hold" modes then wait for stdin's EOF.
PLUGIN = r"""
import json, os, sys
mode = sys.argv[1]
fds = []
for name in os.listdir("/proc/self/fd"):
    try:
        os.readlink(f"/proc/self/fd/{name}")  # the listing's own fd is closed by now
    except OSError:
        continue
    fds.append(int(name))
info = {"fds": sorted(fds), "env": os.environ.get("AURORA_PLUGIN_PROTOCOL_FD"),
        "sdk": os.environ.get("AURORA_PLUGIN_SDK")}
if info["sdk"]:
    with open(os.path.join(info["sdk"], "sdk.py")) as fh:
        info["sdk_read"] = fh.read()
    for name, call in (("write", lambda: open(os.path.join(info["sdk"], "sdk.py"), "a")),
                       ("create", lambda: open(os.path.join(info["sdk"], "new.py"), "w"))):
        try:
            call().close()
            info[name] = "allowed"
        except OSError as exc:
            info[name] = f"denied: {exc}"
print(json.dumps(info), flush=True)
if mode != "none":
    os.write(3, b"hello from the plugin\n")
    os.write(3, b"echo:" + os.read(3, 100))
if mode == "close-hold":
    os.close(3)
if mode in ("close-hold", "hold"):
    sys.stdin.read()
"""
SDK_TEXT = "AURORA_SDK = 1\n"


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sdk")
    path.chmod(0o755)
    (path / "sdk.py").write_text(SDK_TEXT)
    (path / "sdk.py").chmod(0o644)
    return path


@pytest.fixture(scope="module")
def sdk_server(
    tmp_path_factory: pytest.TempPathFactory, sdk: Path, kit: Any
) -> Iterator[ServerProc]:
    srv = kit.ServerProc(tmp_path_factory.mktemp("sdksrv"), root=tmp_path_factory.getbasetemp(),
                     extra=("--sdk-root", str(sdk)))  # fmt: skip
    yield srv
    assert srv.stop() == 0, srv.log.read_text()


@dataclass
class Run:
    """A started plugin: its first line, its report, the pid of what its starter
    started; `finish` closes its stdin and returns its status."""

    line: dict[str, Any]
    report: dict[str, Any]
    finish: Callable[[], int]


@pytest.fixture(params=["native", "bwrap", "native-served", "bwrap-served"])
def box(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    probe: Probe,
    sdk_server: ServerProc,
    kit: Any,
) -> Iterator[Sandbox]:
    backend, _, served = str(request.param).partition("-")
    if backend == "bwrap":
        probe.require("bwrap")
    sb = (
        kit.ServedSandbox(tmp_path, backend, server=sdk_server)
        if served
        else kit.Sandbox(tmp_path, backend)
    )
    (sb.plugin_dir / "plugin.py").write_text(PLUGIN)
    yield sb
    sb.cleanup()


def _policy(sb: Sandbox, sdk: Path | None) -> dict[str, Any]:
    doc = dict(json.loads(sb.policy().read_text()))
    doc["sdk_dir"] = str(sdk) if sdk else None
    return doc


def _start(sb: Sandbox, mode: str, conn: int | None, sdk: Path | None = None) -> Run:
    """Start the plugin one-shot (``--protocol-fd``) or served (4th fd), stdin a pipe."""
    argv = [sys_python(), "-I", str(sb.plugin_dir / "plugin.py"), mode]
    (in_r, in_w), (out_r, out_w) = os.pipe(), os.pipe()
    report = sb.tmp / "report.json"
    report.unlink(missing_ok=True)
    if sb.served:
        assert sb.server is not None  # type: ignore[attr-defined]
        doc = {"policy": _policy(sb, sdk), "argv": argv, "backend": sb.backend,
               "report": str(report)}  # fmt: skip
        client = sb.server.connect()  # type: ignore[attr-defined]
        fds = [in_r, out_w, out_w] + ([conn] if conn is not None else [])
        socket.send_fds(client, [json.dumps(doc).encode()], fds)
        client.settimeout(60)
        started = json.loads(client.recv(1 << 20))
        assert started["event"] == "started", started
        sb.pids.append(int(started["pid"]))

        def finish_served() -> int:
            os.close(in_w)
            exited = json.loads(client.recv(1 << 20))
            client.close()
            return int(exited["returncode"])

        finish = finish_served
    else:
        path = sb.tmp / "policy.json"
        path.write_text(json.dumps(_policy(sb, sdk)))
        cmd = [sys_python(), str(launch_py()), "--policy", str(path), "--report", str(report),
               "--backend", sb.backend]  # fmt: skip
        cmd += ["--protocol-fd", str(conn)] if conn is not None else []
        proc = subprocess.Popen([*cmd, "--", *argv], stdin=in_r, stdout=out_w,
                                pass_fds=[conn] if conn is not None else [])  # fmt: skip
        sb.pids.append(proc.pid)

        def finish_one_shot() -> int:
            os.close(in_w)
            return proc.wait(timeout=60)

        finish = finish_one_shot
    os.close(in_r)
    os.close(out_w)
    if conn is not None:
        os.close(conn)  # the plugin's end is the sandbox's now: this process keeps its own
    line = _readline(out_r)
    os.close(out_r)
    deadline = time.monotonic() + 10
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return Run(line, json.loads(report.read_text()), finish)


def sys_python() -> str:
    return sys.executable


def launch_py() -> Path:
    return Path(__file__).resolve().parents[1] / "sandbox" / "launch.py"


def _readline(fd: int, timeout: float = 60) -> dict[str, Any]:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no line: {data!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"the plugin ended without a line: {data!r}"
        data += chunk
    return dict(json.loads(data.split(b"\n", 1)[0]))


def _talk(mine: socket.socket) -> None:
    """The supervisor's side of the exchange: the plugin's greeting, a ping, its echo."""
    mine.settimeout(30)
    assert mine.recv(100) == b"hello from the plugin\n"
    mine.sendall(b"ping")
    assert mine.recv(100) == b"echo:ping"


def _eof_within(mine: socket.socket, seconds: float) -> bool:
    mine.settimeout(seconds)
    try:
        return mine.recv(100) == b""
    except TimeoutError:
        return False


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


# --- the connection ---------------------------------------------------------------------


def test_the_plugin_talks_on_fd_3_and_holds_nothing_else(box: Sandbox) -> None:
    mine, theirs = socket.socketpair()
    with mine:
        run = _start(box, "talk", theirs.detach())
        _talk(mine)
        assert run.finish() == 0
        assert _eof_within(mine, 5)
    assert run.line["env"] == "3"
    assert run.line["fds"] == [0, 1, 2, 3], run.line  # nothing of the launcher's leaks in
    assert run.report["layers"]["protocol"] == {
        "active": True,
        "detail": "fd 3 (AURORA_PLUGIN_PROTOCOL_FD)",
    }
    assert "fd 3: the protocol connection" in run.report["layers"]["file-descriptors"]["detail"]


def test_without_a_connection_fd_3_is_not_open_and_no_variable_is_set(box: Sandbox) -> None:
    run = _start(box, "none", None)
    assert run.finish() == 0
    assert run.line["fds"] == [0, 1, 2], run.line
    assert run.line["env"] is None
    assert run.report["layers"]["protocol"]["active"] is False


def test_the_supervisors_end_sees_eof_once_the_plugin_closed_it(box: Sandbox) -> None:
    """No other process of the run (native: the waiter and init; bwrap: bwrap's own) keeps
    a copy: the plugin closes fd 3 and lives on, and this end reads EOF at once."""
    mine, theirs = socket.socketpair()
    with mine:
        run = _start(box, "close-hold", theirs.detach())
        _talk(mine)
        plugin = int(run.report["pid"])
        assert _eof_within(mine, 1.0), "another process still holds the plugin's end"
        assert box.alive(plugin), "the plugin (or bwrap) must still be running"
        if box.backend == "native":  # its init and the waiter outside are still there too
            init = _ppid(plugin)
            assert box.alive(init) and box.alive(_ppid(init))
        assert run.finish() == 0


def test_the_supervisors_end_sees_eof_within_a_second_of_the_plugins_exit(
    box: Sandbox,
) -> None:
    mine, theirs = socket.socketpair()
    with mine:
        run = _start(box, "talk", theirs.detach())
        _talk(mine)  # the plugin exits right after its echo
        assert _eof_within(mine, 1.0)
        assert run.finish() == 0


@pytest.mark.parametrize("kind", ["regular-file", "listening-socket", "datagram", "closed"])
def test_a_protocol_fd_that_is_not_a_connected_stream_socket_is_refused(
    box: Sandbox, tmp_path: Path, kind: str
) -> None:
    keep: list[Any] = []
    if kind == "regular-file":
        fd, expected = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600), "a regular file"
    elif kind == "listening-socket":
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lst.bind(str(tmp_path / "l.sock"))
        lst.listen()
        fd, expected = lst.detach(), "a listening socket"
    elif kind == "datagram":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        keep.append(a)
        fd, expected = b.detach(), "SOCK_DGRAM"
    else:
        if box.served:
            pytest.skip("a closed fd cannot be sent")
        fd, expected = 987, "not an open file descriptor"
    marker = box.data_dir / "ran"
    argv = [sys_python(), "-I", "-c", f"open({str(marker)!r}, 'w')"]
    try:
        if box.served:
            assert box.server is not None  # type: ignore[attr-defined]
            null = os.open(os.devnull, os.O_RDWR)
            try:
                doc = {"policy": _policy(box, None), "argv": argv, "backend": box.backend}
                events = box.server.request(doc, [null, null, null, fd])  # type: ignore[attr-defined]
            finally:
                os.close(null)
            assert [e["event"] for e in events] == ["error"], events
            problem = [p for p in events[0]["problems"] if p.startswith("fds[3]")]
            assert problem and expected in problem[0], events
        else:
            path = box.tmp / "policy.json"
            path.write_text(json.dumps(_policy(box, None)))
            proc = subprocess.run(
                [sys_python(), str(launch_py()), "--policy", str(path), "--backend", box.backend,
                 "--protocol-fd", str(fd), "--", *argv],
                pass_fds=[fd] if kind != "closed" else [], capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert proc.returncode == 125, proc.stderr
            assert f"--protocol-fd {fd}: " in proc.stderr and expected in proc.stderr
    finally:
        if kind != "closed":
            os.close(fd)
    assert not marker.exists()


# --- the SDK ----------------------------------------------------------------------------


def test_the_sdk_is_readable_not_writable_and_named_in_the_environment(
    box: Sandbox, sdk: Path
) -> None:
    run = _start(box, "none", None, sdk=sdk)
    assert run.finish() == 0
    assert run.line["sdk"] == str(sdk)
    assert run.line["sdk_read"] == SDK_TEXT
    assert run.line["write"].startswith("denied") and run.line["create"].startswith("denied")
    assert (sdk / "sdk.py").read_text() == SDK_TEXT and not (sdk / "new.py").exists()


def test_without_sdk_dir_no_variable(box: Sandbox) -> None:
    run = _start(box, "none", None)
    assert run.finish() == 0
    assert run.line["sdk"] is None


def test_a_request_naming_another_sdk_dir_is_refused(
    sdk_server: ServerProc, server: ServerProc, tmp_path: Path, sdk: Path, kit: Any
) -> None:
    sb = kit.Sandbox(tmp_path)
    marker = sb.data_dir / "ran"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    argv = [sys_python(), "-I", "-c", f"open({str(marker)!r}, 'w')"]
    for srv, sdk_dir, expected in (
        (sdk_server, foreign, f"is not the server's --sdk-root {str(sdk)!r}"),
        (sdk_server, Path("/etc"), f"is not the server's --sdk-root {str(sdk)!r}"),
        (
            server,
            sdk,
            "given, but the server was started without --sdk-root (no SDK may be offered)",
        ),
    ):
        events = srv.request({"policy": _policy(sb, sdk_dir), "argv": argv})
        assert [e["event"] for e in events] == ["error"], events
        problem = [p for p in events[0]["problems"] if p.startswith("policy.sdk_dir")]
        assert problem == [f"policy.sdk_dir: {str(sdk_dir)!r} {expected}"], events
    assert not marker.exists()


# --- parsing ----------------------------------------------------------------------------


def _raw_policy(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"plugin_id": "t.p", "data_dir": str(tmp_path / "d"), "uid": PLUGIN_UID,
            "gid": PLUGIN_GID, **extra}  # fmt: skip


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("rel/sdk", "sdk_dir: expected an absolute path", id="relative"),
        pytest.param(7, "sdk_dir: expected an absolute path, found number 7", id="number"),
        pytest.param("/", "sdk_dir: '/' would make the whole filesystem readable", id="root"),
        pytest.param("/nonexistent/sdk", "is not an existing directory", id="missing"),
    ],
)
def test_a_bad_sdk_dir_is_named(tmp_path: Path, value: object, expected: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(_raw_policy(tmp_path, sdk_dir=value))
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_sdk_dir_with_dotdot_is_refused_and_null_is_none(tmp_path: Path, sdk: Path) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(_raw_policy(tmp_path, sdk_dir=f"{sdk}/../{sdk.name}"))
    assert any("contains '..'" in p for p in err.value.problems)
    assert parse_policy(_raw_policy(tmp_path, sdk_dir=None)).sdk_dir is None
    assert parse_policy(_raw_policy(tmp_path, sdk_dir=str(sdk))).to_json()["sdk_dir"] == str(sdk)


def test_the_sdk_check_takes_only_the_servers_own_root(tmp_path: Path, sdk: Path) -> None:
    lay = layout.Layout(str(tmp_path), str(tmp_path), str(tmp_path), sdk_root=str(sdk))
    ok = _raw_policy(tmp_path, sdk_dir=str(sdk))
    assert layout.check_request(lay, ok, None, frozenset()) == []
    dotdot = _raw_policy(tmp_path, sdk_dir=f"{sdk}/../{sdk.name}")
    assert layout.check_request(lay, dotdot, None, frozenset())


def test_a_request_with_4_fds_checks_the_fourth(tmp_path: Path) -> None:
    raw = json.dumps({"policy": _raw_policy(tmp_path), "argv": ["/bin/true"]}).encode()
    a, b = socket.socketpair()
    with a, b, open(tmp_path / "f", "w") as fh:
        assert server_lib.parse_request(raw, 4, protocol_fd=b.fileno())["argv"] == ["/bin/true"]
        with pytest.raises(server_lib.RequestError) as err:
            server_lib.parse_request(raw, 4, protocol_fd=fh.fileno())
    assert err.value.problems == [
        "fds[3] (the protocol connection): a regular file, not a socket; expected a connected "
        "AF_UNIX SOCK_STREAM socket (one end of a socketpair)"
    ]


def test_take_parks_the_fd_high_and_close_on_exec() -> None:
    a, b = socket.socketpair()
    with a:
        fd = b.detach()
        high = protocol.take(fd)
        try:
            assert high >= 4 and not os.get_inheritable(high)
            with pytest.raises(OSError):
                os.fstat(fd)
            assert protocol.problem(high, "x") is None
        finally:
            os.close(high)
