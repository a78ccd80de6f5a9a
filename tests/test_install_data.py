"""install.sh changes data/<id> in place; an install that fails, or is killed before its
commit point, leaves the data as the version still in force left it (datasnap.py)."""

from __future__ import annotations

import os
import signal

import pytest
from aurora.exitcodes import ExitCode
from aurora.fsutil import CRASH_ENV
from aurora_testing import Env, tree_bytes

FAILING_INSTALL = """\
#!/usr/bin/env bash
set -euo pipefail
if [ "${1:-}" = --install ]; then
  mkdir -p "$AURORA_PACK_DATA"
  echo "migrated by $AURORA_PACK_VERSION" > "$AURORA_PACK_DATA/installed-version"
  echo new > "$AURORA_PACK_DATA/new-file"
  exit 1
fi
"""


def _leftover_copies(env: Env) -> list[str]:
    data = env.home / "data"
    return [p.name for p in data.iterdir() if p.name.startswith(".")] if data.is_dir() else []


@pytest.fixture
def installed_with_data(env: Env) -> dict[str, bytes]:
    """alpha 1.0.0 installed, its data written by its install.sh plus a user file."""
    env.make_pack("alpha", "1.0.0", approval=False)
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK
    (env.home / "data/alpha/user.db").write_text("the user's data")
    return tree_bytes(env.home / "data/alpha")


def test_a_failed_upgrade_puts_the_data_back(
    env: Env, installed_with_data: dict[str, bytes]
) -> None:
    env.make_pack("alpha", "2.0.0", approval=False, install=FAILING_INSTALL)
    result = env.run("install", "--pack", "alpha")
    assert result.code == ExitCode.FAILED, result.err
    assert env.active("alpha") == "1.0.0"
    assert tree_bytes(env.home / "data/alpha") == installed_with_data
    assert _leftover_copies(env) == []


def test_a_failed_first_install_leaves_no_data(env: Env) -> None:
    env.make_pack("alpha", approval=False, install=FAILING_INSTALL)
    assert env.run("install", "--pack", "alpha").code == ExitCode.FAILED
    assert env.active("alpha") is None
    assert not (env.home / "data/alpha").exists() and _leftover_copies(env) == []


@pytest.mark.parametrize("point", ["install:placed", "install:script-done"])
def test_an_upgrade_killed_before_its_commit_point_puts_the_data_back(
    env: Env, installed_with_data: dict[str, bytes], point: str
) -> None:
    env.make_pack("alpha", "2.0.0", approval=False)
    killed = env.cli("install", "--pack", "alpha", env={**os.environ, CRASH_ENV: point})
    assert killed.code == -signal.SIGKILL, killed.err
    assert env.cli("status", timeout=30).code == ExitCode.OK
    assert env.active("alpha") == "1.0.0"
    assert tree_bytes(env.home / "data/alpha") == installed_with_data
    assert _leftover_copies(env) == []


def test_an_upgrade_killed_after_its_commit_point_keeps_the_new_data(
    env: Env, installed_with_data: dict[str, bytes]
) -> None:
    env.make_pack("alpha", "2.0.0", approval=False)
    point = "install:committed"
    killed = env.cli("install", "--pack", "alpha", env={**os.environ, CRASH_ENV: point})
    assert killed.code == -signal.SIGKILL, killed.err
    assert env.cli("status", timeout=30).code == ExitCode.OK
    assert env.active("alpha") == "2.0.0"
    data = tree_bytes(env.home / "data/alpha")
    assert data["installed-version"] == b"2.0.0\n" and data["user.db"] == b"the user's data"
    assert _leftover_copies(env) == []
