"""Fixtures for the launcher tests: a registry, plugin packages and supervisors in tmp_path."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The launcher package (pack root) and the shared helpers (this dir) on sys.path.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from launcher.paths import Paths  # noqa: E402
from launcher.supervisor import Supervisor  # noqa: E402
from launcher_testing import (  # noqa: E402
    PACK_ROOT,
    PASSTHROUGH_ROOT,
    FakeRegistry,
    fast_settings,
)


@pytest.fixture
def fake_registry(tmp_path: Path) -> FakeRegistry:
    return FakeRegistry(tmp_path / "pack05" / "plugins")


@pytest.fixture
def paths(tmp_path: Path, fake_registry: FakeRegistry) -> Paths:
    return Paths(
        home=None,
        root=PACK_ROOT,
        data=tmp_path / "data",
        run=tmp_path / "run",
        logs=tmp_path / "logs",
        registry=fake_registry.path,
    )


@pytest.fixture
def make_supervisor(paths: Paths) -> Iterator[Callable[..., Supervisor]]:
    """Build supervisors on the TEST-ONLY passthrough sandbox; closed at teardown."""
    made: list[Supervisor] = []

    def _make(sandbox_root: Path = PASSTHROUGH_ROOT, **settings: Any) -> Supervisor:
        sup = Supervisor(
            paths, fast_settings(**settings), {"AURORA_SANDBOX_ROOT": str(sandbox_root)}
        )
        sup.open()
        made.append(sup)
        return sup

    yield _make
    for sup in made:
        sup.close()
