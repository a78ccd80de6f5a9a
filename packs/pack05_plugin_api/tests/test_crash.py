"""Processes SIGKILLed at random while registering and staging leave a sound registry."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from multiprocessing.connection import Connection, wait
from pathlib import Path

import pytest
from core.loader import PluginLoader, tree_digest
from core.registry import PluginRegistry

from pack05_testlib import make_manifest, write_package

ROUNDS = 50

# Heavy (real processes), but part of the default suite: nothing deselects `slow`.
pytestmark = pytest.mark.slow


def _registrar(plugins_dir: str, round_: int, conn: Connection) -> None:
    registry = PluginRegistry(Path(plugins_dir))
    for i in range(10_000):
        plugin_id = f"r{round_}.p{i}"
        registry.register(make_manifest(id=plugin_id, permissions=None), ["main.py"])
        conn.send(plugin_id)  # acknowledged: register() returned


def _stager(plugins_dir: str, sources: list[str], conn: Connection) -> None:
    loader = PluginLoader(Path(plugins_dir))
    for src in sources:
        result = loader.stage_package(src)
        conn.send((result["id"], result["version"], result["digest"]))


def _drain(conn: Connection) -> list[object]:
    got = []
    while conn.poll():
        try:
            got.append(conn.recv())
        except EOFError:
            break
    return got


def test_random_sigkill_during_registration_and_staging(tmp_path: Path) -> None:
    plugins_dir = tmp_path / "plugins"
    rng = random.Random(5)
    ctx = multiprocessing.get_context("fork")
    # Packages of a few files, one of them large enough that a kill can land mid-copy.
    sources: list[str] = []
    expected: dict[tuple[str, str], str] = {}
    for i in range(6):
        files: dict[str, str | bytes] = {
            "main.py": f"print({i})\n",
            "blob.bin": os.urandom(300_000),
        }
        src = write_package(
            tmp_path / "src" / f"p{i}", make_manifest(id=f"stage.p{i}", permissions=None), files
        )
        sources.append(str(src))
    acked_ids: set[str] = set()
    acked_stage: set[tuple[str, str, str]] = set()
    for round_ in range(ROUNDS):
        r_recv, r_send = ctx.Pipe(duplex=False)
        s_recv, s_send = ctx.Pipe(duplex=False)
        order = sources[:]
        rng.shuffle(order)
        procs = [
            ctx.Process(target=_registrar, args=(str(plugins_dir), round_, r_send)),
            ctx.Process(target=_stager, args=(str(plugins_dir), order, s_send)),
        ]
        for p in procs:
            p.start()
        if round_ % 2:
            # Half the rounds kill after a first acknowledged staging, however loaded the
            # machine is, so that both paths are always exercised.
            wait([s_recv, procs[1].sentinel], 30)
        time.sleep(rng.uniform(0.0, 0.04))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        for p in procs:
            p.join(10)
            assert p.exitcode in (0, -signal.SIGKILL)  # killed, or done: never an error
        acked_ids.update(str(x) for x in _drain(r_recv))
        acked_stage.update(tuple(x) for x in _drain(s_recv))  # type: ignore[arg-type]
        for c in (r_recv, r_send, s_recv, s_send):
            c.close()

        # After every kill: the registry loads and holds everything acknowledged.
        registry = PluginRegistry(plugins_dir)
        plugins = registry.list()
        assert acked_ids <= set(plugins)
        for plugin_id, version, digest in acked_stage:
            assert plugins[plugin_id]["versions"][version]["digest"] == digest
    assert acked_ids and acked_stage  # the test exercised both paths

    # No half-staged directory under packages/: each one is a complete tree.
    loader = PluginLoader(plugins_dir)
    for i, src in enumerate(sources):
        expected[(f"stage.p{i}", "1.0.0")] = _digest_of(loader, Path(src))
    packages = plugins_dir / "packages"
    for id_dir in packages.iterdir():
        for version_dir in id_dir.iterdir():
            entries = loader._walk(version_dir, str(version_dir))
            loader._hash_tree(version_dir, entries)
            digest = tree_digest(entries)
            assert digest == expected[(id_dir.name, version_dir.name)], version_dir
    for plugin_id, version, _ in acked_stage:
        assert loader.verify(plugin_id, version) == []
    # The next stager cleans what the killed ones left in staging/.
    loader.stage_package(sources[0])
    assert list(loader.staging_dir.iterdir()) == []


def _digest_of(loader: PluginLoader, src: Path) -> str:
    entries = loader._walk(src, str(src))
    loader._hash_tree(src, entries)
    return tree_digest(entries)


def _replacer(plugins_dir: str, sources: list[str], conn: Connection) -> None:
    loader = PluginLoader(Path(plugins_dir))
    for k in range(10_000):
        result = loader.stage_package(sources[k % len(sources)], replace=True)
        conn.send(result["digest"])


def test_random_sigkill_during_replace_keeps_files_and_registry_in_step(tmp_path: Path) -> None:
    """Killed while replacing a version's content: the registry names a directory holding
    exactly the registered digest (what pack04 verifies before each start), every time."""
    plugins_dir = tmp_path / "plugins"
    rng = random.Random(7)
    ctx = multiprocessing.get_context("fork")
    sources = [
        str(
            write_package(
                tmp_path / "src" / f"c{i}",
                make_manifest(id="acme.flip", permissions=None),
                {"main.py": f"print({i})\n", "data.bin": os.urandom(50_000 + i)},
            )
        )
        for i in range(3)
    ]
    loader = PluginLoader(plugins_dir)
    digests = [_digest_of(loader, Path(src)) for src in sources]
    last_acked: str | None = None
    for _ in range(ROUNDS):
        recv, send = ctx.Pipe(duplex=False)
        order = sources[:]
        rng.shuffle(order)
        proc = ctx.Process(target=_replacer, args=(str(plugins_dir), order, send))
        proc.start()
        # The first staging of the round is acknowledged: the ones the kill hits replace.
        wait([recv, proc.sentinel], 30)
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL  # killed, not failed
        acked = [str(d) for d in _drain(recv)]
        recv.close()
        send.close()
        last_acked = acked[-1] if acked else last_acked

        record = PluginRegistry(plugins_dir).get("acme.flip")
        assert record is not None
        entry = record["versions"]["1.0.0"]
        assert entry["digest"] in digests
        assert loader.verify("acme.flip", "1.0.0") == [], entry["path"]
        if acked:
            # the last acknowledged content, or the next one if the kill hit after the
            # registry write but before the acknowledgement
            position = order.index(sources[digests.index(acked[-1])])
            following = digests[sources.index(order[(position + 1) % len(order)])]
            assert entry["digest"] in (acked[-1], following)
    assert last_acked is not None
    # The next staging removes what the killed replacers left beside the registered copy.
    loader.stage_package(sources[0], replace=True)
    entry = PluginRegistry(plugins_dir).get("acme.flip")["versions"]["1.0.0"]  # type: ignore[index]
    assert [p.name for p in (plugins_dir / "packages" / "acme.flip").iterdir()] == [
        Path(entry["path"]).name
    ]
    assert list(loader.staging_dir.iterdir()) == []
