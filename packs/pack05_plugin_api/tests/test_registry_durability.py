"""registry.json on disk: atomic replace, backup, corruption, cache, lock (core/registry.py)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from pathlib import Path

import pytest
from core import storage
from core.errors import RegistryError
from core.registry import PluginRegistry

from pack05_testlib import make_manifest


def _register(reg: PluginRegistry, plugin_id: str) -> None:
    reg.register(make_manifest(id=plugin_id, permissions=None), ["main.py"])


def test_reading_an_absent_registry_creates_nothing(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    assert reg.list() == {} and reg.get("acme.echo") is None
    assert not plugins_dir.exists()


def test_default_directory_comes_from_aurora_pack_data(pack_data: Path) -> None:
    reg = PluginRegistry()
    _register(reg, "acme.one")
    assert (pack_data / "plugins" / "registry.json").exists()


def test_previous_version_is_kept_as_backup(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    _register(reg, "acme.one")
    first = reg.path.read_bytes()
    _register(reg, "acme.two")
    assert reg.backup_path.read_bytes() == first
    assert set(json.loads(reg.path.read_text())["plugins"]) == {"acme.one", "acme.two"}
    assert sorted(p.name for p in plugins_dir.iterdir() if ".tmp" in p.name) == []


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"schema": "aurora-plugin-registry-v1", "plugins": {', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00\x00\x00", id="binary"),
        pytest.param(b'{"acme.echo": {"manifest": {}}}', id="reference-format"),
        pytest.param(b'{"schema": "aurora-plugin-registry-v1", "plugins": []}', id="bad-plugins"),
    ],
)
def test_corrupt_registry_raises_naming_file_and_backup_and_is_never_reset(
    plugins_dir: Path, content: bytes
) -> None:
    reg = PluginRegistry(plugins_dir)
    _register(reg, "acme.one")
    _register(reg, "acme.two")
    reg.path.write_bytes(content)
    fresh = PluginRegistry(plugins_dir)
    with pytest.raises(RegistryError) as info:
        fresh.list()
    message = str(info.value)
    assert str(reg.path) in message and str(reg.backup_path) in message
    with pytest.raises(RegistryError):
        _register(fresh, "acme.three")
    assert reg.path.read_bytes() == content  # untouched: not reset to empty
    assert "acme.one" in json.loads(reg.backup_path.read_text())["plugins"]


def test_missing_registry_with_a_backup_is_an_error(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    _register(reg, "acme.one")
    _register(reg, "acme.two")
    reg.path.unlink()
    with pytest.raises(RegistryError, match="missing but a backup exists"):
        PluginRegistry(plugins_dir).list()


def test_failed_replace_keeps_the_old_registry_and_no_temp_file(
    plugins_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = PluginRegistry(plugins_dir)
    _register(reg, "acme.one")
    before = reg.path.read_bytes()

    def boom(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", boom)
    with pytest.raises(OSError, match="No space left"):
        _register(reg, "acme.two")
    monkeypatch.undo()
    assert reg.path.read_bytes() == before
    assert [p.name for p in plugins_dir.iterdir() if ".tmp" in p.name] == []
    assert list(PluginRegistry(plugins_dir).list()) == ["acme.one"]


def test_writes_go_through_fsync(plugins_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(storage.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    _register(PluginRegistry(plugins_dir), "acme.one")
    assert len(synced) >= 2  # the new file and its directory


def test_a_second_object_sees_changes_of_the_first(plugins_dir: Path) -> None:
    a, b = PluginRegistry(plugins_dir), PluginRegistry(plugins_dir)
    assert b.list() == {}
    _register(a, "acme.one")
    assert list(b.list()) == ["acme.one"]
    a.disable("acme.one")
    b.enable("acme.one")
    assert a.get("acme.one")["enabled"] is True


def test_file_replaced_behind_the_cache_is_reread(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    _register(reg, "acme.one")
    assert list(reg.list()) == ["acme.one"]
    data = json.loads(reg.path.read_text())
    data["plugins"]["acme.one"]["enabled"] = True
    tmp = plugins_dir / "edited"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, reg.path)
    assert reg.get("acme.one")["enabled"] is True


def test_writers_wait_for_the_lock(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    _register(reg, "acme.one")
    fd = os.open(reg.lock_path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (_register(PluginRegistry(plugins_dir), "acme.two"), done.set())
    )
    worker.start()
    try:
        assert not done.wait(0.3)  # blocked while we hold the lock
        assert list(reg.list()) == ["acme.one"]  # readers are not blocked
    finally:
        os.close(fd)
    assert done.wait(10)
    worker.join()
    assert set(reg.list()) == {"acme.one", "acme.two"}
    assert reg.lock_path.exists()  # the lock file is never deleted


def test_one_compact_line_per_plugin_on_disk(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    assert reg.get("acme.one") is None
    for pid in ("acme.one", "acme.two", "acme.three"):
        _register(reg, pid)
    lines = reg.path.read_text().split("\n")
    assert len(lines) == 5 and lines[-1] == "}}"
    assert lines[0].startswith('{"schema":"aurora-plugin-registry-v1",')
    assert [line.split(":", 1)[0] for line in lines[1:4]] == [
        '"acme.one"',
        '"acme.two"',
        '"acme.three"',
    ]
    assert all(" " not in line.split('"name"')[0] for line in lines)  # compact
    assert set(json.loads(reg.path.read_text())["plugins"]) == {
        "acme.one",
        "acme.two",
        "acme.three",
    }


def test_get_reads_one_line_when_another_process_wrote(plugins_dir: Path) -> None:
    a, b = PluginRegistry(plugins_dir), PluginRegistry(plugins_dir)
    _register(a, "acme.one")
    assert b.get("acme.one")["enabled"] is False
    a.enable("acme.one")
    assert b.get("acme.one")["enabled"] is True  # b's view is stale: it reads the new line
    assert b.get("acme.two") is None
    _register(b, "acme.two")  # and b can still write on top of a's change
    assert a.get("acme.one")["enabled"] is True and a.get("acme.two") is not None


def test_a_file_in_another_layout_is_still_read(plugins_dir: Path) -> None:
    reg = PluginRegistry(plugins_dir)
    _register(reg, "acme.one")
    data = json.loads(reg.path.read_text())
    reg.path.write_text(json.dumps(data, indent=0))  # every key at a line start
    fresh = PluginRegistry(plugins_dir)
    assert fresh.get("acme.one")["manifest"]["id"] == "acme.one"
    assert fresh.get("1.0.0") is None  # a version key is not a plugin
    _register(fresh, "acme.two")
    assert set(PluginRegistry(plugins_dir).list()) == {"acme.one", "acme.two"}


def test_a_write_re_encodes_only_the_records_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.registry as registry_module

    writer = PluginRegistry(tmp_path)
    for i in range(20):
        writer.register(make_manifest(id=f"acme.p{i}", permissions=None), ["main.py"])
    encoded: list[object] = []
    real_encode = registry_module._encode

    def counting_encode(value: object) -> str:
        encoded.append(value)
        return real_encode(value)

    monkeypatch.setattr(registry_module, "_encode", counting_encode)
    fresh = PluginRegistry(tmp_path)  # a new process: it read the file, never wrote it
    fresh.list()
    fresh.enable("acme.p3")
    records = [v for v in encoded if isinstance(v, dict) and "versions" in v]
    assert len(records) == 1 and records[0]["enabled"] is True
    assert PluginRegistry(tmp_path).list() == fresh.list()
    assert json.loads(fresh.path.read_text())["plugins"]["acme.p3"]["enabled"] is True
