"""Fixtures for the installer tests (helpers live in aurora_testing.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aurora_testing import Env, PackFactory, kill_services


@pytest.fixture
def make_pack(tmp_path: Path) -> PackFactory:
    return PackFactory(tmp_path / "packs")


@pytest.fixture
def env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_pack: PackFactory
) -> Iterator[Env]:
    environment = Env(tmp_path / "home", tmp_path / "packs", capsys, make_pack)
    environment.packs_dir.mkdir(parents=True, exist_ok=True)
    yield environment
    kill_services(environment.home)
