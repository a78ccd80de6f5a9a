"""The sandbox policy and command line, and runs through the real pack03 sandbox.

The integration tests use pack03's launch.py from the source tree and skip
when it is not there; they check what the launcher asks for and gets (the
report), and that stopping leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from launcher import control, degraded, sandbox, status
from launcher.paths import Paths
from launcher.process import ProcessId, identify
from launcher.registry import read_registry
from launcher.supervisor import Supervisor
from launcher_testing import (
    CRASH,
    ESCAPE,
    IDLE,
    FakeRegistry,
    read_pid,
    real_sandbox_root,
    run_until,
    run_until_started,
    run_until_state,
)

Make = Callable[..., Supervisor]


def test_policy_has_exactly_the_contract_fields(
    fake_registry: FakeRegistry, tmp_path: Path
) -> None:
    pkg = fake_registry.add("acme.pol", granted=["network"])
    fake_registry.doc["plugins"]["acme.pol"]["versions"]["1.0.0"]["manifest"]["permissions"] = [
        "network"
    ]
    fake_registry.write()
    entry = read_registry(fake_registry.path)["acme.pol"]
    pol = sandbox.policy(entry, tmp_path / "d", sandbox.Limits(cpu_seconds=7), 2_000_000_007)
    assert pol == {
        "plugin_id": "acme.pol",
        "uid": 2_000_000_007,
        "gid": 2_000_000_007,
        "granted": ["network"],
        "data_dir": str(tmp_path / "d"),
        "read_paths": [str(pkg.resolve())],
        "limits": {
            "cpu_seconds": 7,
            "memory_bytes": 512 * 1024 * 1024,
            "open_files": 256,
            "file_size_bytes": 64 * 1024 * 1024,
            "processes": 64,
            "cpu_cores": 1.0,
        },
        "allow_degraded": False,
    }


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param("main.py", [sys.executable, "-I", "/p/main.py"], id="python"),
        pytest.param("run.sh", ["/p/run.sh"], id="executable"),
    ],
)
def test_plugin_argv(entry: str, expected: list[str]) -> None:
    assert sandbox.plugin_argv(sys.executable, Path("/p") / entry) == expected


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        pytest.param(None, [], id="no-report"),
        pytest.param({"layers": ["a", "b"]}, ["a", "b"], id="names"),
        pytest.param(
            {"layers": {"landlock": {"active": True}, "seccomp": {"active": False}}},
            ["landlock"],
            id="pack03-shape",
        ),
        pytest.param({"layers": [{"name": "x", "active": False}, {"name": "y"}]}, ["y"], id="objs"),
    ],
)
def test_active_layers(report: dict[str, object] | None, expected: list[str]) -> None:
    assert sandbox.active_layers(report) == expected


def test_command_line_follows_the_contract(tmp_path: Path) -> None:
    cmd = sandbox.SandboxCommand("/py", tmp_path)
    argv = cmd.argv(Path("/p.json"), Path("/r.json"), ["x", "--y"])
    assert argv == [
        "/py",
        "-I",
        "-S",
        str(tmp_path / "sandbox" / "launch.py"),
        "--policy",
        "/p.json",
        "--report",
        "/r.json",
        "--",
        "x",
        "--y",
    ]


# --- the real pack03 sandbox --------------------------------------------------------


def test_real_sandbox_runs_the_plugin_with_its_grants(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.real", IDLE, granted=[])
    sup = make_supervisor(sandbox_root=root)
    run_until_started(sup, "acme.real")
    ident = read_pid(paths.plugin_data("acme.real") / "pid")  # its data dir is writable
    assert ident.alive()
    report_file = paths.plugin_run("acme.real") / "report.json"
    report = json.loads(report_file.read_text())
    assert report["granted"] == []
    assert report["plugin_id"] == "acme.real"
    # Nothing granted: every capability's denial is enforced by some active layer
    # (or the sandbox would have refused, allow_degraded being false).
    assert set(report["enforced"]) == {"fs-read", "fs-write", "gpu", "io", "network"}
    assert all(report["enforced"].values())
    doc = sup.status_doc()["acme.real"]
    assert doc["layers"] and "environment" in doc["layers"]


def test_real_sandbox_accepts_the_degraded_allowance_and_reports_it(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.deg", IDLE)
    degraded.set_allowed(paths.degraded, paths.degraded_lock, paths.audit_log, "acme.deg", True)
    sup = make_supervisor(sandbox_root=root)
    run_until_started(sup, "acme.deg")
    policy = json.loads((paths.plugin_run("acme.deg") / "policy.json").read_text())
    assert policy["allow_degraded"] is True
    report_file = paths.plugin_run("acme.deg") / "report.json"
    report = json.loads(run_until(sup, lambda: report_file.is_file() and report_file.read_text()))
    assert report["allow_degraded"] is True
    # Whatever this host could not enforce is listed, and list/status show the same.
    doc = sup.status_doc()["acme.deg"]
    assert doc["allow_degraded"] is True
    assert doc["degraded"] == report["degraded"]
    unenforced = {cap for cap, layers in report["enforced"].items() if not layers}
    assert all(any(g.startswith(f"{cap}:") for g in report["degraded"]) for cap in unenforced)


def _members(dirs: list[str]) -> list[ProcessId]:
    """Every process in the run's cgroups (and their sub-cgroups), with its identity."""
    found: list[ProcessId] = []
    for top in dirs:
        for dirpath, _dirs, _files in os.walk(top):
            with contextlib.suppress(OSError):
                for pid in Path(dirpath, "cgroup.procs").read_text().split():
                    if (ident := identify(int(pid))) is not None:
                        found.append(ident)
    return found


