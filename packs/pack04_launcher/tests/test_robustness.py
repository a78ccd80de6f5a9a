"""The supervisor survives what a plugin (or a hostile neighbour) does to its limits."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from launcher_testing import (
    IDLE,
    PACK_ROOT,
    FakeRegistry,
    Service,
    plugin_status_record,
    read_pid,
    wait_until_service_reports,
)


def _limits(pid: int, name: str) -> tuple[str, str]:
    """Soft and hard values of one row of /proc/<pid>/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            soft, hard = line[len(name) :].split()[:2]
            return soft, hard
    raise AssertionError(f"no {name!r} in /proc/{pid}/limits")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(15)
    yield srv
    srv.close()


def test_a_service_started_with_low_soft_limits_raises_them(
    service_factory: Callable[..., Service],
    fake_registry: FakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_registry.write()
    # Up-to-date bytecode first: an interpreter under a 4 KiB limit writes truncated .pyc.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(PACK_ROOT / "launcher")],
                   check=True)  # fmt: skip
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, old[1]))
    try:
        svc = service_factory()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
    assert _limits(svc.proc.pid, "Max file size") == ("unlimited", "unlimited")
    soft, hard = _limits(svc.proc.pid, "Max open files")
    assert soft == hard


def test_with_writes_failing_the_service_keeps_running_and_starting_plugins(
    service_factory: Callable[..., Service],
    fake_registry: FakeRegistry,
    listener: socket.socket,
) -> None:
    fake_registry.add("acme.idle", IDLE)
    svc = service_factory()
    wait_until_service_reports(svc, "acme.idle")
    idle = read_pid(svc.paths.plugin_data("acme.idle") / "pid")
    # Every write of more than one byte now fails with EFBIG: status, logs, policies.
    subprocess.run(["prlimit", f"--pid={svc.proc.pid}", "--fsize=1:unlimited"], check=True)
    port = listener.getsockname()[1]
    fake_registry.add(
        "acme.new",
        f"import socket, time\ns = socket.create_connection(('127.0.0.1', {port}))\n"
        "s.sendall(b'acme.new alive')\ntime.sleep(60)\n",
    )
    time.sleep(1.0)  # passes in which nothing can be written (acme.new's policy neither)
    assert svc.proc.poll() is None and idle.alive()
    subprocess.run(["prlimit", f"--pid={svc.proc.pid}", "--fsize=unlimited:unlimited"], check=True)
    conn, _ = listener.accept()  # retried, not given up on: the host's fault, not its own
    with conn:
        conn.settimeout(10)
        assert conn.recv(64) == b"acme.new alive"
    assert svc.proc.poll() is None and idle.alive()
    wait_until_service_reports(svc, "acme.new", what="the status file written again")
    assert plugin_status_record(svc.paths.status, "acme.idle")["state"] == "running"
    assert os.path.exists(svc.paths.plugin_log("acme.new"))
    log = svc.paths.service_log if svc.paths.service_log.exists() else None
    assert log is None or "Traceback" not in log.read_text()
