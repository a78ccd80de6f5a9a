"""The attack plugin against a real sandbox: each forbidden action denied or contained."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Listener, Probe, Sandbox

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root, like CI")

MiB = 1024 * 1024


def _network_layers(box: Sandbox) -> list[str]:
    return ["bwrap"] if box.backend == "bwrap" else ["network-namespace"]


def test_tcp_to_local_listener_is_denied_without_network(
    sandbox: Sandbox, listener: Listener, probe: Probe
) -> None:
    probe.require(*_network_layers(sandbox))
    res = sandbox.attack_run("tcp", "127.0.0.1", str(listener.port))
    assert res.outcome["outcome"] == "denied", res.outcome
    assert res.report["enforced"]["network"], res.report["layers"]
    time.sleep(0.3)
    assert b"attack-tcp" not in listener.received


def test_udp_send_is_denied_without_network(
    sandbox: Sandbox, listener: Listener, probe: Probe
) -> None:
    probe.require(*_network_layers(sandbox))
    res = sandbox.attack_run("udp", "127.0.0.1", str(listener.udp_port))
    assert res.outcome["outcome"] == "denied", res.outcome
    time.sleep(0.3)
    assert b"attack-udp" not in listener.received


def test_granted_network_reaches_the_local_listener(sandbox: Sandbox, listener: Listener) -> None:
    res = sandbox.attack_run("tcp", "127.0.0.1", str(listener.port), granted=["network"])
    assert res.outcome["outcome"] == "allowed", res.outcome
    deadline = time.monotonic() + 5
    while b"attack-tcp" not in listener.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b"attack-tcp" in listener.received
    assert "network" not in res.report["enforced"]


def test_seccomp_alone_denies_inet_sockets(native: Sandbox, probe: Probe) -> None:
    """The second layer: even with the namespace, socket(AF_INET) itself fails."""
    probe.require("seccomp")
    res = native.attack_run("udp", "127.0.0.1", "9")
    assert res.outcome["outcome"] == "denied"
    assert "Permission denied" in res.outcome["error"]
    assert res.report["layers"]["seccomp"]["active"]


def test_host_unix_socket_is_unreachable_without_network(
    sandbox: Sandbox, probe: Probe, unix_listener: Path
) -> None:
    """The network namespace does not hide pathname sockets; seccomp (or bwrap) must."""
    probe.require("seccomp" if sandbox.backend == "native" else "bwrap")
    res = sandbox.attack_run("unix", str(unix_listener))
    assert res.outcome["outcome"] == "denied", res.outcome


def test_granted_network_does_not_show_host_unix_sockets_natively(
    native: Sandbox, unix_listener: Path
) -> None:
    """Landlock cannot restrict connect() on pathname sockets, but the plugin's minimal root
    holds no host socket: `network` opens the network, not the host's daemons."""
    res = native.attack_run("unix", str(unix_listener), granted=["network"])
    assert res.outcome["outcome"] == "denied", res.outcome
    assert "No such file or directory" in res.outcome["error"]


def test_own_data_dir_is_writable(sandbox: Sandbox) -> None:
    target = sandbox.data_dir / "state.txt"
    res = sandbox.attack_run("write", str(target))
    assert res.outcome["outcome"] == "allowed", res.outcome
    assert target.read_text() == "attack"


def test_write_outside_data_dir_is_denied(sandbox: Sandbox, probe: Probe) -> None:
    probe.require("landlock" if sandbox.backend == "native" else "bwrap")
    target = sandbox.tmp / "outside.txt"
    res = sandbox.attack_run("write", str(target))
    assert not target.exists()
    # bwrap gives the plugin a private /tmp: the write may "succeed" there, never here.
    if sandbox.backend == "native":
        assert res.outcome["outcome"] == "denied", res.outcome


