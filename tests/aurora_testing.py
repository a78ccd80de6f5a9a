"""Helpers for the installer tests: packs built in tmp_path, a CLI bound to a temporary home."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALLER_DIR = REPO / "installer"
CLI = INSTALLER_DIR / "aurora_installer.py"
if str(INSTALLER_DIR) not in sys.path:
    sys.path.insert(0, str(INSTALLER_DIR))

import aurora_installer  # noqa: E402  (needs the path above)

INSTALL_SH = """\
#!/usr/bin/env bash
set -euo pipefail
case "${1:-}" in
  --dry-run) echo "dry run of $AURORA_PACK_ID $AURORA_PACK_VERSION: ok" ;;
  --install)
    mkdir -p "$AURORA_PACK_DATA"
    echo "$AURORA_PACK_VERSION" > "$AURORA_PACK_DATA/installed-version"
    env | grep -E '^(AURORA_|PYTHON=)' | sort > "$AURORA_PACK_DATA/env.txt"
    echo "installed $AURORA_PACK_ID $AURORA_PACK_VERSION"
    ;;
  *) echo "bad mode ${1:-}"; exit 2 ;;
esac
"""

OK_SH = """\
#!/usr/bin/env bash
set -euo pipefail
echo "$(basename "$0") ok"
"""

# A tiny service for lifecycle tests: logic in service.py, the scripts pass through.
SERVICE_PY = '''\
"""Fixture service: start (detached, pidfile pid+starttime), stop, health."""
import os, signal, subprocess, sys, time
from pathlib import Path

RUN = Path(os.environ["AURORA_PACK_RUN"])
PIDFILE = RUN / "service.pid"
MODE_FILE = Path(os.environ["AURORA_PACK_ROOT"]) / "mode"


def starttime(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rfind(")") + 2:].split()[19])


def alive(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2:].split()[0] not in ("Z", "X")


def read_pid():
    try:
        pid, start = PIDFILE.read_text().split()
    except (OSError, ValueError):
        return None
    same = alive(int(pid)) and starttime(int(pid)) == int(start)
    return int(pid) if same else None


def main(cmd):
    mode = MODE_FILE.read_text().strip() if MODE_FILE.exists() else "ok"
    if cmd == "start":
        if read_pid():
            print("already running"); return 0
        RUN.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"],
                                start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tmp = PIDFILE.with_suffix(".tmp")
        tmp.write_text(f"{proc.pid} {starttime(proc.pid)}\\n")
        os.replace(tmp, PIDFILE)
        print(f"started pid {proc.pid}")
        return 0
    if cmd == "stop":
        pid = read_pid()
        if pid is None:
            PIDFILE.unlink(missing_ok=True); print("not running"); return 0
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            if not alive(pid):
                break
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        PIDFILE.unlink(missing_ok=True)
        print(f"stopped pid {pid}"); return 0
    if cmd == "health":
        if mode == "hang":
            time.sleep(600)
        if mode == "never":
            print("health FAIL: configured to never be healthy"); return 1
        pid = read_pid()
        if pid is None:
            print("health FAIL: not running"); return 1
        print(f"health OK: pid {pid}"); return 0
    return 2


sys.exit(main(sys.argv[1]))
'''


def _service_sh(cmd: str) -> str:
    return (
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f'exec "${{PYTHON:-python3}}" "$(dirname "$0")/service.py" {cmd}\n'
    )


def _write(path: Path, text: str, executable: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def manifest_text(
    pack_id: str,
    version: str = "1.0.0",
    deps: Sequence[tuple[str, str]] = (),
    artifacts: Sequence[tuple[str, str]] = (),
    approval: bool = True,
    dry_run: bool = True,
    health_timeout: int = 10,
) -> str:
    dep_lines = "".join(f'    - pack_id: "{d}"\n      version_constraint: "{c}"\n' for d, c in deps)
    art_lines = "".join(f'    - path: "{p}"\n      sha256: "{h}"\n' for p, h in artifacts)
    return (
        'schema_version: "aurora-manifest-v1"\n'
        "pack:\n"
        f'  id: "{pack_id}"\n'
        f'  name: "Pack {pack_id}"\n'
        f'  version: "{version}"\n'
        '  description: "fixture pack"\n'
        "  entrypoint:\n"
        '    install: "install.sh"\n'
        '    start: "start.sh"\n'
        '    stop: "stop.sh"\n'
        '    health: "health_check.sh"\n'
        + ("  dependencies:\n" + dep_lines if deps else "  dependencies: []\n")
        + ("  artifacts:\n" + art_lines if artifacts else "  artifacts: []\n")
        + "  safety:\n"
        f"    dry_run_supported: {'true' if dry_run else 'false'}\n"
        f"    operator_approval_required: {'true' if approval else 'false'}\n"
        f"    health_check_timeout_seconds: {health_timeout}\n"
    )


@dataclass
class PackFactory:
    """Builds packs in a packs directory under tmp_path."""

    packs_dir: Path

    def __call__(
        self,
        pack_id: str = "alpha",
        version: str = "1.0.0",
        *,
        deps: Sequence[tuple[str, str]] = (),
        artifacts: Sequence[tuple[str, str]] = (),
        approval: bool = True,
        dry_run: bool = True,
        health_timeout: int = 10,
        install: str = INSTALL_SH,
        service: bool = False,
        files: dict[str, str] | None = None,
    ) -> Path:
        root = self.packs_dir / pack_id
        root.mkdir(parents=True, exist_ok=True)
        _write(
            root / "manifest.yaml",
            manifest_text(pack_id, version, deps, artifacts, approval, dry_run, health_timeout),
        )
        _write(root / "install.sh", install, executable=True)
        if service:
            _write(root / "service.py", SERVICE_PY)
            for name, cmd in (("start", "start"), ("stop", "stop"), ("health_check", "health")):
                _write(root / f"{name}.sh", _service_sh(cmd), executable=True)
        else:
            for name in ("start", "stop", "health_check"):
                _write(root / f"{name}.sh", OK_SH, executable=True)
        for rel, text in (files or {}).items():
            _write(root / rel, text)
        return root


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Env:
    """A temporary AURORA_HOME and packs directory, and ways to run the CLI on them."""

    home: Path
    packs_dir: Path
    capsys: pytest.CaptureFixture[str]
    make_pack: PackFactory
    started: list[int] = field(default_factory=list)

    def args(self, *argv: str) -> list[str]:
        return [*argv, "--home", str(self.home), "--packs-dir", str(self.packs_dir)]

    def run(self, *argv: str) -> Result:
        """The CLI in-process (main([...])) with captured output."""
        self.capsys.readouterr()
        code = aurora_installer.main(self.args(*argv))
        captured = self.capsys.readouterr()
        return Result(int(code), captured.out, captured.err)

    def cli(self, *argv: str, timeout: float = 60, **kwargs: Any) -> Result:
        """The CLI as a real process (stdin is not a terminal)."""
        proc = subprocess.run(
            [sys.executable, str(CLI), *self.args(*argv)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            **kwargs,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def state(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.home / "state.json").read_text())
        return doc

    def active(self, pack_id: str) -> str | None:
        """The active version state.json records (None without a state file)."""
        if not (self.home / "state.json").exists():
            return None
        record = self.state()["packs"].get(pack_id) or {}
        version: str | None = record.get("active_version")
        return version

    def audit(self) -> list[dict[str, Any]]:
        path = self.home / "audit.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


def _pidfile_pids(home: Path) -> list[int]:
    """Pids named by the pidfiles under home/run: text `PID [START]` or pack05's JSON."""
    pids = []
    for pidfile in home.glob("run/*/*.pid"):
        try:
            text = pidfile.read_text()
            pids.append(
                int(json.loads(text)["pid"])
                if text.lstrip().startswith("{")
                else int(text.split()[0])
            )
        except (OSError, ValueError, IndexError, KeyError, TypeError):
            continue
    return pids


