"""The launcher service as a real process: pidfile, status, signals, cleanup.

Plugins run through the TEST-ONLY passthrough sandbox (no confinement); what
is checked is the service's own lifecycle and that it leaves nothing behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
from launcher import process
from launcher.cgroup import CgroupTree
from launcher.errors import ConfigError
from launcher.service import EXIT_ALREADY_RUNNING, MAX_RUNTIME_ENV, max_runtime_from_env
from launcher.status import read_status
from launcher_testing import (
    DOUBLE_FORK,
    FAST_SERVICE_ARGS,
    IDLE,
    PACK_ROOT,
    FakeRegistry,
    Service,
    ServiceWithGrandchild,
    cgroup_available,
    gone,
    plugin_status_record,
    wait_until,
    wait_until_service_reports,
)

Start = Callable[..., Service]


def test_sigterm_stops_every_plugin_tree_and_cleans_up(
    service_with_escaped_grandchild: ServiceWithGrandchild,
) -> None:
    svc, grandchild = service_with_escaped_grandchild
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=30) == 0
    assert not grandchild.alive()
    assert not svc.paths.pidfile.exists()
    doc = read_status(svc.paths.status)
    assert doc is not None and doc["service"]["running"] is False
    assert doc["plugins"]["acme.escape"]["state"] == "stopped"


def test_heartbeat_and_pidfile_identify_the_service(service_factory: Start) -> None:
    svc = service_factory()
    ident = process.running_from_pidfile(svc.paths.pidfile)
    assert ident is not None and ident.pid == svc.proc.pid
    first = wait_until(lambda: read_status(svc.paths.status), what="status")["service"]
    assert first["pid"] == svc.proc.pid and first["start_time"] == ident.start_time
    later = wait_until(
        lambda: (
            (d := read_status(svc.paths.status))
            and d["service"]["heartbeat_at"] > first["heartbeat_at"]
            and d
        ),
        what="a newer heartbeat",
    )
    assert later["service"]["running"] is True


def test_a_second_service_on_the_same_run_dir_is_refused(service_factory: Start) -> None:
    svc = service_factory()
    second = subprocess.run(
        [sys.executable, "-m", "launcher.service", *FAST_SERVICE_ARGS],
        cwd=PACK_ROOT,
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == EXIT_ALREADY_RUNNING
    assert "another launcher service holds this run dir" in second.stderr
    assert process.running_from_pidfile(svc.paths.pidfile) is not None


def test_without_cgroups_a_double_forked_orphan_is_killed(
    service_factory: Start, fake_registry: FakeRegistry
) -> None:
    fake_registry.add("acme.orphan", DOUBLE_FORK)
    svc = service_factory("--no-cgroup")
    wait_until_service_reports(svc, "acme.orphan")
    path = svc.paths.plugin_data("acme.orphan") / "grandchild"
    pid = int(wait_until(lambda: path.is_file() and path.read_text(), what=str(path)))
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=30) == 0
    # Re-parented to the service (a child subreaper), it is found and killed:
    # at once as an unclaimed orphan, or at the latest when the service stops.
    assert gone(pid)


@pytest.mark.skipif(not cgroup_available(), reason="no writable cgroup v2 with cgroup.kill")
def test_plugins_of_a_killed_service_are_killed_at_next_start(
    service_with_escaped_grandchild: ServiceWithGrandchild, service_factory: Start
) -> None:
    svc, grandchild = service_with_escaped_grandchild
    (svc.paths.plugin_data("acme.escape") / "grandchild").unlink()
    svc.proc.kill()
    svc.proc.wait()
    assert grandchild.alive()  # SIGKILL gave the service no chance to clean up
    tree = CgroupTree.create(str(svc.paths.run))
    assert tree is not None and tree.leftovers() == ["acme.escape"]
    again = service_factory()
    wait_until(lambda: not grandchild.alive(), what="the old grandchild to be killed")
    wait_until_service_reports(again, "acme.escape", what="running again")


def test_layers_reach_the_status_file_without_waiting_for_a_heartbeat(
    service_factory: Start, fake_registry: FakeRegistry
) -> None:
    fake_registry.add("acme.idle", IDLE)
    svc = service_factory("--heartbeat", "60")  # no periodic rewrite within this test
    wait_until(
        lambda: plugin_status_record(svc.paths.status, "acme.idle").get("layers"),
        timeout=20,
        what="the sandbox report's layers in status.json",
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(None, None, id="unset"),
        pytest.param("", None, id="empty"),
        pytest.param("  ", None, id="blank"),
        pytest.param("0", None, id="zero-is-off"),
        pytest.param("30", 30.0, id="seconds"),
        pytest.param(" 2.5 ", 2.5, id="fraction-with-spaces"),
    ],
)
def test_max_runtime_from_the_environment(value: str | None, seconds: float | None) -> None:
    env = {} if value is None else {MAX_RUNTIME_ENV: value}
    assert max_runtime_from_env(env) == seconds


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("ten", id="not-a-number"),
        pytest.param("-5", id="negative"),
        pytest.param("nan", id="nan"),
        pytest.param("inf", id="infinite"),
        pytest.param("30s", id="unit-suffix"),
    ],
)
def test_an_invalid_max_runtime_in_the_environment_is_an_error(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        max_runtime_from_env({MAX_RUNTIME_ENV: value})
    assert str(info.value).startswith(f"{MAX_RUNTIME_ENV}={value!r}: expected a number of seconds")
