"""pack05's lifecycle as real processes: install.sh, start.sh, health_check.sh, stop.sh.

Each test gets its own AURORA_PACK_{DATA,RUN,LOGS} in tmp_path and runs the scripts of
the source tree from an unrelated working directory; whatever they started is killed
at teardown through the pidfile (never by pattern).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aurora.exitcodes import ExitCode
from aurora_testing import alive, wait_for

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "packs" / "pack05_plugin_api"
POLL = 0.2

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


class Pack05:
    """The scripts of pack05 run with a temporary environment contract."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.run_dir = base / "run"
        self.logs = base / "logs"
        self.plugins = self.data / "plugins"
        self.inbox = self.plugins / "inbox"
        self.cwd = base / "elsewhere"
        self.cwd.mkdir(parents=True)
        self.env = {
            **os.environ,
            "AURORA_HOME": str(base / "home"),
            "AURORA_PACK_ID": "pack05_plugin_api",
            "AURORA_PACK_ROOT": str(PACK),
            "AURORA_PACK_DATA": str(self.data),
            "AURORA_PACK_RUN": str(self.run_dir),
            "AURORA_PACK_LOGS": str(self.logs),
            "PYTHON": sys.executable,
            "AURORA_PACK05_POLL_SECONDS": str(POLL),
            "AURORA_PACK05_SETTLE_SECONDS": "0.1",
        }
        # (pid, start time) of every service seen in the pidfile, killed at teardown
        # only while that pid is still that process (never a reused pid).
        self.started: list[tuple[int, int]] = []

    def script(
        self, name: str, *args: str, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(PACK / name), *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.remember()
        return proc

    def remember(self) -> None:
        """Note the service the pidfile names, for the teardown."""
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = self.pidfile()
            if doc is not None and (doc["pid"], doc["start_time"]) not in self.started:
                self.started.append((int(doc["pid"]), int(doc["start_time"])))

    def pidfile(self) -> dict[str, Any] | None:
        try:
            doc: dict[str, Any] = json.loads((self.run_dir / "service.pid").read_text())
        except FileNotFoundError:
            return None
        return doc

    def pid(self) -> int | None:
        doc = self.pidfile()
        return int(doc["pid"]) if doc else None

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.run_dir / "service.status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return doc

    def registry(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads((self.plugins / "registry.json").read_text())
        except FileNotFoundError:
            return {"plugins": {}}
        return doc

    def healthy(self) -> bool:
        return self.script("health_check.sh", timeout=30).returncode == 0

    def kill_all(self) -> None:
        for pid, start_time in self.started:
            with contextlib.suppress(ProcessLookupError):
                if _start_time(pid) == start_time and os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def pack(tmp_path: Path) -> Iterator[Pack05]:
    lc = Pack05(tmp_path / "p05")
    yield lc
    lc.kill_all()


@pytest.fixture
def started(pack: Pack05) -> Pack05:
    assert pack.script("install.sh", "--install").returncode == 0
    proc = pack.script("start.sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return pack


@pytest.fixture
def bystanders() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Processes that are not the service and must survive; killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(argv), start_new_session=True)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def make_plugin(where: Path, plugin_id: str = "acme.echo", **files: bytes) -> Path:
    where.mkdir(parents=True)
    manifest = {
        "id": plugin_id,
        "name": "Echo",
        "version": "1.0.0",
        "entrypoint": "main.py",
        "permissions": ["network"],
    }
    (where / "manifest.json").write_text(json.dumps(manifest))
    (where / "main.py").write_text("print('hello')\n")
    for name, data in files.items():
        (where / name).write_bytes(data)
    return where


def evil_tar(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("manifest.json", b"{}"), ("../../escaped.txt", b"pwned")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- the whole cycle --------------------------------------------------------------------------


def test_install_start_stage_quarantine_stop(pack: Pack05, tmp_path: Path) -> None:
    proc = pack.script("install.sh", "--install")
    assert proc.returncode == 0, proc.stderr
    assert pack.inbox.is_dir() and (pack.plugins / "quarantine").is_dir()

    proc = pack.script("start.sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started" in proc.stdout
    pid = pack.pid()
    assert pid is not None and os.getsid(pid) == pid  # detached in its own session

    health = pack.script("health_check.sh")
    assert (health.returncode, health.stdout.strip()) == (0, "health OK")

    os.rename(make_plugin(tmp_path / "src" / "echo"), pack.inbox / "echo")
    assert wait_for(lambda: "acme.echo" in pack.registry()["plugins"])
    assert wait_for(lambda: not (pack.inbox / "echo").exists())
    assert (pack.plugins / "packages" / "acme.echo" / "1.0.0" / "main.py").is_file()

    os.rename(evil_tar(tmp_path / "src" / "evil.tar.gz"), pack.inbox / "evil.tar.gz")
    reason_file = pack.plugins / "quarantine" / "evil.tar.gz.reason.json"
    # The reason is written first, then the item moved: once the item is there, both are.
    assert wait_for((pack.plugins / "quarantine" / "evil.tar.gz").is_file)
    assert "escapes the package" in json.loads(reason_file.read_text())["reason"]
    assert list(tmp_path.rglob("escaped.txt")) == []
    assert not (pack.inbox / "evil.tar.gz").exists()

    assert pack.healthy()  # a bad item does not take the service down
    counts = {"staged": 1, "quarantined": 1, "errors": 0}
    assert wait_for(lambda: pack.status().get("counts") == counts), pack.status()

    proc = pack.script("stop.sh")
    assert proc.returncode == 0, proc.stderr
    assert f"stopped pid {pid} after TERM" in proc.stdout
    assert not alive(pid)
    assert pack.pidfile() is None
    assert pack.status()["state"] == "stopped"
    health = pack.script("health_check.sh")
    assert health.returncode != 0 and health.stdout.startswith("health FAIL: not running")


def test_install_dry_run_writes_nothing_and_unknown_mode_is_refused(pack: Pack05) -> None:
    proc = pack.script("install.sh", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry-run OK" in proc.stdout
    assert sorted(os.listdir(pack.base)) == ["elsewhere"]
    for args in (["--upgrade"], []):
        proc = pack.script("install.sh", *args)
        assert proc.returncode == 2
        assert "usage: install.sh --dry-run | --install" in proc.stderr


def test_start_reports_a_service_that_dies_at_start(pack: Pack05) -> None:
    proc = pack.script("start.sh", AURORA_PACK05_POLL_SECONDS="often")
    assert proc.returncode == 1
    assert "start FAILED: service exited with status 2" in proc.stdout
    assert "'often': expected a number of seconds" in proc.stdout  # the log's last lines
    assert pack.pidfile() is None


def test_start_reports_a_service_that_crashes_on_import(pack: Pack05, tmp_path: Path) -> None:
    """The reference said "loader started" over a crashed import; here start fails."""
    broken = tmp_path / "broken-deps"
    broken.mkdir()
    error = "raise ImportError('jsonschema is broken on this host')\n"
    (broken / "jsonschema.py").write_text(error)
    proc = pack.script("start.sh", PYTHONPATH=str(broken))
    assert proc.returncode == 1
    assert "start FAILED: service exited with status 1" in proc.stdout
    assert "ImportError: jsonschema is broken on this host" in proc.stdout
    assert pack.pidfile() is None
    assert not pack.healthy()


def test_double_start_and_double_stop_are_harmless(started: Pack05) -> None:
    pid = started.pid()
    proc = started.script("start.sh")
    assert proc.returncode == 0 and f"already running (pid {pid})" in proc.stdout
    assert started.pid() == pid
    assert started.script("stop.sh").returncode == 0
    proc = started.script("stop.sh")
    assert (proc.returncode, proc.stdout.strip()) == (0, "not running")


def test_concurrent_starts_make_one_service(pack: Pack05) -> None:
    starts = [
        subprocess.Popen(
            [str(PACK / "start.sh")],
            cwd=pack.cwd,
            env=pack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in starts]
    pid = pack.pid()
    assert pid is not None
    pack.remember()
    assert [p.returncode for p in starts] == [0, 0, 0, 0], outputs
    assert sum("started pack05 loader service" in out for out in outputs) == 1
    assert sum(f"already running (pid {pid})" in out for out in outputs) == 3
    assert pack.healthy()


# --- failures the scripts must see and survive ---------------------------------------------


def test_sigkilled_service_is_unhealthy_and_restartable(started: Pack05) -> None:
    pid = started.pid()
    assert pid is not None and started.healthy()
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not started.healthy(), timeout=15)
    health = started.script("health_check.sh")
    assert "not running" in health.stdout and "stale pidfile" in health.stdout
    proc = started.script("stop.sh")
    assert proc.returncode == 0 and "removed stale pidfile" in proc.stdout
    proc = started.script("start.sh")
    assert proc.returncode == 0, proc.stdout
    assert started.pid() != pid and started.healthy()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_the_service_cleanly(started: Pack05, sig: signal.Signals) -> None:
    pid = started.pid()
    assert pid is not None
    os.kill(pid, sig)
    assert wait_for(lambda: not alive(pid), timeout=10)
    assert started.pidfile() is None  # it removed its own pidfile
    assert started.status()["state"] == "stopped"
    assert f"received {sig.name}" in (started.logs / "service.log").read_text()
    proc = started.script("stop.sh")
    assert (proc.returncode, proc.stdout.strip()) == (0, "not running")


def test_stale_pidfile_of_another_process_is_not_signalled(
    pack: Pack05, bystanders: Callable[..., subprocess.Popen[bytes]]
) -> None:
    other = bystanders("sleep", "60")
    start_time = _start_time(other.pid)
    assert start_time is not None
    pack.run_dir.mkdir(parents=True)
    # What a pidfile looks like after a reboot-free pid reuse: same pid, another process.
    record = {
        "pid": other.pid,
        "start_time": start_time - 1,
        "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
        "exe": os.path.realpath(sys.executable),
    }
    (pack.run_dir / "service.pid").write_text(json.dumps(record))
    health = pack.script("health_check.sh")
    assert health.returncode != 0 and "another process" in health.stdout
    proc = pack.script("stop.sh")
    assert proc.returncode == 0 and "not signalled" in proc.stdout
    assert other.poll() is None
    proc = pack.script("start.sh")
    assert proc.returncode == 0, proc.stdout
    assert pack.pid() != other.pid
    assert pack.script("stop.sh").returncode == 0
    assert other.poll() is None


def test_decoy_with_the_service_name_survives_stop(
    started: Pack05, bystanders: Callable[..., subprocess.Popen[bytes]]
) -> None:
    decoy = bystanders(
        sys.executable, "-c", "import time; time.sleep(60)", "-m", "core.service", "core/loader.py"
    )
    pid = started.pid()
    assert pid is not None
    assert started.script("stop.sh").returncode == 0
    assert not alive(pid)
    assert started.script("stop.sh").returncode == 0
    assert decoy.poll() is None


IGNORES_TERM = textwrap.dedent(
    """
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(120)
    """
)


def test_service_that_ignores_term_is_killed_after_the_timeout(
    pack: Pack05, tmp_path: Path
) -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", IGNORES_TERM],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
        pack.run_dir.mkdir(parents=True)
        record = {
            "pid": stubborn.pid,
            "start_time": _start_time(stubborn.pid),
            "boot_id": Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
            "exe": os.readlink(f"/proc/{stubborn.pid}/exe"),
        }
        (pack.run_dir / "service.pid").write_text(json.dumps(record))
        began = time.monotonic()
        proc = pack.script("stop.sh", AURORA_PACK05_STOP_TIMEOUT="1")
        took = time.monotonic() - began
        assert proc.returncode == 0, proc.stderr
        assert "with KILL after TERM was ignored for 1 s" in proc.stdout
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        assert took >= 1.0
        assert pack.pidfile() is None
    finally:
        if stubborn.poll() is None:
            os.killpg(stubborn.pid, signal.SIGKILL)
            stubborn.wait()


def test_sigterm_during_staging_leaves_no_partial_state(started: Pack05, tmp_path: Path) -> None:
    big = make_plugin(tmp_path / "src" / "big", "acme.big", **{"blob.bin": b"\0" * (60 << 20)})
    os.rename(big, started.inbox / "big")
    assert wait_for(lambda: started.status().get("current") == "big", timeout=20), (
        "never saw the service staging the item"
    )
    proc = started.script("stop.sh")
    assert proc.returncode == 0 and "after TERM" in proc.stdout  # finished, no KILL needed
    registered = "acme.big" in started.registry()["plugins"]
    package = started.plugins / "packages" / "acme.big" / "1.0.0"
    if registered:  # finished: whole package, inbox entry gone
        assert (package / "blob.bin").stat().st_size == 60 << 20
        assert os.listdir(started.inbox) == []
    else:  # abandoned: as if never started
        assert not package.exists()
        assert os.listdir(started.inbox) == ["big"]
    staging = started.plugins / "staging"
    assert not staging.exists() or os.listdir(staging) == []
    assert started.status()["state"] == "stopped"


# --- driven by the installer ------------------------------------------------------------------

INSTALLER = REPO / "installer" / "aurora_installer.py"


def _installer_cli(home: Path, cwd: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The installer as a process on ``home``; skips the test when pack05's dependencies
    (other parts of the project, not pack05's lifecycle) do not validate in this checkout."""
    env = {**os.environ, "AURORA_PACK05_POLL_SECONDS": str(POLL)}
    env.pop("AURORA_HOME", None)

    def aurora(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(INSTALLER), *argv, "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=cwd,
            check=False,
        )

    for dependency in ("pack01_common", "pack03_os_base", "pack04_launcher"):
        check = aurora("validate", "--pack", dependency)
        if check.returncode != 0:
            pytest.skip(f"{dependency} does not validate in this checkout: {check.stderr[:300]}")
    return aurora


def test_installed_by_the_installer_and_started_with_health_polling(tmp_path: Path) -> None:
    """install (with pack03, pack04), start (polls health_check.sh), stage, status, stop."""
    home = tmp_path / "home"
    aurora = _installer_cli(home, tmp_path)
    pidfile = home / "run" / "pack05_plugin_api" / "service.pid"
    try:
        proc = aurora("install", "--pack", "pack05_plugin_api", "--with-deps", "--approve")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = aurora("start", "--pack", "pack05_plugin_api", "--interval", "0.2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        pid = json.loads(pidfile.read_text())["pid"]
        assert alive(pid)
        assert aurora("health", "--pack", "pack05_plugin_api").returncode == 0

        inbox = home / "data" / "pack05_plugin_api" / "plugins" / "inbox"
        os.rename(make_plugin(tmp_path / "src" / "echo"), inbox / "echo")
        registry = inbox.parent / "registry.json"
        assert wait_for(
            lambda: registry.exists() and "acme.echo" in json.loads(registry.read_text())["plugins"]
        )

        proc = aurora("status", "--pack", "pack05_plugin_api", "--json")
        assert proc.returncode == 0, proc.stderr
        assert str(pid) in proc.stdout

        proc = aurora("stop", "--pack", "pack05_plugin_api")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not alive(pid) and not pidfile.exists()
        assert aurora("health", "--pack", "pack05_plugin_api").returncode != 0
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError):
            doc = json.loads(pidfile.read_text())
            if (
                _start_time(doc["pid"]) == doc["start_time"]
                and os.getpgid(doc["pid"]) == doc["pid"]
            ):
                os.killpg(doc["pid"], signal.SIGKILL)


def test_installer_reports_a_killed_service_unhealthy_and_restarts_it(tmp_path: Path) -> None:
    """SIGKILL the running service: `health --watch` turns unhealthy within the bound,
    `status` says not running, and `start` replaces the stale pidfile with a new service."""
    home = tmp_path / "home"
    aurora = _installer_cli(home, tmp_path)
    pidfile = home / "run" / "pack05_plugin_api" / "service.pid"
    pids: list[int] = []
    started: list[tuple[int, int]] = []  # (pid, start time): never kill a reused pid

    def record_start() -> None:
        doc = json.loads(pidfile.read_text())
        pids.append(doc["pid"])
        started.append((doc["pid"], doc["start_time"]))

    try:
        proc = aurora("install", "--pack", "pack05_plugin_api", "--with-deps", "--approve")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        proc = aurora("start", "--pack", "pack05_plugin_api", "--interval", "0.2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        record_start()
        os.kill(pids[0], signal.SIGKILL)
        assert wait_for(lambda: not alive(pids[0]), timeout=10)

        began = time.monotonic()
        watch = aurora(
            "health", "--pack", "pack05_plugin_api", "--watch", "--count", "2",
            "--interval", "0.2", "--retries", "2", "--json",
        )  # fmt: skip
        assert watch.returncode == ExitCode.FAILED, watch.stderr  # ends unhealthy
        assert json.loads(watch.stdout)["result"]["status"] == "unhealthy"
        assert "not running" in watch.stderr and "stale pidfile" in watch.stderr
        assert time.monotonic() - began < 60  # generous: two checks 0.2 s apart

        status = json.loads(aurora("status", "--pack", "pack05_plugin_api", "--json").stdout)
        runtime = status["result"]["runtime"]
        assert runtime["running"] is False and runtime["health"]["status"] == "unhealthy"

        proc = aurora("start", "--pack", "pack05_plugin_api", "--interval", "0.2")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        record_start()
        assert started[1] != started[0] and alive(pids[1])
        assert aurora("stop", "--pack", "pack05_plugin_api").returncode == 0
        assert not alive(pids[1])
    finally:
        for pid, start_time in started:
            with contextlib.suppress(ProcessLookupError):
                if _start_time(pid) == start_time and os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
