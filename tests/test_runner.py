"""Running lifecycle scripts: streamed output, log file, timeout killing the process group."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from aurora.runner import run_script
from aurora_testing import alive, wait_for


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "script.sh"
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    path.chmod(0o755)
    return path


def test_output_streamed_and_logged(tmp_path: Path) -> None:
    lines: list[str] = []
    script = _script(tmp_path, 'echo one\necho two >&2\nprintf "no newline"\nexit 3\n')
    result = run_script(
        [str(script)],
        cwd=tmp_path,
        env=os.environ,
        timeout=10,
        log_path=tmp_path / "logs" / "s.log",
        on_output=lines.append,
    )
    assert result.returncode == 3 and not result.ok
    assert lines == ["one", "two", "no newline"]
    log = (tmp_path / "logs" / "s.log").read_text()
    assert "one\ntwo\nno newline" in log
    assert "exited 3" in log


def test_hanging_script_killed_with_its_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = _script(tmp_path, f"sleep 300 &\necho $! > {pidfile}\necho started\nsleep 300\n")
    began = time.monotonic()
    result = run_script(
        [str(script)], cwd=tmp_path, env=os.environ, timeout=3, log_path=tmp_path / "s.log"
    )  # 3 s: time enough, on a loaded machine, for the script to start its child
    assert result.timed_out and not result.ok
    assert time.monotonic() - began < 20
    assert "timed out" in result.describe()
    child = int(pidfile.read_text())
    assert wait_for(lambda: not alive(child)), "the script's background child survived"


def test_background_child_holding_output_does_not_block(tmp_path: Path) -> None:
    # A careless start.sh leaves a child with our pipe open: the run still ends with the script.
    pidfile = tmp_path / "child.pid"
    script = _script(tmp_path, f"(sleep 30; echo late) &\necho $! > {pidfile}\necho done\n")
    began = time.monotonic()
    result = run_script(
        [str(script)], cwd=tmp_path, env=os.environ, timeout=20, log_path=tmp_path / "s.log"
    )
    child = int(pidfile.read_text())
    try:
        assert result.ok
        assert result.output_tail == ["done"]
        assert time.monotonic() - began < 20  # the child sleeps 30 s
    finally:
        if alive(child):
            os.killpg(os.getpgid(child), signal.SIGKILL)


def test_kill_group_on_exit_leaves_nothing(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = _script(tmp_path, f"sleep 300 >/dev/null 2>&1 &\necho $! > {pidfile}\n")
    result = run_script(
        [str(script)],
        cwd=tmp_path,
        env=os.environ,
        timeout=10,
        log_path=tmp_path / "s.log",
        kill_group_on_exit=True,
    )
    assert result.ok
    child = int(pidfile.read_text())
    assert wait_for(lambda: not alive(child)), "the health check's child survived"


def test_a_backgrounded_daemon_keeps_writing_to_the_log_after_the_script(tmp_path: Path) -> None:
    """start.sh may leave a daemon without redirecting it: its output goes on to the log
    (a pipe the installer closed would kill it at its next write)."""
    pidfile = tmp_path / "daemon.pid"
    script = _script(
        tmp_path,
        f'(for i in 1 2 3 4 5 6; do echo "beat $i"; sleep 0.2; done; sleep 30) &\n'
        f"echo $! > {pidfile}\necho started\n",
    )
    log = tmp_path / "logs" / "start.log"
    result = run_script([str(script)], cwd=tmp_path, env=os.environ, timeout=10, log_path=log)
    pid = int(pidfile.read_text())
    try:
        assert result.ok and "started" in result.output_tail
        assert wait_for(lambda: "beat 6" in log.read_text(), timeout=10)
        assert alive(pid)  # it wrote after the script (and the installer's reading) ended
    finally:
        if alive(pid):  # the daemon and its sleep: the script's process group
            os.killpg(os.getpgid(pid), signal.SIGKILL)
