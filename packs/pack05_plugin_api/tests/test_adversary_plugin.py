"""Regression tests for the plugin adversary's pack05 findings (reports/adv8.md).

Evidence from outside the tested code: what another uid can open (a forked child that
drops to ``nobody``), file modes on disk, /proc/locks, exit codes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import plugins
import pytest
from core import storage

from pack05_testlib import make_manifest, write_package

NOBODY = 65534


@pytest.fixture
def open_home() -> Iterator[Path]:
    """A data dir other uids can traverse down to (as <repo>/.aurora under umask 022):
    pytest's own tmp dirs are 0700, which would hide a defect."""
    root = Path(tempfile.mkdtemp(prefix="aurora-adv8-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def _opens_as_nobody(path: Path) -> int:
    """0 if uid ``nobody`` can open ``path`` read-only, else the errno."""
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try, report through the exit status
        code = 0
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            os.close(os.open(path, os.O_RDONLY))
        except OSError as exc:
            code = exc.errno or 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_f8_no_other_uid_can_open_pack05s_locks_or_registry(
    open_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = open_home / "plugins"
    pkg = write_package(open_home / "pkg", make_manifest(permissions=["fs-read"]))
    assert plugins.main(["--data", str(data), "stage", str(pkg)]) == 0
    assert plugins.main(["--data", str(data), "grant", "acme.echo", "fs-read"]) == 0
    capsys.readouterr()
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"registry.json", "audit.log", "staging.lock", "registry.lock"} <= names
    for path in files:
        if path.suffix in (".lock", ".log", ".json") and path.parent == data:
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
        assert _opens_as_nobody(path) == errno.EACCES, path


def test_f8_a_wider_plugins_dir_and_lock_of_an_older_install_are_narrowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "plugins"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    lock = data / "registry.lock"
    lock.touch()
    os.chmod(lock, 0o644)
    pkg = write_package(tmp_path / "pkg", make_manifest())
    assert plugins.main(["--data", str(data), "stage", str(pkg)]) == 0
    capsys.readouterr()
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_f8_a_held_lock_fails_the_command_naming_the_holder_exit_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "plugins"
    pkg = write_package(tmp_path / "pkg", make_manifest())
    assert plugins.main(["--data", str(data), "stage", str(pkg)]) == 0
    capsys.readouterr()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(data / "registry.lock")], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        monkeypatch.setattr(storage, "LOCK_WAIT", 0.5)
        started = time.monotonic()
        code = plugins.main(["--data", str(data), "disable", "acme.echo", "--json"])
        took = time.monotonic() - started
        out, err = capsys.readouterr()
    finally:
        holder.kill()
        holder.wait()
    assert code == plugins.EXIT_BUSY == 5
    assert took < 10
    assert f"pid {holder.pid} holds {data / 'registry.lock'}" in err
    assert "Traceback" not in err
    assert json.loads(out)["exit"] == 5


# -- F9: symlinks checked by resolution, not lexically ----------------------------------------

_ESCAPE = "s/s/s/s/../../../../etc/shadow"  # normpath: inside; the kernel: /etc/shadow


def _chained_packages(root: Path, links: list[tuple[str, str]]) -> list[Path]:
    """One package with ``links`` (name, target) as a directory, a .zip and a .tar.gz."""
    from pack05_testlib import make_tar, make_zip

    man = make_manifest(permissions=None)
    pkg = write_package(root / "dir" / "acme.echo", man)
    for name, target in links:
        os.symlink(target, pkg / name)
    members = [
        ("acme.echo/manifest.json", json.dumps(man).encode(), 0o100644),
        ("acme.echo/main.py", b"", 0o100644),
    ]
    zpath = make_zip(
        root / "p.zip", [*members, *((f"acme.echo/{n}", t.encode(), 0o120777) for n, t in links)]
    )
    import tarfile

    tar_members: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (tarfile.TarInfo(name), content) for name, content, _ in members
    ]
    for name, target in links:
        info = tarfile.TarInfo(f"acme.echo/{name}")
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar_members.append((info, None))
    return [pkg, zpath, make_tar(root / "p.tar.gz", tar_members)]


