"""A change that took effect is not reported as failed because its output cannot be written
(stdout on a full disk, closed, or a reader gone): the change stands, exit status 0, the
output failure on stderr. A report whose output is lost (list, status) fails."""

from __future__ import annotations

import subprocess
import sys

import pytest
from aurora.exitcodes import ExitCode
from aurora_testing import CLI, Env, Result


def _to_full_disk(env: Env, *argv: str) -> Result:
    """The CLI as a process whose stdout is /dev/full (every write: ENOSPC)."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, str(CLI), *env.args(*argv)],
            stdout=full,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=60,
            check=False,
        )
    return Result(proc.returncode, "", proc.stderr)


@pytest.mark.parametrize("as_json", [False, True])
def test_install_to_a_full_stdout_succeeds_with_a_warning(env: Env, as_json: bool) -> None:
    env.make_pack("alpha", approval=False)
    flags = ["--json"] if as_json else ["-v"]  # -v: the script's lines go to stdout too
    result = _to_full_disk(env, *flags, "install", "--pack", "alpha")
    assert result.code == ExitCode.OK, result.err
    assert "Traceback" not in result.err
    assert "cannot write to stdout: No space left on device" in result.err
    assert "took effect" in result.err
    assert env.active("alpha") == "1.0.0"
    assert [e["event"] for e in env.audit()][-1] == "install"


@pytest.mark.parametrize("as_json", [False, True])
def test_uninstall_to_a_full_stdout_succeeds_with_a_warning(env: Env, as_json: bool) -> None:
    env.make_pack("alpha", approval=False)
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK
    flags = ["--json"] if as_json else []
    result = _to_full_disk(env, *flags, "uninstall", "--pack", "alpha")
    assert result.code == ExitCode.OK, result.err
    assert "Traceback" not in result.err
    assert "No space left on device" in result.err
    assert env.active("alpha") is None
    assert not (env.home / "packs" / "alpha").exists()


def test_a_failing_change_keeps_its_own_status_when_stdout_is_full(env: Env) -> None:
    env.make_pack("alpha", approval=False)
    result = _to_full_disk(env, "--json", "uninstall", "--pack", "alpha")
    assert result.code == ExitCode.NOT_FOUND, result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("command", ["list", "status"])
def test_a_report_whose_output_is_lost_fails(env: Env, command: str) -> None:
    env.make_pack("alpha", approval=False)
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK
    result = _to_full_disk(env, command)
    assert result.code == ExitCode.FAILED, result.err
    assert "Traceback" not in result.err
    assert f"could not write the {command} output to stdout" in result.err
