"""The example plugins in examples/plugins/: valid packages that work in the real sandbox.

Packages are staged, granted and enabled with pack05's own command line (no
Python import across packs) into a temp plugins dir; the supervisor then runs
them through pack03's real sandbox. Skipped, with the reason, when pack05's CLI
or pack03's sandbox is absent.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from launcher import sandbox, status
from launcher.paths import Paths
from launcher.supervisor import Supervisor
from launcher_testing import (
    PACK_ROOT,
    FakeRegistry,
    real_sandbox_root,
    run_until,
    run_until_started,
    run_until_state,
)

Make = Callable[..., Supervisor]

EXAMPLES = PACK_ROOT.parent.parent / "examples" / "plugins"
PLUGINS_CLI = PACK_ROOT.parent / "pack05_plugin_api" / "plugins.py"


def _pack05(plugins_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pack05's operator CLI on ``plugins_dir``."""
    if not PLUGINS_CLI.is_file():
        pytest.skip(f"pack05 CLI not present at {PLUGINS_CLI}")
    return subprocess.run(
        [sys.executable, str(PLUGINS_CLI), "--data", str(plugins_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _stage(fake_registry: FakeRegistry, name: str, *grants: str) -> None:
    """Stage examples/plugins/<name> with pack05; grant ``grants`` and enable it if any."""
    plugins_dir = fake_registry.plugins_dir
    res = _pack05(plugins_dir, "stage", str(EXAMPLES / name))
    assert res.returncode == 0, res.stderr
    if grants:
        res = _pack05(plugins_dir, "grant", name, *grants)
        assert res.returncode == 0, res.stderr
    res = _pack05(plugins_dir, "enable", name)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir()))
def test_every_example_is_a_package_pack05_accepts(tmp_path: Path, name: str) -> None:
    res = _pack05(tmp_path / "plugins", "validate", str(EXAMPLES / name))
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"valid ({name} " in res.stdout + res.stderr


def test_heartbeat_beats_in_the_real_sandbox(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    root = real_sandbox_root()
    _stage(fake_registry, "acme.heartbeat")
    sup = make_supervisor(sandbox_root=root)
    status_file = paths.plugin_data("acme.heartbeat") / "status.json"
    doc = json.loads(run_until(sup, lambda: status_file.is_file() and status_file.read_text()))
    assert doc["plugin"] == "acme.heartbeat" and doc["beats"] >= 1
    assert sup.slots["acme.heartbeat"].state == status.RUNNING
    sup.close()
    log = paths.plugin_log("acme.heartbeat").read_text()
    assert "acme.heartbeat: beat 1" in log
    assert "acme.heartbeat: stopping after" in log  # SIGTERM ended it cleanly


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 (a free port), closed at teardown."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock


def _watch(sup: Supervisor, paths: Paths, port: int, rounds: int) -> dict[str, Any]:
    """Drive the loop until the plugin's status.json has checked ``port`` ``rounds`` times
    (or found it reachable); return ``port``'s result."""
    status_file = paths.plugin_data("acme.portwatch") / "status.json"

    def _seen() -> dict[str, Any] | None:
        try:
            doc = json.loads(status_file.read_text())
        except (OSError, ValueError):
            return None
        assert doc["config_error"] is None
        result: dict[str, Any] = next(p for p in doc["ports"] if p["port"] == port)
        return result if result["reachable"] or doc["rounds"] >= rounds else None

    found: dict[str, Any] = run_until(sup, _seen, timeout=30)
    return found


def _portwatch(fake_registry: FakeRegistry, paths: Paths, port: int, *grants: str) -> None:
    """Stage acme.portwatch with pack05, watching ``port`` every 0.2 s."""
    if grants:
        _stage(fake_registry, "acme.portwatch", *grants)
    else:
        # pack05 enables nothing that lacks a grant: enable it by hand, as a hand-edited
        # registry could. The launcher still passes only what was granted: nothing.
        res = _pack05(fake_registry.plugins_dir, "stage", str(EXAMPLES / "acme.portwatch"))
        assert res.returncode == 0, res.stderr
        doc = json.loads(fake_registry.path.read_text())
        doc["plugins"]["acme.portwatch"]["enabled"] = True
        fake_registry.doc = doc
        fake_registry.write()
    data = paths.plugin_data("acme.portwatch")
    data.mkdir(parents=True)
    (data / "ports.json").write_text(json.dumps({"ports": [port], "interval": 0.2}))


def test_portwatch_reaches_a_local_listener_with_network_granted(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths, listener: socket.socket
) -> None:
    root = real_sandbox_root()
    port = listener.getsockname()[1]
    _portwatch(fake_registry, paths, port, "network")
    sup = make_supervisor(sandbox_root=root)
    run_until_started(sup, "acme.portwatch")
    result = _watch(sup, paths, port, rounds=1000)
    assert result["reachable"] is True and result["error"] is None
    listener.settimeout(10)
    conn, peer = listener.accept()  # the plugin's connection reached the test's listener
    conn.close()
    assert peer[0] == "127.0.0.1"
    report = json.loads((paths.plugin_run("acme.portwatch") / "report.json").read_text())
    assert report["granted"] == ["network"]
    assert "network-namespace" not in sandbox.active_layers(report)
    # The operator revokes the grant: pack05 disables it, the launcher stops it.
    ident = sup.slots["acme.portwatch"].ident
    assert ident is not None
    res = _pack05(fake_registry.plugins_dir, "revoke", "acme.portwatch", "network")
    assert res.returncode == 0, res.stderr
    run_until_state(sup, "acme.portwatch", status.DISABLED)
    assert not ident.alive()


def test_portwatch_without_the_grant_reports_the_port_unreachable(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths, listener: socket.socket
) -> None:
    root = real_sandbox_root()
    port = listener.getsockname()[1]
    _portwatch(fake_registry, paths, port)
    sup = make_supervisor(sandbox_root=root)
    run_until_started(sup, "acme.portwatch")
    result = _watch(sup, paths, port, rounds=3)
    assert result["reachable"] is False
    assert "Refused" not in result["error"]  # denied by the sandbox, not by the listener
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever connected
    report = json.loads((paths.plugin_run("acme.portwatch") / "report.json").read_text())
    assert report["granted"] == [] and report["enforced"]["network"]
    log = paths.plugin_log("acme.portwatch").read_text()
    assert f"127.0.0.1:{port} unreachable" in log


def test_portwatch_sees_a_changed_ports_json_well_within_its_interval(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths, listener: socket.socket
) -> None:
    root = real_sandbox_root()
    port = listener.getsockname()[1]
    _portwatch(fake_registry, paths, port, "network")
    data = paths.plugin_data("acme.portwatch")
    ports_json, status_file = data / "ports.json", data / "status.json"
    # Nothing to watch yet, at the default interval (5 s) between rounds.
    ports_json.write_text(json.dumps({"ports": []}))
    sup = make_supervisor(sandbox_root=root)

    def _status() -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads(status_file.read_text())
        except (OSError, ValueError):
            return None
        return doc

    first = run_until(sup, lambda: (d := _status()) and d["rounds"] >= 1 and d)
    assert first["ports"] == [] and first["note"].startswith("no port configured")
    # The operator lists the port after the start (replacing the file, as an editor does).
    tmp = data / "ports.json.tmp"
    tmp.write_text(json.dumps({"ports": [port]}))
    os.replace(tmp, ports_json)
    changed = time.monotonic()
    seen = run_until(sup, lambda: (d := _status()) and d["ports"] and d, timeout=30)
    elapsed = time.monotonic() - changed
    # Seen by the next round it started because the file changed, not after the 5 s interval.
    assert elapsed < 3.0, f"ports.json change seen after {elapsed:.1f}s"
    assert seen["rounds"] == 2 and seen["config_error"] is None
    assert seen["ports"][0]["port"] == port and seen["ports"][0]["reachable"] is True