def _kill_if_started_here(pid: int, home: Path) -> None:
    """Kill a fixture service only if its environment says it belongs to this test's home."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return
    if f"AURORA_HOME={home}".encode() in environ:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not: it has exited)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root with its content (to prove nothing changed)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def processes_under(base: Path) -> dict[int, str]:
    """Live processes (pid -> command line) whose AURORA_HOME lies under ``base``: what the
    installer's scripts and the services they start carry in their environment."""
    prefix = f"AURORA_HOME={base}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if not alive(int(entry.name)):
            continue
        if any(var.startswith(prefix) for var in environ):
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def kill_services(home: Path) -> None:
    """Leave no process behind: kill fixture services started under this home."""
    for pid in _pidfile_pids(home):
        _kill_if_started_here(pid, home)


# -- fault injection: SIGKILL at the n-th file-system operation ------------------------------

# Audit events (sys.addaudithook) that change the file system; "open" counts only when its
# flags can write. os.write/fsync/... raise no audit event: they are wrapped instead.
_FS_EVENTS = frozenset(
    {
        "os.rename",  # os.replace too
        "os.remove",  # os.unlink too
        "os.rmdir",
        "os.mkdir",
        "os.symlink",
        "os.link",
        "os.truncate",
        "os.chmod",
        "os.chown",
        "os.utime",
        "shutil.copyfile",
        "shutil.rmtree",
    }
)
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_WRAPPED = ("write", "fsync", "fdatasync", "ftruncate", "posix_fallocate")


