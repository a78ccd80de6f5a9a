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
