"""Recovery and uninstall remove only the home's own directories: a hostile key in
state.json or a symlink in the home never leads them to anything outside it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
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


def test_a_path_as_pack_key_with_a_pending_record_is_refused(env: Env, victim: Path) -> None:
    _installed(env)
    doc = env.state()
    key = "../../" + victim.name
    doc["packs"][key] = {
        "active_version": None,
        "staged": {},
        "pending": {"op": "uninstall", "version": "9", "purge": True},
    }
    (env.home / "state.json").write_text(json.dumps(doc))
    result = env.cli("status", timeout=30)
    assert result.code == ExitCode.FAILED, result.err
    assert "Traceback" not in result.err and "does not match" in result.err
    assert tree_bytes(victim) == {"keep/f": b"precious"}


@pytest.mark.parametrize("where", ["staging/elsewhere", "packs/elsewhere", "records/alpha"])
def test_a_symlink_among_the_homes_directories_is_not_followed(
    env: Env, victim: Path, where: str
) -> None:
    _installed(env)
    link = env.home / where
    if link.exists():
        for child in link.iterdir():
            child.unlink()
        link.rmdir()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    result = env.cli("status", timeout=30)
    assert "Traceback" not in result.err
    assert tree_bytes(victim) == {"keep/f": b"precious"}
    if where.endswith("elsewhere"):  # beside the pack's own directories: alpha is untouched
        assert env.cli("verify", "--pack", "alpha").code == ExitCode.OK


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


@pytest.fixture
def immutable_audit(env: Env) -> Iterator[Path]:
    """audit.log made immutable (chattr +i): every append fails with EPERM."""
    _installed(env)
    audit = env.home / "audit.log"
    made = subprocess.run(["chattr", "+i", str(audit)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {made.stderr.decode().strip()}")
    try:
        yield audit
    finally:
        subprocess.run(["chattr", "-i", str(audit)], check=False)


def test_a_change_that_cannot_be_audited_is_refused_before_it_starts(
    env: Env, immutable_audit: Path
) -> None:
    lines = immutable_audit.read_bytes()
    (env.home / "data/alpha/keep").write_text("data")
    result = env.cli("uninstall", "--pack", "alpha", "--purge", timeout=30)
    assert result.code == ExitCode.FAILED, result.err
    assert "refused before changing anything" in result.err and "audit.log" in result.err
    assert env.active("alpha") == "1.0.0"
    assert (env.home / "packs/alpha/1.0.0").is_dir()
    assert (env.home / "data/alpha/keep").read_text() == "data"
    assert immutable_audit.read_bytes() == lines