def _install_kill_hook(step: int, counter: list[int], trace: list[list[Any]]) -> None:
    """In a forked child only: SIGKILL this process just before its ``step``-th
    file-system operation (counted in ``counter``); each is noted in ``trace`` as
    [operation, path, whether the path existed]."""

    def tick(event: str, path: Any) -> None:
        if not counter[1]:
            return
        counter[0] += 1
        if counter[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        name = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        trace.append([event, name, bool(name) and os.path.lexists(name)])

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in _FS_EVENTS:
            tick(event, args[0] if args else None)
        elif event == "open" and len(args) >= 3 and isinstance(args[2], int):
            writes = args[2] & _WRITE_FLAGS
            if writes:
                tick(event, args[0])

    for name in _WRAPPED:
        real = getattr(os, name)

        def wrapped(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
            tick(_name, None)
            return _real(*a, **k)

        setattr(os, name, wrapped)
    sys.addaudithook(hook)  # a hook cannot be removed: only ever in a child that exits


@dataclass
class Killed:
    """One run of a command whose n-th file-system operation SIGKILLed it."""

    killed: bool  # False: the command completed before its n-th operation
    code: int | None  # its exit code when it completed
    err: str
    steps: int  # operations counted (when it completed)
    trace: list[list[Any]] = field(default_factory=list)  # [operation, path, existed]


def steps_to_kill_at(trace: list[list[Any]]) -> list[int]:
    """The steps of a completed run's ``trace`` worth a kill: all of them, but for those
    a kill just before is provably the same as a kill just after (so the next step
    covers it):

    * fsync / fdatasync: SIGKILL loses nothing the page cache holds (a power cut would,
      and is not what this simulates);
    * mkdir of a directory that exists already (the exist_ok mkdir before every atomic
      write): it changes nothing.

    Every other operation, each file of every tree copy and removal included, is swept.
    """
    steps = []
    for number, (event, _path, existed) in enumerate(trace, 1):
        if event in ("fsync", "fdatasync") or (event == "os.mkdir" and existed):
            continue
        steps.append(number)
    return [*steps, len(trace) + 1]  # the last: the command runs to its end


def run_killed_at(env: Env, step: int, *argv: str) -> Killed:
    """Run the CLI's main() in a forked child (no interpreter start-up per step, like
    pack05's test_faults.py) that kills itself at its ``step``-th file-system operation
    (0: never). Whatever escapes main() is written to stderr and exits 99."""
    out_path = env.home.parent / ".killed.out"
    err_path = env.home.parent / ".killed.err"
    count_path = env.home.parent / ".killed.count"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            counter = [0, 1]  # operations so far; armed
            trace: list[list[Any]] = []
            _install_kill_hook(step, counter, trace)
            code = aurora_installer.main(env.args(*argv))
            counter[1] = 0  # the command is over: what follows is the harness's
            sys.stdout.flush()
            sys.stderr.flush()
            count_path.write_text(json.dumps(trace))
        except BaseException:
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
        os._exit(int(code))
    _, status = os.waitpid(pid, 0)
    err = err_path.read_text(errors="replace") if err_path.exists() else ""
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL, (step, status, err)
        return Killed(True, None, err, step)
    trace = json.loads(count_path.read_text()) if count_path.exists() else []
    count_path.unlink(missing_ok=True)
    return Killed(False, os.WEXITSTATUS(status), err, len(trace), trace)


def mount_tmpfs(path: Path, options: str) -> None:
    """Mount a tmpfs (``-o options``) at ``path``, made if missing; skip where we cannot.
    The caller unmounts it (``unmount``) in its teardown."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    """Lazily unmount what ``mount_tmpfs`` mounted (the test's files may still be open)."""
    subprocess.run(["umount", "-l", str(path)], check=False)
