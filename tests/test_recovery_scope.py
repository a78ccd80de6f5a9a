"""uninstall --purge removes only the home's own directories: a symlink in place of
data/<id>, run/<id> or packs/<id> is removed itself, never what it names (recovery's
own cases are in test_faults.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from aurora.exitcodes import ExitCode
from aurora_testing import Env, tree_bytes


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory outside the home that nothing may remove or change."""
    root = tmp_path / "victim"
    (root / "keep").mkdir(parents=True)
    (root / "keep" / "f").write_text("precious")
    return root


def _installed(env: Env) -> None:
    env.make_pack("alpha", approval=False)
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK


@pytest.mark.parametrize("where", ["data/alpha", "run/alpha", "packs/alpha"])
def test_uninstall_purge_removes_a_symlink_not_what_it_names(
    env: Env, victim: Path, where: str
) -> None:
    _installed(env)
    link = env.home / where
    if link.is_dir():
        subprocess.run(["rm", "-rf", str(link)], check=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    result = env.cli("uninstall", "--pack", "alpha", "--purge", timeout=30)
    assert result.code == ExitCode.OK, result.err
    assert not link.is_symlink()
    assert tree_bytes(victim) == {"keep/f": b"precious"}
