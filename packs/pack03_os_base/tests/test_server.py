"""The fork server: same layers as the one-shot launcher, errors not crashes, nothing left."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sandbox import cgroups, launch, pidns, privileges
from sandbox import server as server_lib
from sandbox_testing import PLUGIN_GID, PLUGIN_UID

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Sandbox, ServerProc

_json_docs = st.dictionaries(
    st.sampled_from(["policy", "argv", "backend", "report", "other"]),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=8,
    ),
)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root, like CI")


def _policy(tmp: Path, plugin_id: str = "test.server", **extra: Any) -> dict[str, Any]:
    return {"plugin_id": plugin_id, "granted": [], "data_dir": str(tmp / "data"),
            "read_paths": [], "limits": {"processes": 16, "memory_bytes": 256 << 20},
            "uid": PLUGIN_UID, "gid": PLUGIN_GID, **extra}  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# --- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "nfds", "expected"),
    [
        pytest.param(b"\xff", 0, "not a JSON document", id="not-utf8"),
        pytest.param(b"{", 0, "not a JSON document", id="not-json"),
        pytest.param(b"[1]", 0, "expected a JSON object, found list", id="not-object"),
        pytest.param(b'{"argv": ["x"]}', 0, "policy: missing", id="no-policy"),
        pytest.param(
            b'{"policy": {}, "argv": ["x"]}', 0, "policy.plugin_id: missing", id="empty-policy"
        ),
        pytest.param(
            b'{"policy": [], "argv": ["x"]}', 0, "policy: expected a JSON object", id="policy-list"
        ),
    ],
)
def test_malformed_requests_name_the_problem(raw: bytes, nfds: int, expected: str) -> None:
    with pytest.raises(server_lib.RequestError) as err:
        server_lib.parse_request(raw, nfds)
    assert any(expected in p for p in err.value.problems), err.value.problems


def test_every_problem_of_a_request_is_reported_at_once(tmp_path: Path) -> None:
    doc = {"policy": _policy(tmp_path, granted=["netwrk"]), "argv": [], "backend": "docker",
           "report": "rel.json", "extra": 1}  # fmt: skip
    with pytest.raises(server_lib.RequestError) as err:
        server_lib.parse_request(json.dumps(doc).encode(), 2)
    problems = err.value.problems
    assert "extra: unknown key (known: policy, argv, backend, report)" in problems
    assert any(p.startswith("policy.granted[0]: unknown capability 'netwrk'") for p in problems)
    assert any(p.startswith("argv: expected a non-empty list") for p in problems)
    assert any(p.startswith("backend: expected one of auto, native, bwrap") for p in problems)
    assert any(p.startswith("report: expected an absolute path") for p in problems)
    assert any(p.startswith("fds: expected 0, 3 (stdin, stdout, stderr) or 4") for p in problems)


def test_a_valid_request_is_normalised(tmp_path: Path) -> None:
    doc = {"policy": _policy(tmp_path), "argv": ["/bin/true"]}
    req = server_lib.parse_request(json.dumps(doc).encode(), 3)
    assert req["backend"] == "auto" and req["report"] is None
    assert req["policy"]["plugin_id"] == "test.server" and req["argv"] == ["/bin/true"]


@root_only
@pytest.mark.parametrize(
    ("payload", "nfds"),
    [
        pytest.param(b"garbage", 0, id="garbage"),
        pytest.param(b'{"policy": {"plugin_id": "../x"}, "argv": "ls"}', 0, id="bad-fields"),
        pytest.param(b"{}", 5, id="five-fds"),
        pytest.param(b" " * (server_lib.MAX_MESSAGE + 10), 0, id="too-large"),
    ],
)
def test_a_malformed_request_gets_an_error_and_the_server_keeps_serving(
    server: ServerProc, tmp_path: Path, payload: bytes, nfds: int
) -> None:
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(nfds)]
    try:
        events = server.request(payload, fds, timeout=30)
    finally:
        for fd in fds:
            os.close(fd)
    assert [e["event"] for e in events] == ["error"], events
    assert events[0]["error"].startswith("bad request")
    ok = server.request({"policy": _policy(tmp_path), "argv": ["/bin/true"]}, timeout=30)
    assert ok[-1]["event"] == "exited" and ok[-1]["returncode"] == 0, ok


# --- runs -------------------------------------------------------------------------------


@root_only
@pytest.mark.parametrize(
    "granted",
    [
        pytest.param([], id="nothing"),
        pytest.param(["network"], id="network"),
        pytest.param(["fs-read", "io"], id="fs-read-io"),
    ],
)
def test_a_served_run_gets_exactly_the_one_shot_layers(
    server: ServerProc, native: Sandbox, granted: list[str]
) -> None:
    """Same policy, one-shot and served: the same layers, enforcement and limits."""
    one_shot = native.run(["/bin/true"], granted=granted)
    assert one_shot.returncode == 0, one_shot.stderr
    report_file = native.tmp / "served-report.json"
    doc = {"policy": json.loads(native.policy(granted).read_text()), "argv": ["/bin/true"],
           "backend": "native", "report": str(report_file)}  # fmt: skip
    events = server.request(doc, timeout=60, started=native.pids)
    assert [e["event"] for e in events] == ["started", "exited"], events
    started, exited = events
    assert exited["returncode"] == 0 and exited["pid"] == started["pid"]
    served = started["report"]
    assert json.loads(report_file.read_text()) == served  # written before "started"
    a, b = one_shot.report, served
    for key in ("status", "backend", "granted", "enforced", "contained", "degraded", "limits",
                "allow_degraded", "plugin_id"):  # fmt: skip
        assert a[key] == b[key], key
    assert {k: v["active"] for k, v in a["layers"].items()} == {
        k: v["active"] for k, v in b["layers"].items()
    }
    assert {k: v["detail"] for k, v in a["layers"].items() if k != "cgroup"} == {
        k: v["detail"] for k, v in b["layers"].items() if k != "cgroup"
    }
    assert b["pid"] == started["pid"]
    assert (a["cgroup"]["memory"] is None) == (b["cgroup"]["memory"] is None)
    assert (a["cgroup"]["pids"] is None) == (b["cgroup"]["pids"] is None)
    assert all(f"/{cgroups.POOL}/run-" in d for d in b["cgroup"]["dirs"])


@root_only
def test_a_served_run_has_its_limits_in_its_cgroup(served: Sandbox) -> None:
    """The spare's cgroups were made before the policy was known: the limits are set after.
    Read on the host, in the run's cgroup dirs (the plugin sees its own cgroups as "/")."""
    held = served.start("hold", processes=7)
    try:
        dirs = held.report["cgroup"]["dirs"]
        limits = {}
        for d in dirs:
            for name in ("pids.max", "memory.limit_in_bytes", "memory.max"):
                if os.path.exists(os.path.join(d, name)):
                    limits[name] = Path(d, name).read_text().strip()
    finally:
        held.finish()
    assert dirs and all(f"/{cgroups.POOL}/run-" in d for d in dirs), dirs
    assert limits.get("pids.max") == "7", limits
    memory = limits.get("memory.limit_in_bytes") or limits.get("memory.max")
    if memory is not None:
        assert int(memory) == 256 << 20


