"""SIGKILL at every step of every state-changing installer command (run as root, like CI).

A newcomer's guide:

* ``Scenario`` is one command (stage, install, uninstall with and without --purge, seal,
  start, stop) and the home it starts from (``baseline``), built once per test and copied
  in place for every step.
* ``run_killed_at`` (aurora_testing.py) runs the installer's main() in a forked child that
  SIGKILLs itself just before its ``n``-th file-system operation (a write-mode open,
  write, fsync, rename, unlink, mkdir, rmdir, chmod, ...), for n = 1, 2, ... until the
  command completes: each step is in turn the last one that happened. The hook lives in
  the test process only; production code has none.
* After each kill the next command (``status``) settles what the kill left, and ``check``
  makes the same three assertions as tests/test_faults.py:

  1. the previous good state or the new one, never neither (installed and staged
     records, the copies on disk, the manifest for seal) and ``verify`` passes;
  2. every change that took effect is audited: every intent has an outcome (recorded
     late by the next command when the killed one could not), the killed command's
     outcome says it took effect exactly when the new state is found;
  3. no traceback, from the killed command or the one that settles it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aurora.audit import concludes
from aurora_testing import (
    Env,
    alive,
    kill_services,
    mount_tmpfs,
    processes_under,
    run_killed_at,
    steps_to_kill_at,
    unmount,
)

SUCCESS = {
    "stage": {"stage", "stage-completed"},
    "install": {"install", "install-completed"},
    "uninstall": {"uninstall", "uninstall-completed"},
    "seal": {"seal", "seal-completed"},
    "start": {"start", "start-completed"},
    "stop": {"stop", "stop-completed"},
}


# -- what the operator sees ------------------------------------------------------------------


def observe(env: Env, pack_id: str) -> dict[str, Any]:
    """State of ``pack_id`` that a command changes: records, copies on disk, its data, its
    manifest source (seal). Times and messages are left out."""
    state = env.state() if (env.home / "state.json").exists() else {"packs": {}}
    record = state["packs"].get(pack_id) or {}
    installed = record.get("installed") or {}
    manifest = env.packs_dir / pack_id / "manifest.yaml"
    return {
        "active": record.get("active_version"),
        "installed": installed.get("digest"),
        "staged": {v: s["digest"] for v, s in (record.get("staged") or {}).items()},
        "copies": sorted(p.name for p in (env.home / "packs" / pack_id).glob("*")),
        "staged_copies": sorted(p.name for p in (env.home / "staging" / pack_id).glob("*")),
        "data": (env.home / "data" / pack_id / "db").is_file(),
        "manifest": hashlib.sha256(manifest.read_bytes()).hexdigest(),
    }


def audit_records(env: Env) -> list[dict[str, Any]]:
    path = env.home / "audit.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]  # whole records only


def check_audit(env: Env, skip: int, op: str, took_effect: bool) -> None:
    """Records after the first ``skip`` (the baseline's): every intent has an outcome and
    every outcome its intent; the command's intent (if it got as far as recording one) has
    a success outcome exactly when its change took effect, and exactly one."""
    records = audit_records(env)
    intents: dict[str, str] = {}
    outcomes: dict[str, list[str]] = {}
    for record in records:
        if record["event"] == "intent":
            intents[record["intent"]] = record["op"]
        elif record.get("intent"):
            assert record["intent"] in intents, f"an outcome without its intent: {record}"
            outcomes.setdefault(record["intent"], []).append(record["event"])
    for intent_id, intent_op in intents.items():
        # its own outcome: the `stage` an install records on its way does not conclude it
        own = [e for e in outcomes.get(intent_id, []) if concludes(intent_op, e)]
        assert own, f"the {intent_op} intent {intent_id} has no outcome: {outcomes.get(intent_id)}"
    ours = [r["intent"] for r in records[skip:] if r["event"] == "intent" and r["op"] == op]
    assert len(ours) <= 1, ours
    wins = [e for i in ours for e in outcomes[i] if e in SUCCESS[op]]
    if took_effect:
        assert len(wins) == 1, ("the change took effect: one success outcome", ours, outcomes)
    else:
        assert wins == [], ("the change did not take effect", wins)


# -- scenarios ---------------------------------------------------------------------------------


@dataclass
class Scenario:
    op: str
    argv: tuple[str, ...]
    pack: str
    build: Callable[[Env], None]  # the baseline, from an empty home
    service: bool = False

    def before_each(self, env: Env) -> None:
        """What each step needs on top of the copied baseline: stop's service running
        again (the baseline was started once; its process is replaced, as start.sh does)."""
        if self.op == "stop":
            proc = subprocess.Popen(
                ["sleep", "600"],
                start_new_session=True,
                env={**os.environ, "AURORA_HOME": str(env.home)},
            )
            start = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[19]
            (env.home / "run" / self.pack / "service.pid").write_text(f"{proc.pid} {start}\n")


def _restage(env: Env) -> None:
    root = env.make_pack("alpha", files={"lib/note.txt": "first"})
    assert env.run("stage", "--pack", "alpha").code == 0
    (root / "lib" / "note.txt").write_text("second")


def _upgrade(env: Env) -> None:
    env.make_pack("alpha", "1.0.0", approval=False)
    assert env.run("install", "--pack", "alpha").code == 0
    env.make_pack("alpha", "2.0.0", approval=False)
    # Staged already: the stage an install does first is staging.stage, swept above
    # (the "stage" scenario); this sweep spends its steps on the install itself.
    assert env.run("stage", "--pack", "alpha").code == 0


def _installed_with_data(env: Env) -> None:
    env.make_pack("alpha", approval=False)
    assert env.run("install", "--pack", "alpha").code == 0
    (env.home / "data" / "alpha" / "db").write_text("user data")


def _unsealed(env: Env) -> None:
    env.make_pack("alpha", artifacts=[("lib/a.bin", "0" * 64)], files={"lib/a.bin": "x"})
    env.home.mkdir()  # a home exists: seal is audited


# The service of the start/stop sweeps in bash: aurora_testing's Python one costs two
# interpreter start-ups a step. Same contract: a pidfile "PID STARTTIME", a new session.
_PIDFILE = '"$AURORA_PACK_RUN/service.pid"'
_SAME = (
    'same() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=${s##*) }; '
    'local f=($s); [[ ${f[0]} != Z && ${f[19]} == "$2" ]]; }\n'
)
BASH_SERVICE = {
    "start.sh": (
        "#!/usr/bin/env bash\nset -euo pipefail\n" + _SAME + 'mkdir -p "$AURORA_PACK_RUN"\n'
        f'if read -r pid st < {_PIDFILE} 2>/dev/null && same "$pid" "$st"; then exit 0; fi\n'
        "setsid sleep 600 </dev/null >/dev/null 2>&1 &\npid=$!\n"
        's=$(cat "/proc/$pid/stat"); s=${s##*) }; f=($s)\n'
        f'echo "$pid ${{f[19]}}" > {_PIDFILE}.tmp\nmv {_PIDFILE}.tmp {_PIDFILE}\n'
    ),
    "health_check.sh": (
        "#!/usr/bin/env bash\n"
        + _SAME
        + f'read -r pid st < {_PIDFILE} && same "$pid" "$st" && echo "health OK"\n'
    ),
    "stop.sh": (
        "#!/usr/bin/env bash\n"
        + _SAME
        + f'if read -r pid st < {_PIDFILE} 2>/dev/null && same "$pid" "$st"; then\n'
        '  kill "$pid"; for _ in $(seq 500); do same "$pid" "$st" || break; sleep 0.01; done\n'
        f"fi\nrm -f {_PIDFILE}\n"
    ),
}


def _service(env: Env) -> None:
    root = env.make_pack("svc", approval=False)
    for name, text in BASH_SERVICE.items():
        (root / name).write_text(text)
    assert env.run("install", "--pack", "svc").code == 0


def _running(env: Env) -> None:
    _service(env)
    assert env.run("start", "--pack", "svc", "--interval", "0.05").code == 0


SCENARIOS = {
    "stage": Scenario("stage", ("stage", "--pack", "alpha"), "alpha", _restage),
    "install": Scenario("install", ("install", "--pack", "alpha"), "alpha", _upgrade),
    "uninstall": Scenario(
        "uninstall", ("uninstall", "--pack", "alpha"), "alpha", _installed_with_data
    ),
    "uninstall-purge": Scenario(
        "uninstall", ("uninstall", "--pack", "alpha", "--purge"), "alpha", _installed_with_data
    ),
    "seal": Scenario("seal", ("seal", "--pack", "alpha"), "alpha", _unsealed),
    "start": Scenario(
        "start", ("start", "--pack", "svc", "--interval", "0.05"), "svc", _service, True
    ),
    "stop": Scenario("stop", ("stop", "--pack", "svc"), "svc", _running, True),
}


class World:
    """A baseline home and packs directory saved aside, restored in place for each step
    (the paths state.json records stay true)."""

    def __init__(self, env: Env, scenario: Scenario) -> None:
        self.env, self.scenario = env, scenario
        scenario.build(env)
        self.saved = env.home.parent / "saved"
        self.saved.mkdir()
        shutil.copytree(env.home, self.saved / "home", symlinks=True)
        shutil.copytree(env.packs_dir, self.saved / "packs", symlinks=True)

    def restore(self) -> None:
        # a start killed after its service began and before its pidfile leaves one that
        # no pidfile names: every process of this home goes
        for pid in processes_under(self.env.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name, target in (("home", self.env.home), ("packs", self.env.packs_dir)):
            shutil.rmtree(target)
            shutil.copytree(self.saved / name, target, symlinks=True)
        self.scenario.before_each(self.env)


def _verify(env: Env, pack_id: str) -> None:
    if env.active(pack_id) is not None:
        result = env.run("verify", "--pack", pack_id)
        assert result.code == 0, result.err


def _runtime_is_true(env: Env, pack_id: str) -> None:
    """start/stop: what status reports is what runs; never "starting" after the kill."""
    result = env.run("status", "--pack", pack_id, "--json")
    assert result.code == 0, result.err
    runtime = result.json["result"]["runtime"]
    pids = [int(p.read_text().split()[0]) for p in (env.home / "run" / pack_id).glob("*.pid")]
    assert runtime["running"] == any(alive(p) for p in pids), runtime
    assert (env.state()["packs"][pack_id].get("runtime") or {}).get("state") != "starting"
    if runtime["health"] is not None and not runtime["running"]:
        assert runtime["health"]["status"] != "healthy", runtime


@pytest.fixture
def fast_env(env: Env, tmp_path: Path) -> Iterator[Env]:
    """``env`` with its home and packs on a tmpfs, unmounted afterwards: fsync costs
    nothing there, and a sweep runs each command a hundred times."""
    mount = tmp_path / "fs"
    mount_tmpfs(mount, "size=64m")
    env.home = mount / "home"
    env.packs_dir = env.make_pack.packs_dir = mount / "packs"
    env.packs_dir.mkdir()
    try:
        yield env
    finally:
        kill_services(env.home)
        for pid in processes_under(mount):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        unmount(mount)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_sigkill_at_every_step_leaves_the_old_state_or_the_new(fast_env: Env, name: str) -> None:
    env = fast_env
    scenario = SCENARIOS[name]
    world = World(env, scenario)
    world.restore()
    old = observe(env, scenario.pack)
    skip = len(audit_records(env))
    completed = run_killed_at(env, 0, *scenario.argv)  # the command undisturbed: the new state
    assert completed.code == 0 and "Traceback" not in completed.err, completed.err
    new = observe(env, scenario.pack)
    check_audit(env, skip, scenario.op, took_effect=True)
    seen: dict[str, int] = {}
    steps = steps_to_kill_at(completed.trace)
    for step in steps:
        world.restore()
        skip = len(audit_records(env))
        run = run_killed_at(env, step, *scenario.argv)
        assert "Traceback" not in run.err, (step, run.err)
        if not run.killed:
            assert run.code == 0, (step, run.err)
        settled = env.run("status", "--json")  # the next command settles
        assert settled.code == 0 and "Traceback" not in settled.err, (step, settled.err)
        now = observe(env, scenario.pack)
        # start/stop: the installed pack never changes and what status reports runs;
        # which side of the change the kill fell on is read from audit.log (then the
        # audit check proves there is exactly one such outcome and each intent has one)
        if scenario.service:
            assert {k: now[k] for k in ("active", "installed", "copies")} == {
                k: old[k] for k in ("active", "installed", "copies")
            }, step
            _runtime_is_true(env, scenario.pack)
            found = (
                "new"
                if any(e["event"] in SUCCESS[scenario.op] for e in audit_records(env)[skip:])
                else "old"
            )
        else:
            assert now in (old, new), (step, "neither the old state nor the new", now)
            found = "old" if now == old else "new"
        check_audit(env, skip, scenario.op, took_effect=found == "new")
        _verify(env, scenario.pack)
        seen[found] = seen.get(found, 0) + 1
        if not run.killed:
            assert found == "new", step
            break
    else:
        pytest.fail(f"the command never completed in {completed.steps + 1} steps")
    assert seen.get("old") and seen.get("new"), seen  # the sweep crossed the commit point
