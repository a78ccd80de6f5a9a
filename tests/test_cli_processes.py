"""The CLI as real processes: every exit code, the approval prompt on a terminal, system python3."""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aurora.exitcodes import ExitCode
from aurora.lock import InstallerLock
from aurora_testing import CLI, REPO, Env


def test_every_exit_code_from_a_real_process(env: Env) -> None:
    env.make_pack("alpha")
    env.make_pack("needy", deps=[("ghost", ">=1")])
    env.make_pack("failing", approval=False, install="#!/usr/bin/env bash\nexit 9\n")
    bad = env.make_pack("bad")
    (bad / "manifest.yaml").write_text("pack: {id: 1}\n")
    assert env.cli("validate", "--pack", "alpha").code == ExitCode.OK
    assert env.cli("install", "--pack", "failing").code == ExitCode.FAILED
    assert env.cli("validate", "--pack", "bad").code == ExitCode.USAGE
    assert env.cli("bogus-command").code == ExitCode.USAGE
    assert env.cli("verify", "--pack", "alpha").code == ExitCode.NOT_FOUND
    assert env.cli("install", "--pack", "needy", "--approve").code == ExitCode.REFUSED
    assert env.cli("install", "--pack", "alpha").code == ExitCode.APPROVAL  # stdin not a tty
    with InstallerLock(env.home / "installer.lock", wait=0):
        assert env.cli("stage", "--pack", "alpha", "--wait", "0").code == ExitCode.LOCKED
    assert env.cli("install", "--pack", "alpha", "--approve").code == ExitCode.OK
    listed = env.cli("list", "--json")
    assert listed.code == ExitCode.OK
    assert {r["id"]: r["installed"] for r in json.loads(listed.out)["result"]}["alpha"] == "1.0.0"
    assert env.cli("seal", "--pack", "alpha").code == ExitCode.OK  # no artifacts: unchanged
    assert env.cli("status", "--pack", "alpha").code == ExitCode.OK


@pytest.mark.parametrize(("answer", "code"), [(b"y\n", 0), (b"no\n", 6)])
def test_approval_prompt_on_a_real_terminal(env: Env, answer: bytes, code: int) -> None:
    env.make_pack("alpha")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(CLI), *env.args("install", "--pack", "alpha")],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.write(master, answer)
        _out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode == code, err
    assert b"Approve? [y/N]" in err
    assert (env.active("alpha") == "1.0.0") == (code == 0)


def _system_python() -> str | None:
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).exists() and not candidate.startswith(str(REPO)):
            check = subprocess.run(
                [candidate, "-c", "import yaml, packaging, jsonschema"],
                capture_output=True,
                check=False,
            )
            if check.returncode == 0:
                return candidate
    return None


def test_runs_with_system_python3(env: Env) -> None:
    python = _system_python()
    if python is None:
        pytest.skip("no python3 outside .venv with pyyaml, packaging and jsonschema")
    env.make_pack("alpha")
    for argv in (["stage", "--pack", "alpha"], ["dry-run", "--pack", "alpha"]):
        proc = subprocess.run(
            [python, str(CLI), *env.args(*argv)],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["status", "--json"], id="json-document"),
        pytest.param(["dry-run", "--pack", "alpha"], id="streamed-script-output"),
    ],
)
def test_a_reader_that_goes_away_stops_nothing(env: Env, argv: list[str]) -> None:
    # `aurora_installer.py ... | head -1`: no traceback, the operation completes.
    env.make_pack("alpha")
    proc = subprocess.Popen(
        [sys.executable, str(CLI), *env.args(*argv)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # before the installer writes anything
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.OK, err
    assert b"Traceback" not in err and b"Broken pipe" not in err
    if argv[0] == "dry-run":
        assert "dry run of alpha 1.0.0: ok" in (env.home / "logs/alpha/install.log").read_text()
