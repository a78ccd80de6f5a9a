"""Fault injection: hostile input, corrupted state, SIGKILL, full disks (run as root, like CI).

Every test asserts the same three things (``_check``):
1. the previous good state or the new one, never neither: state.json parses and
   matches its schema, and a command that reported failure changed nothing that
   matters (active versions, installed and staged records);
2. every change that took effect is audited: each outcome record in audit.log
   carries the id of an intent recorded before it;
3. no traceback, ever.

The disk tests mount small tmpfs homes (``small_home``) and unmount them in the
fixture's teardown. Sweep sizes are kept small so the file runs in well under a
minute; see the README "Guarantees" section for which promise each test proves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aurora.fsutil import CRASH_ENV
from aurora_testing import Env, Result, mount_tmpfs, unmount

# -- the three checks ---------------------------------------------------------------------


def _essentials(env: Env) -> dict[str, Any]:
    path = env.home / "state.json"
    if not path.exists():
        return {}
    return {
        pid: (rec.get("active_version"), rec.get("installed"), sorted(rec.get("staged") or {}))
        for pid, rec in json.loads(path.read_text())["packs"].items()
    }


def _check(env: Env, result: Result, before: dict[str, Any] | None = None) -> None:
    assert "Traceback" not in result.err + result.out, result.err
    if (env.home / "state.json").exists():
        doc = json.loads((env.home / "state.json").read_text())
        assert doc["schema"] == "aurora-state-v1"
    if before is not None and result.code != 0:
        assert _essentials(env) == before, "a command that failed changed state"
    intents: set[str] = set()
    path = env.home / "audit.log"
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        record = json.loads(line)  # whole records only
        if record["event"] == "intent":
            intents.add(record["intent"])
        elif "intent" in record:
            assert record["intent"] in intents, f"outcome before its intent: {record}"


def _installed(env: Env, pack_id: str = "alpha") -> None:
    env.make_pack(pack_id, files={"lib/data.txt": "x" * 1000})
    assert env.run("install", "--pack", pack_id, "--approve").code == 0


# -- hostile manifests and pack trees -------------------------------------------------------

BOMB = "".join(
    f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9 if i else ['"x"'] * 9) + "]\n" for i in range(9)
)


def _alias_bomb(root: Path) -> None:
    (root / "manifest.yaml").write_text(BOMB)


def _deep(root: Path) -> None:
    (root / "manifest.yaml").write_text("a: " + "[" * 50000 + "]" * 50000 + "\n")


def _huge(root: Path) -> None:
    text = (root / "manifest.yaml").read_text()
    (root / "manifest.yaml").write_text(text + "#" * (100 * 1024) + "\n")


def _fifo(root: Path) -> None:
    (root / "manifest.yaml").unlink()
    os.mkfifo(root / "manifest.yaml")


def _not_utf8(root: Path) -> None:
    (root / "manifest.yaml").write_bytes(b"pack:\n  id: \xff\xfe\n")


def _symlink_loop(root: Path) -> None:
    os.symlink("loop", root / "loop")


def _bad_file_name(root: Path) -> None:
    (root / os.fsdecode(b"bad\xffname")).write_text("x")


def _duplicate_keys(root: Path) -> None:
    text = (root / "manifest.yaml").read_text()
    (root / "manifest.yaml").write_text(text.replace("pack:\n", "pack:\n  id: x\n", 1))


def _huge_version(root: Path) -> None:  # a number part beyond int()'s 4300-digit limit
    text = (root / "manifest.yaml").read_text()
    (root / "manifest.yaml").write_text(text.replace('"1.0.0"', '"1.' + "9" * 5000 + '"', 1))


HOSTILE = {
    "alias-bomb": _alias_bomb,
    "deep-nesting": _deep,
    "over-64-KiB": _huge,
    "fifo-manifest": _fifo,
    "not-utf8": _not_utf8,
    "symlink-loop": _symlink_loop,
    "non-utf8-file-name": _bad_file_name,
    "duplicate-keys": _duplicate_keys,
    "huge-version": _huge_version,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_pack_is_refused_and_never_breaks_commands_about_others(
    env: Env, kind: str
) -> None:
    env.make_pack("alpha")
    HOSTILE[kind](env.make_pack("evil"))
    validate = env.cli("validate", "--pack", "evil", timeout=20)
    _check(env, validate)
    assert validate.code == 2, (kind, validate.code, validate.err)
    assert "evil" in validate.err
    listed = env.cli("list", "--json", timeout=20)
    _check(env, listed)
    assert listed.code == 0, listed.err
    rows = {row["id"]: row for row in json.loads(listed.out)["result"]}
    assert rows["evil"]["valid"] is False and rows["alpha"]["valid"] is True
    installed = env.cli("install", "--pack", "alpha", "--approve", timeout=30)
    _check(env, installed)
    assert installed.code == 0, installed.err


# -- hostile arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("home", ["", "/", "FILE"])
def test_home_must_be_a_directory_of_its_own(env: Env, tmp_path: Path, home: str) -> None:
    if home == "FILE":
        home = str(tmp_path / "a-file")
        Path(home).write_text("not a home")
    result = env.cli("list", timeout=20)  # a good home works
    assert result.code == 0
    proc = subprocess.run(
        [*_cli(), "status", "--home", home, "--packs-dir", str(env.packs_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--home" in proc.stderr and "Traceback" not in proc.stderr
    assert not (Path("/") / "state.json").exists()


def _cli() -> list[str]:
    import sys

    from aurora_testing import CLI

    return [sys.executable, str(CLI)]


def test_an_id_too_long_for_a_file_name_is_not_found(env: Env) -> None:
    env.make_pack("alpha")
    for command in ("status", "stage", "install", "uninstall", "verify"):
        result = env.run(command, "--pack", "x" * 5000)
        _check(env, result)
        assert result.code == 3, (command, result.err)


# -- corrupted state files --------------------------------------------------------------------


def test_a_missing_state_json_beside_installed_copies_is_an_error_and_removes_nothing(
    env: Env,
) -> None:
    _installed(env)
    (env.home / "state.json").unlink()
    copy = env.home / "packs" / "alpha" / "1.0.0"
    for command in (("list",), ("status",), ("stage", "--pack", "alpha")):
        result = env.cli(*command, timeout=20)
        _check(env, result)
        assert result.code == 1, (command, result.err)
        assert "packs/alpha/1.0.0" in result.err and "state.json.bak" in result.err
        assert copy.is_dir()
    os.rename(env.home / "state.json.bak", env.home / "state.json")
    assert env.run("verify", "--pack", "alpha").code == 0


def test_a_pack_key_that_is_a_path_is_refused_by_the_schema(env: Env, tmp_path: Path) -> None:
    _installed(env)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep")
    doc = env.state()
    doc["packs"]["../../victim"] = doc["packs"]["alpha"]
    (env.home / "state.json").write_text(json.dumps(doc))
    result = env.cli("status", timeout=20)
    _check(env, result)
    assert result.code == 1 and "state.json" in result.err and "victim" in result.err
    assert (victim / "precious").read_text() == "keep"


def test_recovery_never_follows_a_symlink_out_of_the_home(env: Env, tmp_path: Path) -> None:
    _installed(env)
    victim = tmp_path / "victim"
    (victim / "1.0.0").mkdir(parents=True)
    (victim / "1.0.0" / "precious").write_text("keep")
    os.symlink(victim, env.home / "staging" / "elsewhere")
    os.symlink(victim, env.home / "packs" / "other")
    result = env.cli("status", timeout=20)
    _check(env, result)
    assert result.code == 0, result.err
    assert (victim / "1.0.0" / "precious").read_text() == "keep"


@pytest.mark.parametrize(
    "doc",
    [
        {"installed": None},  # active_version without an installed record
        {"staged": {"../x": {"digest": "sha256:" + "0" * 64, "staged_at": "t"}}},
        {"pending": {"op": "format-disk", "version": "1.0.0"}},
    ],
    ids=["installed-null", "staged-key-is-a-path", "unknown-pending-op"],
)
def test_a_wrong_shape_state_record_is_a_clear_error(env: Env, doc: dict[str, Any]) -> None:
    _installed(env)
    state = env.state()
    state["packs"]["alpha"].update(doc)
    (env.home / "state.json").write_text(json.dumps(state))
    before = (env.home / "state.json").read_bytes()
    for command in (("status", "--pack", "alpha"), ("verify", "--pack", "alpha")):
        result = env.cli(*command, timeout=20)
        _check(env, result)
        assert result.code != 0 and "state.json" in result.err, (command, result.err)
    assert (env.home / "state.json").read_bytes() == before  # never "repaired"


# -- audit.log that cannot be written ---------------------------------------------------------


def test_no_change_without_its_audit_record(env: Env) -> None:
    _installed(env)
    env.make_pack("beta")
    audit = env.home / "audit.log"
    os.chmod(audit, 0o444)
    subprocess.run(["chattr", "+i", str(audit)], check=True)
    try:
        before = _essentials(env)
        for command in (
            ("stage", "--pack", "beta"),
            ("install", "--pack", "beta", "--approve"),
            ("uninstall", "--pack", "alpha", "--purge"),
        ):
            result = env.cli(*command, timeout=30)
            _check(env, result, before)
            assert result.code == 1, (command, result.err)
            assert "audit.log" in result.err and "refused before changing anything" in result.err
        assert not (env.home / "staging" / "beta").exists()
        assert (env.home / "packs" / "alpha" / "1.0.0").is_dir()
    finally:
        subprocess.run(["chattr", "-i", str(audit)], check=True)


# -- SIGKILL at each step of uninstall --------------------------------------------------------


@pytest.mark.parametrize("point", ["uninstall:committed", "uninstall:removed"])
def test_a_killed_purge_is_finished_by_the_next_command(env: Env, point: str) -> None:
    _installed(env)
    data = env.home / "data" / "alpha"
    data.mkdir(parents=True, exist_ok=True)
    (data / "db").write_text("user data")
    killed = env.cli(
        "uninstall", "--pack", "alpha", "--purge", env={**os.environ, CRASH_ENV: point}
    )
    assert killed.code == -signal.SIGKILL, killed.err
    assert env.active("alpha") is None  # committed: the uninstall stands
    result = env.cli("status", "--json", timeout=20)
    _check(env, result)
    assert result.code == 0, result.err
    assert not data.exists() and not (env.home / "packs" / "alpha").exists()
    assert env.state()["packs"].get("alpha", {}).get("pending") is None
    assert [e for e in env.audit() if e["event"] == "uninstall"], "the uninstall is audited"


def test_a_killed_seal_leaves_no_temp_that_stage_would_copy(env: Env) -> None:
    root = env.make_pack("alpha", artifacts=[("lib/a.bin", "")], files={"lib/a.bin": "x"})
    (root / ".manifest.yaml.abcd1234.tmp").write_text("half a manifest")  # a killed seal
    assert env.run("stage", "--pack", "alpha").code == 0
    staged = env.home / "staging" / "alpha" / "1.0.0"
    assert not list(staged.glob(".manifest.yaml.*"))
    assert env.run("seal", "--pack", "alpha").code == 0
    assert not list(root.glob(".manifest.yaml.*.tmp"))


# -- full disks ----------------------------------------------------------------------------------


@pytest.fixture
def small_home(env: Env, tmp_path: Path) -> Iterator[Env]:
    """``env`` with its home on a 4 MiB tmpfs of 300 inodes, unmounted afterwards."""
    mount = tmp_path / "small"
    mount_tmpfs(mount, "size=4m,nr_inodes=300")
    env.home = mount / "home"
    try:
        yield env
    finally:
        unmount(mount)


def _fill(path: Path) -> None:
    """Fill the filesystem of ``path`` to the last byte."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def _use_all_inodes(path: Path) -> None:
    n = 0
    try:
        while True:
            (path / f"i{n}").touch()
            n += 1
    except OSError:
        pass


