"""One installer at a time: the lock, its wait, its exit code naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from aurora.exitcodes import ExitCode
from aurora.lock import InstallerLock, read_holder
from aurora_testing import CLI, Env


def test_lock_busy_exit_5_names_holder_pid(env: Env) -> None:
    env.make_pack("alpha")
    with InstallerLock(env.home / "installer.lock", wait=0):
        assert read_holder(env.home / "installer.lock") == os.getpid()
        began = time.monotonic()
        result = env.cli("stage", "--pack", "alpha", "--wait", "0.5")
        assert time.monotonic() - began >= 0.5
    assert result.code == ExitCode.LOCKED
    assert f"pid {os.getpid()}" in result.err
    assert "--wait" in result.err
    assert not (env.home / "staging" / "alpha").exists()


def test_lock_file_is_kept_and_released(env: Env) -> None:
    env.make_pack("alpha")
    assert env.run("stage", "--pack", "alpha").code == 0
    lock = env.home / "installer.lock"
    assert lock.exists()
    with InstallerLock(lock, wait=0):  # released by the finished installer
        pass
    assert lock.exists()


def test_second_installer_waits_then_proceeds_or_gives_up(env: Env) -> None:
    # The first installer holds the lock until the test lets its install.sh finish:
    # no race with a slow machine.
    release = env.home.parent / "release"
    env.make_pack(
        "slow",
        approval=False,
        install=(
            "#!/usr/bin/env bash\n"
            f'for _ in $(seq 600); do [[ -e "{release}" ]] && exit 0; sleep 0.1; done\nexit 1\n'
        ),
    )
    env.make_pack("alpha")
    first = subprocess.Popen(
        [sys.executable, str(CLI), *env.args("install", "--pack", "slow")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while read_holder(env.home / "installer.lock") != first.pid:
            assert time.monotonic() < deadline, "first installer never took the lock"
            time.sleep(0.02)
        busy = env.cli("stage", "--pack", "alpha", "--wait", "0.2", "--json")
        assert busy.code == ExitCode.LOCKED
        assert busy.json["error"]["message"].startswith(f"another installer (pid {first.pid})")
        waiting = subprocess.Popen(
            [sys.executable, str(CLI), *env.args("stage", "--pack", "alpha", "--wait", "60")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # let it reach the lock and wait there (no assertion on time)
        release.touch()
        _, err = waiting.communicate(timeout=90)
        assert waiting.returncode == 0, err
    finally:
        release.touch()
        assert first.wait(timeout=60) == 0
    assert env.active("slow") == "1.0.0"
    assert env.state()["packs"]["alpha"]["staged"]


def test_concurrent_installers_lose_no_update(env: Env) -> None:
    ids = [f"p{i}" for i in range(6)]
    for pack_id in ids:
        env.make_pack(pack_id, approval=False)
    procs = [
        subprocess.Popen(
            [sys.executable, str(CLI), *env.args("install", "--pack", pid, "--wait", "60")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in ids
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * len(ids)
    assert {pid: env.active(pid) for pid in ids} == dict.fromkeys(ids, "1.0.0")
    installs = [e for e in env.audit() if e["event"] == "install"]
    assert sorted(e["pack"] for e in installs) == ids