@root_only
@pytest.mark.parametrize(
    ("argv", "code", "error"),
    [
        pytest.param(["no-such-command-aurora"], 127, "command not found", id="not-found"),
        pytest.param(["/bin/sh", "-c", "exit 3"], 3, None, id="own-status"),
        pytest.param(["/bin/sh", "-c", "kill -KILL $$"], -9, None, id="killed"),
    ],
)
def test_exit_statuses_are_the_one_shot_ones(
    server: ServerProc, tmp_path: Path, argv: list[str], code: int, error: str | None
) -> None:
    events = server.request({"policy": _policy(tmp_path), "argv": argv}, timeout=60)
    exited = events[-1]
    assert exited["event"] == "exited" and exited["returncode"] == code, events
    if error:
        assert error in exited["error"] and "started" not in [e["event"] for e in events]
    else:
        assert exited["error"] is None


@root_only
def test_a_data_dir_that_cannot_be_made_is_refused_before_anything_runs(
    server: ServerProc, tmp_path: Path
) -> None:
    """Beneath a file: the layout check names it; nothing ran, nothing was written."""
    (tmp_path / "file").write_text("x")
    doc = {"policy": _policy(tmp_path, data_dir=str(tmp_path / "file" / "sub")),
           "argv": ["/bin/true"], "report": str(tmp_path / "r.json")}  # fmt: skip
    events = server.request(doc, timeout=60)
    assert [e["event"] for e in events] == ["error"], events
    assert any(p.startswith("policy.data_dir:") and "is not a directory" in p
               for p in events[0]["problems"])  # fmt: skip
    assert not (tmp_path / "r.json").exists()


