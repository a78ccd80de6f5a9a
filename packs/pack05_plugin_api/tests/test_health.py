"""Tests of core.health: process identity, state files, the health verdict, its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from core import health
from core.health import Paths, ProcessRecord, check_health, current_identity

PACK_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    run = tmp_path / "run"
    run.mkdir()
    return Paths(str(PACK_ROOT), str(tmp_path / "data"), str(run), str(tmp_path / "logs"))


def _me() -> ProcessRecord:
    me = current_identity(os.getpid())
    assert me is not None
    return me


def _write(path: str | Path, doc: Any) -> None:
    Path(path).write_text(json.dumps(doc))


def _status(paths: Paths, record: ProcessRecord, **overrides: Any) -> dict[str, Any]:
    doc = {
        "pid": record.pid,
        "start_time": record.start_time,
        "state": "running",
        "heartbeat_at": time.time(),
        "interval": 1.0,
        "registry_error": None,
        "plugins_dir": os.path.join(paths.data_dir, "plugins"),
    }
    doc.update(overrides)
    return doc


@pytest.fixture
def healthy(paths: Paths) -> Paths:
    """This test process plays the service: pidfile and a fresh heartbeat."""
    _write(paths.pidfile, _me().as_dict())
    _write(paths.status_file, _status(paths, _me()))
    return paths


def _registry(paths: Paths, doc: Any) -> None:
    plugins = Path(paths.data_dir, "plugins")
    plugins.mkdir(parents=True)
    (plugins / "registry.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


GOOD_REGISTRY = {
    "schema": "aurora-plugin-registry-v1",
    "plugins": {
        "acme.echo": {
            "enabled": True,
            "active_version": "1.0.0",
            "granted": ["network"],
            "versions": {"1.0.0": {"path": "packages/acme.echo/1.0.0", "manifest": {}}},
        }
    },
}


# --- paths ----------------------------------------------------------------------------------


def test_paths_follow_the_environment_contract(tmp_path: Path) -> None:
    env = {
        "AURORA_PACK_DATA": str(tmp_path / "d"),
        "AURORA_PACK_RUN": str(tmp_path / "r"),
        "AURORA_PACK_LOGS": str(tmp_path / "l"),
    }
    paths = Paths.from_env(env)
    assert (paths.data_dir, paths.run_dir, paths.logs_dir) == tuple(env.values())
    assert paths.pidfile == str(tmp_path / "r" / "service.pid")
    assert paths.log_file == str(tmp_path / "l" / "service.log")
    assert not any((tmp_path / name).exists() for name in ("d", "r", "l"))  # nothing created


def test_paths_by_hand_default_to_the_pack_itself() -> None:
    # Run by hand from the source tree: data/, run/, logs/ inside the pack (only computed).
    paths = Paths.from_env({})
    assert paths.root == str(PACK_ROOT)
    assert paths.data_dir == str(PACK_ROOT / "data")
    assert paths.run_dir == str(PACK_ROOT / "run")
    assert paths.logs_dir == str(PACK_ROOT / "logs")


# --- identity -------------------------------------------------------------------------------


def test_identity_of_this_process() -> None:
    me = _me()
    assert me.exe == os.path.realpath(sys.executable)
    assert health.identity_problem(me) is None


def test_a_zombie_is_not_running() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    before = current_identity(proc.pid)
    deadline = time.monotonic() + 10
    while current_identity(proc.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.01)  # exited but not reaped: a zombie
    try:
        assert current_identity(proc.pid) is None
        if before is not None:
            assert "not running" in (health.identity_problem(before) or "")
    finally:
        proc.wait()


# --- check_health ---------------------------------------------------------------------------


def test_healthy_service_without_registry_yet(healthy: Paths) -> None:
    assert check_health(healthy) is None


def test_healthy_with_a_valid_registry(healthy: Paths) -> None:
    _registry(healthy, GOOD_REGISTRY)
    assert check_health(healthy) is None


def test_healthy_with_a_registry_the_real_writer_wrote(healthy: Paths) -> None:
    """health.py keeps its own copy of the registry's schema name and shape checks."""
    from core.registry import PluginRegistry

    from pack05_testlib import make_manifest

    registry = PluginRegistry(Path(healthy.data_dir) / "plugins")
    registry.register(make_manifest(), ["main.py"])
    registry.register(make_manifest(version="2.0"), ["main.py"])
    assert check_health(healthy) is None


def test_no_pidfile(paths: Paths) -> None:
    assert "not running (no pidfile" in (check_health(paths) or "")


def test_pidfile_of_another_process(healthy: Paths) -> None:
    me = _me()
    other = ProcessRecord(me.pid, me.start_time + 1, me.boot_id, me.exe)
    _write(healthy.pidfile, other.as_dict())
    assert "another process" in (check_health(healthy) or "")


def test_fifo_as_pidfile_fails_instead_of_hanging(paths: Paths) -> None:
    os.mkfifo(paths.pidfile)
    assert "not a regular file" in (check_health(paths) or "")


