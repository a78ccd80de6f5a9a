"""Helpers shared by the launcher tests (a uniquely named module: packs share conftest names)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest

PACK_ROOT = Path(__file__).resolve().parent.parent
if str(PACK_ROOT) not in sys.path:
    sys.path.insert(0, str(PACK_ROOT))

from launcher import status  # noqa: E402
from launcher.cgroup import CgroupTree  # noqa: E402
from launcher.digest import tree_digest  # noqa: E402
from launcher.paths import UID_CLAIMS_ENV, Paths  # noqa: E402
from launcher.process import ProcessId, identify  # noqa: E402
from launcher.status import read_status  # noqa: E402
from launcher.supervisor import Settings, Slot, Supervisor  # noqa: E402

#: TEST-ONLY sandbox that confines nothing: for the supervisor's own logic.
PASSTHROUGH_ROOT = Path(__file__).resolve().parent / "passthrough_sandbox"
#: The real pack03 sandbox, when it exists in the source tree.
REAL_PACK03_ROOT = PACK_ROOT.parent / "pack03_os_base"

# Plugin bodies. Each writes what a test needs into its data dir.
_CD = "import os; os.chdir(os.environ.get('AURORA_PLUGIN_DATA', '.'))\n"
IDLE = (
    _CD
    + """
import os, time
open("pid", "w").write(str(os.getpid()))
while True:
    time.sleep(1)
"""
)
CRASH = "import sys; sys.exit(3)"
# Crashes on its first two runs, then idles: counts its runs in its data dir.
CRASH_TWICE = (
    _CD
    + """
import os, sys, time
n = int(open("runs").read()) if os.path.exists("runs") else 0
open("runs", "w").write(str(n + 1))
if n < 2:
    sys.exit(3)
while True:
    time.sleep(1)
"""
)
CLEAN_EXIT = "print('done')"
# Forks a child that calls setsid and forks a grandchild that calls setsid
# again; records the grandchild's pid; everybody sleeps.
ESCAPE = (
    _CD
    + """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.setsid()
        os.write(w, str(os.getpid()).encode())
        while True:
            time.sleep(1)
    while True:
        time.sleep(1)
os.close(w)
pid = os.read(r, 32).decode()
open("grandchild.tmp", "w").write(pid)
os.replace("grandchild.tmp", "grandchild")
while True:
    time.sleep(1)
"""
)
# Double fork: the middle process records the grandchild's pid and exits at once,
# orphaning it (the launcher may kill it as soon as it sees it: that is fine).
DOUBLE_FORK = (
    _CD
    + """
import os, time
if os.fork() == 0:
    pid = os.fork()
    if pid == 0:
        os.setsid()
        while True:
            time.sleep(1)
    open("grandchild.tmp", "w").write(str(pid))
    os.replace("grandchild.tmp", "grandchild")
    os._exit(0)
while True:
    time.sleep(1)
