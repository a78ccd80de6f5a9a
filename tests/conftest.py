"""Fixtures for the installer tests (helpers live in aurora_testing.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aurora_testing import Env, PackFactory, kill_services, processes_under


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


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the last test: nothing that the installer or a pack started is still running."""
    yield
    base = tmp_path_factory.getbasetemp()
    deadline = time.monotonic() + 15  # what was just killed may still be exiting
    while (left := processes_under(base)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind by the tests: {left}"


@pytest.fixture(scope="session", autouse=True)
def uid_claims_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Plugin uids are claimed host-wide (pack04 README "Plugin identity"): every launcher
    this session starts claims them in a temp dir, never in /var/lib/aurora."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AURORA_UID_CLAIMS", str(tmp_path_factory.mktemp("uid-claims") / "plugin-uids"))
        yield