@pytest.mark.parametrize(
    "links",
    [
        [("s", "."), ("esc", _ESCAPE)],  # adv8's zip: a link through a link to itself
        [("up", "d/.."), ("d", "."), ("esc", "up/up/../etc/passwd")],
        [("a", "b"), ("b", "a")],  # a loop
    ],
)
def test_f9_a_symlink_leading_out_through_other_links_is_refused_for_every_kind(
    tmp_path: Path, links: list[tuple[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "plugins"
    for package in _chained_packages(tmp_path, links):
        code = plugins.main(["--data", str(data), "stage", str(package)])
        err = capsys.readouterr().err
        assert code == plugins.EXIT_INVALID, (package, err)
        # tarfile's data filter may refuse it first, in its words
        assert any(w in err for w in ("leads out of the package", "a loop", "outside the dest")), (
            err
        )
        assert "Traceback" not in err
    packages = data / "packages"
    assert not packages.exists() or not any(packages.iterdir())


def test_f9_links_to_links_inside_the_package_still_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "plugins"
    links = [("s", "."), ("m", "s/s/main.py"), ("n", "m")]
    for package in _chained_packages(tmp_path, links)[:1]:
        assert plugins.main(["--data", str(data), "stage", str(package)]) == 0
    staged = data / "packages" / "acme.echo" / "1.0.0"
    assert os.path.realpath(staged / "n") == str((staged / "main.py").resolve())
    capsys.readouterr()


# -- F6: "disabled" says when the processes are gone -------------------------------------------


def test_f6_disable_says_the_processes_stop_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The registry changes at once; the launcher stops the processes after it (up to the
    stop grace): the operator is told so, not only "disabled"."""
    data = tmp_path / "plugins"
    pkg = write_package(tmp_path / "pkg", make_manifest(permissions=["network"]))
    assert plugins.main(["--data", str(data), "stage", str(pkg)]) == 0
    assert plugins.main(["--data", str(data), "grant", "acme.echo", "network"]) == 0
    assert plugins.main(["--data", str(data), "enable", "acme.echo"]) == 0
    capsys.readouterr()
    assert plugins.main(["--data", str(data), "disable", "acme.echo"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("disabled: acme.echo; ") and "stops its processes within" in out
    assert plugins.main(["--data", str(data), "enable", "acme.echo"]) == 0
    capsys.readouterr()
    assert plugins.main(["--data", str(data), "revoke", "acme.echo", "network"]) == 0
    out = capsys.readouterr().out
    assert "disabled: acme.echo (its active version" in out and "stops its processes" in out


def test_f8_a_busy_lock_keeps_an_inbox_package_for_later_never_quarantined(
    tmp_path: Path,
) -> None:
    """The bounded lock wait ends in LockBusy: the loader service retries the package
    (as after a full disk), it does not call it broken."""
    from core import health, service
    from core.errors import PluginError

    class Busy:
        def stage_package(self, path: Path) -> dict[str, object]:
            raise storage.LockBusy("pid 1 holds staging.lock; waited 60 s", path, 1)

    data = tmp_path / "plugins"
    (data / "inbox").mkdir(parents=True)
    pkg = write_package(data / "inbox" / "acme.echo", make_manifest())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    root = str(Path(__file__).resolve().parent.parent)
    paths = health.Paths(root, str(tmp_path / "d"), str(run_dir), str(tmp_path / "logs"))
    svc = service.InboxService(
        data,
        paths,
        Busy(),  # type: ignore[arg-type]
        interval=0.01,
        settle=0.0,
        is_refusal=lambda exc: isinstance(exc, PluginError),
    )
    svc.scan_once()
    assert pkg.is_dir()
    quarantine = data / "quarantine"
    assert not quarantine.exists() or os.listdir(quarantine) == []
