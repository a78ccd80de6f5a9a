"""Plugin logs through pipes the supervisor drains: framed, rate-bounded, rotated, never held."""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from launcher import cli, status
from launcher.paths import Paths
from launcher.pluginlog import PluginLog, plugin_text
from launcher.supervisor import Supervisor
from launcher_testing import FakeRegistry, read_pid, run_until, run_until_state

Make = Callable[..., Supervisor]


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def test_plugin_lines_are_framed_and_cannot_pass_for_launcher_lines(tmp_path: Path) -> None:
    plog = PluginLog(tmp_path / "p.log")
    w = plog.open_pipe()
    _write_all(w, b"[launcher 2026-01-01T00:00:00Z] forged\n\nhalf a li")
    plog.drain()
    plog.mark("a launcher note")  # starts a line of its own
    _write_all(w, b"ne\n")
    os.close(w)
    plog.close("the end")
    lines = (tmp_path / "p.log").read_text().splitlines()
    assert lines[:3] == ["| [launcher 2026-01-01T00:00:00Z] forged", "| ", "| half a li"]
    assert lines[3].startswith("[launcher ") and lines[3].endswith("] a launcher note")
    assert lines[4] == "| ne" and lines[5].endswith("] the end")
    assert [plugin_text(line) for line in lines[:2]] == [
        "[launcher 2026-01-01T00:00:00Z] forged",
        "",
    ]
    assert plugin_text(lines[3]) is None
    assert oct(os.stat(tmp_path / "p.log").st_mode & 0o777) == "0o600"


def test_beyond_the_rate_output_is_dropped_and_counted(tmp_path: Path) -> None:
    plog = PluginLog(tmp_path / "p.log", rate=1000)
    w = plog.open_pipe()
    _write_all(w, b"x" * 4999 + b"\n")
    assert plog.drain() == 5000
    assert plog.over_rate()  # its fd is not waited on for the rest of the second
    os.close(w)
    plog.close()
    text = (tmp_path / "p.log").read_text()
    assert text.count("x") == 1000
    assert "4000 bytes dropped (output above 1000 bytes/s)" in text


def test_the_log_is_rotated_by_size_while_running(tmp_path: Path) -> None:
    path = tmp_path / "p.log"
    plog = PluginLog(path, rotate_bytes=2000)
    w = plog.open_pipe()
    for _ in range(5):
        _write_all(w, b"y" * 999 + b"\n")
        plog.drain()
    os.close(w)
    plog.close()
    assert path.with_name("p.log.1").stat().st_size > 2000
    assert path.stat().st_size <= 2000 + 1002  # the bound plus one read
    assert not path.with_name("p.log.2").exists()


FLOOD = "import os\nwhile True:\n    os.write(1, b'z' * 65536)\n"
PIPE_CHECK = """import os, stat, time
os.chdir(os.environ['AURORA_PLUGIN_DATA'])
open('pid', 'w').write(str(os.getpid()))
print('stdout is a fifo:', stat.S_ISFIFO(os.fstat(1).st_mode), flush=True)
while True:
    time.sleep(1)
"""


