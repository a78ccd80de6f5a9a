"""Tests of core.process: start detached, pidfile identity, stop (TERM group, KILL), CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from core import health, process
from core.health import Paths, ProcessRecord, current_identity, identity_problem, read_pidfile

PACK_ROOT = Path(__file__).resolve().parent.parent

# A stand-in service: reports ready the way core.service does (status file with its pid
# and start time), then sleeps. Modes: "ok", "ignore-term", "die", "never-ready", "group"
# (also starts a child in its own process group, to see TERM reach the whole group).
FAKE_SERVICE = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    mode = sys.argv[1]
    if mode == "die":
        print("boom: cannot import core.loader", flush=True)
        sys.exit(3)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "group":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(os.path.join(os.environ["AURORA_PACK_RUN"], "child.pid"), "w") as f:
            f.write(str(child.pid))
    stat = open(f"/proc/{os.getpid()}/stat").read()
    start_time = int(stat[stat.rindex(")") + 2 :].split()[19])
    if mode != "never-ready":
        status = {"pid": os.getpid(), "start_time": start_time, "state": "running"}
        path = os.path.join(os.environ["AURORA_PACK_RUN"], "service.status.json")
        with open(path + ".tmp", "w") as f:
            json.dump(status, f)
        os.replace(path + ".tmp", path)
    time.sleep(60)
    """
)


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(
        root=str(PACK_ROOT),
        data_dir=str(tmp_path / "data"),
        run_dir=str(tmp_path / "run"),
        logs_dir=str(tmp_path / "logs"),
    )


