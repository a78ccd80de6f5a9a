"""start/stop/health/status driven by the installer, with fixture packs that run a real process."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aurora.exitcodes import ExitCode
from aurora_testing import CLI, Env, alive, aurora_installer, processes_under, wait_for

FAST = ["--interval", "0.1", "--start-period", "0", "--retries", "2"]


def _install_service(env: Env, mode: str = "ok", health_timeout: int = 10) -> None:
    env.make_pack("svc", service=True, health_timeout=health_timeout, files={"mode": mode})
    result = env.run("install", "--pack", "svc", "--approve")
    assert result.code == 0, result.err


def _service_pid(env: Env) -> int:
    return int((env.home / "run" / "svc" / "service.pid").read_text().split()[0])


def _processes_of(home: Path, marker: str) -> list[int]:
    """Live processes started under this home whose command line has ``marker``."""
    return [pid for pid, cmdline in processes_under(home).items() if marker in cmdline]


def test_start_healthy_status_stop(env: Env) -> None:
    _install_service(env)
    started = env.run("start", "--pack", "svc", *FAST, "--json")
    assert started.code == 0, started.err
    assert started.json["result"]["health"]["status"] == "healthy"
    pid = _service_pid(env)
    assert alive(pid)
    status = env.run("status", "--pack", "svc", "--json").json["result"]
    assert status["state"] == "running"
    assert status["runtime"]["running"] is True
    assert status["runtime"]["pid"] == pid
    assert status["runtime"]["uptime_seconds"] is not None
    assert status["runtime"]["health"]["status"] == "healthy"
    assert status["runtime"]["health"]["last_check"]["output"] == f"health OK: pid {pid}"
    human = env.run("status", "--pack", "svc")
    assert f"running   yes, pid {pid}" in human.out
    assert "health    healthy: health OK" in human.out
    assert env.run("list", "--json").json["result"][0]["running"] is True
    assert "installed 1.0.0; staged 1.0.0; running" in env.run("list").out
    stopped = env.run("stop", "--pack", "svc")
    assert stopped.code == 0, stopped.err
    assert not alive(pid)
    assert env.run("list", "--json").json["result"][0]["running"] is False
    status = env.run("status", "--pack", "svc", "--json").json["result"]
    assert status["state"] == "installed"
    assert status["runtime"]["running"] is False
    assert status["last_result"]["op"] == "stop" and status["last_result"]["ok"]
    events = [e["event"] for e in env.audit()]
    # Each change: its intent first, its outcome after (carrying the intent's id).
    assert events[-4:] == ["intent", "start", "intent", "stop"]
    intents = [e for e in env.audit() if e["event"] == "intent"][-2:]
    assert [i["op"] for i in intents] == ["start", "stop"]
    assert [e["intent"] for e in env.audit()[-3::2]] == [i["intent"] for i in intents]


def test_double_start_and_double_stop_are_harmless(env: Env) -> None:
    _install_service(env)
    assert env.run("start", "--pack", "svc", *FAST).code == 0
    pid = _service_pid(env)
    again = env.run("start", "--pack", "svc", *FAST)
    assert again.code == 0
    assert "already running" in again.out
    assert _service_pid(env) == pid
    assert env.run("stop", "--pack", "svc").code == 0
    second = env.run("stop", "--pack", "svc")
    assert second.code == 0
    assert "not running" in second.out


def test_start_fails_when_never_healthy(env: Env) -> None:
    _install_service(env, mode="never")
    result = env.run("start", "--pack", "svc", *FAST, "--json")
    assert result.code == ExitCode.FAILED
    message = result.json["error"]["message"]
    assert "svc: start failed: unhealthy after 2 consecutive failing checks; last check:" in message
    assert "configured to never be healthy" in message
    record = env.state()["packs"]["svc"]
    assert record["last_result"]["ok"] is False
    assert record["runtime"]["state"] == "unhealthy"


def test_start_period_failures_do_not_count_but_the_bound_holds(env: Env) -> None:
    _install_service(env, mode="never", health_timeout=2)
    began = time.monotonic()
    result = env.run(
        "start", "--pack", "svc", "--interval", "0.2", "--start-period", "60", "--retries", "1"
    )
    took = time.monotonic() - began
    assert result.code == ExitCode.FAILED
    assert "not healthy within 2 s (health_check_timeout_seconds); last check:" in result.err
    assert result.err.split("; last check:")[0].count("healthy") == 1  # said once
    assert took < 30  # generous (loaded machine): the bound is 2 s


def test_hanging_check_is_killed_with_its_group_and_counts_as_failure(env: Env) -> None:
    _install_service(env, mode="hang")
    result = env.run("start", "--pack", "svc", *FAST, "--check-timeout", "0.5")
    assert result.code == ExitCode.FAILED
    assert "timed out" in result.err
    assert _processes_of(env.home, "service.py health") == []


def test_health_once_and_watch_reports_changes(env: Env) -> None:
    _install_service(env)
    assert env.run("start", "--pack", "svc", *FAST).code == 0
    once = env.run("health", "--pack", "svc", "--json")
    assert once.code == 0
    assert once.json["result"]["status"] == "healthy"
    steady = env.run("health", "--pack", "svc", "--watch", "--count", "2", "--interval", "0.1")
    assert steady.code == 0, steady.err  # healthy at the last check
    assert steady.out.count("health: healthy (health OK") == 1  # the first state, then changes
    os.killpg(_service_pid(env), signal.SIGKILL)
    failed = env.run("health", "--pack", "svc")
    assert failed.code == ExitCode.FAILED
    assert "health FAIL: not running" in failed.err
    watch = env.run(
        "health",
        "--pack",
        "svc",
        "--watch",
        "--count",
        "3",
        "--interval",
        "0.1",
        "--retries",
        "2",
        "--json",
    )
    # Like a single `health`: a watch that ends with the pack not healthy exits 1,
    # and its document still holds what it saw.
    assert watch.code == ExitCode.FAILED
    assert (watch.json["ok"], watch.json["exit"]) == (False, ExitCode.FAILED)
    assert "svc is unhealthy after the last check (3 in all)" in watch.json["error"]["message"]
    changes = watch.json["result"]["changes"]
    assert [c["status"] for c in changes] == ["unhealthy"]
    assert watch.json["result"]["status"] == "unhealthy"
    assert "health: unhealthy (health FAIL: not running)" in watch.err
    human = env.run("health", "--pack", "svc", "--watch", "--count", "1")
    assert human.code == ExitCode.FAILED
    assert "health: unhealthy (health FAIL: not running)" in human.out
    assert "error: svc is unhealthy after the last check (1 in all)" in human.err
    status = env.run("status", "--pack", "svc", "--json").json["result"]
    assert status["runtime"]["health"]["status"] == "unhealthy"


def test_health_watch_ended_by_ctrl_c_exits_130_with_what_it_saw(env: Env) -> None:
    _install_service(env)
    assert env.run("start", "--pack", "svc", *FAST).code == 0
    messages = env.home.parent / "watch.err"
    with messages.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(CLI), *env.args("health", "--pack", "svc", "--watch", "--json")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        # Interrupt once the watch has reported the first state.
        assert wait_for(lambda: "health: healthy" in messages.read_text())
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.INTERRUPTED, messages.read_text()
    doc = json.loads(out)
    assert (doc["ok"], doc["exit"]) == (False, ExitCode.INTERRUPTED)
    assert "Ctrl-C" in doc["error"]["message"]
    assert doc["result"]["status"] == "healthy"
    assert [c["status"] for c in doc["result"]["changes"]] == ["healthy"]


def test_uninstall_refuses_running_pack_or_stops_it(env: Env) -> None:
    _install_service(env)
    assert env.run("start", "--pack", "svc", *FAST).code == 0
    pid = _service_pid(env)
    refused = env.run("uninstall", "--pack", "svc")
    assert refused.code == ExitCode.REFUSED
    assert "is running" in refused.err
    assert alive(pid)
    reinstall = env.run("install", "--pack", "svc", "--approve")
    assert reinstall.code == ExitCode.REFUSED
    done = env.run("uninstall", "--pack", "svc", "--stop")
    assert done.code == 0, done.err
    assert "stopped svc first\nuninstalled svc 1.0.0" in done.out
    assert not alive(pid)
    assert env.active("svc") is None


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("stop-first", id="uninstall-stop"),
        pytest.param("stopped", id="stopped-then-uninstalled"),
        pytest.param("symlink", id="symlink-not-followed"),
    ],
)
def test_uninstall_removes_the_health_record_keeps_data_and_logs(env: Env, how: str) -> None:
    _install_service(env)
    assert env.run("start", "--pack", "svc", *FAST).code == 0
    assert env.run("health", "--pack", "svc").code == 0
    record = env.home / "health" / "svc.json"
    assert json.loads(record.read_text())["status"] == "healthy"
    if how != "stop-first":
        assert env.run("stop", "--pack", "svc").code == 0
        assert json.loads(record.read_text())["status"] == "stopped"
    outside = env.home.parent / "not-a-health-record.json"
    if how == "symlink":  # a hostile record: the link goes, never what it points to
        outside.write_text("{}")
        record.unlink()
        record.symlink_to(outside)
    done = env.run("uninstall", "--pack", "svc", "--stop", "--json")
    assert done.code == 0, done.err
    assert not record.exists() and not record.is_symlink()
    assert str(record) in done.json["result"]["removed"]
    if how == "symlink":
        assert outside.read_text() == "{}"
    status = env.run("status", "--pack", "svc", "--json").json["result"]
    assert status["state"] == "staged" and status["runtime"]["health"] is None
    assert "health" not in env.run("status", "--pack", "svc").out
    assert env.run("list", "--json").json["result"][0]["installed"] is None
    assert "not installed; staged 1.0.0" in env.run("list").out
    # Not health: the pack's data (until --purge) and its logs (forensics) stay.
    assert (env.home / "data" / "svc" / "installed-version").exists()
    assert (env.home / "logs" / "svc" / "start.log").exists()
    assert done.json["result"]["data_kept"] == str(env.home / "data" / "svc")


def test_stop_timeout_kills_script_and_records_failure(env: Env) -> None:
    env.make_pack("slow", files={})
    (env.packs_dir / "slow" / "stop.sh").write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\necho stopping\nsleep 300\n"
    )
    assert env.run("install", "--pack", "slow", "--approve").code == 0
    assert env.run("start", "--pack", "slow", *FAST).code == 0
    result = env.run("stop", "--pack", "slow", "--timeout", "0.5")
    assert result.code == ExitCode.FAILED
    assert "timed out" in result.err
    record = env.state()["packs"]["slow"]
    assert record["last_result"] == {**record["last_result"], "op": "stop", "ok": False}
    assert env.audit()[-1]["event"] == "stop-failed"
    assert _processes_of(env.home, "sleep 300") == []


def test_start_script_failure_reported(env: Env) -> None:
    env.make_pack("bad")
    (env.packs_dir / "bad" / "start.sh").write_text(
        "#!/usr/bin/env bash\necho 'port 8080 in use' >&2\nexit 1\n"
    )
    assert env.run("install", "--pack", "bad", "--approve").code == 0
    result = env.run("start", "--pack", "bad", "--json")
    assert result.code == ExitCode.FAILED
    assert "output: port 8080 in use" in result.json["error"]["problems"]
    log = (env.home / "logs" / "bad" / "start.log").read_text()
    assert "port 8080 in use" in log
    record = env.state()["packs"]["bad"]
    assert record["last_result"] == {**record["last_result"], "op": "start", "ok": False}
    assert record["runtime"]["state"] == "stopped"
    assert env.audit()[-1] == {**env.audit()[-1], "event": "start-failed", "pack": "bad"}
    assert env.run("status", "--pack", "bad", "--json").json["result"]["state"] == "installed"


def test_status_reads_pack05_style_json_pidfile(env: Env) -> None:
    # pack05 writes {"pid", "start_time", "boot_id", "exe"}; a reused pid is not "running".
    env.make_pack("alpha")
    assert env.run("install", "--pack", "alpha", "--approve").code == 0
    run = env.home / "run" / "alpha"
    run.mkdir(parents=True)
    me = Path(f"/proc/{os.getpid()}/stat").read_text()
    start = int(me[me.rfind(")") + 2 :].split()[19])
    doc = {"pid": os.getpid(), "start_time": start, "boot_id": "", "exe": ""}
    (run / "service.pid").write_text(json.dumps(doc))
    status = env.run("status", "--pack", "alpha", "--json").json["result"]
    assert status["runtime"]["running"] is True and status["runtime"]["pid"] == os.getpid()
    (run / "service.pid").write_text(json.dumps({**doc, "start_time": start + 1}))
    status = env.run("status", "--pack", "alpha", "--json").json["result"]
    assert status["runtime"]["running"] is False


@pytest.mark.slow
def test_lifecycle_as_real_processes(env: Env) -> None:
    _install_service(env)
    started = env.cli("start", "--pack", "svc", *FAST)
    assert started.code == 0, started.err
    pid = _service_pid(env)
    assert env.cli("health", "--pack", "svc").code == 0
    assert env.cli("uninstall", "--pack", "svc").code == ExitCode.REFUSED
    assert env.cli("stop", "--pack", "svc").code == 0
    assert not alive(pid)
    assert env.cli("uninstall", "--pack", "svc", "--purge").code == 0


def test_start_does_not_hold_the_lock_while_it_polls_health(env: Env) -> None:
    """Stopping another pack while one is starting is not refused as busy (exit 5)."""
    env.make_pack("other", service=True)
    assert env.run("install", "--pack", "other", "--approve").code == 0
    assert env.run("start", "--pack", "other", *FAST).code == 0
    _install_service(env, mode="never", health_timeout=4)
    slow = subprocess.Popen(
        [sys.executable, str(CLI), *env.args("start", "--pack", "svc", "--start-period", "60")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for(lambda: (env.home / "run" / "svc" / "service.pid").exists())
        assert wait_for(
            lambda: (env.state()["packs"]["svc"].get("runtime") or {}).get("state") == "starting"
        )
        stopped = env.cli("stop", "--pack", "other", "--wait", "0")
        assert stopped.code == 0, stopped.err
        # svc's start is pending while it polls: in progress, not interrupted.
        assert "interrupted" not in stopped.err
        assert env.state()["packs"]["svc"]["pending"]["op"] == "start"
        assert slow.poll() is None  # still polling svc's health meanwhile
        _out, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            slow.kill()
    assert slow.returncode == ExitCode.FAILED and "not healthy within 4 s" in err
    assert env.state()["packs"]["svc"]["last_result"]["op"] == "start"
    assert env.run("stop", "--pack", "svc").code == 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_health_watch_shows_each_check_on_a_terminal_only(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install_service(env)
    assert env.run("start", "--pack", "svc", *FAST).code == 0
    watch = ["health", "--pack", "svc", "--watch", "--count", "3", "--interval", "0.2"]
    for as_json, shown in ((False, True), (True, False)):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        assert aurora_installer.main(env.args(*watch, *(["--json"] if as_json else []))) == 0
        text = terminal.getvalue().replace("\x1b[K", "")
        assert ("\rsvc: check 3/3: healthy" in text) is shown, text
    assert env.run("stop", "--pack", "svc").code == 0
