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
    """adv8 F8: a home another uid can traverse lets it open (so flock) installer.lock and
    a pack's lifecycle.lock, and read state.json, audit.log and logs. Dirs an older
    release made 0755 are narrowed."""
    import os
    import stat

    env.home.mkdir(parents=True, exist_ok=True)
    os.chmod(env.home, 0o755)
    for place in ("data", "run"):  # as an older release (or a script's mkdir -p) left them
        (env.home / place / "alpha").mkdir(parents=True)
        os.chmod(env.home / place / "alpha", 0o755)
    env.make_pack("alpha")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    assert stat.S_IMODE(os.stat(env.home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(env.home / "installer.lock").st_mode) == 0o600
    for place in ("data", "run", "logs"):  # logs/alpha: made by the installer, 0700
        assert stat.S_IMODE(os.stat(env.home / place / "alpha").st_mode) == 0o700, place