@pytest.mark.parametrize(
    "where", [pytest.param("tmp", id="sibling-file"), pytest.param("etc", id="system-file")]
)
def test_read_of_a_file_not_given_is_denied(sandbox: Sandbox, probe: Probe, where: str) -> None:
    probe.require("landlock" if sandbox.backend == "native" else "bwrap")
    if where == "tmp":
        secret = sandbox.tmp / "secret.txt"
        secret.write_text("s3cret")
        target = str(secret)
    else:
        target = "/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/fstab"
    res = sandbox.attack_run("read", target)
    assert res.outcome["outcome"] == "denied", res.outcome


def test_granted_fs_read_reads_a_host_file(sandbox: Sandbox) -> None:
    """fs-read: the host's files, as far as the plugin's own uid may read them (/tmp is
    private in every mode, so the file is one of /etc, denied without the grant)."""
    target = "/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/fstab"
    res = sandbox.attack_run("read", target, granted=["fs-read"])
    assert res.outcome == {"outcome": "allowed", "data": Path(target).read_text()}


def test_granted_fs_write_writes_outside_the_data_dir(
    sandbox: Sandbox, plugin_owned_dir: Path
) -> None:
    """fs-write: wherever the plugin's uid may write on the host (here: a dir it owns in
    /var/tmp); root-owned files stay out of reach (test_identity)."""
    target = plugin_owned_dir / "outside.txt"
    denied = sandbox.attack_run("write", str(target))
    assert denied.outcome["outcome"] == "denied" and not target.exists()
    res = sandbox.attack_run("write", str(target), granted=["fs-write"])
    assert res.outcome["outcome"] == "allowed", res.outcome
    assert target.read_text() == "attack"


def test_serial_device_is_hidden_without_io(sandbox: Sandbox, probe: Probe) -> None:
    probe.require("landlock" if sandbox.backend == "native" else "bwrap")
    devices = sorted(d for d in os.listdir("/dev") if d.startswith(("ttyS", "ttyUSB", "ttyACM")))
    if not devices:
        pytest.skip("no serial device on this host to hide")
    res = sandbox.attack_run("open-device", f"/dev/{devices[0]}", granted=["fs-read"])
    assert res.outcome["outcome"] == "denied", res.outcome
    if sandbox.backend == "bwrap":  # README, Known limits: the host node's mode applies
        return
    granted = sandbox.attack_run("open-device", f"/dev/{devices[0]}", granted=["io"])
    assert granted.outcome["outcome"] == "allowed", granted.outcome


@pytest.mark.parametrize(
    "granted", [pytest.param([], id="nothing"), pytest.param(["fs-write"], id="even-fs-write")]
)
def test_limits_cannot_be_raised(sandbox: Sandbox, granted: list[str]) -> None:
    """Neither rlimits nor the cgroup's pids.max: /sys stays read-only even with fs-write."""
    res = sandbox.attack_run("raise-limits", granted=granted)
    out = res.outcome
    assert out["outcome"] == "denied", out["results"]
    assert all(v.startswith("denied") for v in out["results"].values())
    # Root inside, but without a single capability to use.
    assert int(out["caps"]["CapEff"], 16) == 0
    assert int(out["caps"]["CapPrm"], 16) == 0
    if sandbox.backend == "native":
        assert int(out["caps"]["CapBnd"], 16) == 0


def test_memory_far_past_the_limit_is_contained(sandbox: Sandbox) -> None:
    res = sandbox.attack_run("memory", str(2048 * MiB), memory_bytes=256 * MiB)
    if res.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):  # the cgroup's OOM killer
        assert res.report["contained"]["memory"]
        return
    out = res.outcome
    assert out["outcome"] == "denied", out
    assert out["allocated"] < 256 * MiB