@root_only
def test_a_run_that_cannot_start_is_told_why(server: ServerProc, tmp_path: Path) -> None:
    """A refusal in the child (an unknown backend binary is not one: use a data dir the
    launcher cannot make its own): exit 125 and the reason, no "started" event."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "tmp").write_text("the plugin put a file where tmp/ belongs")
    doc = {"policy": _policy(tmp_path), "argv": ["/bin/true"],
           "report": str(tmp_path / "r.json")}  # fmt: skip
    events = server.request(doc, timeout=60)
    assert [e["event"] for e in events] == ["exited"], events
    assert events[0]["returncode"] == launch.EXIT_REFUSED
    assert "data_dir" in events[0]["error"]


# --- the server's own life cycle ---------------------------------------------------------


@root_only
def test_the_socket_is_its_owners_only(server: ServerProc) -> None:
    assert stat.S_IMODE(server.sock.stat().st_mode) == 0o600


@root_only
def test_another_uid_is_turned_away_even_if_it_can_connect(own_server: ServerProc) -> None:
    # The peer check is the second line: open the socket's mode and reach its directory
    # through an fd (pytest's temp root is 0700), as a uid other than the server's.
    os.chmod(own_server.sock, 0o666)
    os.chmod(own_server.sock.parent, 0o755)
    dfd = os.open(own_server.sock.parent, os.O_PATH)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setuid(65534)
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            conn.connect(f"/proc/self/fd/{dfd}/{own_server.sock.name}")
            conn.settimeout(10)
            os.write(w, conn.recv(4096))
        finally:
            os._exit(0)
    os.close(w)
    os.close(dfd)
    with os.fdopen(r, "rb") as fh:
        reply = json.loads(fh.read())
    os.waitpid(pid, 0)
    assert reply["event"] == "error" and "uid 65534 may not use this server" in reply["error"]


@root_only
def test_stop_ends_every_run_and_spare_and_leaves_nothing(
    own_server: ServerProc, tmp_path: Path
) -> None:
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    script = plugin / "escape_and_wait.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        print(os.getpid(), flush=True)\n"
        "        time.sleep(120)\n"
        "    os._exit(0)\n"
        "time.sleep(120)\n"
    )
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    doc = {"policy": _policy(tmp_path, read_paths=[str(plugin)]),
           "argv": [sys.executable, "-I", str(script)], "backend": "native"}  # fmt: skip
    conn = own_server.connect()
    socket.send_fds(conn, [json.dumps(doc).encode()], [null, w, null])
    os.close(null)
    os.close(w)
    conn.settimeout(60)
    started = json.loads(conn.recv(1 << 20))
    assert started["event"] == "started", started["error"]
    own_server.started.append(started["pid"])
    with os.fdopen(r) as fh:
        grandchild = int(fh.readline())
    dirs = started["report"]["cgroup"]["dirs"]
    deadline = time.monotonic() + 10
    while len(own_server.children()) < 3 and time.monotonic() < deadline:  # run + 2 spares
        time.sleep(0.02)
    children = own_server.children()
    assert len(children) == 3, children  # the run's launcher (the plugin is below it), spares
    assert own_server.stop(signal.SIGTERM) == 0, own_server.log.read_text()
    exited = json.loads(conn.recv(1 << 20))
    conn.close()
    assert exited["event"] == "exited" and exited["returncode"] == -signal.SIGTERM, exited
    for pid in [*children, started["pid"]]:
        assert not _alive(pid), pid
    assert grandchild > 0  # a pid of the plugin's namespace: gone with it (cgroups empty)
    assert not own_server.sock.exists()
    assert not any(os.path.exists(d) for d in dirs)


#: launch.py, with every PID namespace's init slow to bind itself to its launcher's death
#: (what a loaded CPU does between fork and prctl, stretched so a stop always hits it).
_SLOW_INIT = """\
import sys, time
sys.path.insert(0, {pack!r})
from sandbox import launch, pidns
bind = pidns._init_forks
def slow(status_w, exit_w):
    time.sleep(2)
    return bind(status_w, exit_w)
