"""ENOSPC and inode exhaustion at every write of stage, install, uninstall and seal (as root,
like CI; pack05's plugin commands have theirs in its tests/test_faults.py).

A newcomer's guide:

* The home and the packs directory live on a small tmpfs (``SmallDisk``), mounted and
  unmounted by the test. The baseline home is built once and copied in place for each
  size (the paths state.json records stay true).
* For k = 0, 1, 2, ... pages (or inodes) the disk is filled so that exactly k are free and
  the command runs; each k makes a later write the first to fail, until the command
  succeeds. On tmpfs every file takes whole pages, so a page is the unit in which a write
  can fail (a byte sweep would repeat each page-sized outcome 4096 times).
* ``check`` makes the three assertions of tests/test_faults.py: the state is the old one
  (the command reported failure, named the file, and changed nothing) or the new one
  (it succeeded), never neither, also after the next command settled what was left;
  every intent in audit.log has its outcome and every outcome its intent, and the
  command's success outcome is there exactly when its change took effect; no traceback.
* uninstall works on a full disk (the README promises it): at every k, it succeeds.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aurora_testing import Env, Result, mount_tmpfs, unmount
from test_faults_kill import SCENARIOS, Scenario, audit_records, check_audit, observe

PAGE = 4096


class SmallDisk:
    """A tmpfs of ``size`` bytes and ``inodes`` inodes; ``fill`` leaves exactly ``free``
    bytes or ``inodes`` inodes available to the command."""

    def __init__(self, root: Path, size: int, inodes: int) -> None:
        self.root = root
        mount_tmpfs(root, f"size={size},nr_inodes={inodes}")
        self.fillers = root / ".fill"
        self.fillers.mkdir()

    def available(self) -> tuple[int, int]:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize, st.f_favail

    def fill(self, free: int | None = None, inodes: int | None = None) -> None:
        n = len(os.listdir(self.fillers))
        if inodes is not None:
            while self.available()[1] > inodes:
                n += 1
                (self.fillers / f"i{n}").touch()
        if free is not None and self.available()[0] > free:
            fd = os.open(self.fillers / "space", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.available()[0] - free)
            finally:
                os.close(fd)
        bytes_free, inodes_free = self.available()
        assert free is None or bytes_free == free, (bytes_free, free)
        assert inodes is None or inodes_free == inodes, (inodes_free, inodes)

    def unfill(self) -> None:
        shutil.rmtree(self.fillers)
        self.fillers.mkdir()

    def unmount(self) -> None:
        unmount(self.root)


@pytest.fixture
def disk(env: Env, tmp_path: Path) -> Iterator[SmallDisk]:
    """``env``'s home and packs on a 6 MiB tmpfs of 600 inodes."""
    small = SmallDisk(tmp_path / "small", 6 << 20, 600)
    env.home = small.root / "home"
    env.packs_dir = env.make_pack.packs_dir = small.root / "packs"
    env.packs_dir.mkdir()
    try:
        yield small
    finally:
        small.unmount()


class Baseline:
    """The scenario's starting home and packs, saved beside the disk (not on it)."""

    def __init__(self, env: Env, scenario: Scenario, saved: Path) -> None:
        self.env, self.saved = env, saved
        scenario.build(env)
        shutil.copytree(env.home, saved / "home", symlinks=True)
        shutil.copytree(env.packs_dir, saved / "packs", symlinks=True)

    def restore(self) -> None:
        for name, target in (("home", self.env.home), ("packs", self.env.packs_dir)):
            shutil.rmtree(target)
            shutil.copytree(self.saved / name, target, symlinks=True)


def _records(env: Env, pack_id: str) -> dict[str, Any]:
    """observe() without what only the next command's recovery tidies (dot-names)."""
    seen: dict[str, Any] = observe(env, pack_id)
    for key in ("copies", "staged_copies"):
        seen[key] = [name for name in seen[key] if not str(name).startswith(".")]
    return seen


