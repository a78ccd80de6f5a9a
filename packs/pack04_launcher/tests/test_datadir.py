"""Ownership: a plugin's data dir is its own; nothing else of the launcher is, nor writable."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from launcher import datadir, identity, status
from launcher.errors import LauncherError
from launcher.paths import Paths
from launcher.supervisor import Supervisor
from launcher_testing import (
    PASSTHROUGH_ROOT,
    REAL_PACK03_ROOT,
    FakeRegistry,
    run_until,
    run_until_started,
)

UID = identity.FIRST_ID + 42


def test_a_new_data_dir_is_the_plugins_0700(tmp_path: Path) -> None:
    d = tmp_path / "plugin-data" / "acme.a"
    assert datadir.plugin_dir(d, UID, UID) == 0
    st = os.stat(d)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, UID, 0o700)


def test_an_old_root_owned_tree_is_re_owned_without_following_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "host-file"
    outside.write_text("root's")
    d = tmp_path / "plugin-data" / "acme.a"
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "sub" / "deeper" / "f").write_text("x")
    (d / "top").write_text("y")
    os.symlink(outside, d / "sub" / "link-out")
    os.symlink(tmp_path, d / "dirlink")  # a symlink to a directory is not walked into
    os.chmod(d, 0o755)
    assert datadir.plugin_dir(d, UID, UID) == 6
    for path in [d, d / "sub", d / "sub" / "deeper", d / "sub" / "deeper" / "f", d / "top"]:
        assert (os.lstat(path).st_uid, os.lstat(path).st_gid) == (UID, UID), path
    for link in (d / "sub" / "link-out", d / "dirlink"):
        assert os.lstat(link).st_uid == UID  # the link itself...
    assert os.stat(outside).st_uid == 0  # ...never what it points at
    assert os.stat(tmp_path).st_uid == 0
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_a_symlinked_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plugin-data").mkdir()
    os.symlink(tmp_path, tmp_path / "plugin-data" / "acme.a")
    with pytest.raises(LauncherError, match="not a plain directory"):
        datadir.plugin_dir(tmp_path / "plugin-data" / "acme.a", UID, UID)
    assert os.stat(tmp_path).st_uid == 0


def _offending(home: Path, own: Path, uid: int) -> list[str]:
    """Everything under ``home`` but ``own`` that uid ``uid`` owns or may write."""
    bad = []
    for dirpath, dirs, files, dfd in os.fwalk(home, follow_symlinks=False):
        for name in (*dirs, *files):
            path = Path(dirpath, name)
            if path == own or own in path.parents:
                continue
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            if st.st_uid == uid or st.st_gid == uid or mode & 0o002:
                bad.append(f"{path} uid {st.st_uid} gid {st.st_gid} mode {mode:04o}")
    return bad


@pytest.mark.parametrize(
    ("root", "fork_server"),
    [
        pytest.param(PASSTHROUGH_ROOT, False, id="passthrough"),
        pytest.param(REAL_PACK03_ROOT, True, id="pack03-fork-server"),
        pytest.param(REAL_PACK03_ROOT, False, id="pack03-one-shot"),
    ],
)
def test_after_a_run_only_the_data_dir_belongs_to_the_plugin(
    make_supervisor: Callable[..., Supervisor],
    fake_registry: FakeRegistry,
    paths: Paths,
    tmp_path: Path,
    root: Path,
    fork_server: bool,
) -> None:
    if not (root / "sandbox" / "launch.py").is_file():
        pytest.skip(f"no sandbox at {root}")
    fake_registry.add("acme.own", "import time\nopen('mine', 'w').write('x')\ntime.sleep(60)\n")
    sup = make_supervisor(sandbox_root=root, fork_server=fork_server)
    run_until_started(sup, "acme.own")
    data = paths.plugin_data("acme.own")
    run_until(sup, lambda: (data / "mine").is_file())
    uid = identity.read_identities(paths.identities)["acme.own"]
    st = os.stat(data)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, uid, 0o700)
    assert _offending(tmp_path, data, uid) == []
    if root == REAL_PACK03_ROOT:  # pack03 ran it as that uid: what it wrote is the uid's
        assert (os.stat(data / "mine").st_uid, os.stat(data / "mine").st_gid) == (uid, uid)
    modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in (paths.run, paths.logs)}
    assert modes == {paths.run: 0o700, paths.logs: 0o700}
    for f in (paths.identities, paths.audit_log, paths.plugin_run("acme.own") / "policy.json"):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    sup.close()
    assert sup.slots["acme.own"].state == status.STOPPED
    assert _offending(tmp_path, data, uid) == []


def test_a_deep_plugin_made_chain_is_re_owned_iteratively_without_following_links(
    tmp_path: Path,
) -> None:
    """adv8 F1: os.fwalk recursed (RecursionError at 1500 deep); every entry visited once."""
    d = tmp_path / "plugin-data" / "acme.a"
    d.mkdir(parents=True)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:  # build 1500 levels through fds: the path would pass PATH_MAX
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            os.close(os.open("f", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
            os.symlink("/", "up", dir_fd=fd)
            down = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = down
        before = len(os.listdir(f"/proc/{os.getpid()}/fd"))
        moved = datadir.plugin_dir(d, UID, UID)
        assert len(os.listdir(f"/proc/{os.getpid()}/fd")) == before  # nothing left open
        assert moved == 1500 * 3
        assert os.fstat(fd).st_uid == UID  # the deepest dir
        assert os.lstat("/").st_uid == 0
    finally:
        os.close(fd)
        # Removed here (GNU rm has no depth limit): pytest's recursive rmtree of old
        # tmp dirs would fail on it in every later run on this machine.
        subprocess.run(["rm", "-rf", "--", str(d)], check=True)
