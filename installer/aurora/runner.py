"""Run a lifecycle script: environment contract, timeout, log file, process-group kill."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aurora_common.lock import private_dir

from aurora import orphans
from aurora.errors import ScriptError
from aurora.home import Home
from aurora.manifest import Manifest
from aurora.timeutil import now_iso

log = logging.getLogger(__name__)

OutputSink = Callable[[str], None]

# After a timeout: TERM to the group, this long to exit, then KILL.
KILL_GRACE_SECONDS = 2.0
# How often the script's log is read for new output while it runs.
_FOLLOW_INTERVAL = 0.05
_TAIL_LINES = 20


@dataclass(frozen=True)
class ScriptResult:
    """What a script run did."""

    argv: list[str]
    returncode: int | None
    timed_out: bool
    duration: float
    output_tail: list[str]
    log_path: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def as_dict(self) -> dict[str, Any]:
        """The run as plain data, for --json output."""
        return {
            "command": self.argv,
            "exit_code": self.returncode,
            "timed_out": self.timed_out,
            "seconds": round(self.duration, 3),
            "log": str(self.log_path),
            "output_tail": self.output_tail,
        }

    def describe(self) -> str:
        name = Path(self.argv[0]).name + "".join(f" {a}" for a in self.argv[1:])
        if self.timed_out:
            return f"{name} timed out after {self.duration:.1f} s (its process group was killed)"
        if self.returncode is not None and self.returncode < 0:
            return f"{name} was killed by signal {-self.returncode}"
        return f"{name} exited {self.returncode}"


def script_error(message: str, result: ScriptResult) -> ScriptError:
    """The error for a failed script run: ``message``, its log and its last lines."""
    return ScriptError(
        f"{message} (log: {result.log_path})",
        returncode=result.returncode,
        timed_out=result.timed_out,
        output_tail=result.output_tail,
        log_path=str(result.log_path),
    )


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def script_env(home: Home, pack_id: str, version: str, root: Path) -> dict[str, str]:
    """The environment contract of docs/contracts.md for one script run."""
    env = dict(os.environ)
    env.update(
        {
            "AURORA_HOME": str(home.root),
            "AURORA_PACK_ID": pack_id,
            "AURORA_PACK_VERSION": version,
            "AURORA_PACK_ROOT": str(root),
            "AURORA_PACK_DATA": str(home.data(pack_id)),
            "AURORA_PACK_RUN": str(home.run(pack_id)),
            "AURORA_PACK_LOGS": str(home.logs(pack_id)),
            "PYTHON": sys.executable,
        }
    )
    return env


def run_entrypoint(
    home: Home,
    manifest: Manifest,
    entry: str,
    args: list[str],
    timeout: float,
    *,
    on_output: OutputSink | None = None,
    kill_group_on_exit: bool = False,
    extra_env: dict[str, str] | None = None,
) -> ScriptResult:
    """Run one of the pack's scripts (``entry``: install, start, stop, health) in the copy
    ``manifest`` was read from, with the environment contract; logs to logs/<id>/<script>.log."""
    script = manifest.script(entry)
    private_dir(home.logs(manifest.id))  # run_script makes it anyway: 0700 from the start
    _narrow(home, manifest.id)
    try:
        return run_script(
            [str(script), *args],
            cwd=manifest.root,
            env=script_env(home, manifest.id, manifest.version, manifest.root) | (extra_env or {}),
            timeout=timeout,
            log_path=home.logs(manifest.id) / f"{script.stem}.log",
            on_output=on_output,
            kill_group_on_exit=kill_group_on_exit,
            marker=home.logs(manifest.id) / f".{script.stem}.running.json",
        )
    finally:
        _narrow(home, manifest.id)  # what the script made itself (mkdir -p under umask 022)


def _narrow(home: Home, pack_id: str) -> None:
    """A pack's data, run and logs dirs that exist, narrowed (an older release or the
    script's mkdir -p under umask 022 made them 0755): nobody else lists or writes them;
    data and run keep at most search (0711: the pack may let a uid reach a socket or a
    plugin its own dir by name), logs 0700. Nothing is created (a dry run makes no data)."""
    for place, mode in ((home.data, 0o711), (home.run, 0o711), (home.logs, 0o700)):
        path = place(pack_id)
        if path.is_dir() and not path.is_symlink():
            private_dir(path, mode)


def kill_group(pgid: int, proc: subprocess.Popen[bytes], grace: float) -> None:
    """TERM the whole process group, wait ``grace`` seconds, then KILL it, then reap.

    The leader is only reaped at the end, so its pid (the group id) cannot be
    reused by an unrelated process while we signal the group.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while not _exited(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Children of the script may outlive it in the group: KILL them all regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def _follow(proc: subprocess.Popen[bytes], read_new: Callable[[], None], deadline: float) -> bool:
    """Pass on what the script writes to its log until it exits.

    Returns True when the deadline passed first (the group is then killed).
    """
    while True:
        if _exited(proc.pid):
            read_new()
            return False
        if time.monotonic() >= deadline:
            kill_group(proc.pid, proc, KILL_GRACE_SECONDS)
            read_new()
            return True
        read_new()
        time.sleep(_FOLLOW_INTERVAL)


def run_script(
    argv: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: Path,
    on_output: OutputSink | None = None,
    kill_group_on_exit: bool = False,
    marker: Path | None = None,
) -> ScriptResult:
    """Run ``argv`` in its own session, streaming output to the log and ``on_output``.

    The script dies with the installer (PR_SET_PDEATHSIG); ``marker`` names its
    process group while it runs, for the next run to kill what it left (orphans.py).

    A script still running after ``timeout`` seconds is killed with its whole
    process group. ``kill_group_on_exit`` also kills what the script left
    behind in its group (health checks must leave nothing running). If the
    installer is interrupted meanwhile (Ctrl-C), the group is killed too.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    started = time.monotonic()
    # The script writes to its log file itself (not to a pipe the installer closes), so
    # a daemon it backgrounds keeps a working stdout after the script and the installer
    # are gone; the installer reads the file for what to show.
    with open(log_path, "ab") as logfile, open(log_path, "rb") as reader:
        logfile.write(f"=== {now_iso()} {' '.join(argv)} (cwd {cwd})\n".encode())
        logfile.flush()
        reader.seek(0, os.SEEK_END)
        pending = b""

        def feed(data: bytes) -> None:
            nonlocal pending
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                tail.append(line)
                if on_output is not None:
                    on_output(line)

        def read_new() -> None:
            if data := reader.read():
                feed(data)

        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=orphans.die_with_parent,
        )
        if marker is not None:
            orphans.mark(marker, proc.pid, argv)
        try:
            timed_out = _follow(proc, read_new, started + timeout)
        except BaseException:  # interrupted (Ctrl-C): leave nothing of the script running
            kill_group(proc.pid, proc, KILL_GRACE_SECONDS)
            raise
        if pending:
            feed(b"\n")
        if kill_group_on_exit and not timed_out:
            # The leader has exited but is not reaped yet, so its pid cannot have
            # been reused: the group is still the script's.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        returncode = proc.wait()
        if marker is not None:
            orphans.unmark(marker)
        duration = time.monotonic() - started
        result = ScriptResult(
            argv=list(argv),
            returncode=None if timed_out else returncode,
            timed_out=timed_out,
            duration=duration,
            output_tail=list(tail),
            log_path=log_path,
        )
        logfile.write(f"=== {result.describe()} in {duration:.2f} s\n".encode())
    log.debug("%s", result.describe())
    return result