@pytest.mark.parametrize("how", ["disable", "remove", "operator-stop", "service-stop", "revoke"])
def test_real_sandbox_stop_leaves_no_process_of_the_plugin(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths, how: str
) -> None:
    root = real_sandbox_root()
    # A child and a grandchild, each after setsid.
    fake_registry.add("acme.escape", ESCAPE, granted=["network"] if how == "revoke" else None)
    sup = make_supervisor(sandbox_root=root)
    run_until_started(sup, "acme.escape")
    grandchild = read_pid(paths.plugin_data("acme.escape") / "grandchild")
    report = json.loads((paths.plugin_run("acme.escape") / "report.json").read_text())
    dirs = sandbox.report_cgroups(report)
    members = _members(dirs)
    main = sup.slots["acme.escape"].ident
    assert main in members and grandchild in members and len(members) >= 3
    if how == "disable":
        fake_registry.set("acme.escape", enabled=False)
        run_until_state(sup, "acme.escape", status.DISABLED)
    elif how == "remove":
        fake_registry.remove("acme.escape")
        run_until(sup, lambda: "acme.escape" not in sup.slots)
    elif how == "operator-stop":
        control.request(paths.control, paths.control_lock, "acme.escape", start=False)
        run_until_state(sup, "acme.escape", status.HELD)
    elif how == "revoke":  # a grant change: the old run goes, a new one has the new policy
        fake_registry.set("acme.escape", granted=[])
        run_until(sup, lambda: (s := sup.slots["acme.escape"]).state == status.RUNNING
                  and s.ident != main and s.entry.granted == ())  # fmt: skip
        new = json.loads(
            run_until(
                sup,
                lambda: (
                    (r := paths.plugin_run("acme.escape") / "report.json").is_file()
                    and r.read_text()
                ),
            )
        )
        assert new["granted"] == [] and new["enforced"]["network"]
    else:
        sup.close()
    assert [m for m in members if m.alive()] == []
    assert [d for d in dirs if os.path.isdir(d)] == []


def test_real_sandbox_crashing_plugin_backs_off_then_fails(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    root = real_sandbox_root()
    fake_registry.add("acme.crash", CRASH)
    sup = make_supervisor(sandbox_root=root, max_restarts=2)
    run_until_state(sup, "acme.crash", status.FAILED)
    slot = sup.slots["acme.crash"]
    assert slot.restarts == 2 and slot.last_exit == 3  # the plugin's own status, through exec
    assert "gave up after 2 restart(s)" in (slot.reason or "")
    assert paths.plugin_log("acme.crash").read_text().count("] start acme.crash") == 3
