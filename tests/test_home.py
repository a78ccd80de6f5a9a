"""Where the installer keeps things: the home and the packs directory, and their defaults."""

from __future__ import annotations

from pathlib import Path

import aurora_installer
import pytest
from aurora.home import default_home, default_packs_dir
from aurora_testing import REPO, Env


def test_defaults_are_aurora_home_else_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AURORA_HOME", raising=False)
    assert default_home() == REPO / ".aurora"
    monkeypatch.setenv("AURORA_HOME", "/srv/aurora")
    assert default_home() == Path("/srv/aurora")
    monkeypatch.setenv("AURORA_HOME", "")
    assert default_home() == REPO / ".aurora"
    assert default_packs_dir() == REPO / "packs"


def test_cli_uses_aurora_home_without_home_flag(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.make_pack("alpha")
    monkeypatch.setenv("AURORA_HOME", str(env.home))
    code = aurora_installer.main(["stage", "--pack", "alpha", "--packs-dir", str(env.packs_dir)])
    assert code == 0, env.capsys.readouterr().err
    assert (env.home / "staging" / "alpha" / "1.0.0" / "manifest.yaml").is_file()
    assert (env.home / "state.json").is_file()


def test_the_home_and_each_packs_data_run_logs_are_roots_alone(env: Env) -> None:
    """adv8 F8: a home other uids can list and read lets them open (so flock)
    installer.lock and a pack's lifecycle.lock, and read state.json, audit.log and logs.
    What an older release made 0755/0644 is narrowed; nothing is widened."""
    import os
    import stat

    def mode(*parts: str) -> int:
        return stat.S_IMODE(os.stat(env.home.joinpath(*parts)).st_mode)

    env.home.mkdir(parents=True, exist_ok=True)
    os.chmod(env.home, 0o755)
    for place in ("data", "run"):  # as an older release (or a script's mkdir -p) left them
        (env.home / place / "alpha").mkdir(parents=True)
        os.chmod(env.home / place / "alpha", 0o755)
    (env.home / "audit.log").touch()
    os.chmod(env.home / "audit.log", 0o644)
    env.make_pack("alpha")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    # The next locking command narrows what the first one made (packs/, records/, ...).
    assert env.run("stage", "--pack", "alpha").code == 0
    assert mode() == 0o711  # search only: nobody lists it
    for name in ("installer.lock", "state.json", "state.json.bak", "audit.log"):
        assert mode(name) == 0o600, name
    for name in ("packs", "records", "logs", "staging"):
        assert mode(name) & 0o077 == 0, name
    assert mode("data", "alpha") == mode("run", "alpha") == 0o711
    assert mode("logs", "alpha") == 0o700
