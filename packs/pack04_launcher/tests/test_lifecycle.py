"""install.sh, start.sh, stop.sh and health_check.sh run as the installer runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher import diskimage, process
from launcher.paths import Paths
from launcher.service import MAX_RUNTIME_ENV
from launcher.status import read_status
from launcher_testing import (
    ESCAPE,
    IDLE,
    PACK_ROOT,
    FakeRegistry,
    plugin_status_record,
    read_pid,
    real_sandbox_root,
    service_env,
    wait_until,
)


def _script(name: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PACK_ROOT / name), *args],
        env=env,
        cwd="/",  # scripts work from any directory
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path, fake_registry: FakeRegistry) -> Iterator[dict[str, str]]:
    env = service_env(tmp_path, fake_registry.path)
    yield env
    _script("stop.sh", env)


def test_install_dry_run_writes_nothing(env: dict[str, str], tmp_path: Path) -> None:
    res = _script("install.sh", env, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "dry-run: would create" in res.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_install_creates_the_dirs(env: dict[str, str], tmp_path: Path) -> None:
    res = _script("install.sh", env, "--install")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "data/plugin-data").is_dir() and (tmp_path / "logs/plugins").is_dir()


def test_install_without_a_mode_is_a_usage_error(env: dict[str, str]) -> None:
    res = _script("install.sh", env)
    assert res.returncode == 2 and "usage: install.sh --dry-run | --install" in res.stderr


def test_start_health_stop(env: dict[str, str], fake_registry: FakeRegistry) -> None:
    fake_registry.add("acme.escape", ESCAPE)
    paths = Paths.from_env(env)
    assert _script("health_check.sh", env).returncode == 1
    res = _script("start.sh", env)
    assert res.returncode == 0, res.stderr
    assert "launcher started" in res.stderr
    ident = process.running_from_pidfile(paths.pidfile)
    assert ident is not None
    again = _script("start.sh", env)
    assert again.returncode == 0 and "already running" in again.stderr
    health = _script("health_check.sh", env)
    assert health.returncode == 0 and "healthy" in health.stderr
    grandchild = read_pid(paths.plugin_data("acme.escape") / "grandchild")
    stop = _script("stop.sh", env)
    assert stop.returncode == 0, stop.stderr
    assert not ident.alive() and not grandchild.alive()
    assert _script("health_check.sh", env).returncode == 1
    doc = read_status(paths.status)
    assert doc is not None and doc["service"]["running"] is False


def test_start_reports_a_service_that_dies(env: dict[str, str], tmp_path: Path) -> None:
    # A launcher that cannot start (here: a bad option) is reported, not "started".
    res = _script("start.sh", env, "--", "--poll", "soon")
    assert res.returncode == 1
    assert "exited with status 2 while starting" in res.stderr
    assert "invalid float value: 'soon'" in res.stderr


def test_start_takes_the_max_runtime_from_the_environment(
    env: dict[str, str], fake_registry: FakeRegistry
) -> None:
    # The installer runs start.sh without arguments: the operator sets the bound in the env.
    fake_registry.add("acme.idle", IDLE)  # never ends on its own
    paths = Paths.from_env(env)
    res = _script("start.sh", {**env, MAX_RUNTIME_ENV: "1"})
    assert res.returncode == 0, res.stderr

    def _reason() -> str | None:
        reason = plugin_status_record(paths.status, "acme.idle").get("reason")
        return reason if isinstance(reason, str) else None

    reason = wait_until(lambda: (r := _reason()) and "wall-clock" in r and r, what="bound")
    assert "killed at the wall-clock bound (1s)" in reason
    assert "max runtime 1s" in paths.service_log.read_text()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("ten", id="not-a-number"),
        pytest.param("-1", id="negative"),
        pytest.param("nan", id="nan"),
    ],
)
def test_start_refuses_an_invalid_max_runtime_and_starts_nothing(
    env: dict[str, str], tmp_path: Path, value: str
) -> None:
    paths = Paths.from_env(env)
    res = _script("start.sh", {**env, MAX_RUNTIME_ENV: value})
    assert res.returncode == 1
    assert f"error: {MAX_RUNTIME_ENV}={value!r}: expected a number of seconds" in res.stderr
    assert "launcher not started" in res.stderr
    assert not paths.pidfile.exists() and not paths.service_log.exists()
    assert not (tmp_path / "run").exists()


def test_health_fails_on_a_stale_heartbeat(env: dict[str, str]) -> None:
    paths = Paths.from_env(env)
    assert _script("start.sh", env).returncode == 0
    ident = process.running_from_pidfile(paths.pidfile)
    assert ident is not None
    os.kill(ident.pid, signal.SIGSTOP)  # alive but not working: no heartbeat
    try:
        time.sleep(1.0)  # twice --max-age: the bound is the behaviour under test
        res = subprocess.run(
            [env["PYTHON"], "-m", "launcher.lifecycle", "health", "--max-age", "0.5"],
            cwd=PACK_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.kill(ident.pid, signal.SIGCONT)
    assert res.returncode == 1 and "last heartbeat" in res.stderr


def test_a_killed_services_fork_server_stops_its_plugins(
    tmp_path: Path, fake_registry: FakeRegistry
) -> None:
    env = service_env(tmp_path, fake_registry.path, real_sandbox_root())
    fake_registry.add("acme.escape", ESCAPE)
    paths = Paths.from_env(env)
    try:
        assert _script("start.sh", env).returncode == 0
        grandchild = read_pid(paths.plugin_data("acme.escape") / "grandchild")
        server = process.running_from_pidfile(paths.sandbox_server_pidfile)
        service = process.running_from_pidfile(paths.pidfile)
        assert server is not None and service is not None and grandchild.alive()
        os.kill(service.pid, signal.SIGKILL)
        # The server gets SIGTERM when its supervisor dies: it stops every run it started
        # (TERM, grace, KILL), the setsid grandchild included, and removes its socket.
        assert process.wait_gone([server, grandchild], 30) == []
        assert not paths.sandbox_socket.exists()
        stop = _script("stop.sh", env)
        assert stop.returncode == 0, stop.stderr
    finally:
        _script("stop.sh", env)


def test_stop_sh_unmounts_the_data_images_a_killed_service_left(
    tmp_path: Path, fake_registry: FakeRegistry
) -> None:
    try:
        diskimage._host_can()
    except diskimage.DiskUnavailable as exc:
        pytest.skip(f"data images unavailable here: {exc}")
    env = service_env(tmp_path, fake_registry.path)
    fake_registry.add("acme.idle", IDLE)
    paths = Paths.from_env(env)
    try:
        assert _script("start.sh", env).returncode == 0  # as installed: images on
        read_pid(paths.plugin_data("acme.idle") / "pid")  # written on its own filesystem
        assert diskimage.mounted(paths.plugin_data("acme.idle"))
        service = process.running_from_pidfile(paths.pidfile)
        assert service is not None
        os.kill(service.pid, signal.SIGKILL)
        assert process.wait_gone([service], 10) == []
        assert diskimage.mounted(paths.plugin_data("acme.idle"))  # left behind
        stop = _script("stop.sh", env)
        assert stop.returncode == 0, stop.stderr
        assert not diskimage.mounted(paths.plugin_data("acme.idle"))
    finally:
        _script("stop.sh", env)
        diskimage.unmount_all(paths.plugin_data_root)
    deadline = time.monotonic() + 5.0
    while str(tmp_path) in _losetup() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert str(tmp_path) not in _losetup()


def _losetup() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout
