"""A change killed after its commit point stands, and audit.log holds its outcome exactly
once: the next command appends it unless the killed one already had."""

from __future__ import annotations

import os
import signal

import pytest
from aurora.exitcodes import ExitCode
from aurora.fsutil import CRASH_ENV
from aurora_testing import Env


@pytest.mark.parametrize("point", ["uninstall:committed", "uninstall:removed"])
def test_a_killed_uninstall_has_exactly_one_outcome(env: Env, point: str) -> None:
    env.make_pack("alpha", approval=False)
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK
    killed = env.cli(
        "uninstall", "--pack", "alpha", "--purge", env={**os.environ, CRASH_ENV: point}
    )
    assert killed.code == -signal.SIGKILL, killed.err
    assert env.cli("status", timeout=30).code == ExitCode.OK
    assert env.cli("list", timeout=30).code == ExitCode.OK  # a second run adds nothing
    intent = next(e for e in env.audit() if e["event"] == "intent" and e["op"] == "uninstall")
    outcomes = [
        e for e in env.audit() if e.get("intent") == intent["intent"] and e["event"] != "intent"
    ]
    assert [e["event"] for e in outcomes] == ["uninstall"], outcomes
    assert outcomes[0]["version"] == "1.0.0" and outcomes[0]["purge"] is True
    assert env.state()["packs"]["alpha"]["pending"] is None
    assert not (env.home / "packs/alpha").exists() and not (env.home / "data/alpha").exists()


@pytest.mark.parametrize("point", ["install:committed", "install:recorded"])
def test_a_killed_reinstall_has_exactly_one_outcome_and_no_old_copy(env: Env, point: str) -> None:
    root = env.make_pack("alpha", approval=False, files={"note.txt": "v1"})
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK
    (root / "note.txt").write_text("v1 again")
    assert env.run("stage", "--pack", "alpha").code == ExitCode.OK
    killed = env.cli("install", "--pack", "alpha", env={**os.environ, CRASH_ENV: point})
    assert killed.code == -signal.SIGKILL, killed.err
    assert env.cli("status", timeout=30).code == ExitCode.OK
    # Committed: the new copy stands (the one moved aside is removed, not put back).
    assert (env.home / "packs/alpha/1.0.0/note.txt").read_text() == "v1 again"
    assert sorted(p.name for p in (env.home / "packs/alpha").iterdir()) == ["1.0.0"]
    assert env.cli("verify", "--pack", "alpha").code == ExitCode.OK
    intents = [e["intent"] for e in env.audit() if e["event"] == "intent" and e["op"] == "install"]
    outcomes = [e["event"] for e in env.audit() if e.get("intent") == intents[-1]]
    assert outcomes.count("install") == 1, outcomes
