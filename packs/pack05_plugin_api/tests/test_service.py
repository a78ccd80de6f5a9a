"""Tests of core.service: the inbox is staged through the real loader or quarantined."""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from core import health, service, storage
from core.errors import PluginError
from core.loader import PluginLoader
from core.registry import PluginRegistry

PACK_ROOT = Path(__file__).resolve().parent.parent

Build = Callable[..., Path]


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    return tmp_path / "plugins"


@pytest.fixture
def paths(tmp_path: Path) -> health.Paths:
    run = tmp_path / "run"
    run.mkdir()
    return health.Paths(str(PACK_ROOT), str(tmp_path / "data"), str(run), str(tmp_path / "logs"))


def make_service(
    plugins: Path, paths: health.Paths, stager: service.Stager | None = None, **kw: Any
) -> service.InboxService:
    svc = service.InboxService(
        plugins,
        paths,
        stager or PluginLoader(plugins),
        is_refusal=lambda exc: isinstance(exc, PluginError),
        registry_check=lambda: PluginRegistry(plugins).list(),
        **{"interval": 0.05, "settle": 0.0, **kw},
    )
    svc.prepare()
    return svc


@pytest.fixture
def svc(plugins: Path, paths: health.Paths) -> service.InboxService:
    return make_service(plugins, paths)


def drop(src: Path, inbox: Path, name: str | None = None) -> Path:
    """Complete by rename, as writers are told to do."""
    target = inbox / (name or src.name)
    os.rename(src, target)
    return target


def settle_and_scan(svc: service.InboxService) -> None:
    """With settle=0 one scan takes a complete entry; a second one must change nothing."""
    svc.scan_once()
    svc.scan_once()


def registered(plugins: Path) -> list[str]:
    return sorted(PluginRegistry(plugins).list())