@pytest.fixture
def reaper() -> Iterator[list[int]]:
    """Pids (each its own group leader) killed at teardown, whatever the test did."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@pytest.fixture
def start_fake(
    tmp_path: Path, paths: Paths, reaper: list[int]
) -> Callable[..., tuple[ProcessRecord, bool]]:
    script = tmp_path / "fake_service.py"
    script.write_text(FAKE_SERVICE)

    def start(mode: str = "ok", timeout: float = 10.0) -> tuple[ProcessRecord, bool]:
        record, started = process.start_service(
            paths, command=[sys.executable, str(script), mode], timeout=timeout
        )
        reaper.append(record.pid)
        return record, started

    return start


@pytest.fixture
def sleeper(reaper: list[int]) -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process (its own session) that must never be signalled."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    reaper.append(proc.pid)
    yield proc


def _alive(pid: int) -> bool:
    return current_identity(pid) is not None


# --- files --------------------------------------------------------------------------------


def test_pidfile_round_trip_and_no_temp_left(tmp_path: Path) -> None:
    me = current_identity(os.getpid())
    assert me is not None
    pidfile = tmp_path / "service.pid"
    process.write_pidfile(str(pidfile), me)
    assert read_pidfile(str(pidfile)) == me
    assert os.listdir(tmp_path) == ["service.pid"]


def test_remove_pidfile_if_leaves_someone_elses(tmp_path: Path) -> None:
    me = current_identity(os.getpid())
    assert me is not None
    other = ProcessRecord(me.pid, me.start_time + 1, me.boot_id, me.exe)
    pidfile = tmp_path / "service.pid"
    process.write_pidfile(str(pidfile), other)
    assert process.remove_pidfile_if(str(pidfile), me) is False
    assert pidfile.exists()
    assert process.remove_pidfile_if(str(pidfile), other) is True
    assert not pidfile.exists()


# --- start ---------------------------------------------------------------------------------


def test_start_detaches_in_own_session_and_writes_pidfile(
    start_fake: Callable[..., tuple[ProcessRecord, bool]], paths: Paths
) -> None:
    record, started = start_fake()
    assert started is True
    assert read_pidfile(paths.pidfile) == record
    assert identity_problem(record) is None
    assert os.getsid(record.pid) == record.pid  # its own session, so its own group
    assert os.getsid(record.pid) != os.getsid(0)


def test_start_when_running_does_nothing(
    start_fake: Callable[..., tuple[ProcessRecord, bool]],
) -> None:
    first, _ = start_fake()
    again, started = start_fake()
    assert started is False
    assert again == first


def test_start_reports_death_with_the_log_tail(
    start_fake: Callable[..., tuple[ProcessRecord, bool]], paths: Paths
) -> None:
    with pytest.raises(process.StartError, match="status 3") as info:
        start_fake("die")
    assert "boom: cannot import core.loader" in info.value.log_tail
    assert not os.path.exists(paths.pidfile)


def test_start_that_never_gets_ready_is_stopped_again(
    start_fake: Callable[..., tuple[ProcessRecord, bool]], paths: Paths
) -> None:
    with pytest.raises(process.StartError, match="not ready") as info:
        start_fake("never-ready", timeout=0.5)
    assert not os.path.exists(paths.pidfile)
    assert info.value.pid is not None and not _alive(info.value.pid)


def test_start_replaces_a_stale_pidfile(
    start_fake: Callable[..., tuple[ProcessRecord, bool]],
    paths: Paths,
    sleeper: subprocess.Popen[bytes],
) -> None:
    os.makedirs(paths.run_dir)
    live = current_identity(sleeper.pid)
    assert live is not None
    stale = _stale_start_time(live)  # the pid now belongs to another process
    process.write_pidfile(paths.pidfile, stale)
    record, started = start_fake()
    assert started and record.pid != sleeper.pid
    assert _alive(sleeper.pid)


# --- stop ----------------------------------------------------------------------------------


def test_stop_terms_the_whole_group(
    start_fake: Callable[..., tuple[ProcessRecord, bool]], paths: Paths
) -> None:
    record, _ = start_fake("group")
    child = int(Path(paths.run_dir, "child.pid").read_text())
    assert _alive(child)
    message = process.stop_service(paths, timeout=5)
    assert "after TERM" in message
    assert not _alive(record.pid)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)
    assert not os.path.exists(paths.pidfile)


def test_stop_kills_a_service_that_ignores_term(
    start_fake: Callable[..., tuple[ProcessRecord, bool]], paths: Paths
) -> None:
    record, _ = start_fake("ignore-term")
    message = process.stop_service(paths, timeout=0.5)
    assert "KILL" in message
    assert not _alive(record.pid)
    assert not os.path.exists(paths.pidfile)


def _stale_start_time(r: ProcessRecord) -> ProcessRecord:
    return ProcessRecord(r.pid, r.start_time + 1, r.boot_id, r.exe)


def _stale_exe(r: ProcessRecord) -> ProcessRecord:
    return ProcessRecord(r.pid, r.start_time, r.boot_id, sys.executable)


def _stale_boot(r: ProcessRecord) -> ProcessRecord:
    return ProcessRecord(r.pid, r.start_time, "00000000-0000-0000-0000-000000000000", r.exe)


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(_stale_start_time, id="pid-reused-later"),
        pytest.param(_stale_exe, id="other-executable"),
        pytest.param(_stale_boot, id="earlier-boot"),
    ],
)
def test_stop_never_signals_a_stale_pidfile(
    tamper: Callable[[ProcessRecord], ProcessRecord],
    paths: Paths,
    sleeper: subprocess.Popen[bytes],
) -> None:
    os.makedirs(paths.run_dir)
    record = current_identity(sleeper.pid)
    assert record is not None
    process.write_pidfile(paths.pidfile, tamper(record))
    message = process.stop_service(paths, timeout=0.5)
    assert "stale pidfile" in message and "not signalled" in message
    assert sleeper.poll() is None
    assert not os.path.exists(paths.pidfile)


def test_stop_with_a_dead_pid_removes_the_pidfile(paths: Paths) -> None:
    os.makedirs(paths.run_dir)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    record = current_identity(proc.pid) or ProcessRecord(proc.pid, 1, "x", sys.executable)
    proc.wait()
    process.write_pidfile(paths.pidfile, record)
    assert "not running" in process.stop_service(paths)
    assert not os.path.exists(paths.pidfile)


def test_stop_when_nothing_runs(paths: Paths) -> None:
    assert process.stop_service(paths) == "not running (no run directory)"
    os.makedirs(paths.run_dir)
    assert process.stop_service(paths) == "not running"


def test_stop_removes_an_unreadable_pidfile(paths: Paths) -> None:
    os.makedirs(paths.run_dir)
    Path(paths.pidfile).write_text("12345\n")  # not ours: a bare pid is never trusted
    assert "unreadable pidfile" in process.stop_service(paths)
    assert not os.path.exists(paths.pidfile)


# --- command line --------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DATA", "RUN", "LOGS"):
        monkeypatch.setenv(f"AURORA_PACK_{name}", str(tmp_path / name.lower()))
    return tmp_path


def test_cli_stop_and_status_when_nothing_runs(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert process.main(["stop"]) == health.EXIT_OK
    assert "not running" in capsys.readouterr().out
    assert process.main(["status", "--json"]) == health.EXIT_OK
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["running"] is False and "not running" in out.err


def test_cli_status_of_a_running_service_names_pid_and_counts(
    paths: Paths,
    start_fake: Callable[..., tuple[ProcessRecord, bool]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    record, _ = start_fake()
    status = {"pid": record.pid, "scans": 3, "counts": {"staged": 2, "quarantined": 1}}
    Path(paths.status_file).write_text(json.dumps(status))
    for name, value in (("DATA", paths.data_dir), ("RUN", paths.run_dir)):
        monkeypatch.setenv(f"AURORA_PACK_{name}", value)
    assert process.main(["status"]) == health.EXIT_OK
    out = capsys.readouterr().out
    assert f"running (pid {record.pid}," in out
    assert "scans 3, quarantined=1 staged=2, last error: none" in out


def test_cli_bad_timeout_is_a_message_not_a_traceback(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(process.STOP_TIMEOUT_ENV, "soon")
    assert process.main(["stop"]) == health.EXIT_FAILED
    assert "AURORA_PACK05_STOP_TIMEOUT='soon': expected a number" in capsys.readouterr().err


def test_cli_unknown_command_is_a_usage_error(cli_env: Path) -> None:
    with pytest.raises(SystemExit) as info:
        process.main(["restart"])
    assert info.value.code == 2