@pytest.mark.parametrize("exhaust", ["bytes", "inodes"])
def test_a_full_disk_fails_cleanly_names_the_file_and_uninstall_still_works(
    small_home: Env, exhaust: str
) -> None:
    env = small_home
    _installed(env)
    env.make_pack("beta", files={f"f{i}.txt": "y" * 4000 for i in range(30)})
    (_fill if exhaust == "bytes" else _use_all_inodes)(env.home.parent)
    before = _essentials(env)
    for command in (("stage", "--pack", "beta"), ("install", "--pack", "beta", "--approve")):
        result = env.cli(*command, timeout=30)
        _check(env, result, before)
        assert result.code == 1, (command, result.code, result.err)
        assert str(env.home) in result.err, result.err  # the message names the file
        assert not (env.home / "staging" / "beta").exists()  # no empty staging/<id>/
    result = env.cli("uninstall", "--pack", "alpha", timeout=30)
    _check(env, result)
    assert result.code == 0, result.err
    assert not (env.home / "packs" / "alpha").exists()
    assert env.active("alpha") is None


# -- lifecycle scripts die with the installer ---------------------------------------------------

SLOW_INSTALL = """\
#!/usr/bin/env bash
set -euo pipefail
[ "${1:-}" = --install ] || exit 0
mkdir -p "$AURORA_PACK_DATA"
( sleep 3; echo late > "$AURORA_PACK_DATA/written-after-the-kill" ) &
echo "$$ $!" > "$AURORA_PACK_DATA/pids"
sleep 30
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_a_killed_installer_takes_its_script_and_what_the_script_started(env: Env) -> None:
    import sys

    from aurora_testing import CLI, wait_for

    env.make_pack("alpha", install=SLOW_INSTALL)
    proc = subprocess.Popen(
        [sys.executable, str(CLI), *env.args("install", "--pack", "alpha", "--approve")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids_file = env.home / "data" / "alpha" / "pids"
    try:
        assert wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2)
        script, background = (int(p) for p in pids_file.read_text().split())
        proc.kill()
        proc.wait()
        assert wait_for(lambda: _gone(script), timeout=5), "install.sh outlived the installer"
        result = env.cli("status", "--json", timeout=20)  # the next run kills the rest
        _check(env, result)
        assert result.code == 0, result.err
        assert _gone(background), "what install.sh started outlived the recovery"
        assert any("left by an interrupted run" in n for n in result.json["recovered"])
        assert env.active("alpha") is None  # the interrupted install is not in force
        assert not (env.home / "data" / "alpha" / "written-after-the-kill").exists()
    finally:
        proc.kill()
        proc.wait()


# -- a pack whose process died; health files of the wrong shape ----------------------------------


def test_status_and_start_notice_a_pack_whose_process_died(env: Env) -> None:
    env.make_pack("svc", service=True, approval=False)
    assert env.run("install", "--pack", "svc").code == 0
    assert env.run("start", "--pack", "svc", "--interval", "0.2").code == 0
    pid = int((env.home / "run" / "svc" / "service.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    from aurora_testing import wait_for

    assert wait_for(lambda: _gone(pid), timeout=5)
    result = env.run("status", "--pack", "svc", "--json")
    _check(env, result)
    runtime = result.json["result"]["runtime"]
    assert runtime["running"] is False and runtime["died"] is True
    assert runtime["health"]["status"] == "not running"  # never "healthy"
    started = env.run("start", "--pack", "svc", "--interval", "0.2", "--json")
    _check(env, started)
    assert started.code == 0, started.err
    assert started.json["result"]["previous_run_died"] is True
    assert env.run("stop", "--pack", "svc").code == 0


def test_a_wrong_shape_health_file_is_reported_and_never_overwritten(env: Env) -> None:
    _installed(env)
    health = env.home / "health" / "alpha.json"
    health.parent.mkdir(parents=True, exist_ok=True)
    health.write_text('{"status": "healthy", "failing_streak": "many"}')
    result = env.run("status", "--pack", "alpha", "--json")
    _check(env, result)
    assert result.code == 0
    shown = result.json["result"]["runtime"]["health"]
    assert shown["status"] == "invalid" and "failing_streak" in shown["problem"]
    checked = env.cli("health", "--pack", "alpha", timeout=20)
    _check(env, checked)
    assert checked.code == 1 and "alpha.json" in checked.err
    assert health.read_text() == '{"status": "healthy", "failing_streak": "many"}'


@pytest.mark.parametrize("command", [("stop",), ("uninstall", "--stop")])
def test_a_running_pack_with_a_damaged_copy_is_stopped_from_its_pidfiles(
    env: Env, command: tuple[str, ...]
) -> None:
    from aurora_testing import wait_for

    env.make_pack("svc", service=True, approval=False)
    assert env.run("install", "--pack", "svc").code == 0
    assert env.run("start", "--pack", "svc", "--interval", "0.2").code == 0
    pid = int((env.home / "run" / "svc" / "service.pid").read_text().split()[0])
    (env.home / "packs" / "svc" / "1.0.0" / "manifest.yaml").unlink()  # the copy is damaged
    result = env.run(*command, "--pack", "svc")
    _check(env, result)
    assert result.code == 0, result.err
    assert wait_for(lambda: _gone(pid), timeout=10), "the pack still runs"
    assert [e for e in env.audit() if e["event"] == "stop" and e.get("via") == "pidfiles"]


@pytest.mark.parametrize(
    ("command", "point"),
    [
        ("start", "start:script-done"),
        ("start", "start:starting-saved"),
        ("stop", "stop:script-done"),
    ],
)
def test_a_killed_start_or_stop_is_reported_and_never_left_starting(
    env: Env, command: str, point: str
) -> None:
    env.make_pack("svc", service=True, approval=False)
    assert env.run("install", "--pack", "svc").code == 0
    if command == "stop":
        assert env.run("start", "--pack", "svc", "--interval", "0.2").code == 0
    killed = env.cli(command, "--pack", "svc", env={**os.environ, CRASH_ENV: point})
    assert killed.code == -signal.SIGKILL, killed.err
    result = env.cli("status", "--pack", "svc", "--json", timeout=20)
    _check(env, result)
    assert result.code == 0, result.err
    assert any("interrupted" in n for n in result.json["recovered"]), result.err
    status = result.json["result"]
    assert status["pending"] is None
    assert (env.state()["packs"]["svc"]["runtime"] or {}).get("state") != "starting"
    assert status["runtime"]["health"] is None or status["runtime"]["health"]["status"] not in (
        "starting",
        "healthy" if not status["runtime"]["running"] else "-",
    )
    assert env.run("stop", "--pack", "svc").code == 0  # a way out, whatever was left


def test_a_failed_stage_leaves_no_empty_directory_and_no_stub_record(env: Env) -> None:
    env.make_pack("alpha", artifacts=[("a.bin", "0" * 64)], files={"a.bin": "x"})
    result = env.run("stage", "--pack", "alpha")
    _check(env, result)
    assert result.code == 4 and "hash mismatch" in result.err
    assert not (env.home / "staging" / "alpha").exists()
    assert "alpha" not in env.state()["packs"]


def test_each_missing_manifest_key_is_listed_once(env: Env) -> None:
    root = env.make_pack("alpha")
    text = (root / "manifest.yaml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith(("  name:", "  description:"))]
    (root / "manifest.yaml").write_text("\n".join(lines) + "\n")
    result = env.run("validate", "--pack", "alpha")
    _check(env, result)
    assert result.code == 2
    assert result.err.count("pack.name: required") == 1, result.err
    assert result.err.count("pack.description: required") == 1, result.err


# Free space left before the command: each size makes a different write the first to fail
# (the intent record, the staged copy, its tree record, state.json, the installed copy ...).
FREE_BYTES = [0, 4096, 16384, 65536, 131072, 262144, 1 << 20]


def test_enospc_swept_over_install_leaves_old_or_new_state(small_home: Env) -> None:
    env = small_home
    _installed(env)
    env.make_pack("beta", files={f"f{i}.txt": "y" * 6000 for i in range(40)})
    _fill(env.home.parent)
    filler = env.home.parent / "filler"
    full_size = filler.stat().st_size
    outcomes = set()
    for free in FREE_BYTES:
        os.truncate(filler, max(0, full_size - free))
        before = _essentials(env)
        result = env.cli("install", "--pack", "beta", "--approve", timeout=60)
        _check(env, result, before)
        assert result.code in (0, 1), (free, result.code, result.err)
        if result.code == 0:
            outcomes.add("installed")
            assert env.run("verify", "--pack", "beta").code == 0
            assert env.cli("uninstall", "--pack", "beta", timeout=30).code == 0
        else:
            outcomes.add("refused")
            assert str(env.home) in result.err, result.err
            assert env.active("beta") is None
        os.truncate(filler, full_size)
    assert outcomes == {"installed", "refused"}, "the sweep must reach both outcomes"