def reason_of(plugins: Path, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((plugins / "quarantine" / f"{name}.reason.json").read_text())
    return doc


# --- accepted --------------------------------------------------------------------------------


def test_dropped_package_is_staged_and_leaves_the_inbox(
    svc: service.InboxService, plugins: Path, package_factory: Build
) -> None:
    drop(package_factory(), svc.inbox, "echo")
    settle_and_scan(svc)
    assert registered(plugins) == ["acme.echo"]
    assert os.listdir(svc.inbox) == []
    assert svc.counts == {"staged": 1, "quarantined": 0, "errors": 0}


def test_archive_is_staged(
    svc: service.InboxService, plugins: Path, package_factory: Build
) -> None:
    pkg = package_factory()
    archive = pkg.parent / "echo.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(pkg, arcname="echo")
    drop(archive, svc.inbox)
    settle_and_scan(svc)
    assert registered(plugins) == ["acme.echo"]
    assert os.listdir(svc.inbox) == []


def test_entry_is_not_taken_while_it_changes(
    plugins: Path, paths: health.Paths, package_factory: Build
) -> None:
    svc = make_service(plugins, paths, settle=3600)
    item = drop(package_factory(), svc.inbox, "echo")
    svc.scan_once()
    (item / "more.py").write_text("# still being copied\n")
    svc.scan_once()  # changed since the last look: wait
    assert registered(plugins) == []
    assert svc.status("running")["pending"] == ["echo"]
    svc.settle = 0.0  # quiet long enough
    svc.scan_once()
    assert registered(plugins) == ["acme.echo"]


def test_entry_waits_for_the_settle_period(
    plugins: Path, paths: health.Paths, package_factory: Build
) -> None:
    svc = make_service(plugins, paths, settle=3600)
    drop(package_factory(), svc.inbox, "echo")
    settle_and_scan(svc)
    assert registered(plugins) == []
    assert os.listdir(svc.inbox) == ["echo"]
    assert svc.status("running")["pending"] == ["echo"]


def test_hidden_entries_are_left_alone(
    svc: service.InboxService, plugins: Path, package_factory: Build
) -> None:
    drop(package_factory(), svc.inbox, ".being-copied")
    settle_and_scan(svc)
    assert os.listdir(svc.inbox) == [".being-copied"]
    assert registered(plugins) == []


def test_leftover_of_a_crashed_delete_is_removed_at_start(
    plugins: Path, paths: health.Paths, package_factory: Build
) -> None:
    inbox = plugins / "inbox"
    inbox.mkdir(parents=True)
    drop(package_factory(), inbox, ".done-echo.123.456")
    make_service(plugins, paths)
    assert os.listdir(inbox) == []


# --- refused ---------------------------------------------------------------------------------


def _bad_id(tmp: Path, build: Build) -> Path:
    return build({"id": "../../x", "name": "X", "version": "1.0.0", "entrypoint": "main.py"})


def _tar_escape(tmp: Path, build: Build) -> Path:
    path = tmp / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("manifest.json", b"{}"), ("../escaped.txt", b"pwned")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _zip_absolute(tmp: Path, build: Build) -> Path:
    path = tmp / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("manifest.json", "{}")
        zf.writestr("/tmp/escaped.txt", "pwned")
    return path


def _symlink_out(tmp: Path, build: Build) -> Path:
    pkg = build()
    (pkg / "secret").symlink_to("/etc/passwd")
    return pkg


def _link_entry(tmp: Path, build: Build) -> Path:
    link = tmp / "link"
    link.symlink_to(build())
    return link


def _fifo_entry(tmp: Path, build: Build) -> Path:
    path = tmp / "fifo"
    os.mkfifo(path)
    return path


def _socket_entry(tmp: Path, build: Build) -> Path:
    path = tmp / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    return path


def _not_a_package(tmp: Path, build: Build) -> Path:
    path = tmp / "notes.txt"
    path.write_text("hello")
    return path


def _no_entrypoint(tmp: Path, build: Build) -> Path:
    return build(files={"other.py": "x = 1\n"})


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(_bad_id, "must be publisher.name", id="bad-id"),
        pytest.param(_tar_escape, "escapes the package", id="tar-dotdot-member"),
        pytest.param(_zip_absolute, "absolute path", id="zip-absolute-member"),
        pytest.param(_symlink_out, "symlink 'secret'", id="symlink-escape"),
        pytest.param(_link_entry, "symlinks", id="inbox-entry-is-symlink"),
        pytest.param(_fifo_entry, "FIFOs", id="fifo"),
        pytest.param(_socket_entry, "sockets", id="socket"),
        pytest.param(_not_a_package, "expected a directory, a .zip or a .tar.gz", id="text-file"),
        pytest.param(_no_entrypoint, "entrypoint", id="missing-entrypoint"),
    ],
)
def test_hostile_entry_goes_to_quarantine_with_its_reason(
    svc: service.InboxService,
    plugins: Path,
    tmp_path: Path,
    package_factory: Build,
    make: Callable[[Path, Build], Path],
    expected: str,
) -> None:
    item = drop(make(tmp_path, package_factory), svc.inbox)
    settle_and_scan(svc)
    assert os.listdir(svc.inbox) == []
    assert os.path.lexists(plugins / "quarantine" / item.name)
    reason = reason_of(plugins, item.name)
    assert reason["item"] == item.name
    assert reason["reason"] and expected in reason["reason"] + " ".join(reason["problems"])
    assert registered(plugins) == []
    assert not (plugins / "packages").exists() or not any((plugins / "packages").iterdir())
    assert list(tmp_path.rglob("escaped.txt")) == []
    assert svc.counts["quarantined"] == 1 and svc.counts["errors"] == 0
    assert svc.last_error is not None and svc.last_error["item"] == item.name


def test_bad_item_does_not_stop_the_good_one(
    svc: service.InboxService, plugins: Path, tmp_path: Path, package_factory: Build
) -> None:
    drop(_bad_id(tmp_path, package_factory), svc.inbox, "a-bad")
    drop(package_factory(), svc.inbox, "b-good")
    settle_and_scan(svc)
    assert registered(plugins) == ["acme.echo"]
    assert sorted(os.listdir(plugins / "quarantine")) == ["a-bad", "a-bad.reason.json"]


def test_same_name_quarantined_twice_keeps_both(
    svc: service.InboxService, plugins: Path, tmp_path: Path
) -> None:
    for _ in range(2):
        (tmp_path / "notes.txt").write_text("hello")
        drop(tmp_path / "notes.txt", svc.inbox)
        settle_and_scan(svc)
    assert sorted(os.listdir(plugins / "quarantine")) == [
        "notes.txt",
        "notes.txt.1",
        "notes.txt.1.reason.json",
        "notes.txt.reason.json",
    ]


class _Exploding:
    def stage_package(self, path: Any) -> dict[str, Any]:
        raise RuntimeError("bug in the loader")


