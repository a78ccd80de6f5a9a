"""Process identity, pidfiles and TERM-then-KILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher import process
from launcher.errors import ServiceError
from launcher.process import ProcessId


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def test_identity_of_a_live_process(sleeper: subprocess.Popen[bytes]) -> None:
    ident = process.identify(sleeper.pid)
    assert ident is not None and ident.alive()
    sleeper.kill()
    sleeper.wait()
    assert not ident.alive()
    assert process.identify(sleeper.pid) is None or process.identify(sleeper.pid) != ident


def test_a_zombie_is_not_alive(sleeper: subprocess.Popen[bytes]) -> None:
    ident = process.identify(sleeper.pid)
    assert ident is not None
    os.kill(sleeper.pid, signal.SIGKILL)
    process.wait_gone([ident], 5.0)
    assert not ident.alive()  # exited, not reaped yet: gone for every purpose


def test_pidfile_round_trip(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    ident = process.identify(sleeper.pid)
    assert ident is not None
    process.write_pidfile(tmp_path / "x.pid", ident)
    assert process.read_pidfile(tmp_path / "x.pid") == ident
    assert process.running_from_pidfile(tmp_path / "x.pid") == ident
    assert process.read_pidfile(tmp_path / "none.pid") is None


def test_pidfile_records_boot_and_executable_like_pack05(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    ident = process.identify(sleeper.pid)
    assert ident is not None
    process.write_pidfile(tmp_path / "x.pid", ident)
    doc = json.loads((tmp_path / "x.pid").read_text())
    assert set(doc) == {"pid", "start_time", "boot_id", "exe"}
    assert doc["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert doc["exe"] == os.readlink(f"/proc/{sleeper.pid}/exe")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("boot_id", "00000000-0000-0000-0000-000000000000", id="earlier-boot"),
        pytest.param("exe", "/usr/sbin/not-the-launcher", id="other-program"),
    ],
)
def test_a_pidfile_from_another_boot_or_program_names_no_live_process(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], field: str, value: str
) -> None:
    ident = process.identify(sleeper.pid)
    assert ident is not None
    process.write_pidfile(tmp_path / "x.pid", ident)
    doc = json.loads((tmp_path / "x.pid").read_text())
    doc[field] = value
    (tmp_path / "x.pid").write_text(json.dumps(doc))
    assert process.running_from_pidfile(tmp_path / "x.pid") is None
    recorded = process.read_pidfile(tmp_path / "x.pid")
    assert recorded is not None
    assert not process.signal_identity(recorded, signal.SIGTERM)  # never signalled
    assert sleeper.poll() is None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("1234", id="bare-pid"),
        pytest.param('{"pid": "1"}', id="wrong-types"),
        pytest.param("{", id="truncated"),
    ],
)
def test_foreign_pidfile_is_an_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "x.pid").write_text(text)
    with pytest.raises(ServiceError, match=r"x\.pid"):
        process.read_pidfile(tmp_path / "x.pid")


def test_a_reused_pid_is_never_signalled(sleeper: subprocess.Popen[bytes]) -> None:
    ident = process.identify(sleeper.pid)
    assert ident is not None
    impostor = ProcessId(ident.pid, ident.start_time + 1)  # same pid, other process
    assert process.signal_identity(impostor, signal.SIGKILL) is False
    assert ident.alive()


def test_terminate_escalates_to_kill(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " + (
        "open('ready', 'w').close(); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, start_new_session=True)
    try:
        while not (tmp_path / "ready").exists():
            assert proc.poll() is None
        ident = process.identify(proc.pid)
        assert ident is not None
        assert process.terminate([ident], grace=0.2) == []
        assert proc.wait(timeout=5) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()


def test_descendants_are_found(tmp_path: Path) -> None:
    code = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        found = []
        for _ in range(500):
            found = process.descendants(proc.pid)
            if found:
                break
            os.sched_yield()
            subprocess.run(["sleep", "0.01"], check=True)
        assert len(found) == 1 and found[0].alive()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
