"""Per-plugin cgroup v2 trees: a setsid'd grandchild cannot leave its cgroup."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher.cgroup import CgroupTree
from launcher_testing import ESCAPE, cgroup_available, read_pid

pytestmark = pytest.mark.skipif(
    not cgroup_available(), reason="no writable cgroup v2 with cgroup.kill on this host"
)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[CgroupTree]:
    made = CgroupTree.create(str(tmp_path))
    assert made is not None
    yield made
    for name in made.leftovers():
        made.kill(name)
    made.close()


def test_kill_takes_the_whole_tree_and_removes_the_cgroup(tree: CgroupTree, tmp_path: Path) -> None:
    tree.make("acme.escape")
    proc = subprocess.Popen(
        [sys.executable, "-c", ESCAPE],
        cwd=tmp_path,
        env={"AURORA_PLUGIN_DATA": str(tmp_path)},
        start_new_session=True,
        preexec_fn=tree.enter_hook("acme.escape"),
    )
    try:
        grandchild = read_pid(tmp_path / "grandchild")
        assert grandchild.pid in tree.pids("acme.escape")
        assert tree.kill("acme.escape") is True
        proc.wait(timeout=5)
        assert not grandchild.alive()
        assert not tree.path("acme.escape").exists()
    finally:
        proc.kill()
        proc.wait()


def test_leftovers_of_a_killed_supervisor_are_found(tree: CgroupTree, tmp_path: Path) -> None:
    tree.make("acme.a")
    again = CgroupTree.create(str(tmp_path))  # the same run dir: the same base
    assert again is not None and again.base == tree.base
    assert again.leftovers() == ["acme.a"]
