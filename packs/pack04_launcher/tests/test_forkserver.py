"""pack03's fork server: the supervisor starts plugins through it, falls back to the
one-shot launcher without it, restarts the plugins of a server that died, and leaves
nothing behind (no process, socket or cgroup) when it stops."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from launcher import identity, sandbox, status
from launcher.forkserver import LOST, ForkServer, ServerRun
from launcher.paths import Paths
from launcher.process import ProcessId, identify
from launcher.status import read_status
from launcher.supervisor import FORK_SERVER, ONE_SHOT, Supervisor
from launcher_testing import (
    ESCAPE,
    IDLE,
    FakeRegistry,
    Service,
    gone,
    read_pid,
    real_sandbox_root,
    run_until,
    run_until_started,
    run_until_state,
    wait_until,
)

Make = Callable[..., Supervisor]


def _ancestors(pid: int) -> list[int]:
    """Parent, grandparent... of ``pid`` (pack03's PID namespace puts an init between)."""
    out = []
    while pid > 1:
        pid = _ppid(pid)
        out.append(pid)
    return out


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def _members(report_file: Path) -> tuple[list[str], list[ProcessId]]:
    dirs = sandbox.report_cgroups(sandbox.read_report(report_file))
    found = []
    for top in dirs:
        for dirpath, _dirs, _files in os.walk(top):
            for pid in Path(dirpath, "cgroup.procs").read_text().split():
                if (ident := identify(int(pid))) is not None:
                    found.append(ident)
    return dirs, found


# --- the run handle, against a fake server end ----------------------------------------


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def test_a_run_ends_with_the_servers_exited_event() -> None:
    ours, server = _pair()
    run = ServerRun(ours, os.getpid())
    assert run.poll() is None
    server.send(json.dumps({"event": "exited", "pid": os.getpid(), "returncode": -15}).encode())
    assert run.wait(timeout=5) == -15 and run.poll() == -15
    assert run.fileno() == -1  # the connection is closed once the run is over
    server.close()


def test_a_refusal_keeps_the_sandboxs_reason() -> None:
    ours, server = _pair()
    run = ServerRun(ours, 4_000_000)
    doc = {"event": "exited", "pid": 4_000_000, "returncode": 125, "error": "network: no layer"}
    server.send(json.dumps(doc).encode())
    assert run.wait(timeout=5) == 125
    assert run.error == "network: no layer"
    server.close()


def test_a_run_whose_server_dies_is_lost_and_ends_with_its_process() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        ours, server = _pair()
        run = ServerRun(ours, sleeper.pid)
        server.close()  # the server died without telling how the run ended
        assert run.poll() is None and run.lost  # the plugin itself still runs
        with pytest.raises(subprocess.TimeoutExpired):
            run.wait(timeout=0.1)
        sleeper.kill()
        sleeper.wait()
        assert run.wait(timeout=5) == LOST
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


# --- the supervisor and the real pack03 server ------------------------------------------


def test_plugins_start_through_the_fork_server_and_stop_leaves_nothing(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.served", ESCAPE)  # a child and a grandchild, each after setsid
    sup = make_supervisor(sandbox_root=root)
    assert sup.server is not None, sup.server_error
    server_pid = sup.server.pid
    assert server_pid is not None
    slot = run_until_started(sup, "acme.served")
    assert slot.mode == FORK_SERVER and sup.status_doc()["acme.served"]["mode"] == FORK_SERVER
    assert sup.sandbox_mode()["mode"] == FORK_SERVER
    assert slot.ident is not None and server_pid in _ancestors(slot.ident.pid)  # the server's
    grandchild = read_pid(paths.plugin_data("acme.served") / "grandchild")
    dirs, members = _members(paths.plugin_run("acme.served") / "report.json")
    assert slot.ident in members and grandchild in members
    assert paths.sandbox_socket.exists() and paths.sandbox_server_pidfile.exists()
    sup.close()
    assert [m for m in members if m.alive()] == []
    assert gone(server_pid)
    assert not paths.sandbox_socket.exists() and not paths.sandbox_server_pidfile.exists()
    assert [d for d in dirs if os.path.isdir(d)] == []


def test_a_plugin_exit_arrives_through_the_server(
    make_supervisor: Make, fake_registry: FakeRegistry
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.crash", "import sys; sys.exit(3)")
    sup = make_supervisor(sandbox_root=root, max_restarts=1)
    run_until_state(sup, "acme.crash", status.FAILED)
    slot = sup.slots["acme.crash"]
    assert slot.mode == FORK_SERVER
    assert slot.restarts == 1 and slot.last_exit == 3


def test_without_a_server_plugins_start_one_shot(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    # The passthrough test sandbox has no --serve: the server cannot start.
    fake_registry.add("acme.oneshot", IDLE)
    sup = make_supervisor()
    assert sup.server is None
    mode = sup.sandbox_mode()
    assert mode["mode"] == ONE_SHOT and "--serve exited with status" in mode["error"]
    slot = run_until_started(sup, "acme.oneshot")
    assert slot.mode == ONE_SHOT
    assert read_pid(paths.plugin_data("acme.oneshot") / "pid").alive()
    assert not paths.sandbox_socket.exists()


def test_the_fork_server_can_be_turned_off(
    make_supervisor: Make, fake_registry: FakeRegistry
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.off", IDLE)
    sup = make_supervisor(sandbox_root=root, fork_server=False)
    slot = run_until_started(sup, "acme.off")
    assert sup.server is None and slot.mode == ONE_SHOT


def test_plugins_of_a_killed_server_are_killed_and_restarted(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.orphan", ESCAPE)
    sup = make_supervisor(sandbox_root=root)
    slot = run_until_started(sup, "acme.orphan")
    assert slot.mode == FORK_SERVER
    first = slot.ident
    read_pid(paths.plugin_data("acme.orphan") / "grandchild")
    _dirs, members = _members(paths.plugin_run("acme.orphan") / "report.json")
    assert sup.server is not None and sup.server.pid is not None
    old_server = sup.server.pid
    (paths.plugin_data("acme.orphan") / "grandchild").unlink()
    os.kill(old_server, signal.SIGKILL)
    run_until(
        sup,
        lambda: slot.state == status.RUNNING and slot.ident not in (None, first),
    )
    assert [m for m in members if m.alive()] == []  # the whole old tree, by its report
    assert slot.restarts == 1 and slot.mode == FORK_SERVER
    assert sup.server is not None and sup.server.pid != old_server
    assert sup.server_error == f"fork server pid {old_server} died (status -9)"
    assert read_pid(paths.plugin_data("acme.orphan") / "grandchild").alive()


def test_a_server_left_by_a_killed_supervisor_is_stopped_with_its_plugins(
    make_supervisor: Make, paths: Paths, tmp_path: Path
) -> None:
    root = real_sandbox_root()
    paths.run.mkdir(parents=True, exist_ok=True)
    layout = (paths.plugin_data_root, paths.registry.parent / "packages", paths.reports_root)
    left = ForkServer(
        sys.executable, root, paths.sandbox_socket, paths.sandbox_server_pidfile, 1.0, layout
    )
    left.start(tmp_path / "left.log")
    assert left.proc is not None
    data = paths.plugin_data("acme.left")
    data.mkdir(parents=True)
    os.chown(data, identity.FIRST_ID, identity.FIRST_ID)
    pol = {
        "plugin_id": "acme.left",
        "uid": identity.FIRST_ID,
        "gid": identity.FIRST_ID,
        "granted": [],
        "data_dir": str(data),
        "read_paths": [],
        "limits": {"cpu_seconds": 60, "memory_bytes": 256 << 20, "open_files": 64,
                   "file_size_bytes": 1 << 20, "processes": 16},
        "allow_degraded": True,
    }  # fmt: skip
    with open(os.devnull, "wb") as null:
        report = paths.plugin_run("acme.left") / "report.json"
        report.parent.mkdir(parents=True)
        run = left.run(pol, ["/bin/sleep", "60"], report, null.fileno())
    assert run.ident is not None and run.ident.alive()
    try:
        sup = make_supervisor(sandbox_root=root)  # a new supervisor on the same run dir
        assert not run.ident.alive()
        assert left.proc.poll() == 0  # TERMed: it stopped its run first
        assert sup.server is not None and sup.server.pid != left.proc.pid
    finally:
        left.stop()


def test_the_service_reports_its_sandbox_mode(
    service_factory: Callable[..., Service], fake_registry: FakeRegistry
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.svc", IDLE)
    svc = service_factory(sandbox_root=root)

    def _running() -> dict[str, object] | None:
        doc = read_status(svc.paths.status)
        rec = (doc or {}).get("plugins", {}).get("acme.svc", {})
        return doc if rec.get("state") == status.RUNNING else None

    doc = wait_until(_running, what="acme.svc running")
    assert doc["service"]["sandbox"]["mode"] == FORK_SERVER
    assert doc["plugins"]["acme.svc"]["mode"] == FORK_SERVER
    server_pid = doc["service"]["sandbox"]["server_pid"]
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=30) == 0
    assert gone(server_pid) and not svc.paths.sandbox_socket.exists()


def test_plugins_left_by_a_killed_launcher_and_server_are_killed_at_the_next_start(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.leftover", ESCAPE)
    first = make_supervisor(sandbox_root=root)
    assert run_until_started(first, "acme.leftover").mode == FORK_SERVER
    read_pid(paths.plugin_data("acme.leftover") / "grandchild")
    dirs, members = _members(paths.plugin_run("acme.leftover") / "report.json")
    assert first.server is not None and first.server.proc is not None
    os.kill(first.server.proc.pid, signal.SIGKILL)  # as if both were killed:
    first.server.proc.wait()  # `first` is never asked again
    assert [m for m in members if m.alive()] != []  # the plugin tree outlives its server
    make_supervisor(sandbox_root=root)  # a new launcher on the same run dir
    assert [m for m in members if m.alive()] == []
    assert [d for d in dirs if os.path.isdir(d)] == []
