"""cgroups: a run's directory holds its limits, and killing it leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest
from sandbox import cgroups

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="runs as root, like CI")

PLUGIN = "test.cgroups"


@pytest.fixture
def run_dirs() -> Iterator[list[str]]:
    """Directories created by a test; removed (with anything inside) at teardown."""
    created: list[str] = []
    yield created
    cgroups.kill_dirs(created, grace=0.0)


def _spawn_into(run: cgroups.RunCgroup) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "60"])
    run.join(proc.pid)
    return proc


def test_hierarchies_are_found() -> None:
    found = cgroups.hierarchies()
    if not found:
        pytest.skip("no cgroup hierarchy mounted")
    assert all(os.path.isdir(h.mount) for h in found)
    assert {h.version for h in found} <= {1, 2}


def test_a_run_gets_its_limits_and_its_member(run_dirs: list[str]) -> None:
    run = cgroups.create_run(PLUGIN, 4_000_000, 64 * 1024 * 1024, 8)
    run_dirs.extend(run.dirs)
    if not run.dirs:
        pytest.skip(f"no writable cgroup here: {run.problems}")
    assert all(d.endswith(f"/{PLUGIN}/run-4000000") for d in run.dirs)
    if run.pids:
        with open(run.pids) as fh:
            assert fh.read().strip() == "8"
    if run.memory:
        with open(run.memory) as fh:
            assert int(fh.read()) == 64 * 1024 * 1024
    proc = _spawn_into(run)
    try:
        assert proc.pid in cgroups.members(run.dirs)
        assert sorted(cgroups.find_run_dirs(4_000_000)) == sorted(run.dirs)
    finally:
        proc.kill()
        proc.wait()


def test_kill_dirs_kills_every_member_and_removes_the_dirs(run_dirs: list[str]) -> None:
    run = cgroups.create_run(PLUGIN, 4_000_001, None, None)
    run_dirs.extend(run.dirs)
    if not run.dirs:
        pytest.skip(f"no writable cgroup here: {run.problems}")
    procs = [_spawn_into(run) for _ in range(3)]
    left = cgroups.kill_dirs(run.dirs, grace=0.0)
    assert left == []
    for proc in procs:
        assert proc.wait(timeout=10) == -9
    assert not any(os.path.exists(d) for d in run.dirs)


def test_term_first_then_kill(run_dirs: list[str]) -> None:
    run = cgroups.create_run(PLUGIN, 4_000_002, None, None)
    run_dirs.extend(run.dirs)
    if not run.dirs:
        pytest.skip(f"no writable cgroup here: {run.problems}")
    proc = _spawn_into(run)
    started = time.monotonic()
    assert cgroups.kill_dirs(run.dirs, grace=5.0) == []
    assert proc.wait(timeout=10) == -15  # sleep dies of TERM: KILL was not needed
    assert time.monotonic() - started < 5.0


def test_a_dead_runs_leftovers_are_pruned_at_the_next_start(run_dirs: list[str]) -> None:
    stale = cgroups.create_run(PLUGIN, 4_000_003, None, None)  # no such pid: a dead run
    run_dirs.extend(stale.dirs)
    if not stale.dirs:
        pytest.skip(f"no writable cgroup here: {stale.problems}")
    orphan = _spawn_into(stale)  # what an escaped grandchild of that run looks like
    fresh = cgroups.create_run(PLUGIN, os.getpid(), None, None)
    run_dirs.extend(fresh.dirs)
    assert orphan.wait(timeout=10) == -9
    assert not any(os.path.exists(d) for d in stale.dirs)
    assert all(os.path.isdir(d) for d in fresh.dirs)


def test_a_prepared_run_is_limited_only_once_the_policy_is_known(run_dirs: list[str]) -> None:
    """A server's spare: its cgroups exist (and hold it) before its limits do."""
    run = cgroups.prepare_run(cgroups.POOL, 4_000_004, memory=True, pids=True)
    run_dirs.extend(run.dirs)
    if not run.dirs:
        pytest.skip(f"no writable cgroup here: {run.problems}")
    assert all(d.endswith(f"/{cgroups.POOL}/run-4000004") for d in run.dirs)
    assert run.memory is None and run.pids is None
    run.set_limits(32 * 1024 * 1024, 5)
    if run.pids:
        with open(run.pids) as fh:
            assert fh.read().strip() == "5"
    if run.memory:
        with open(run.memory) as fh:
            assert int(fh.read()) == 32 * 1024 * 1024
    assert run.pids or run.memory, run.problems


def test_killing_can_leave_the_empty_dirs_for_later(run_dirs: list[str]) -> None:
    run = cgroups.create_run(PLUGIN, 4_000_005, None, None)
    run_dirs.extend(run.dirs)
    if not run.dirs:
        pytest.skip(f"no writable cgroup here: {run.problems}")
    proc = _spawn_into(run)
    assert cgroups.kill_dirs(run.dirs, grace=0.0, remove=False) == []
    assert proc.wait(timeout=10) == -9
    assert all(os.path.isdir(d) for d in run.dirs)  # nothing in them, still there
    cgroups.remove_dirs(run.dirs)
    assert not any(os.path.exists(d) for d in run.dirs)


def test_pool_pruning_spares_a_spare_that_has_not_moved_in_yet(run_dirs: list[str]) -> None:
    """Spares made at once must not take each other's dirs; a gone server's are removed."""
    waiting = subprocess.Popen(["sleep", "60"])  # alive, not (yet) in its run dirs
    try:
        young = cgroups.prepare_run(cgroups.POOL, waiting.pid, memory=False, pids=True, prune=False)
        gone = cgroups.prepare_run(cgroups.POOL, 4_000_006, memory=False, pids=True, prune=False)
        run_dirs.extend(young.dirs + gone.dirs)
        if not young.dirs:
            pytest.skip(f"no writable cgroup here: {young.problems}")
        cgroups.prune_pool()
        assert all(os.path.isdir(d) for d in young.dirs)
        assert not any(os.path.exists(d) for d in gone.dirs)
    finally:
        waiting.kill()
        waiting.wait()


def test_no_empty_aurora_sandbox_dir_is_left_after_a_run(run_dirs: list[str]) -> None:
    run = cgroups.create_run(PLUGIN, 4_000_004, None, 8)
    run_dirs.extend(run.dirs)
    if not run.dirs:
        pytest.skip(f"no writable cgroup here: {run.problems}")
    bases = [os.path.dirname(os.path.dirname(d)) for d in run.dirs]
    assert all(os.path.basename(b) == cgroups.BASE for b in bases)
    assert cgroups.kill_dirs(run.dirs, grace=0.0) == []
    for base in bases:
        # Gone, unless another run (a concurrent test, a live server) still uses it.
        left = [e.name for e in os.scandir(base) if e.is_dir()] if os.path.isdir(base) else []
        assert not os.path.isdir(base) or left, f"{base} left empty"
