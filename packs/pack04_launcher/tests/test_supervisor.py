"""The reconcile loop, on the TEST-ONLY passthrough sandbox (it confines nothing).

These tests check the supervisor's own behaviour: what it starts, restarts,
stops and kills, and what it asks the sandbox for. Confinement itself is
pack03's and is tested with the real sandbox in test_sandbox.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from launcher import control, degraded, identity, status
from launcher.paths import Paths
from launcher.supervisor import Supervisor
from launcher_testing import (
    CLEAN_EXIT,
    CRASH,
    CRASH_TWICE,
    ESCAPE,
    FakeRegistry,
    RunningPlugin,
    cgroup_available,
    read_pid,
    run_until,
    run_until_state,
    slot_state,
)

Make = Callable[..., Supervisor]

requires_cgroup = pytest.mark.skipif(
    not cgroup_available(),
    reason="no writable cgroup v2 with cgroup.kill on this host",
)


def test_enabled_plugin_runs_with_its_data_dir_and_log(
    idle_plugin_running: RunningPlugin, paths: Paths
) -> None:
    ident = idle_plugin_running.ident
    assert ident.alive()
    log_text = paths.plugin_log("acme.idle").read_text()
    assert "start acme.idle 1.0.0" in log_text


def test_disabled_plugin_is_not_started(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.off", enabled=False)
    sup = make_supervisor()
    sup.reconcile()
    sup.reconcile()
    assert slot_state(sup, "acme.off") == status.DISABLED
    assert not paths.plugin_data("acme.off").exists()


@pytest.mark.parametrize("change", ["disable", "remove"])
def test_disabling_or_removing_stops_the_plugin(
    idle_plugin_running: RunningPlugin, fake_registry: FakeRegistry, change: str
) -> None:
    sup, ident = idle_plugin_running
    if change == "disable":
        fake_registry.set("acme.idle", enabled=False)
        run_until_state(sup, "acme.idle", status.DISABLED)
    else:
        fake_registry.remove("acme.idle")
        run_until(sup, lambda: "acme.idle" not in sup.slots)
    assert not ident.alive()


def test_crash_restarts_with_doubling_backoff_then_fails(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.crash", CRASH)
    sup = make_supervisor(max_restarts=4, backoff_base=0.02, backoff_max=0.05)
    delays: list[float] = []

    def _failed() -> bool:
        slot = sup.slots.get("acme.crash")
        if slot and slot.state == status.BACKOFF and len(delays) < slot.restarts:
            delays.append(slot.backoff or 0.0)
        return slot_state(sup, "acme.crash") == status.FAILED

    run_until(sup, _failed)
    slot = sup.slots["acme.crash"]
    assert delays == [0.02, 0.04, 0.05, 0.05]  # doubles, capped at backoff_max
    assert slot.restarts == 4
    assert slot.last_exit == 3
    assert "gave up after 4 restart(s)" in (slot.reason or "")
    # A failed plugin stays down: no new start after more passes.
    log = paths.plugin_log("acme.crash")
    for _ in range(5):
        sup.reconcile()
    assert log.read_text().count("] start acme.crash") == 5  # first run + 4 restarts
    assert sup.status_doc()["acme.crash"]["state"] == "failed"


def test_clean_exit_is_not_restarted(make_supervisor: Make, fake_registry: FakeRegistry) -> None:
    fake_registry.add("acme.once", CLEAN_EXIT)
    sup = make_supervisor()
    run_until_state(sup, "acme.once", status.EXITED)
    for _ in range(3):
        sup.reconcile()
    assert slot_state(sup, "acme.once") == status.EXITED
    assert sup.slots["acme.once"].restarts == 0


def test_sandbox_refusal_is_reported_not_retried(
    make_supervisor: Make, fake_registry: FakeRegistry
) -> None:
    # The passthrough exits 125 for this id, as pack03 does when it refuses.
    fake_registry.add("test.refused")
    sup = make_supervisor()
    run_until_state(sup, "test.refused", status.REFUSED)
    assert "refusing as asked by the test" in (sup.slots["test.refused"].reason or "")
    assert sup.slots["test.refused"].restarts == 0


@pytest.mark.parametrize(
    ("granted", "requested", "effective"),
    [
        pytest.param([], ["network"], [], id="nothing-granted"),
        pytest.param(["network"], ["network"], ["network"], id="network"),
        pytest.param(
            ["fs-read", "gpu", "io"], ["fs-read", "gpu", "io"], ["fs-read", "gpu", "io"], id="three"
        ),
        pytest.param(["fs-write", "network"], ["network"], ["network"], id="granted-not-asked"),
    ],
)
def test_granted_capabilities_are_passed_exactly(
    make_supervisor: Make,
    fake_registry: FakeRegistry,
    paths: Paths,
    granted: list[str],
    requested: list[str],
    effective: list[str],
) -> None:
    pkg = fake_registry.add("acme.caps", granted=granted)
    # What runs is granted ∩ what the active version asks for (registry schema).
    fake_registry.doc["plugins"]["acme.caps"]["versions"]["1.0.0"]["manifest"]["permissions"] = (
        requested
    )
    fake_registry.write()
    sup = make_supervisor()
    run_until_state(sup, "acme.caps", status.RUNNING)
    report_path = paths.plugin_run("acme.caps") / "report.json"
    report = json.loads(run_until(sup, lambda: report_path.is_file() and report_path.read_text()))
    policy = report["policy"]
    assert policy["granted"] == effective
    assert policy["plugin_id"] == "acme.caps"
    assert policy["data_dir"] == str(paths.plugin_data("acme.caps"))
    assert policy["read_paths"] == [str(pkg.resolve())]
    assert policy["allow_degraded"] is False
    assert set(policy["limits"]) == {
        "cpu_seconds",
        "memory_bytes",
        "open_files",
        "file_size_bytes",
        "processes",
        "cpu_cores",
    }
    # Its own host identity, the one recorded for it: never root.
    uid = identity.read_identities(paths.identities)["acme.caps"]
    assert policy["uid"] == policy["gid"] == uid
    assert identity.FIRST_ID <= uid <= identity.LAST_ID


def test_new_grant_restarts_the_plugin(
    idle_plugin_running: RunningPlugin, fake_registry: FakeRegistry, paths: Paths
) -> None:
    sup, first = idle_plugin_running
    (paths.plugin_data("acme.idle") / "pid").unlink()
    fake_registry.doc["plugins"]["acme.idle"]["versions"]["1.0.0"]["manifest"]["permissions"] = [
        "network"
    ]
    fake_registry.set("acme.idle", granted=["network"])
    run_until(sup, lambda: not first.alive() and slot_state(sup, "acme.idle") == status.RUNNING)
    second = read_pid(paths.plugin_data("acme.idle") / "pid")
    assert second != first
    policy = json.loads((paths.plugin_run("acme.idle") / "policy.json").read_text())
    assert policy["granted"] == ["network"]


@pytest.mark.parametrize(
    "use_cgroup",
    [
        pytest.param(True, id="cgroup", marks=requires_cgroup),
        pytest.param(False, id="proc-tracking"),
    ],
)
def test_stop_kills_a_grandchild_that_called_setsid(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths, use_cgroup: bool
) -> None:
    fake_registry.add("acme.escape", ESCAPE)
    sup = make_supervisor(use_cgroup=use_cgroup)
    run_until_state(sup, "acme.escape", status.RUNNING)
    grandchild = read_pid(paths.plugin_data("acme.escape") / "grandchild")
    # Let the loop see the tree at least once (the /proc tracker needs a pass).
    sup.reconcile()
    main_pid = sup.slots["acme.escape"].ident
    assert grandchild.alive() and main_pid is not None
    fake_registry.set("acme.escape", enabled=False)
    run_until_state(sup, "acme.escape", status.DISABLED)
    assert not grandchild.alive()
    assert not main_pid.alive()


def test_operator_hold_and_start(idle_plugin_running: RunningPlugin, paths: Paths) -> None:
    sup, ident = idle_plugin_running
    control.request(paths.control, paths.control_lock, "acme.idle", start=False)
    run_until_state(sup, "acme.idle", status.HELD)
    assert not ident.alive()
    control.request(paths.control, paths.control_lock, "acme.idle", start=True)
    run_until_state(sup, "acme.idle", status.RUNNING)


def test_start_request_retries_a_failed_plugin(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.flaky", CRASH_TWICE)
    sup = make_supervisor(max_restarts=1)
    run_until_state(sup, "acme.flaky", status.FAILED)
    # Whatever it needed is fixed now; the operator asks for a start.
    control.request(paths.control, paths.control_lock, "acme.flaky", start=True)
    runs = paths.plugin_data("acme.flaky") / "runs"
    run_until(
        sup, lambda: slot_state(sup, "acme.flaky") == status.RUNNING and runs.read_text() == "3"
    )
    assert sup.slots["acme.flaky"].proc is not None


def test_a_package_changed_since_staging_is_not_run(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    pkg = fake_registry.add("acme.tampered")
    (pkg / "main.py").write_text("import os; os.system('echo pwned > /tmp/x')")
    sup = make_supervisor()
    run_until_state(sup, "acme.tampered", status.BLOCKED)
    assert "changed since it was staged" in (sup.slots["acme.tampered"].reason or "")
    for _ in range(3):
        sup.reconcile()
    assert not paths.plugin_log("acme.tampered").exists()  # never started


def test_invalid_entry_is_blocked_and_others_still_run(
    make_supervisor: Make, fake_registry: FakeRegistry
) -> None:
    fake_registry.add("acme.good")
    fake_registry.add("acme.bad")
    fake_registry.doc["plugins"]["acme.bad"]["versions"]["1.0.0"]["path"] = "../../etc"
    fake_registry.write()
    sup = make_supervisor()
    run_until_state(sup, "acme.good", status.RUNNING)
    assert slot_state(sup, "acme.bad") == status.BLOCKED
    assert "must be relative and stay inside" in (sup.slots["acme.bad"].reason or "")


def test_corrupt_registry_keeps_last_good_view(
    idle_plugin_running: RunningPlugin, fake_registry: FakeRegistry
) -> None:
    sup, ident = idle_plugin_running
    tmp = fake_registry.path.with_suffix(".tmp")
    tmp.write_text("{not json")
    tmp.replace(fake_registry.path)
    sup.reconcile()
    assert sup.registry_error is not None and "not JSON" in sup.registry_error
    assert ident.alive() and slot_state(sup, "acme.idle") == status.RUNNING


def test_missing_sandbox_blocks_instead_of_running_unconfined(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths, tmp_path: Path
) -> None:
    fake_registry.add("acme.idle")
    sup = make_supervisor(sandbox_root=tmp_path / "no-pack03")
    sup.reconcile()
    assert slot_state(sup, "acme.idle") == status.BLOCKED
    assert "launch.py: not found" in (sup.slots["acme.idle"].reason or "")
    assert not (paths.plugin_data("acme.idle") / "pid").exists()


def test_close_leaves_no_process_behind(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    for n in range(3):
        fake_registry.add(f"acme.p{n}", ESCAPE)
    sup = make_supervisor()
    run_until(sup, lambda: all(slot_state(sup, f"acme.p{n}") == status.RUNNING for n in range(3)))
    kids = [read_pid(paths.plugin_data(f"acme.p{n}") / "grandchild") for n in range(3)]
    mains = [sup.slots[f"acme.p{n}"].ident for n in range(3)]
    sup.close()
    assert not any(k.alive() for k in kids)
    assert not any(m.alive() for m in mains if m is not None)
    if sup.cgroups is not None:
        assert not sup.cgroups.base.exists()


def test_a_run_that_cannot_be_prepared_backs_off_and_others_run(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.good")
    fake_registry.add("acme.nodata")
    # Its data dir cannot be created: a file is in the way.
    paths.plugin_data("acme.nodata").parent.mkdir(parents=True)
    paths.plugin_data("acme.nodata").write_text("in the way")
    sup = make_supervisor()
    run_until(
        sup,
        lambda: (
            slot_state(sup, "acme.good") == status.RUNNING
            and slot_state(sup, "acme.nodata") == status.FAILED
        ),
    )
    assert "cannot prepare the run" in (sup.slots["acme.nodata"].reason or "")


def test_a_stable_run_resets_the_crash_count(
    make_supervisor: Make, fake_registry: FakeRegistry
) -> None:
    fake_registry.add("acme.late", "import sys, time\ntime.sleep(0.3)\nsys.exit(4)\n")
    sup = make_supervisor(max_restarts=1, stable_after=0.2)
    run_until(sup, lambda: sup.slots.get("acme.late") and sup.slots["acme.late"].restarts >= 3)
    # Three restarts with a limit of one: each run lasted longer than stable_after.
    assert slot_state(sup, "acme.late") != status.FAILED


def test_degraded_mode_is_the_operators_choice_per_plugin(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    # The passthrough plays a host that cannot enforce one denial for this id.
    fake_registry.add("test.degraded")
    fake_registry.add("acme.idle")
    sup = make_supervisor()
    run_until_state(sup, "test.degraded", status.REFUSED)
    assert "test gap" in (sup.slots["test.degraded"].reason or "")
    policy_file = paths.plugin_run("test.degraded") / "policy.json"
    assert json.loads(policy_file.read_text())["allow_degraded"] is False

    degraded.set_allowed(
        paths.degraded, paths.degraded_lock, paths.audit_log, "test.degraded", True
    )
    # The refused plugin is retried at once with the allowance, and says what is not enforced.
    run_until_state(sup, "test.degraded", status.RUNNING)
    assert json.loads(policy_file.read_text())["allow_degraded"] is True
    doc = run_until(sup, lambda: sup.status_doc()["test.degraded"]["degraded"] and sup.status_doc())
    assert doc["test.degraded"]["allow_degraded"] is True
    assert doc["test.degraded"]["degraded"] == ["network: test gap"]
    # Only that plugin: the other one is asked for full enforcement.
    idle_policy = json.loads((paths.plugin_run("acme.idle") / "policy.json").read_text())
    assert idle_policy["allow_degraded"] is False and doc["acme.idle"]["degraded"] == []

    degraded.set_allowed(
        paths.degraded, paths.degraded_lock, paths.audit_log, "test.degraded", False
    )
    # Withdrawn: the running plugin is restarted without it, and refused again.
    run_until_state(sup, "test.degraded", status.REFUSED)
    assert json.loads(policy_file.read_text())["allow_degraded"] is False


def test_an_unusable_degraded_file_allows_nobody(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("test.degraded")
    degraded.set_allowed(
        paths.degraded, paths.degraded_lock, paths.audit_log, "test.degraded", True
    )
    sup = make_supervisor()
    run_until_state(sup, "test.degraded", status.RUNNING)
    tmp = paths.degraded.with_suffix(".tmp")
    tmp.write_text("{broken")
    tmp.replace(paths.degraded)
    # Fail closed: restarted without the allowance, refused, and the error is reported.
    run_until_state(sup, "test.degraded", status.REFUSED)
    assert sup.degraded_error is not None and "degraded.json" in sup.degraded_error


def test_a_run_past_the_wall_clock_bound_is_stopped_and_backs_off(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.hang", ESCAPE)  # never ends; leaves a setsid grandchild
    sup = make_supervisor(max_runtime=1.0, max_restarts=1, stable_after=60.0)
    run_until_state(sup, "acme.hang", status.RUNNING)
    grandchild = read_pid(paths.plugin_data("acme.hang") / "grandchild")
    (paths.plugin_data("acme.hang") / "grandchild").unlink()
    run_until_state(sup, "acme.hang", status.BACKOFF)
    assert "killed at the wall-clock bound (1s)" in (sup.slots["acme.hang"].reason or "")
    assert not grandchild.alive()  # the whole tree went
    # Restarted, bounded again, and past max_restarts it is failed.
    run_until_state(sup, "acme.hang", status.FAILED)
    assert sup.slots["acme.hang"].restarts == 1