def _stale(p: Paths) -> dict[str, Any]:
    return _status(p, _me(), heartbeat_at=time.time() - 60)


def _other_pid(p: Paths) -> dict[str, Any]:
    return _status(p, _me(), pid=1)


def _stopping(p: Paths) -> dict[str, Any]:
    return _status(p, _me(), state="stopping")


def _registry_error(p: Paths) -> dict[str, Any]:
    return _status(p, _me(), registry_error="registry.json: corrupt (backup: registry.json.bak)")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(_stale, "the service is stuck", id="stale-heartbeat"),
        pytest.param(_other_pid, "is not from pid", id="heartbeat-of-another-pid"),
        pytest.param(_stopping, "state is 'stopping'", id="stopping"),
        pytest.param(
            _registry_error, "registry: registry.json: corrupt", id="service-saw-bad-registry"
        ),
    ],
)
def test_heartbeat_problems(
    healthy: Paths, status: Callable[[Paths], dict[str, Any]], expected: str
) -> None:
    _write(healthy.status_file, status(healthy))
    assert expected in (check_health(healthy) or "")


def test_missing_heartbeat(healthy: Paths) -> None:
    os.unlink(healthy.status_file)
    assert "no heartbeat" in (check_health(healthy) or "")


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        pytest.param('{"schema": ', "not valid JSON", id="truncated"),
        pytest.param({"schema": "v0", "plugins": {}}, "schema: expected", id="wrong-schema"),
        pytest.param(
            {"schema": "aurora-plugin-registry-v1", "plugins": []},
            "plugins: expected an object",
            id="plugins-not-object",
        ),
        pytest.param(
            {"schema": "aurora-plugin-registry-v1", "plugins": {"a.b": {"versions": {}}}},
            "plugins['a.b'].enabled",
            id="no-enabled",
        ),
        pytest.param(
            {
                "schema": "aurora-plugin-registry-v1",
                "plugins": {"a.b": {"enabled": False, "active_version": "2", "versions": {}}},
            },
            "'2' is not among its versions",
            id="dangling-active-version",
        ),
    ],
)
def test_invalid_registry_is_unhealthy(healthy: Paths, registry: Any, expected: str) -> None:
    _registry(healthy, registry)
    assert expected in (check_health(healthy) or "")


# --- JSON without json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ['{"a": [1, 2.5, -3e2, true, false, null], "b": "\\u00e9\\n"}', " [] ", '"x"', "0"],
)
def test_loads_agrees_with_json(text: str) -> None:
    assert health.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param('{"a": 1} x', id="trailing-data"),
        pytest.param('{"a": NaN}', id="nan"),
        pytest.param('{"a": 1,}', id="trailing-comma"),
        pytest.param("{'a': 1}", id="single-quotes"),
    ],
)
def test_loads_refuses_what_is_not_json(text: str) -> None:
    with pytest.raises(ValueError):
        health.loads(text.encode())


# --- command line ---------------------------------------------------------------------------


@pytest.fixture
def env_paths(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> Paths:
    monkeypatch.setenv("AURORA_PACK_RUN", paths.run_dir)
    return paths


def test_cli_fail_says_why(env_paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert health.main([]) == health.EXIT_FAILED
    assert capsys.readouterr().out.startswith("health FAIL: not running (no pidfile")


def test_cli_ok_json(env_paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    _write(env_paths.pidfile, _me().as_dict())
    _write(env_paths.status_file, _status(env_paths, _me()))
    assert health.main(["--json"]) == health.EXIT_OK
    out = capsys.readouterr()
    assert json.loads(out.out) == {"healthy": True, "reason": None}
    assert out.err.strip() == "health OK"


def test_cli_usage(env_paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert health.main(["--verbose"]) == health.EXIT_USAGE
    assert "unrecognized arguments: --verbose" in capsys.readouterr().err
    assert health.main(["--help"]) == health.EXIT_OK
    assert "health OK" in capsys.readouterr().out


def test_runs_by_path_without_the_plugin_core(env_paths: Paths) -> None:
    """health_check.sh runs the file by path with -S: it must not need `core` or site."""
    proc = subprocess.run(
        [sys.executable, "-S", str(PACK_ROOT / "core" / "health.py")],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "AURORA_PACK_RUN": env_paths.run_dir},
        check=False,
    )
    assert proc.returncode == health.EXIT_FAILED
    assert proc.stdout.startswith("health FAIL: not running")
    assert proc.stderr == ""


def test_a_check_that_blocks_ends_itself(env_paths: Paths) -> None:
    """Should a read block (a stuck /proc entry), the watchdog ends the check: exit 1."""
    program = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import health; "
        "health.CHECK_TIMEOUT = 0.5; health.check_health = lambda paths: time.sleep(60); "
        "sys.exit(health.main([]))"
    )
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-S", "-c", program, str(PACK_ROOT / "core")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == health.EXIT_FAILED
    assert "Timeout" in proc.stderr and proc.stdout == ""
    assert time.monotonic() - began < 30