pidns._init_forks = slow
raise SystemExit(launch.main())
"""


@root_only
def test_a_stop_while_a_spares_init_is_not_yet_bound_to_it_ends_and_leaves_nothing(
    tmp_path: Path, start_server: Callable[..., ServerProc]
) -> None:
    """The intermittent hang of CI: the stop KILLed a spare whose init had not yet set its
    death signal; init lived on, and so did the spare's plugin process, holding the
    server's control channel, on which the server waited for EOF forever."""
    wrapper = tmp_path / "slow_init.py"
    wrapper.write_text(_SLOW_INIT.format(pack=str(Path(launch.__file__).parents[1])))
    srv = start_server(tmp_path, spares=1, grace=1.0, launcher=wrapper)
    try:
        deadline = time.monotonic() + 20
        inits: list[int] = []
        while not inits and time.monotonic() < deadline:  # the spare forked its init
            inits = [p for s in srv.children() for p in _children_of(s)]
            time.sleep(0.005)
        assert inits, srv.log.read_text()
        spares = srv.children()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(timeout=10) == 0, srv.log.read_text()
    finally:
        srv.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5  # init wakes up, sees its launcher gone, and ends
    while any(_alive(p) for p in inits) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(p) for p in [*spares, *inits])
    assert not any(cgroups.find_run_dirs(p) for p in spares)


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def test_init_sees_a_launcher_that_is_gone() -> None:
    r, w = os.pipe()
    try:
        assert not pidns._reader_gone(w)
        os.close(r)
        r = -1
        assert pidns._reader_gone(w)
    finally:
        os.close(w)
        if r >= 0:
            os.close(r)


@root_only
def test_spares_die_with_a_killed_server(own_server: ServerProc) -> None:
    deadline = time.monotonic() + 10
    while len(own_server.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    spares = own_server.children()
    assert len(spares) == 2
    own_server.started += spares  # their (empty) cgroups are removed at teardown
    own_server.stop(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in spares) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(p) for p in spares)


@root_only
def test_a_client_that_leaves_does_not_stop_its_plugin(
    own_server: ServerProc, tmp_path: Path
) -> None:
    doc = {"policy": _policy(tmp_path), "argv": ["/bin/sleep", "30"]}
    with own_server.connect() as conn:
        socket.send_fds(conn, [json.dumps(doc).encode()], [])
        conn.settimeout(60)
        started = json.loads(conn.recv(1 << 20))
    own_server.started.append(started["pid"])
    time.sleep(0.2)
    assert _alive(started["pid"])
    again = own_server.request({"policy": _policy(tmp_path), "argv": ["/bin/true"]}, timeout=60)
    assert again[-1]["returncode"] == 0  # and the server still serves


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--serve", "/nonexistent-aurora-dir/s.sock"], "its directory does not exist",
                     id="no-such-dir"),
        pytest.param(["--serve", "s.sock", "--spares", "-1"], "must not be negative",
                     id="negative-spares"),
        pytest.param(["--serve", "{tmp}/s.sock", "--packages-root", "{tmp}", "--report-root",
                      "{tmp}"], "--serve needs --data-root DIR", id="no-data-root"),
        pytest.param(["--serve", "{tmp}/s.sock", "--data-root", "rel", "--packages-root", "{tmp}",
                      "--report-root", "{tmp}"], "--data-root 'rel': expected an absolute path",
                     id="relative-root"),
        pytest.param(["--serve", "{tmp}/s.sock", "--data-root", "{tmp}/none", "--packages-root",
                      "{tmp}", "--report-root", "{tmp}"], "not an existing directory",
                     id="missing-root"),
        pytest.param(["--serve", "{tmp}/s.sock", "--data-root", "{tmp}/../x", "--packages-root",
                      "{tmp}", "--report-root", "{tmp}"], "no '..' allowed", id="dotdot-root"),
    ],
)  # fmt: skip
def test_serve_usage_mistakes_exit_125(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert launch.main(argv) == launch.EXIT_REFUSED
    err = capsys.readouterr().err
    assert err.startswith("sandbox: usage:") and expected in err, err


def _serve_args(directory: Path) -> list[str]:
    root = str(directory)
    return ["--serve", str(directory / "s.sock"), "--data-root", root, "--packages-root", root,
            "--report-root", root]  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "owner", "expected"),
    [
        pytest.param(0o755, None, "mode 0755, not 0700", id="group-readable"),
        pytest.param(0o700, 4242, "owned by uid 4242", id="other-owner"),
    ],
)
def test_a_socket_directory_others_can_reach_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: int, owner: int | None,
    expected: str,
) -> None:  # fmt: skip
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(mode)
    if owner is not None:
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(directory, owner, owner)
    assert launch.main(_serve_args(directory)) == launch.EXIT_REFUSED
    assert expected in capsys.readouterr().err
    assert not (directory / "s.sock").exists()


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=300) | st.builds(lambda d: json.dumps(d).encode(), _json_docs),
       st.integers(min_value=0, max_value=5))  # fmt: skip
def test_any_bytes_are_a_request_or_a_request_error(raw: bytes, nfds: int) -> None:
    """Hostile input never crashes the server's parser with anything but a RequestError."""
    try:
        req = server_lib.parse_request(raw, nfds)
    except server_lib.RequestError as exc:
        assert exc.problems
    else:
        assert req["argv"] and nfds in (0, 3, 4)


@root_only
def test_a_second_server_on_the_same_socket_is_refused(
    own_server: ServerProc, capsys: pytest.CaptureFixture[str]
) -> None:
    assert launch.main(_serve_args(own_server.sock.parent)) == launch.EXIT_REFUSED
    assert "another server is listening there" in capsys.readouterr().err
    ok = own_server.request({"policy": _policy(own_server.sock.parent), "argv": ["/bin/true"]})
    assert ok[-1]["returncode"] == 0, ok  # the first one still serves, on its own socket


def test_a_file_in_the_sockets_place_is_never_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.sock"
    path.write_text("an operator's file")
    assert launch.main(_serve_args(tmp_path)) == launch.EXIT_REFUSED
    assert "exists and is not a socket" in capsys.readouterr().err
    assert path.read_text() == "an operator's file"


@root_only
def test_a_stale_socket_is_replaced(
    tmp_path: Path, start_server: Callable[[Path], ServerProc]
) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(tmp_path / "s.sock"))
    stale.close()  # the file stays, nobody listens: a server that died
    srv = start_server(tmp_path)
    ok = srv.request({"policy": _policy(tmp_path), "argv": ["/bin/true"]}, timeout=60)
    assert ok[-1]["returncode"] == 0
    assert srv.stop() == 0 and not srv.sock.exists()


