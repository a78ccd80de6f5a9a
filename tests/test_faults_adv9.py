"""The installer findings of the adv9 reliability attack (reports/adv9.md), each a test.

F10: a degenerate manifest path is exit 2 with its place, and never takes `list` down.
F8: a daemon that ignores SIGTERM is never left running by a stop that reports success.
F9: a damaged stop.sh (garbage bytes, a hang) falls back to the pidfiles.
F5: something in a pack's data that cannot be removed never wedges the other packs.
F7: a start overtaken by an uninstall gets an outcome and says what happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aurora_testing import CLI, Env, Result, alive, mount_tmpfs, unmount, wait_for

# -- the common checks ------------------------------------------------------------------------


def _no_traceback(result: Result) -> None:
    assert "Traceback" not in result.out + result.err, result.err


def _every_intent_has_an_outcome(env: Env) -> None:
    records = env.audit()
    intents = {r["intent"]: r["op"] for r in records if r["event"] == "intent"}
    answered = {r.get("intent") for r in records if r["event"] != "intent"}
    assert not {i: op for i, op in intents.items() if i not in answered}, records


# -- F10: degenerate manifest paths ---------------------------------------------------------------

DEGENERATE = [
    ".",  # the pack root (was an IndexError traceback, and `list` died of it)
    "",
    "..",
    "/",
    "a/../..",
    "install.sh/",
    "./install.sh",
    "a//install.sh",
    "install.sh/.",
    "lib/",
    "install.sh\x00",
    "\x00",
    "in\nstall.sh",
    "a" * 5000,  # ENAMETOOLONG (was exit 1, no place)
    "/".join(["a"] * 3000),
]


def _with_path(env: Env, field: str, rel: str) -> None:
    root = env.make_pack("bad", files={"lib/x": "1"})
    text = (root / "manifest.yaml").read_text()
    if field == "entrypoint":
        text = text.replace('install: "install.sh"', "install: " + json.dumps(rel))
    else:
        text = text.replace(
            "artifacts: []", f'artifacts:\n    - path: {json.dumps(rel)}\n      sha256: ""'
        )
    (root / "manifest.yaml").write_text(text)


@pytest.mark.parametrize("rel", DEGENERATE, ids=lambda rel: repr(rel)[:24])
@pytest.mark.parametrize("field", ["entrypoint", "artifact"])
def test_a_degenerate_manifest_path_is_exit_2_with_its_place(
    env: Env, field: str, rel: str
) -> None:
    env.make_pack("good", approval=False)
    assert env.run("install", "--pack", "good").code == 0
    _with_path(env, field, rel)
    place = "pack.entrypoint.install" if field == "entrypoint" else "pack.artifacts[0].path"
    for command in (("validate",), ("stage",), ("install", "--approve")):
        result = env.run(*command, "--pack", "bad")
        _no_traceback(result)
        assert result.code == 2, (command, result.err)
        assert place in result.err, result.err
    listed = env.run("list", "--json")
    _no_traceback(listed)
    assert listed.code == 0, listed.err
    rows = {row["id"]: row for row in listed.json["result"]}
    assert rows["good"]["installed"] == "1.0.0" and rows["good"]["valid"]
    assert not rows["bad"]["valid"] and rows["bad"]["problems"] >= 1
    assert env.active("bad") is None


def test_list_survives_a_pack_whose_reading_fails_in_any_way(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever reading one pack raises (here a bug's IndexError), `list` shows the others."""
    import aurora.sources

    env.make_pack("good")
    env.make_pack("bad")
    real = aurora.sources.load_manifest

    def load(root: Path, **kwargs: object) -> object:
        if root.name == "bad":
            raise IndexError("tuple index out of range")
        return real(root, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(aurora.sources, "load_manifest", load)
    listed = env.run("list", "--json")
    _no_traceback(listed)
    assert listed.code == 0, listed.err
    rows = {row["id"]: row for row in listed.json["result"]}
    assert rows["good"]["valid"] and not rows["bad"]["valid"]


# -- F8 and F9: a stop that does not bring the pack down -----------------------------------------

STUBBORN_START = """\
#!/usr/bin/env bash
set -euo pipefail
mkdir -p "$AURORA_PACK_RUN"
setsid bash -c 'trap "" TERM HUP; echo $$ > "$AURORA_PACK_RUN/daemon.pid"; \
while :; do sleep 0.2; done' </dev/null >/dev/null 2>&1 &
for _ in $(seq 100); do [ -s "$AURORA_PACK_RUN/daemon.pid" ] && break; sleep 0.05; done
"""
# What a naive pack does: TERM, and report success.
STUBBORN_STOP = """\
#!/usr/bin/env bash
kill -TERM "$(cat "$AURORA_PACK_RUN/daemon.pid")" 2>/dev/null; echo sent TERM; exit 0
"""
STUBBORN_HEALTH = """\
#!/usr/bin/env bash
kill -0 "$(cat "$AURORA_PACK_RUN/daemon.pid" 2>/dev/null)" 2>/dev/null && echo ok || exit 1
"""


def _stubborn(env: Env, *, stop_removes_pidfile: bool = False) -> int:
    root = env.make_pack("stubborn", approval=False)
    stop = STUBBORN_STOP
    if stop_removes_pidfile:  # nothing tracks it after stop.sh: found from before stop.sh
        stop = stop.replace("exit 0", 'rm -f "$AURORA_PACK_RUN/daemon.pid"; exit 0')
    for name, text in (
        ("start.sh", STUBBORN_START),
        ("stop.sh", stop),
        ("health_check.sh", STUBBORN_HEALTH),
    ):
        (root / name).write_text(text)
    assert env.run("install", "--pack", "stubborn").code == 0
    started = env.run("start", "--pack", "stubborn", "--interval", "0.2")
    assert started.code == 0, started.err
    return int((env.home / "run" / "stubborn" / "daemon.pid").read_text())


@pytest.mark.parametrize("removes_pidfile", [False, True])
def test_stop_ends_a_daemon_that_ignores_sigterm(env: Env, removes_pidfile: bool) -> None:
    pid = _stubborn(env, stop_removes_pidfile=removes_pidfile)
    result = env.run("stop", "--pack", "stubborn", "--timeout", "1", "--json")
    _no_traceback(result)
    assert result.code == 0, result.err
    assert wait_for(lambda: not alive(pid), timeout=10), "stop reported success; it runs"
    stop = [e for e in env.audit() if e["event"] == "stop"][-1]
    assert stop["via"] == "pidfiles" and stop["killed"] == [pid], stop
    assert "stop.sh exited 0" in stop["reason"]
    status = env.run("status", "--pack", "stubborn", "--json").json["result"]
    assert status["runtime"]["running"] is False
    _every_intent_has_an_outcome(env)


def test_uninstall_stop_purge_never_leaves_a_tracked_process_running(env: Env) -> None:
    pid = _stubborn(env)
    result = env.run("uninstall", "--pack", "stubborn", "--stop", "--purge", "--timeout", "1")
    _no_traceback(result)
    assert result.code == 0, result.err
    assert not alive(pid), "uninstall --purge removed the pidfile of a live process"
    assert not (env.home / "run" / "stubborn").exists()
    _every_intent_has_an_outcome(env)


def test_a_process_that_survives_sigkill_is_never_recorded_stopped(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that will not die (D state, EPERM): stop-failed naming it, and an
    uninstall --stop is refused rather than purge its pidfile."""
    import aurora.lifecycle

    pid = _stubborn(env)
    monkeypatch.setattr(aurora.lifecycle, "_signal", lambda pid, sig: None)
    monkeypatch.setattr(aurora.lifecycle, "KILL_WAIT", 0.2)
    result = env.run("stop", "--pack", "stubborn", "--timeout", "0.5")
    _no_traceback(result)
    assert result.code == 1 and str(pid) in result.err, result.err
    assert env.audit()[-1]["event"] == "stop-failed"
    removed = env.run("uninstall", "--pack", "stubborn", "--stop", "--purge", "--timeout", "0.5")
    assert removed.code == 1, removed.err
    assert (env.home / "run" / "stubborn" / "daemon.pid").exists() and alive(pid)
    assert env.active("stubborn") == "1.0.0"
    _every_intent_has_an_outcome(env)


def _service(env: Env) -> int:
    env.make_pack("svc", service=True, approval=False)
    assert env.run("install", "--pack", "svc").code == 0
    assert env.run("start", "--pack", "svc", "--interval", "0.2").code == 0
    return int((env.home / "run" / "svc" / "service.pid").read_text().split()[0])


DAMAGE = {
    "garbage": bytes(range(1, 101)),  # ENOEXEC: no #!, not an ELF
    "hang": b"#!/bin/sh\nsleep 1000\n",
    "fails": b"#!/bin/sh\necho cannot stop; exit 3\n",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("command", [("stop",), ("uninstall", "--stop")])
def test_a_damaged_stop_sh_falls_back_to_the_pidfiles(
    env: Env, damage: str, command: tuple[str, ...]
) -> None:
    pid = _service(env)
    stop_sh = env.home / "packs" / "svc" / "1.0.0" / "stop.sh"
    stop_sh.write_bytes(DAMAGE[damage])
    result = env.run(*command, "--pack", "svc", "--timeout", "1")
    _no_traceback(result)
    assert result.code == 0, result.err
    assert wait_for(lambda: not alive(pid), timeout=10), "the service still runs"
    stop = [e for e in env.audit() if e["event"] == "stop"][-1]
    assert stop["via"] == "pidfiles" and "stop.sh" in stop["reason"], stop
    _every_intent_has_an_outcome(env)


def test_a_failing_stop_sh_of_a_pack_without_pidfiles_still_fails(env: Env) -> None:
    """Nothing says what runs, so the failure stands (never a guess that it stopped)."""
    env.make_pack("plain", approval=False)
    assert env.run("install", "--pack", "plain").code == 0
    assert env.run("start", "--pack", "plain", "--interval", "0.2").code == 0
    (env.home / "packs" / "plain" / "1.0.0" / "stop.sh").write_bytes(DAMAGE["garbage"])
    result = env.run("stop", "--pack", "plain")
    _no_traceback(result)
    assert result.code == 1 and "stop.sh could not run" in result.err, result.err
    assert env.audit()[-1]["event"] == "stop-failed"
    _every_intent_has_an_outcome(env)


# -- F5: something in a pack's data that cannot be removed ----------------------------------------


@pytest.fixture
def immutable() -> Iterator[Callable[[Path], None]]:
    """chattr +i a file (undone in teardown so tmp_path can be removed)."""
    made: list[Path] = []

    def make(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"chattr +i unsupported here: {done.stderr.decode().strip()}")
        made.append(path)

    yield make
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.fixture
def mounted() -> Iterator[Callable[[Path], None]]:
    """A small tmpfs mounted at a directory (unmounted in teardown)."""
    made: list[Path] = []

    def make(path: Path) -> None:
        mount_tmpfs(path, "size=64k")
        made.append(path)

    yield make
    for path in made:
        unmount(path)


def _two_packs(env: Env) -> int:
    """`victim` (data to purge) installed, `svc` installed and running; returns svc's pid."""
    env.make_pack("victim", approval=False)
    assert env.run("install", "--pack", "victim").code == 0
    return _service(env)


def _others_still_work(env: Env, pid: int) -> None:
    for command in (
        ("status",),
        ("list",),
        ("status", "--pack", "svc"),
        ("verify", "--pack", "svc"),
    ):
        result = env.run(*command)
        _no_traceback(result)
        assert result.code == 0, (command, result.err)
    stopped = env.run("stop", "--pack", "svc")
    assert stopped.code == 0, stopped.err
    assert wait_for(lambda: not alive(pid), timeout=10)
    assert env.run("uninstall", "--pack", "svc", "--purge").code == 0


@pytest.mark.parametrize("obstacle", ["immutable", "mount"])
def test_uninstall_purge_with_an_unremovable_leftover_reports_done_and_names_it(
    env: Env,
    obstacle: str,
    immutable: Callable[[Path], None],
    mounted: Callable[[Path], None],
) -> None:
    pid = _two_packs(env)
    data = env.home / "data" / "victim"
    if obstacle == "immutable":
        stuck = data / "installed-version"
        immutable(stuck)
    else:
        stuck = data / "mnt"
        mounted(stuck)
    result = env.run("uninstall", "--pack", "victim", "--purge", "--json")
    _no_traceback(result)
    assert result.code == 0, result.err  # the uninstall happened
    assert str(stuck) in result.err  # named by its full path, as a warning
    assert (
        result.json["result"]["left_behind"]
        and str(stuck) in result.json["result"]["left_behind"][0]
    )
    assert env.active("victim") is None
    record = env.state()["packs"]["victim"]
    assert record["pending"] is None and str(stuck) in record["last_result"]["message"]
    assert not (data / "env.txt").exists()  # the rest went
    _others_still_work(env, pid)
    _every_intent_has_an_outcome(env)


@pytest.mark.parametrize("where", ["data", "packs"])
def test_recovery_finishing_an_uninstall_never_wedges_other_packs(
    env: Env, where: str, immutable: Callable[[Path], None]
) -> None:
    """Killed after the commit point: each next command's recovery finishes the removal;
    what cannot be removed is left and noted, never an error for every command."""
    from aurora.fsutil import CRASH_ENV

    pid = _two_packs(env)
    if where == "data":
        stuck = env.home / "data" / "victim" / "installed-version"
    else:
        stuck = env.home / "packs" / "victim" / "1.0.0" / "install.sh"
    immutable(stuck)
    killed = env.cli(
        "uninstall",
        "--pack",
        "victim",
        "--purge",
        env={**os.environ, CRASH_ENV: "uninstall:committed"},
    )
    assert killed.code == -9, killed.err
    _others_still_work(env, pid)
    notes = [n for e in env.audit() if e["event"] == "recovered" for n in e["notes"]]
    assert any(str(stuck) in n and "left behind" in n for n in notes), notes
    assert env.active("victim") is None
    _every_intent_has_an_outcome(env)


# -- F7: a start overtaken while it polls health ------------------------------------------------


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (("uninstall", "--stop", "--purge"), "start aborted: it was uninstalled"),
        (("stop",), "start interrupted: it was stopped"),
    ],
)
def test_a_start_overtaken_while_it_polls_records_its_outcome(
    env: Env, command: tuple[str, ...], said: str
) -> None:
    # Never healthy: the start polls (lock released) until the other command overtakes it.
    env.make_pack("svc", service=True, approval=False, health_timeout=30, files={"mode": "never\n"})
    assert env.run("install", "--pack", "svc").code == 0
    start = subprocess.Popen(
        [sys.executable, str(CLI), *env.args("start", "--pack", "svc", "--interval", "0.2")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(
            lambda: (
                ((env.state()["packs"]["svc"].get("runtime") or {}).get("state") == "starting")
                if (env.home / "state.json").exists()
                else False
            ),
            timeout=20,
        )
        overtaking = env.run(*command, "--pack", "svc")
        assert overtaking.code == 0, overtaking.err
        _, err = start.communicate(timeout=40)
    finally:
        if start.poll() is None:
            start.kill()
            start.wait()
    assert "Traceback" not in err, err
    assert start.returncode == 1 and said in err, err
    records = env.audit()
    intent = next(r["intent"] for r in records if r["event"] == "intent" and r["op"] == "start")
    outcomes = [r["event"] for r in records if r["event"] != "intent" and r.get("intent") == intent]
    assert outcomes == ["start-aborted"], records
    _every_intent_has_an_outcome(env)


def test_a_pidfile_naming_a_process_of_no_pack_never_gets_it_signalled(env: Env) -> None:
    """A hostile (or stale) pidfile naming someone else's process: stop leaves it alone."""
    env.make_pack("liar", approval=False)
    assert env.run("install", "--pack", "liar").code == 0
    assert env.run("start", "--pack", "liar", "--interval", "0.2").code == 0
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AURORA_")}
    other = subprocess.Popen(["sleep", "60"], env=clean)
    try:
        (env.home / "run" / "liar" / "other.pid").write_text(f"{other.pid}\n")
        result = env.run("stop", "--pack", "liar", "--timeout", "0.5")
        _no_traceback(result)
        assert result.code == 0, result.err
        assert "not signalled" in result.err and str(other.pid) in result.err, result.err
        assert other.poll() is None, "stop signalled a process that is not the pack's"
    finally:
        other.kill()
        other.wait()
    _every_intent_has_an_outcome(env)


def test_two_starts_at_once_both_succeed_once_the_pack_is_healthy(env: Env) -> None:
    """A second start during the first one's poll: the pack ends healthy, which is what
    both asked, so neither reports failure (was: "start interrupted ... (now healthy)")."""
    ready = env.home / "ready"
    env.make_pack("svc", approval=False, health_timeout=30)
    health = env.packs_dir / "svc" / "health_check.sh"
    health.write_text(f'#!/usr/bin/env bash\n[ -e "{ready}" ] && echo ok || exit 1\n')
    assert env.run("install", "--pack", "svc").code == 0

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(CLI), *env.args("start", "--pack", "svc", "--interval", "0.2")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def starting() -> int:
        return sum(1 for r in env.audit() if r["event"] == "intent" and r["op"] == "start")

    first = start()
    second = None
    try:
        assert wait_for(lambda: starting() == 1, timeout=20)
        second = start()
        assert wait_for(lambda: starting() == 2, timeout=20)
        time.sleep(0.5)  # both polling
        ready.write_text("")
        results = [(p.wait(timeout=40), p.communicate()[1]) for p in (first, second)]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [code for code, _ in results] == [0, 0], results
    records = env.audit()
    for intent in (r["intent"] for r in records if r["event"] == "intent" and r["op"] == "start"):
        outcomes = [
            r["event"] for r in records if r["event"] != "intent" and r.get("intent") == intent
        ]
        assert outcomes == ["start"], records
