"""`make demo` (scripts/demo.py): the packs installed and plugins run end to end."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from aurora_testing import REPO

DEMO = REPO / "scripts" / "demo.py"
# The demo takes well under 30 s; this bound only keeps a hung demo from hanging CI.
DEMO_TIMEOUT = 180

pytestmark = pytest.mark.slow  # real services and sandboxed plugins; part of the default run


def _load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("aurora_demo", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The demo as `make demo` runs it; its throw-away home goes under tmp_path."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("AURORA_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, str(DEMO)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the demo stops its services on SIGTERM
        out, err = proc.communicate(timeout=120)
        pytest.fail(f"demo still running after {DEMO_TIMEOUT} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_demo_runs_a_granted_plugin_end_to_end_and_leaves_nothing(tmp_path: Path) -> None:
    result = _run_demo(tmp_path)
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, report
    out = result.stdout
    # Installed with its dependencies, only once the operator approved.
    assert "-> exit 6 (as expected: refused without --approve)" in out, report
    assert "installed pack03_os_base" in out and "installed pack04_launcher" in out, report
    # acme.portwatch: refused before the grant, then running with network.
    assert "-> exit 4 (as expected: refused before the operator grants network)" in out, report
    assert "acme.portwatch: running (pid " in out and "granted: network)" in out, report
    port = re.search(r"the demo listens on 127\.0\.0\.1:(\d+)", out)
    assert port, report
    assert f"acme.portwatch: 127.0.0.1:{port[1]} reachable" in out, report
    layers = re.search(r"acme\.portwatch: active sandbox layers: (.+)", out)
    assert layers and "landlock" in layers[1], report
    assert "[off] network-namespace: network granted" in out, report
    # acme.heartbeat: runs with nothing granted, and disabling it stops it.
    assert "acme.heartbeat: running (pid " in out and "granted: nothing)" in out, report
    assert re.search(r"acme\.heartbeat: disabled, pid \d+ gone", out), report
    assert re.search(r"acme\.portwatch: pid \d+ gone with the launcher", out), report
    for pack in ("pack05_plugin_api", "pack04_launcher", "pack03_os_base"):
        assert f"uninstalled {pack} 0.1.0" in out, report
    assert "no process of the demo is left" in out, report
    # Through the one front door, sealed packs (no warning), and its own measured duration.
    assert "$ ./aurora plugin grant acme.portwatch network" in out, report
    status = out.split("$ ./aurora status\n", 1)[1].split("-> exit 0", 1)[0]
    assert re.search(r"acme\.heartbeat +1\.0\.0 +enabled .*launcher: running \(pid \d+\)", status)
    assert "WARNING" not in out + result.stderr and "warning" not in out + result.stderr, report
    assert re.search(r"demo passed in \d+\.\d s", out), report
    # The throw-away home is gone.
    assert not list(tmp_path.glob("aurora-demo-*")), report


def test_demo_failure_shows_logs_and_stops_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = _load_demo()
    monkeypatch.setattr(demo.tempfile, "tempdir", str(tmp_path))
    # Expect the enable before the grant to succeed: the real refusal now fails the demo,
    # after both services were started.
    monkeypatch.setattr(demo, "PLUGINS_DENIED", 0)
    assert demo.main([]) == 1
    out, err = capsys.readouterr()
    assert "aurora plugin enable acme.portwatch: exit 4, expected 0" in err
    assert "demo FAILED" in err and "demo passed" not in out
    # The logs that say why, then both services stopped and the home removed.
    assert re.search(r"--- \S+/logs/pack04_launcher/launcher\.log", err), err
    assert re.search(r"--- \S+/logs/pack05_plugin_api/\S+\.log", err), err
    assert "pack04_launcher 0.1.0 stopped" in out + err
    assert "pack05_plugin_api 0.1.0 stopped" in out + err
    assert not list(tmp_path.glob("aurora-demo-*"))
    assert not demo.processes_of(tmp_path)
