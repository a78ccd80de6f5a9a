"""A crash (SIGKILL) during stage or install leaves the previous good state usable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from aurora.exitcodes import ExitCode
from aurora.fsutil import CRASH_ENV
from aurora_testing import CLI, Env


def _crash(env: Env, point: str, *argv: str) -> None:
    result = env.cli(*argv, env={**os.environ, CRASH_ENV: point})
    assert result.code == -signal.SIGKILL, (point, result.code, result.err)


def _state_is_valid(env: Env) -> dict[str, object]:
    doc = env.state()  # whole JSON, never half a file
    assert doc["schema"] == "aurora-state-v1"
    return doc


def _no_leftovers(env: Env) -> None:
    for parent in ("staging", "packs"):
        for path in (env.home / parent).glob("*/.*"):
            raise AssertionError(f"leftover {path}")


@pytest.mark.parametrize(
    "point",
    ["stage:copied", "stage:moved-aside", "stage:renamed", "stage:committed", "stage:recorded"],
)
def test_crash_during_restage_keeps_previous_staged_copy(env: Env, point: str) -> None:
    root = env.make_pack("alpha", files={"note.txt": "first"})
    assert env.run("stage", "--pack", "alpha").code == 0
    first = env.state()["packs"]["alpha"]["staged"]["1.0.0"]["digest"]
    (root / "note.txt").write_text("second")
    _crash(env, point, "stage", "--pack", "alpha")
    doc = _state_is_valid(env)
    pending = doc["packs"]["alpha"]["pending"]
    committed = point in ("stage:committed", "stage:recorded")
    assert pending["op"] == "stage" and bool(pending.get("committed")) == committed
    # The next run reports what it cleans and leaves a consistent staged copy.
    status = env.run("status", "--pack", "alpha", "--json")
    assert status.code == 0
    assert status.json["recovered"], status.err
    assert ("committed before it was killed" if committed else "interrupted") in status.err
    _no_leftovers(env)
    record = env.state()["packs"]["alpha"]
    assert record["pending"] is None
    digest = record["staged"]["1.0.0"]["digest"]
    expected = digest if committed else first
    assert digest == expected
    # The restage that took effect has its outcome in audit.log exactly once.
    restaged = [e for e in env.audit() if e["event"] == "stage" and e["digest"] != first]
    assert len(restaged) == (1 if committed else 0), restaged
    # The staged copy on disk is the one state.json describes: install accepts it.
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    assert env.run("verify", "--pack", "alpha").code == 0


def test_crash_during_first_stage_leaves_nothing_staged(env: Env) -> None:
    env.make_pack("alpha")
    _crash(env, "stage:renamed", "stage", "--pack", "alpha")
    result = env.run("stage", "--pack", "alpha", "--json")
    assert result.code == 0
    assert any(
        "not recorded in state.json" in note or "interrupted" in note
        for note in result.json["recovered"]
    )
    assert result.json["result"]["changed"] is True
    _no_leftovers(env)


@pytest.mark.parametrize(
    "point",
    [
        "install:copied",
        "install:placed",
        "install:script-done",
        "install:committed",
        "install:recorded",
    ],
)
def test_crash_during_upgrade_keeps_previous_version(env: Env, point: str) -> None:
    env.make_pack("alpha", "1.0.0")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    env.make_pack("alpha", "2.0.0")
    _crash(env, point, "install", "--pack", "alpha", "--approve")
    _state_is_valid(env)
    status = env.run("status", "--pack", "alpha", "--json")
    assert status.code == 0
    _no_leftovers(env)
    active = env.active("alpha")
    committed = point in ("install:committed", "install:recorded")
    assert active == ("2.0.0" if committed else "1.0.0")
    assert sorted(p.name for p in (env.home / "packs" / "alpha").iterdir()) == [active]
    assert env.run("verify", "--pack", "alpha").code == 0
    # An upgrade that took effect has its install outcome in audit.log exactly once.
    upgrades = [e for e in env.audit() if e["event"] == "install" and e["version"] == "2.0.0"]
    assert len(upgrades) == (1 if committed else 0), upgrades
    if not committed:
        assert status.json["recovered"]
        last = env.state()["packs"]["alpha"]["last_result"]
        assert last["ok"] is False and "interrupted" in last["message"]
        # And the interrupted upgrade can simply be run again.
        assert env.run("install", "--pack", "alpha", "--approve").code == 0
        assert env.active("alpha") == "2.0.0"


@pytest.mark.parametrize("point", ["install:placed", "install:script-done"])
def test_crash_during_reinstall_of_same_version_restores_copy(env: Env, point: str) -> None:
    root = env.make_pack("alpha", "1.0.0", files={"note.txt": "v1"})
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    (root / "note.txt").write_text("v1 again")
    assert env.run("stage", "--pack", "alpha").code == 0
    _crash(env, point, "install", "--pack", "alpha", "--approve")
    assert env.run("status", "--pack", "alpha").code == 0
    assert (env.home / "packs/alpha/1.0.0/note.txt").read_text() == "v1"
    assert env.run("verify", "--pack", "alpha").code == 0


def test_install_script_that_kills_the_installer(env: Env) -> None:
    # A real crash, no hook: install.sh SIGKILLs its parent, the installer.
    env.make_pack("alpha", "1.0.0")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    env.make_pack("alpha", "2.0.0", install="#!/usr/bin/env bash\nkill -9 $PPID\nsleep 5\n")
    result = env.cli("install", "--pack", "alpha", "--approve")
    assert result.code == -signal.SIGKILL
    assert env.cli("status", "--pack", "alpha").code == 0
    assert env.active("alpha") == "1.0.0"
    assert env.cli("verify", "--pack", "alpha").code == 0
    _no_leftovers(env)


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.02, 0.1, 0.25, 0.5])
def test_sigkill_at_arbitrary_moments_of_staging(env: Env, delay: float) -> None:
    # Without hooks: kill a real stage of a bigger pack after `delay` seconds.
    files = {f"blob/{i:03d}.bin": os.urandom(32 * 1024).hex() for i in range(200)}
    root = env.make_pack("alpha", files=files)
    assert env.run("stage", "--pack", "alpha").code == 0
    good = env.state()["packs"]["alpha"]["staged"]["1.0.0"]["digest"]
    (root / "blob" / "000.bin").write_text("changed")
    proc = subprocess.Popen(
        [sys.executable, str(CLI), *env.args("stage", "--pack", "alpha")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert env.run("status", "--pack", "alpha").code == 0
    _no_leftovers(env)
    record = env.state()["packs"]["alpha"]
    assert record["staged"]["1.0.0"]["digest"] in (good, _digest_after_restage(env))
    # Whatever happened, the staged copy matches state.json: install accepts it.
    assert env.run("install", "--pack", "alpha", "--approve").code == 0


def _digest_after_restage(env: Env) -> str:
    record = json.loads((env.home / "state.json").read_text())["packs"]["alpha"]
    digest: str = record["staged"]["1.0.0"]["digest"]
    return digest


def test_status_shows_an_operation_in_progress_as_pending(env: Env) -> None:
    # install.sh runs until the test releases it: no race with a slow machine.
    release = env.home.parent / "release"
    env.make_pack(
        "alpha",
        install=(
            "#!/usr/bin/env bash\n"
            f'for _ in $(seq 600); do [[ -e "{release}" ]] && exit 0; sleep 0.1; done\nexit 1\n'
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, str(CLI), *env.args("install", "--pack", "alpha", "--approve")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (env.home / "state.json").exists():
                pending = env.state()["packs"].get("alpha", {}).get("pending")
                if pending and pending["op"] == "install":
                    break
            time.sleep(0.05)
        status = env.run("status", "--pack", "alpha", "--json")
        assert status.code == 0
        # Another installer is at work: its pending record is shown, not "recovered".
        assert status.json["result"]["pending"]["op"] == "install"
        assert status.json["recovered"] == []
    finally:
        release.touch()
        assert proc.wait(timeout=60) == ExitCode.OK


def test_ctrl_c_during_install_kills_the_script_and_is_cleaned_up(env: Env) -> None:
    env.make_pack("alpha", "1.0.0")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    env.make_pack("alpha", "2.0.0", install="#!/usr/bin/env bash\necho started\nsleep 300\n")
    proc = subprocess.Popen(
        [sys.executable, str(CLI), *env.args("install", "--pack", "alpha", "--approve", "--json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = env.home / "logs" / "alpha" / "install.log"
    deadline = time.monotonic() + 20
    while not (log.exists() and "started" in log.read_text().split("install.sh --install")[-1]):
        assert time.monotonic() < deadline, "install.sh never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED
    assert json.loads(out)["exit"] == 130
    assert _sleepers(env.home) == []
    assert env.run("status", "--pack", "alpha").code == 0
    assert env.active("alpha") == "1.0.0"
    assert env.run("verify", "--pack", "alpha").code == 0
    _no_leftovers(env)


def _sleepers(home: object) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if f"AURORA_HOME={home}".encode() in environ and cmdline.startswith(b"sleep\0300"):
            found.append(int(entry))
    return found