def sweep(
    env: Env,
    disk: SmallDisk,
    tmp_path: Path,
    name: str,
    fill: Callable[[int], None],
    limit: int,
    every_k_succeeds: bool = False,
) -> dict[str, int]:
    """Run the scenario with k = 0, 1, ... units free until it succeeds (or ``limit``,
    for a command that must succeed at every k); check each run."""
    scenario = SCENARIOS[name]
    base = Baseline(env, scenario, tmp_path / "saved")
    old = observe(env, scenario.pack)
    done = env.run(*scenario.argv)
    assert done.code == 0, done.err
    new = observe(env, scenario.pack)
    seen: dict[str, int] = {}
    for k in range(limit):
        base.restore()
        skip = len(audit_records(env))
        fill(k)
        result: Result = env.run(*scenario.argv)
        disk.unfill()
        assert "Traceback" not in result.err, (k, result.err)
        if result.code == 0:
            assert _records(env, scenario.pack) == new, k
        else:
            assert result.code == 1, (k, result.code, result.err)  # an I/O failure, not bad input
            assert str(disk.root) in result.err, (k, "the message names the file", result.err)
            assert _records(env, scenario.pack) == old, (k, "a failed command changed state")
        settled = env.run("status", "--json")  # the next command, with space again
        assert settled.code == 0 and "Traceback" not in settled.err, (k, settled.err)
        found = "new" if result.code == 0 else "old"
        assert observe(env, scenario.pack) == (new if found == "new" else old), k
        check_audit(env, skip, scenario.op, took_effect=found == "new")
        seen[found] = seen.get(found, 0) + 1
        if found == "new" and not every_k_succeeds:
            break
    else:
        assert every_k_succeeds, f"{name} did not succeed with {limit} units free"
    return seen


# Commands and how many pages / inodes each may need at most (a bound, not a result).
GROWING = ["stage", "install", "seal"]


@pytest.mark.parametrize("name", GROWING)
def test_enospc_at_every_write_leaves_the_old_state_or_the_new(
    env: Env, disk: SmallDisk, tmp_path: Path, name: str
) -> None:
    seen = sweep(env, disk, tmp_path, name, lambda k: disk.fill(free=k * PAGE), 200)
    assert seen.get("old") and seen.get("new"), seen  # the sweep crossed the boundary


@pytest.mark.parametrize("name", GROWING)
def test_no_free_inode_at_every_creation_leaves_the_old_state_or_the_new(
    env: Env, disk: SmallDisk, tmp_path: Path, name: str
) -> None:
    seen = sweep(env, disk, tmp_path, name, lambda k: disk.fill(inodes=k), 100)
    assert seen.get("old") and seen.get("new"), seen


@pytest.mark.parametrize("name", ["uninstall", "uninstall-purge"])
def test_uninstall_succeeds_at_every_free_size(
    env: Env, disk: SmallDisk, tmp_path: Path, name: str
) -> None:
    # Up to 16 pages: past what its own writes need (state.json twice, two audit records).
    seen = sweep(env, disk, tmp_path, name, lambda k: disk.fill(free=k * PAGE), 16, True)
    assert seen == {"new": 16}, seen


@pytest.mark.parametrize("name", ["uninstall", "uninstall-purge"])
def test_uninstall_succeeds_with_no_free_inode(
    env: Env, disk: SmallDisk, tmp_path: Path, name: str
) -> None:
    seen = sweep(env, disk, tmp_path, name, lambda k: disk.fill(inodes=k), 8, True)
    assert seen == {"new": 8}, seen


def test_uninstall_on_a_full_disk_settles_what_a_dead_command_left_first(
    env: Env, disk: SmallDisk
) -> None:
    # A stage killed after its intent (recorded by hand: a dead pid, no outcome): the next
    # command must record its outcome before it changes anything, on a full disk too.
    SCENARIOS["uninstall"].build(env)
    intent = {"event": "intent", "op": "stage", "pack": "alpha", "intent": "0123456789ab"}
    with open(env.home / "audit.log", "a") as log:
        # pid 2**22 + 1 is above any pid_max: a dead command
        log.write(json.dumps({**intent, "pid": 2**22 + 1, "pid_start_time": 1}) + "\n")
        # audit.log ends on a page boundary: the next record needs a page of its own
        size = log.tell()
        pad = -(size + len('{"event": "padding", "x": ""}\n')) % PAGE
        log.write(json.dumps({"event": "padding", "x": "x" * pad}) + "\n")
    assert (env.home / "audit.log").stat().st_size % PAGE == 0
    skip = len(audit_records(env)) - 2
    disk.fill(free=0)
    result = env.run("uninstall", "--pack", "alpha")
    disk.unfill()
    assert result.code == 0, result.err
    assert env.active("alpha") is None
    late = [r for r in audit_records(env) if r.get("recorded_late")]
    assert [(r["event"], r["intent"]) for r in late] == [("stage-aborted", "0123456789ab")]
    check_audit(env, skip, "uninstall", took_effect=True)
