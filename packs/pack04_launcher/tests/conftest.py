"""Fixtures for the launcher tests: a registry, plugin packages and supervisors in tmp_path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The launcher package (pack root) and the shared helpers (this dir) on sys.path.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from launcher import diskimage, process, status  # noqa: E402
from launcher.cgroup import CgroupTree  # noqa: E402
from launcher.paths import DEFAULT_UID_CLAIMS, UID_CLAIMS_ENV, Paths  # noqa: E402
from launcher.supervisor import Supervisor  # noqa: E402
from launcher_testing import (  # noqa: E402
    ESCAPE,
    FAST_SERVICE_ARGS,
    PACK_ROOT,
    PASSTHROUGH_ROOT,
    FakeRegistry,
    RunningPlugin,
    Service,
    ServiceWithGrandchild,
    fast_settings,
    read_pid,
    run_until_state,
    service_env,
    wait_until,
    wait_until_service_reports,
)


@pytest.fixture(scope="session", autouse=True)
def host_claims_untouched() -> Iterator[None]:
    """No test claims uids in the host's real claims directory (see ``uid_claims``)."""
    existed = DEFAULT_UID_CLAIMS.parent.exists()
    yield
    assert existed or not DEFAULT_UID_CLAIMS.parent.exists(), (
        f"a test made {DEFAULT_UID_CLAIMS.parent}: it ignored {UID_CLAIMS_ENV}"
    )


@pytest.fixture(autouse=True)
def uid_claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test claims plugin uids in its own dir, never in /var/lib/aurora: in this
    process (Paths' default) and in every launcher it starts (service_env)."""
    claims = tmp_path / "uid-claims"
    monkeypatch.setenv(UID_CLAIMS_ENV, str(claims))
    return claims


@pytest.fixture
def fake_registry(tmp_path: Path) -> FakeRegistry:
    return FakeRegistry(tmp_path / "pack05" / "plugins")


@pytest.fixture
def paths(tmp_path: Path, fake_registry: FakeRegistry) -> Paths:
    return Paths(
        home=None,
        root=PACK_ROOT,
        data=tmp_path / "data",
        run=tmp_path / "run",
        logs=tmp_path / "logs",
        registry=fake_registry.path,
    )


@pytest.fixture
def make_supervisor(paths: Paths) -> Iterator[Callable[..., Supervisor]]:
    """Build supervisors on the TEST-ONLY passthrough sandbox; closed at teardown."""
    made: list[Supervisor] = []

    def _make(sandbox_root: Path = PASSTHROUGH_ROOT, **settings: Any) -> Supervisor:
        sup = Supervisor(
            paths, fast_settings(**settings), {"AURORA_SANDBOX_ROOT": str(sandbox_root)}
        )
        sup.open()
        made.append(sup)
        return sup

    yield _make
    for sup in made:
        sup.close()
    diskimage.unmount_all(paths.plugin_data_root)  # also what a failed test left


@pytest.fixture
def idle_plugin_running(
    make_supervisor: Callable[..., Supervisor], fake_registry: FakeRegistry, paths: Paths
) -> RunningPlugin:
    """``acme.idle`` registered and running under a fresh supervisor (passthrough sandbox)."""
    fake_registry.add("acme.idle")
    sup = make_supervisor()
    run_until_state(sup, "acme.idle", status.RUNNING)
    return RunningPlugin(sup, read_pid(paths.plugin_data("acme.idle") / "pid"))


@pytest.fixture
def service_factory(
    tmp_path: Path, fake_registry: FakeRegistry
) -> Iterator[Callable[..., Service]]:
    """Start ``python -m launcher.service`` processes; stop them and sweep at teardown."""
    started: list[Service] = []

    def _start(*extra: str, sandbox_root: Path = PASSTHROUGH_ROOT, wait: bool = True) -> Service:
        env = service_env(tmp_path, fake_registry.path, sandbox_root)
        paths = Paths.from_env(env)
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.service", *FAST_SERVICE_ARGS, *extra],
            cwd=PACK_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=open(tmp_path / "service.err", "ab"),  # noqa: SIM115 - child keeps it
            start_new_session=True,
        )
        svc = Service(proc, env, paths)
        started.append(svc)
        if wait:
            wait_until(
                lambda: (
                    proc.poll() is not None
                    or getattr(process.running_from_pidfile(paths.pidfile), "pid", 0) == proc.pid
                ),
                what="the service pidfile",
            )
            assert proc.poll() is None, (tmp_path / "service.err").read_text()
        return svc

    yield _start
    for svc in started:
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
            try:
                svc.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(svc.proc.pid, signal.SIGKILL)
                svc.proc.wait()
        tree = CgroupTree.create(str(svc.paths.run))
        if tree is not None:
            for name in tree.leftovers():
                tree.kill(name)
            tree.close()
        diskimage.unmount_all(svc.paths.plugin_data_root)


@pytest.fixture
def service_with_escaped_grandchild(
    service_factory: Callable[..., Service], fake_registry: FakeRegistry
) -> ServiceWithGrandchild:
    """A service whose ``acme.escape`` runs and has a grandchild that left its session."""
    fake_registry.add("acme.escape", ESCAPE)
    svc = service_factory()
    wait_until_service_reports(svc, "acme.escape")
    return ServiceWithGrandchild(svc, read_pid(svc.paths.plugin_data("acme.escape") / "grandchild"))


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_registry: FakeRegistry
) -> dict[str, str]:
    """Point the CLI (this process) at the same files as the service fixture."""
    env = service_env(tmp_path, fake_registry.path)
    for key, value in env.items():
        if key.startswith("AURORA_"):
            monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def start_service_for_cli(
    cli_env: dict[str, str],
    service_factory: Callable[..., Service],
    fake_registry: FakeRegistry,
) -> Callable[[dict[str, str]], Service]:
    """Register ``{plugin id: code}`` and start the service the in-process CLI talks to."""

    def _start(plugins: dict[str, str]) -> Service:
        for plugin_id, code in plugins.items():
            fake_registry.add(plugin_id, code)
        return service_factory()

    return _start