"""
)


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class FakeRegistry:
    """A pack05-style plugins/ dir: registry.json per docs/contracts.md + packages."""

    plugins_dir: Path
    doc: dict[str, Any] = field(
        default_factory=lambda: {"schema": "aurora-plugin-registry-v1", "plugins": {}}
    )

    @property
    def path(self) -> Path:
        return self.plugins_dir / "registry.json"

    def add(
        self,
        plugin_id: str,
        code: str = IDLE,
        *,
        granted: list[str] | None = None,
        enabled: bool = True,
        version: str = "1.0.0",
        entrypoint: str = "main.py",
        manifest_extra: dict[str, Any] | None = None,
        calls_granted: list[str] | None = None,
    ) -> Path:
        """Stage a package with ``code`` as its entrypoint and register it.

        ``manifest_extra``: protocol keys (functions, activation, health, calls...);
        ``calls_granted``: ``call:<id>/<fn>`` grants beside the capabilities."""
        rel = f"packages/{plugin_id}/{version}"
        pkg = self.plugins_dir / rel
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / entrypoint).write_text(code)
        manifest = {
            "id": plugin_id,
            "name": plugin_id,
            "version": version,
            "entrypoint": entrypoint,
            "permissions": granted or [],
            **(manifest_extra or {}),
        }
        (pkg / "manifest.json").write_text(json.dumps(manifest))
        entry = self.doc["plugins"].setdefault(plugin_id, {"versions": {}})
        entry.update(
            enabled=enabled,
            active_version=version,
            granted=list(granted or []) + list(calls_granted or []),
        )
        entry["versions"][version] = {
            "path": rel,
            "manifest": manifest,
            "digest": tree_digest(pkg),  # what pack05 records at staging
        }
        self.write()
        return pkg

    def set(self, plugin_id: str, **fields: Any) -> None:
        self.doc["plugins"][plugin_id].update(fields)
        self.write()

    def remove(self, plugin_id: str) -> None:
        del self.doc["plugins"][plugin_id]
        self.write()

    def write(self) -> None:
        """Replace registry.json atomically, as pack05 does (a new inode each time)."""
        self.plugins_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1))
        os.replace(tmp, self.path)


def fast_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "python": sys.executable,
        "poll_interval": 0.05,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "max_restarts": 3,
        "stable_after": 60.0,
        "stop_grace": 2.0,
        "disk_images": False,  # on in test_diskimage.py (mounts cost time and loop devices)
        "min_health_interval": 0.1,
    }
    base.update(overrides)
    return Settings(**base)


def run_until(sup: Supervisor, pred: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Drive the reconcile loop until ``pred`` holds."""

    def _step() -> Any:
        sup.reconcile()
        return pred()

    return wait_until(_step, timeout, getattr(pred, "__name__", "condition"))


class RunningPlugin(NamedTuple):
    """A supervisor and the identity of the plugin process it runs."""

    sup: Supervisor
    ident: ProcessId


def slot_state(sup: Supervisor, plugin_id: str) -> str | None:
    """The supervisor's state for ``plugin_id``, or None while it has no slot."""
    slot = sup.slots.get(plugin_id)
    return slot.state if slot else None


def run_until_state(sup: Supervisor, plugin_id: str, state: str) -> None:
    """Drive the reconcile loop until ``plugin_id`` is in ``state``."""

    def _in_state() -> bool:
        return slot_state(sup, plugin_id) == state

    _in_state.__name__ = f"{plugin_id} {state}"
    run_until(sup, _in_state)


def run_until_started(sup: Supervisor, plugin_id: str) -> Slot:
    """Drive the loop until ``plugin_id`` runs; fail with the reason if it was turned away.

    A refusal or crash (the real sandbox may refuse on a host without some layer)
    fails at once with the sandbox's reason instead of waiting for the timeout.
    """

    def _started_or_turned_away() -> bool:
        return slot_state(sup, plugin_id) in (status.RUNNING, status.REFUSED, status.BACKOFF)

    run_until(sup, _started_or_turned_away)
    slot = sup.slots[plugin_id]
    assert slot.state == status.RUNNING, f"{plugin_id} {slot.state}: {slot.reason}"
    return slot


def _nspid(pid: str) -> list[int]:
    """The ``NSpid:`` line of /proc/<pid>/status: its pid in each nested namespace."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def host_pid(ns_pid: int, plugin_id: str) -> int:
    """The host pid of the process of ``plugin_id`` that sees itself as ``ns_pid``.

    pack03 runs a plugin in a PID namespace of its own, so the pid a plugin writes is
    the namespace's; several plugins have the same ones. Without a namespace (the
    passthrough sandbox) the pid is the host's.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        ns = _nspid(name)
        if len(ns) > 1 and ns[-1] == ns_pid:
            try:
                env = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"AURORA_PLUGIN_ID={plugin_id}".encode() in env:
                found.append(int(name))
    assert len(found) <= 1, f"{plugin_id}: several processes are pid {ns_pid}: {found}"
    return found[0] if found else ns_pid


