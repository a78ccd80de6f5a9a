"""Hostile or damaged state files: every command ends, bounded, with an error naming the
file and what to do; nothing is removed and no traceback is printed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aurora.exitcodes import ExitCode
from aurora_testing import Env


def _installed(env: Env) -> None:
    env.make_pack("alpha", approval=False)
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK


def _edit_state(env: Env, **record: object) -> None:
    doc = env.state()
    doc["packs"]["alpha"].update(record)
    (env.home / "state.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("name", ["state.json", "audit.log"])
def test_a_fifo_in_place_of_a_state_file_never_blocks(env: Env, name: str) -> None:
    _installed(env)
    assert (env.home / ".reserve").is_file()
    (env.home / name).unlink()
    os.mkfifo(env.home / name)
    result = env.cli("uninstall", "--pack", "alpha", timeout=20)
    assert result.code == ExitCode.FAILED, result.err
    assert "Traceback" not in result.err
    assert name in result.err
    assert (env.home / "packs/alpha/1.0.0").is_dir()  # refused before changing anything
    # The disk is not full: the reserve kept for a full disk is not spent on this.
    assert (env.home / ".reserve").is_file() and "freed" not in result.err


def test_a_symlinked_state_json_is_refused_not_followed(env: Env, tmp_path: Path) -> None:
    _installed(env)
    outside = tmp_path / "outside.json"
    outside.write_text('{"schema": "aurora-state-v1", "packs": {}}')
    (env.home / "state.json").unlink()
    (env.home / "state.json").symlink_to(outside)
    result = env.cli("status", timeout=20)
    assert result.code == ExitCode.FAILED
    assert "symlink" in result.err and "Traceback" not in result.err
    assert outside.read_text() == '{"schema": "aurora-state-v1", "packs": {}}'


def test_an_oversized_state_json_is_refused_without_reading_it(env: Env) -> None:
    _installed(env)
    with (env.home / "state.json").open("r+b") as f:
        f.truncate(17 << 20)  # sparse: costs nothing to make, too big to read
    result = env.cli("status", timeout=20)
    assert result.code == ExitCode.FAILED
    assert "exceeds the limit" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(
    ("record", "said"),
    [
        ({"installed": None}, "active_version '1.0.0' without a matching installed record"),
        ({"active_version": None}, "an installed record but no active_version"),
        ({"active_version": "2.0"}, "active_version '2.0' without a matching installed record"),
    ],
    ids=["installed-null", "active-null", "versions-differ"],
)
@pytest.mark.parametrize("command", ["verify", "uninstall"])
def test_inconsistent_installed_record_is_an_error_naming_it(
    env: Env, record: dict[str, object], said: str, command: str
) -> None:
    _installed(env)
    _edit_state(env, **record)
    before = (env.home / "state.json").read_bytes()
    result = env.run(command, "--pack", "alpha")
    assert result.code == ExitCode.FAILED, result.err
    assert "does not match aurora-state-v1" in result.err and said in result.err
    assert (env.home / "state.json").read_bytes() == before
    assert (env.home / "packs/alpha/1.0.0").is_dir()


def test_a_backup_that_cannot_be_written_never_fails_the_change(env: Env) -> None:
    env.make_pack("alpha", approval=False)
    backup = env.home / "state.json.bak"
    (backup / "in-the-way").mkdir(parents=True)  # every replace of state.json.bak fails
    result = env.run("install", "--pack", "alpha")
    assert result.code == ExitCode.OK, result.err
    assert "state.json.bak not kept" in result.err
    assert env.active("alpha") == "1.0.0"
    assert env.run("verify", "--pack", "alpha").code == ExitCode.OK