class _Vanishing:
    def stage_package(self, path: Any) -> dict[str, Any]:
        os.rename(path, Path(path).parent / ".taken-back")
        raise FileNotFoundError(path)


def test_unexpected_error_is_quarantined_counted_and_survived(
    plugins: Path, paths: health.Paths, package_factory: Build
) -> None:
    svc = make_service(plugins, paths, _Exploding())
    drop(package_factory(), svc.inbox, "echo")
    settle_and_scan(svc)
    assert svc.counts["errors"] == 1
    assert reason_of(plugins, "echo")["reason"] == (
        "unexpected error: RuntimeError: bug in the loader"
    )


def test_item_taken_back_while_staging_is_forgotten(
    plugins: Path, paths: health.Paths, package_factory: Build
) -> None:
    svc = make_service(plugins, paths, _Vanishing())
    drop(package_factory(), svc.inbox, "echo")
    settle_and_scan(svc)
    assert not (plugins / "quarantine" / "echo").exists()
    assert svc.counts == {"staged": 0, "quarantined": 0, "errors": 0}


# --- status, registry, stop ------------------------------------------------------------------


def test_status_file_is_what_health_reads(
    svc: service.InboxService, paths: health.Paths, package_factory: Build
) -> None:
    drop(package_factory(), svc.inbox, "echo")
    settle_and_scan(svc)
    svc.write_status("running")
    status = health.read_status(paths.status_file)
    assert status is not None
    assert status["schema"] == health.STATUS_SCHEMA
    assert status["pid"] == os.getpid()
    assert status["counts"]["staged"] == 1 and status["scans"] == 2
    assert status["pending"] == [] and status["current"] is None
    assert status["plugins_dir"] == str(svc.plugins_dir)
    assert status["last_error"] is None and status["registry_error"] is None


def test_corrupt_registry_is_reported(svc: service.InboxService, plugins: Path) -> None:
    (plugins / "registry.json").write_text("{not json")
    svc.scan_once()
    assert svc.registry_error is not None and "registry.json" in svc.registry_error


def test_inbox_removed_by_an_operator_is_recreated(svc: service.InboxService) -> None:
    os.rmdir(svc.inbox)
    svc.scan_once()
    assert svc.inbox.is_dir()


def test_stop_before_an_item_leaves_it_in_the_inbox(
    svc: service.InboxService, plugins: Path, package_factory: Build
) -> None:
    drop(package_factory(), svc.inbox, "echo")
    stop = threading.Event()
    stop.set()
    svc.scan_once(stop)
    assert os.listdir(svc.inbox) == ["echo"]
    assert registered(plugins) == []


def test_run_loop_stages_then_stops_cleanly(
    svc: service.InboxService, plugins: Path, paths: health.Paths, package_factory: Build
) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=svc.run, args=(stop,))
    thread.start()
    try:
        drop(package_factory(), svc.inbox, "echo")
        deadline = time.monotonic() + 30
        while svc.counts["staged"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert registered(plugins) == ["acme.echo"]
    status = health.read_status(paths.status_file)
    assert status is not None and status["state"] == "stopped"


# --- command line ----------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DATA", "RUN", "LOGS"):
        monkeypatch.setenv(f"AURORA_PACK_{name}", str(tmp_path / "env" / name.lower()))
    return tmp_path / "env"


def test_check_writes_nothing(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert service.main(["--check"]) == service.EXIT_OK
    assert "dry-run OK" in capsys.readouterr().out
    assert not cli_env.exists()


def test_init_creates_the_layout(cli_env: Path) -> None:
    assert service.main(["--init"]) == service.EXIT_OK
    for sub in (
        "data/plugins/inbox",
        "data/plugins/quarantine",
        "data/plugins/packages",
        "run",
        "logs",
    ):
        assert (cli_env / sub).is_dir()


def test_a_second_service_refuses_to_run(cli_env: Path) -> None:
    run = cli_env / "run"
    run.mkdir(parents=True)
    with storage.locked(run / health.SERVICE_LOCK_NAME):
        assert service.main([]) == service.EXIT_ALREADY_RUNNING
    assert not (run / health.PIDFILE_NAME).exists()


def test_bad_interval_is_a_usage_error(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(service.POLL_ENV, "fast")
    with pytest.raises(SystemExit) as info:
        service.main([])
    assert info.value.code == service.EXIT_USAGE
    assert "'fast': expected a number of seconds" in capsys.readouterr().err