@root_only
def test_a_socket_path_longer_than_sockaddr_un_works(
    tmp_path: Path, start_server: Callable[[Path], ServerProc]
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    deep.chmod(0o700)  # the socket's directory is the server's own (README)
    assert len(str(deep / "s.sock")) > 108  # too long for a sockaddr_un
    srv = start_server(deep)
    ok = srv.request({"policy": _policy(deep), "argv": ["/bin/true"]}, timeout=60)
    assert ok[-1]["returncode"] == 0
    assert srv.stop() == 0 and not srv.sock.exists()


# --- the server trusts its layout, not the request ----------------------------------------


def _hostile(tmp: Path, case: str) -> tuple[dict[str, Any], str]:
    """A request that must be refused, and the problem it must name."""
    report = str(tmp / "r.json")
    if case == "cron":
        return {"policy": _policy(tmp, data_dir="/etc/cron.d"), "report": report}, (
            "policy.data_dir: '/etc/cron.d' is not strictly beneath --data-root"
        )
    if case == "ssh":
        return {"policy": _policy(tmp, data_dir="/root/.ssh"), "report": report}, (
            "policy.data_dir: '/root/.ssh' is not strictly beneath --data-root"
        )
    if case == "dotdot":
        return {"policy": _policy(tmp, data_dir=f"{tmp}/data/../../../etc/x"), "report": report}, (
            "contains '..'"
        )
    if case == "symlink":
        (tmp / "link").symlink_to("/etc")
        return {"policy": _policy(tmp, data_dir=f"{tmp}/link/x"), "report": report}, (
            f"{tmp}/link is a symlink"
        )
    if case == "read-outside":
        return {"policy": _policy(tmp, read_paths=["/root"]), "report": report}, (
            "policy.read_paths[0]: '/root' is not beneath --packages-root"
        )
    if case == "report-outside":
        return {"policy": _policy(tmp), "report": "/etc/aurora-attack.json"}, (
            "report: '/etc/aurora-attack.json' is not strictly beneath --report-root"
        )
    if case == "report-symlink":
        (tmp / "rlink").symlink_to("/etc")
        return {"policy": _policy(tmp), "report": f"{tmp}/rlink/attack.json"}, (
            f"{tmp}/rlink is a symlink"
        )
    assert case == "uid0"
    return {"policy": _policy(tmp, uid=0), "report": report}, "policy.uid: 0 is root"


_HOSTILE = ["cron", "ssh", "dotdot", "symlink", "read-outside", "report-outside",
            "report-symlink", "uid0"]  # fmt: skip


@root_only
@pytest.mark.parametrize("case", _HOSTILE)
def test_a_request_outside_the_layout_is_refused_and_nothing_runs(
    server: ServerProc, tmp_path: Path, case: str
) -> None:
    doc, expected = _hostile(tmp_path, case)
    marker = tmp_path / "ran"
    doc["argv"] = ["/bin/sh", "-c", f"touch {marker}"]
    before = set(os.listdir("/etc"))
    events = server.request(doc, timeout=30)
    assert [e["event"] for e in events] == ["error"], events
    assert any(expected in p for p in events[0]["problems"]), events[0]["problems"]
    assert not marker.exists() and not (tmp_path / "r.json").exists()
    assert not (tmp_path / "data").exists()
    assert set(os.listdir("/etc")) == before


@root_only
def test_a_client_that_is_not_the_servers_parent_is_refused(
    server: ServerProc, tmp_path: Path
) -> None:
    """Same uid (root), but another process than the one that started the server."""
    marker = tmp_path / "ran"
    doc = {"policy": _policy(tmp_path), "argv": ["/bin/sh", "-c", f"touch {marker}"]}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            with server.connect() as conn:
                conn.settimeout(10)
                os.write(w, conn.recv(4096))  # the server answers at accept, then closes
                with contextlib.suppress(OSError):  # the request goes nowhere
                    socket.send_fds(conn, [json.dumps(doc).encode()], [])
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        reply = json.loads(fh.read())
    os.waitpid(pid, 0)
    assert reply["event"] == "error", reply
    assert f"pid {pid} is not the server's parent" in reply["error"]
    time.sleep(0.3)
    assert not marker.exists() and not (tmp_path / "data").exists()
    assert f"pid {pid} is not the server's parent" in server.log.read_text()


@root_only
def test_a_waiting_spares_plugin_process_holds_only_the_capabilities_a_request_needs(
    own_server: ServerProc, tmp_path: Path
) -> None:
    # The bounding set is emptied of the rest ahead (server._ahead); the request drops
    # what is left (test_identity: the plugin ends with none, either backend).
    # (of what the server has: a container's root may lack some, CAP_SYS_RESOURCE here)
    want = sum(1 << cap for cap in privileges.NEEDED_AFTER_CLAIM) & _cap_bnd(own_server.proc.pid)
    deadline = time.monotonic() + 10
    found: list[int] = []
    while time.monotonic() < deadline:  # spare -> init -> the plugin process
        found = [p for s in own_server.children() for i in _children_of(s)
                 for p in _children_of(i)]  # fmt: skip
        if len(found) == 2 and all(_cap_bnd(p) == want for p in found):
            break
        time.sleep(0.02)
    assert len(found) == 2 and [_cap_bnd(p) for p in found] == [want, want], (
        found, [hex(_cap_bnd(p)) for p in found], hex(want))  # fmt: skip
    # and a request still runs, with the rest of the set dropped by then
    events = own_server.request({"policy": _policy(tmp_path), "argv": ["/bin/true"]}, timeout=60)
    assert events[-1]["returncode"] == 0, events


def _cap_bnd(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1], 16) for line in fh if line.startswith("CapBnd:"))
    except (OSError, StopIteration):
        return -1
