"""Shared fixtures: the pack root on sys.path, plugin data in tmp_path, package factories."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = Path(__file__).resolve().parent
PACK_ROOT = TESTS_DIR.parent
# --import-mode=importlib adds nothing to sys.path: `core` lives in the pack root, the
# factories in pack05_testlib.py beside this file. The tests dir goes last so that other
# packs' `from conftest import ...` still find their own conftest.py first.
if str(PACK_ROOT) not in sys.path:
    sys.path.insert(0, str(PACK_ROOT))
if str(TESTS_DIR) not in sys.path:
    sys.path.append(str(TESTS_DIR))

from pack05_testlib import make_manifest, write_package  # noqa: E402

_HYPOTHESIS_HOME: list[Path] = []


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems() -> None:
    """Keep Hypothesis's cache (.hypothesis/) in a temp dir instead of the current directory.

    Hypothesis fills it while collecting, right after this hook, so a fixture is too late.
    """
    try:
        from hypothesis.configuration import set_hypothesis_home_dir
    except ImportError:
        return
    if not _HYPOTHESIS_HOME:
        _HYPOTHESIS_HOME.append(Path(tempfile.mkdtemp(prefix="pack05-hypothesis-")))
        set_hypothesis_home_dir(_HYPOTHESIS_HOME[0])


def pytest_sessionfinish() -> None:
    for path in _HYPOTHESIS_HOME:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def pack_data(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point AURORA_PACK_DATA at a temp dir so no test (the reference's included) touches data/."""
    data = tmp_path_factory.mktemp("pack-data")
    monkeypatch.setenv("AURORA_PACK_DATA", str(data))
    return data


@pytest.fixture
def plugins_dir(tmp_path: Path) -> Path:
    """An explicit plugins directory (not created: the code creates it when it writes)."""
    return tmp_path / "plugins"


@pytest.fixture
def manifest_factory() -> Callable[..., dict[str, Any]]:
    return make_manifest


@pytest.fixture
def package_factory(tmp_path: Path) -> Callable[..., Path]:
    """Build a package directory under tmp_path/src/<name>."""
    counter = iter(range(10**6))

    def build(
        manifest: dict[str, Any] | None = None,
        files: dict[str, str | bytes] | None = None,
        name: str | None = None,
    ) -> Path:
        return write_package(tmp_path / "src" / (name or f"pkg{next(counter)}"), manifest, files)

    return build


@pytest.fixture
def small_fs(tmp_path: Path) -> Any:
    """A factory of small tmpfs mounts (root only), all unmounted at teardown."""
    import os

    from pack05_testlib import SmallFs

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts: list[SmallFs] = []

    def make(size: int = 512 * 1024, inodes: int = 4096) -> SmallFs:
        fs = SmallFs(tmp_path / f"fs{len(mounts)}", size, inodes)
        mounts.append(fs)
        return fs

    yield make
    for fs in mounts:
        fs.unmount()


@pytest.fixture(scope="session", autouse=True)
def uid_claims_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Plugin uids are claimed host-wide (pack04 README "Plugin identity"): every launcher
    this session starts claims them in a temp dir, never in /var/lib/aurora."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AURORA_UID_CLAIMS", str(tmp_path_factory.mktemp("uid-claims") / "plugin-uids"))
        yield
