"""Many processes changing the registry at once lose nothing (core/registry.py, core/loader.py)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from core.audit import read_audit, read_audit_raw
from core.loader import PluginLoader
from core.registry import PluginRegistry

from pack05_testlib import make_manifest, write_package

WORKERS = 16
EACH = 50

# Heavy (real processes), but part of the default suite: nothing deselects `slow`.
pytestmark = pytest.mark.slow


def _register_many(plugins_dir: str, worker: int) -> None:
    registry = PluginRegistry(Path(plugins_dir))  # its own object, as a separate program would
    for i in range(EACH):
        manifest = make_manifest(id=f"w{worker}.p{i}", permissions=None, description=None)
        registry.register(manifest, ["main.py"])


def test_16_processes_x_50_registrations_all_present(tmp_path: Path) -> None:
    plugins_dir = tmp_path / "plugins"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_register_many, args=(str(plugins_dir), w)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    plugins = PluginRegistry(plugins_dir).list()
    expected = {f"w{w}.p{i}" for w in range(WORKERS) for i in range(EACH)}
    assert len(plugins) == WORKERS * EACH
    assert set(plugins) == expected
    audit = read_audit(plugins_dir / "audit.log")
    assert sorted(e["id"] for e in audit) == sorted(expected)
    # each change: its record before, its commit line after; nothing left unresolved
    assert len(read_audit_raw(plugins_dir / "audit.log")) == 2 * WORKERS * EACH


def _stage_many(plugins_dir: str, src: str, worker: int) -> None:
    loader = PluginLoader(Path(plugins_dir))
    for i in range(5):
        pkg = write_package(
            Path(src) / f"w{worker}-{i}", make_manifest(id=f"s{worker}.p{i}", permissions=None)
        )
        loader.stage_package(pkg)


def test_concurrent_stagers_and_registrations(tmp_path: Path) -> None:
    plugins_dir = tmp_path / "plugins"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_stage_many, args=(str(plugins_dir), str(tmp_path), w)) for w in range(4)
    ]
    procs += [ctx.Process(target=_register_many, args=(str(plugins_dir), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    loader = PluginLoader(plugins_dir)
    ids = loader.registry.ids()
    assert len(ids) == 4 * 5 + 2 * EACH
    for w in range(4):
        for i in range(5):
            assert loader.verify(f"s{w}.p{i}") == []