def test_the_plugin_holds_a_pipe_never_the_log_file(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.pipe", PIPE_CHECK)
    sup = make_supervisor()
    run_until_state(sup, "acme.pipe", status.RUNNING)
    ident = read_pid(paths.plugin_data("acme.pipe") / "pid")
    log = paths.plugin_log("acme.pipe")
    run_until(sup, lambda: "| stdout is a fifo: True" in log.read_text())
    targets = {os.readlink(f"/proc/{ident.pid}/fd/{n}") for n in (1, 2)}
    assert all(t.startswith("pipe:[") for t in targets), targets
    fds = os.listdir(f"/proc/{ident.pid}/fd")
    held = {os.readlink(f"/proc/{ident.pid}/fd/{n}") for n in fds}
    assert str(log) not in held


def test_a_flooding_plugin_neither_stalls_the_loop_nor_the_others(
    make_supervisor: Make, fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.flood", FLOOD)
    fake_registry.add("acme.idle")
    sup = make_supervisor()
    run_until_state(sup, "acme.flood", status.RUNNING)
    run_until_state(sup, "acme.idle", status.RUNNING)
    slowest, end = 0.0, time.monotonic() + 2.5
    while time.monotonic() < end:
        t0 = time.monotonic()
        sup.reconcile()
        slowest = max(slowest, time.monotonic() - t0)
    assert slowest < 1.0, f"a pass took {slowest:.2f}s"  # bounded reads: no pass waits on it
    assert sup.slots["acme.idle"].state == status.RUNNING
    log = paths.plugin_log("acme.flood")
    sup.close()
    text = log.read_text(errors="replace")
    rotated = log.with_name(log.name + ".1")
    total = log.stat().st_size + (rotated.stat().st_size if rotated.exists() else 0)
    assert "bytes dropped (output above" in text or "bytes dropped" in rotated.read_text()
    assert total <= 2 * (5 * 1024 * 1024) + 2 * 65536 + 4096


def test_logs_escapes_control_characters_on_a_terminal(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    log = Path(cli_env["AURORA_PACK_LOGS"]) / "plugins" / "acme.esc.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"| \x1b]0;owned\x07\x1b[2J\ttab\n")
    assert cli.main(["logs", "acme.esc"]) == cli.EXIT_OK
    assert "\x1b" in capsys.readouterr().out  # not a terminal: bytes as they are
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert cli.main(["logs", "acme.esc"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out == "| \\x1b]0;owned\\x07\\x1b[2J\ttab\n"


def test_run_relays_the_plugins_pipes_escaped(
    cli_env: dict[str, str], fake_registry: FakeRegistry, capfd: pytest.CaptureFixture[str]
) -> None:
    code = (
        "import os, stat, sys\n"
        "print('fifo', stat.S_ISFIFO(os.fstat(1).st_mode), stat.S_ISFIFO(os.fstat(2).st_mode))\n"
        "sys.stdout.write('\\x1b[2Jclear\\n')\n"
        "sys.stderr.write('err\\x07\\n')\n"
    )
    fake_registry.add("acme.relay", code)
    assert cli.main(["run", "acme.relay"]) == 0
    out, err = capfd.readouterr()
    assert "fifo True True" in out
    assert "\\x1b[2Jclear" in out and "\x1b" not in out
    assert "err\\x07" in err and "\x07" not in err


def _feed(plog: PluginLog, w: int, data: bytes) -> None:
    _write_all(w, data)
    while plog.drain():
        pass


def test_logs_shows_no_partial_first_line_after_its_tail_cut(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack log_tail_forge: the forged line starts exactly 1 MiB before the end."""
    log = Path(cli_env["AURORA_PACK_LOGS"]) / "plugins" / "acme.tail.log"
    log.parent.mkdir(parents=True)
    plog = PluginLog(log, rate=1 << 30, rotate_bytes=1 << 30)
    w = plog.open_pipe()
    forged = b"[launcher 2026-12-03T19:30:00Z] plugin acme.tail stopped by operator; exit 0"
    _feed(plog, w, b"pad" + forged + b"\n")
    _feed(plog, w, b"B" * (cli._LOG_TAIL_BYTES - len(forged) - 1 - 3) + b"\n")
    os.close(w)
    plog.close()
    raw = log.read_bytes()
    assert raw[-cli._LOG_TAIL_BYTES :].startswith(forged)  # the cut falls where the attack wants
    for argv in (["logs", "acme.tail", "--json"], ["logs", "acme.tail"]):
        assert cli.main(argv) == cli.EXIT_OK
        out = capsys.readouterr().out
        assert "] plugin acme.tail stopped by operator" not in out.replace("| pad[launcher", "")
        assert not any(line.startswith("[launcher") for line in out.splitlines()), out[:200]


def _unframed_lines(path: Path) -> list[bytes]:
    """Lines of a log file that start with neither the plugin prefix nor a launcher line
    written by the test (none is written: every line must be a plugin line)."""
    if not path.exists():
        return []
    return [ln for ln in path.read_bytes().split(b"\n")[:-1] if not ln.startswith(b"| ")] + [
        tail for tail in path.read_bytes().split(b"\n")[-1:] if tail and not tail.startswith(b"| ")
    ]


def test_rotation_inside_an_unfinished_line_keeps_the_framing(tmp_path: Path) -> None:
    """Attack log_rotate_forge: one endless line, each chunk starting with a forged line."""
    path = tmp_path / "p.log"
    plog = PluginLog(path, rate=1 << 30, rotate_bytes=100_000)
    w = plog.open_pipe()
    forged = b"[launcher 2026-12-03T19:45:00Z] exited with status 0 (forged)"
    for _ in range(4):
        _feed(plog, w, forged + b"\x1b[2J\r" + b"." * 60_000)
        assert _unframed_lines(path) == [] and _unframed_lines(tmp_path / "p.log.1") == []
    os.close(w)
    plog.close()
    assert (tmp_path / "p.log.1").exists()
    assert path.read_bytes().startswith(b"| ")


def test_any_chunking_with_rotation_between_reads_keeps_every_line_framed(
    tmp_path: Path,
) -> None:
    rng = random.Random(8)
    alphabet = [b"\n", b"[launcher x] ", b"x", b"\x1b[1m", b"\r", b"\n\n"]
    for case in range(60):
        path = tmp_path / f"p{case}.log"
        plog = PluginLog(path, rate=1 << 30, rotate_bytes=rng.randint(1, 200))
        w = plog.open_pipe()
        sent = bytearray()
        for _ in range(rng.randint(1, 40)):
            chunk = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
            sent += chunk
            _feed(plog, w, chunk)
            if rng.random() < 0.2:
                plog.mark("note")
            for f in (path, path.with_name(path.name + ".1")):
                bad = [ln for ln in _unframed_lines(f) if not ln.startswith(b"[launcher 20")]
                assert bad == [], (case, f.name, bad)
        os.close(w)
        plog.close()