def test_fork_without_bound_is_stopped_and_killed_with_the_tree(
    sandbox: Sandbox, probe: Probe
) -> None:
    probe.require("cgroup")
    res = sandbox.attack_run("fork", "200", processes=16)
    out = res.outcome
    assert out["outcome"] == "denied", out
    assert out["forked"] < 16
    assert res.report["contained"]["processes"]
    killed = sandbox.kill_tree(res.pid)
    # Both backends: the pid namespace dies with the plugin and takes the children along
    # (and the server kills what its cgroups still hold when the main process exits).
    assert killed["killed"] == []
    assert killed["left"] == []


def test_cpu_spin_is_stopped(sandbox: Sandbox) -> None:
    started = time.monotonic()
    res = sandbox.attack_run("spin", cpu_seconds=1)
    stopped_by = {-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL}
    assert res.returncode in stopped_by, (res.returncode, res.stderr)
    assert time.monotonic() - started < 30  # the limit, not the test's timeout, stopped it


def test_double_fork_setsid_escape_is_killed_with_the_tree(sandbox: Sandbox, probe: Probe) -> None:
    """A double-forked, setsid grandchild dies with the plugin: its pid namespace ends when
    the plugin does (and its cgroup is there for --kill-tree). Judged on the host: no
    process is left in the run's cgroups."""
    probe.require("cgroup")
    res = sandbox.attack_run("escape")
    assert res.returncode == 0, res.stderr
    assert res.report["contained"]["tree-kill"]
    assert int(res.outcome["pid"]) != res.report["pid"]  # a pid of the namespace
    dirs = res.report["cgroup"]["dirs"]
    from sandbox import cgroups

    deadline = time.monotonic() + 5
    while cgroups.members(dirs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert cgroups.members(dirs) == []
    assert sandbox.kill_tree(res.pid)["left"] == []


def test_signal_to_a_process_outside_is_denied(
    sandbox: Sandbox, probe: Probe, outside_process: subprocess.Popen[bytes]
) -> None:
    if sandbox.backend == "native":
        probe.require("landlock-scope")
    res = sandbox.attack_run("signal", str(outside_process.pid))
    assert res.outcome["outcome"] == "denied", res.outcome
    assert outside_process.poll() is None
    assert "pid-namespace" in res.report["contained"]["signals"]
    assert "user" in res.report["contained"]["signals"]


def test_ptrace_of_a_process_outside_is_denied(
    sandbox: Sandbox, probe: Probe, outside_process: subprocess.Popen[bytes]
) -> None:
    """Root without CAP_SYS_PTRACE may still trace other root processes: a layer must stop it."""
    probe.require("landlock" if sandbox.backend == "native" else "bwrap")
    res = sandbox.attack_run("ptrace", str(outside_process.pid))
    assert res.outcome["outcome"] == "denied", res.outcome
    assert outside_process.poll() is None


def test_environment_is_the_allow_list(sandbox: Sandbox) -> None:
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    os.environ["AURORA_TEST_SECRET"] = "leak"
    try:
        res = sandbox.run([sys.executable, "-I", "-c", code])
    finally:
        del os.environ["AURORA_TEST_SECRET"]
    env = res.outcome
    assert "AURORA_TEST_SECRET" not in env
    assert env["HOME"] == str(sandbox.data_dir)
    assert env["TMPDIR"].startswith(str(sandbox.data_dir))
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"


def test_no_fd_above_2_is_inherited(sandbox: Sandbox) -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        code = "import json, os; print(json.dumps({'fds': sorted(os.listdir('/proc/self/fd'))}))"
        res = sandbox.run([sys.executable, "-I", "-c", code])
    finally:
        os.close(r)
        os.close(w)
    fds = [int(f) for f in res.outcome["fds"]]
    assert [f for f in fds if f > 3] == []  # 3 is listdir's own


def test_no_process_is_left_after_a_run(sandbox: Sandbox, probe: Probe) -> None:
    probe.require("cgroup")
    res = sandbox.attack_run("fork", "3")
    assert res.outcome["forked"] == 3
    dirs = res.report["cgroup"]["dirs"]
    sandbox.kill_tree(res.pid)
    assert not any(os.path.exists(d) for d in dirs)