def plugin_processes(plugin_id: str) -> list[int]:
    """Host pids of live processes whose environment names ``plugin_id``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and not gone(int(name)):
            try:
                env = Path(f"/proc/{name}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"AURORA_PLUGIN_ID={plugin_id}".encode() in env:
                found.append(int(name))
    return found


def read_pid(path: Path) -> ProcessId:
    """The identity of the pid a plugin wrote to ``path`` (waits for the file).

    ``path`` is ``<plugin-data>/<id>/<file>``: the pid is mapped to the host's.
    """
    text = wait_until(lambda: path.is_file() and path.read_text().strip(), what=str(path))
    pid = host_pid(int(text), path.parent.name)
    ident = identify(pid)
    assert ident is not None, f"pid {text} (host {pid}) from {path} is already gone"
    return ident


def cgroup_available() -> bool:
    """True when this host gives the launcher a cgroup v2 with cgroup.kill."""
    tree = CgroupTree.create("launcher-tests-probe")
    if tree is None:
        return False
    tree.close()
    return True


def real_sandbox_root() -> Path:
    """pack03's source tree, or skip: the real sandbox is not faked here."""
    if not (REAL_PACK03_ROOT / "sandbox" / "launch.py").is_file():
        pytest.skip(f"pack03 sandbox not present at {REAL_PACK03_ROOT}/sandbox/launch.py")
    return REAL_PACK03_ROOT


def service_env(
    base: Path, registry: Path, sandbox_root: Path = PASSTHROUGH_ROOT
) -> dict[str, str]:
    """The lifecycle environment of a launcher whose every file is under ``base``."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHON": sys.executable,
        "AURORA_PACK_ROOT": str(PACK_ROOT),
        "AURORA_PACK_DATA": str(base / "data"),
        "AURORA_PACK_RUN": str(base / "run"),
        "AURORA_PACK_LOGS": str(base / "logs"),
        "AURORA_PLUGIN_REGISTRY": str(registry),
        "AURORA_SANDBOX_ROOT": str(sandbox_root),
        # never the host's /var/lib/aurora: the test's claims dir (conftest), else base's
        UID_CLAIMS_ENV: os.environ.get(UID_CLAIMS_ENV) or str(base / "uid-claims"),
    }


FAST_SERVICE_ARGS = [
    "--poll",
    "0.05",
    "--heartbeat",
    "0.3",
    "--backoff-base",
    "0.05",
    "--backoff-max",
    "0.2",
    "--max-restarts",
    "2",
    "--stop-grace",
    "2",
    "--no-disk-images",
]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent or a zombie)."""
    from launcher.process import identify, is_zombie

    return identify(pid) is None or is_zombie(pid)


def plugin_status_record(status_file: Path, plugin_id: str) -> dict[str, Any]:
    """``plugin_id``'s record in a status.json ({} while there is none)."""
    doc = read_status(status_file) or {}
    record: dict[str, Any] = doc.get("plugins", {}).get(plugin_id, {})
    return record


def wait_until_service_reports(
    svc: Service, plugin_id: str, state: str = "running", what: str | None = None
) -> None:
    """Wait until the service's status.json gives ``plugin_id`` the state ``state``."""
    wait_until(
        lambda: plugin_status_record(svc.paths.status, plugin_id).get("state") == state,
        what=what or f"{plugin_id} {state}",
    )


class ServiceWithGrandchild(NamedTuple):
    """A service running ``acme.escape`` and the identity of that plugin's setsid grandchild."""

    svc: Service
    grandchild: ProcessId


@dataclass
class Service:
    """A launcher service running as a real process on tmp paths."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    paths: Paths


class LoopThread:
    """The service's loop (reconcile, select, pump) on a supervisor, in a thread.

    Tests talk to it only as the outside world does: registry files and the call
    socket. ``stop()`` ends the loop; the fixture then closes the supervisor.
    """

    def __init__(self, sup: Supervisor) -> None:
        import threading

        self.sup = sup
        self.errors: list[BaseException] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        try:
            while not self._stopping:
                self.sup.reconcile()
                timeout = min(self.sup.next_wakeup(), 0.05)
                reads, writes = self.sup.wait_fds(), self.sup.write_fds()
                readable, writable, _ = select.select(reads, writes, [], timeout)
                self.sup.pump(readable, writable)
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(10)
        assert not self._thread.is_alive(), "the supervisor loop did not stop"
        assert not self.errors, f"the supervisor loop raised: {self.errors!r}"
