"""Regression tests for the state adversary's pack05 findings (reports/adv_state.md).

One test (or family) per finding, numbered as in the report. Evidence comes from outside
the tested code: exit codes and stderr of plugins.py run as a child (bounded by a
timeout), files on disk, audit.log.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from core.errors import StagingError
from core.loader import PluginLoader, _Entry, tree_digest

from pack05_testlib import make_manifest, make_tar, make_zip, manifest_bytes, write_package

PACK_ROOT = Path(__file__).resolve().parent.parent
CLI = str(PACK_ROOT / "plugins.py")
# The members of a minimal package (acme.echo, requests nothing) inside an archive.
BASE = [("acme.echo/manifest.json", manifest_bytes(permissions=None)), ("acme.echo/main.py", b"")]


def run_cli(*argv: str, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess[str]:
    """plugins.py in a child process: a hang is a timeout, never a stuck test run."""
    return subprocess.run(
        [sys.executable, CLI, *argv], capture_output=True, text=True, timeout=timeout, **kw
    )


def assert_refused(proc: subprocess.CompletedProcess[str], archive: Path) -> None:
    """Exit 2 naming the operator's archive, never a traceback or an internal temp path."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(archive) in proc.stderr
    assert "staging/stage-" not in proc.stderr


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "plugins"


# -- 1. tree digests: the old format's collisions, control characters in link targets -----------


def _digest(*entries: _Entry) -> str:
    base = [_Entry("manifest.json", "file", size=2, sha256="a" * 64)]
    return tree_digest(base + list(entries))


def test_trees_that_collided_in_the_old_digest_format_differ() -> None:
    # a link "z" -> "x y" against a link "y z" -> "x"
    assert _digest(_Entry("z", "link", link="x y")) != _digest(_Entry("y z", "link", link="x"))
    # a link q -> "t p\n<sha of q> 6" against a file q plus a link p -> t
    sha = "b" * 64
    forged = _Entry("q", "link", link=f"t p\n{sha} 6")
    pair = (_Entry("p", "link", link="t"), _Entry("q", "file", size=6, sha256=sha))
    assert _digest(forged) != _digest(*pair)


def _link_packages(tmp_path: Path, target: str) -> list[Path]:
    """The same package (a symlink ``l`` -> ``target``) as a directory, a .zip and a .tar.gz."""
    man = make_manifest(permissions=None)
    pkg = write_package(tmp_path / "dir" / "acme.echo", man)
    os.symlink(target, pkg / "l")
    zpath = make_zip(
        tmp_path / "l.zip",
        [
            ("acme.echo/manifest.json", json.dumps(man).encode(), 0o100644),
            ("acme.echo/main.py", b"", 0o100644),
            ("acme.echo/l", target.encode(), 0o120777),
        ],
    )
    link = tarfile.TarInfo("acme.echo/l")
    link.type, link.linkname = tarfile.SYMTYPE, target
    tpath = make_tar(
        tmp_path / "l.tar.gz",
        [
            (tarfile.TarInfo("acme.echo/manifest.json"), json.dumps(man).encode()),
            (tarfile.TarInfo("acme.echo/main.py"), b""),
            (link, None),
        ],
    )
    return [pkg, zpath, tpath]


@pytest.mark.parametrize("target", ["main.py\nfoo", "main.py\x1b[2J", "main\x7f.py", "a\tb"])
def test_a_link_target_with_a_control_character_is_refused(
    tmp_path: Path, data: Path, target: str
) -> None:
    for package in _link_packages(tmp_path / str(len(os.listdir(tmp_path))), target):
        proc = run_cli("--data", str(data), "stage", str(package))
        assert_refused(proc, package)
        assert "control characters" in proc.stderr
        assert "\x1b" not in proc.stderr  # shown escaped, never sent to the terminal
    assert not (data / "registry.json").exists()


# -- 2. a FIFO (or device) given as the archive -----------------------------------------------


@pytest.mark.parametrize("name", ["p.zip", "p.tar.gz"])
@pytest.mark.parametrize("verb", ["stage", "validate"])
def test_a_fifo_as_the_archive_is_refused_without_hanging(
    tmp_path: Path, data: Path, name: str, verb: str
) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    started = time.monotonic()
    proc = run_cli("--data", str(data), verb, str(fifo), timeout=20)
    assert time.monotonic() - started < 15
    assert_refused(proc, fifo)
    assert "FIFO" in proc.stderr
    if verb == "stage":  # the staging lock is free again and nothing is left
        assert os.listdir(data / "staging") == []
        good = write_package(tmp_path / "good", make_manifest(permissions=None))
        assert run_cli("--data", str(data), "stage", str(good), timeout=20).returncode == 0


# -- 3. a package file swapped for a FIFO while a directory is staged -----------------------------


@pytest.fixture
def alarm() -> Iterator[None]:
    """SIGALRM after 10 s raises TimeoutError (a blocking open is interrupted)."""

    def fire(signum: int, frame: object) -> None:
        raise TimeoutError("staging hung")

    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_a_file_swapped_for_a_fifo_while_staging_is_refused_without_hanging(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, alarm: None
) -> None:
    files: dict[str, str | bytes] = {"main.py": "", "z": "z"}
    pkg = write_package(tmp_path / "pkg", make_manifest(permissions=None), files)
    walk = PluginLoader._walk

    def walk_then_swap(self: PluginLoader, root: Path, source: str) -> list[_Entry]:
        entries = walk(self, root, source)
        if root == pkg:  # between the walk and the copy, z becomes a FIFO
            (pkg / "z").unlink()
            os.mkfifo(pkg / "z")
        return entries

    monkeypatch.setattr(PluginLoader, "_walk", walk_then_swap)
    loader = PluginLoader(data)
    with pytest.raises(StagingError, match="'z' changed while staging"):
        loader.stage_package(pkg)
    assert os.listdir(data / "staging") == []
    assert not (data / "registry.json").exists()


# -- 4. a flood of tar metadata headers ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gnu-longname", "pax-global"])
def test_a_flood_of_tar_metadata_headers_is_refused_naming_the_archive(
    tmp_path: Path, data: Path, kind: str
) -> None:
    if kind == "pax-global":
        block = tarfile.TarInfo("x").create_pax_global_header({"comment": "x" * 100})
    else:
        info = tarfile.TarInfo("n" * 200)
        block = info.tobuf(format=tarfile.GNU_FORMAT)[:-512]  # only the ././@LongLink part
    archive = tmp_path / f"{kind}.tar.gz"
    with gzip.open(archive, "wb") as gz:
        gz.write(block * 1000)
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for name, content in BASE:
                member = tarfile.TarInfo(name)
                member.size = len(content)
                tf.addfile(member, io.BytesIO(content))
    assert archive.stat().st_size < 16 * 1024
    proc = run_cli("--data", str(data), "stage", str(archive))
    assert_refused(proc, archive)
    assert "metadata headers in a row" in proc.stderr


def test_a_few_tar_metadata_headers_per_member_still_stage(tmp_path: Path, data: Path) -> None:
    """A long name, a long link target and pax headers: what real archives hold."""
    archive = tmp_path / "long.tar.gz"
    long_dir = "acme.echo/" + "d" * 120 + "/" + "e" * 120
    link = tarfile.TarInfo(long_dir + "/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../" + "e" * 120 + "/f" + "g" * 150
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        for name, content in (
            ("acme.echo/manifest.json", manifest_bytes(permissions=None)),
            ("acme.echo/main.py", b""),
            (long_dir + "/f" + "g" * 150, b"data"),
        ):
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tf.addfile(member, io.BytesIO(content))
        tf.addfile(link)
    proc = run_cli("--data", str(data), "stage", str(archive))
    assert proc.returncode == 0, proc.stderr


# -- 5. a zip central directory listing too many members ---------------------------------------


def _zip_with_members(path: Path, count: int, *, claim: int | None = None) -> Path:
    """A zip of ``count`` empty members; ``claim`` rewrites the end record's entry counts."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("acme.echo/manifest.json", manifest_bytes(permissions=None))
        zf.writestr("acme.echo/main.py", "")
        for i in range(count):
            zf.writestr(f"acme.echo/{i:05d}", b"")
    if claim is not None:
        raw = bytearray(path.read_bytes())
        end = raw.rfind(b"PK\x05\x06")
        struct.pack_into("<HH", raw, end + 8, claim, claim)
        path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("claim", [None, 1])
def test_a_zip_listing_too_many_members_is_refused_before_zipfile_parses_it(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch, claim: int | None
) -> None:
    archive = _zip_with_members(tmp_path / "many.zip", 300, claim=claim)
    parsed: list[object] = []
    real = zipfile.ZipFile

    def recording(*args: Any, **kw: Any) -> zipfile.ZipFile:
        parsed.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(zipfile, "ZipFile", recording)
    with pytest.raises(StagingError, match="more than 100 files"):
        PluginLoader(data, max_files=100).stage_package(archive)
    assert parsed == []  # refused from the central directory's own entries
    ok = _zip_with_members(tmp_path / "ok.zip", 50)
    assert PluginLoader(data, max_files=100).stage_package(ok)["ok"]


# -- 6. names and layouts the file system refuses, in an archive -------------------------------


def _zip(path: Path, members: list[tuple[str, bytes]]) -> Path:
    return make_zip(path, [(n, c, 0o100644) for n, c in BASE + members])


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    return make_tar(path, [(tarfile.TarInfo(n), c) for n, c in BASE + members])


HOSTILE_LAYOUTS = {
    "a file then a member below it": [("acme.echo/x", b"a"), ("acme.echo/x/y", b"b")],
    "a 300-character name": [("acme.echo/" + "n" * 300, b"a")],
    "a path deeper than PATH_MAX": [("acme.echo/" + "d/" * 2100 + "f", b"a")],
}


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
@pytest.mark.parametrize("layout", list(HOSTILE_LAYOUTS))
def test_an_archive_the_file_system_cannot_hold_is_refused_naming_the_archive(
    tmp_path: Path, data: Path, kind: str, layout: str
) -> None:
    build = _zip if kind == "zip" else _tar
    archive = build(tmp_path / f"hostile.{kind}", HOSTILE_LAYOUTS[layout])
    proc = run_cli("--data", str(data), "stage", str(archive))
    assert_refused(proc, archive)
    assert os.listdir(data / "staging") == []
    assert not (data / "registry.json").exists()


def test_the_inbox_quarantines_an_archive_the_file_system_cannot_hold(
    tmp_path: Path, data: Path
) -> None:
    from core import health, service
    from core.errors import PluginError

    run = tmp_path / "run"
    run.mkdir()
    paths = health.Paths(str(PACK_ROOT), str(tmp_path / "d"), str(run), str(tmp_path / "logs"))
    svc = service.InboxService(
        data,
        paths,
        PluginLoader(data),
        interval=0.05,
        settle=0.0,
        is_refusal=lambda exc: isinstance(exc, PluginError),
    )
    svc.prepare()
    _zip(data / "inbox" / "deep.zip", HOSTILE_LAYOUTS["a path deeper than PATH_MAX"])
    svc.scan_once()
    svc.scan_once()
    assert os.listdir(data / "inbox") == []
    assert sorted(os.listdir(data / "quarantine")) == ["deep.zip", "deep.zip.reason.json"]


# -- 8. a change made is never reported as failed ------------------------------------------------


def _run_to_full_stdout(*argv: str) -> subprocess.CompletedProcess[str]:
    """plugins.py with stdout on /dev/full (every write: ENOSPC)."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, CLI, *argv],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def portwatch(tmp_path: Path, data: Path) -> Path:
    """acme.echo staged (requests network, not granted)."""
    PluginLoader(data).stage_package(write_package(tmp_path / "echo", make_manifest()))
    return data


@pytest.mark.parametrize("as_json", [False, True])
def test_a_change_whose_output_cannot_be_written_is_done_exit_0(
    portwatch: Path, as_json: bool
) -> None:
    data = portwatch
    json_flag = ["--json"] if as_json else []
    proc = _run_to_full_stdout("--data", str(data), *json_flag, "grant", "acme.echo", "network")
    assert proc.returncode == 0, proc.stderr
    assert "cannot write to stdout" in proc.stderr and "Traceback" not in proc.stderr
    registry = json.loads((data / "registry.json").read_text())
    assert registry["plugins"]["acme.echo"]["granted"] == ["network"]
    proc = _run_to_full_stdout("--data", str(data), *json_flag, "remove", "acme.echo")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((data / "registry.json").read_text())["plugins"] == {}
    # a failure stays a failure (exit 3: unknown plugin), whatever happens to its output
    proc = _run_to_full_stdout("--data", str(data), *json_flag, "enable", "acme.echo")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_replace_whose_old_copy_cannot_be_moved_out_is_done(
    portwatch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """The registry is switched to the new content (audited): moving the old copy out of
    packages/ failing afterwards leaves a leftover the next staging sweeps, not a failure."""
    import errno

    import plugins
    from core import loader as loader_module
    from core.audit import read_audit

    data = portwatch
    real_rename = os.rename

    def rename(src: Any, dst: Any) -> None:
        if str(dst).endswith("/replaced"):
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        real_rename(src, dst)

    monkeypatch.setattr(loader_module.os, "rename", rename)
    new = write_package(tmp_path / "echo2", make_manifest(), {"main.py": "print(2)\n"})
    code = plugins.main(["--data", str(data), "stage", "--replace", str(new)])
    assert code == 0, capsys.readouterr().err
    entry = json.loads((data / "registry.json").read_text())["plugins"]["acme.echo"]
    assert PluginLoader(data).verify("acme.echo") == []  # the registered copy is the new one
    assert (data / entry["versions"]["1.0.0"]["path"] / "main.py").read_text() == "print(2)\n"
    assert [r["action"] for r in read_audit(data / "audit.log")][-1] == "register"
    monkeypatch.setattr(loader_module.os, "rename", real_rename)
    PluginLoader(data).recover(always=True)  # the next command sweeps the old copy
    assert os.listdir(data / "packages" / "acme.echo") == [
        entry["versions"]["1.0.0"]["path"].rsplit("/")[-1]
    ]


# -- 9. a disk-full error names the file -------------------------------------------------------


@pytest.mark.parametrize("syscall", ["fsync", "fdatasync"])
@pytest.mark.parametrize("verb", ["grant", "remove", "stage", "policy"])
def test_every_failed_sync_names_the_file_or_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, verb: str, syscall: str
) -> None:
    import errno
    import shutil

    import plugins

    template = tmp_path / "template"
    PluginLoader(template).stage_package(write_package(tmp_path / "echo", make_manifest()))
    new = write_package(tmp_path / "new", make_manifest(id="acme.new"))
    argv = {
        "grant": ["grant", "acme.echo", "network"],
        "remove": ["remove", "acme.echo"],
        "stage": ["stage", str(new)],
        "policy": ["policy", "--block", "network"],
    }[verb]
    real = getattr(os, syscall)
    failures = 0
    for n in range(1, 40):
        data = tmp_path / f"run{n}"
        shutil.copytree(template, data, symlinks=True)
        calls = [0]

        def failing(fd: int, n: int = n, calls: list[int] = calls) -> None:
            calls[0] += 1
            if calls[0] == n:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)

        monkeypatch.setattr(os, syscall, failing)
        code = plugins.main(["--data", str(data), *argv])
        monkeypatch.setattr(os, syscall, real)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if calls[0] < n:
            break  # the whole command ran: every sync was tried
        if code != 0:
            failures += 1
            message = [line for line in err.splitlines() if "error:" in line][-1]
            assert str(data) in message, message
    assert failures or syscall == "fdatasync"


# -- 11. the space reserve works for every removal, not only the first ------------------------


def test_remove_works_on_a_disk_filled_again_after_a_removal(
    small_fs: Any, tmp_path: Path, capsys: Any
) -> None:
    import plugins
    from core.registry import PluginRegistry

    fs = small_fs(size=2 << 20, inodes=400)
    data = fs.root / "plugins"
    loader = PluginLoader(data)
    for name in ("a", "b", "c"):
        loader.stage_package(write_package(tmp_path / name, make_manifest(id=f"acme.{name}")))
    for name in ("a", "b"):  # another writer fills the disk before each removal
        fs.fill(free=0)
        fs.fill(inodes=0)
        assert fs.available() == (0, 0)
        code = plugins.main(["--data", str(data), "remove", f"acme.{name}"])
        assert code == 0, capsys.readouterr().err
        assert not (data / "packages" / f"acme.{name}").exists()
    assert list(PluginRegistry(data).list()) == ["acme.c"]


# -- 7. policy --block is one change: killed anywhere, the next command finishes it ----------


@pytest.fixture
def granted(tmp_path: Path, data: Path) -> Path:
    """acme.echo staged, network granted, enabled."""
    loader = PluginLoader(data)
    loader.stage_package(write_package(tmp_path / "echo", make_manifest()))
    loader.registry.grant("acme.echo", ["network"])
    loader.registry.enable("acme.echo")
    return data


def _killed_at_policy_rename(data: Path) -> int:
    """``policy --block network`` in a forked child SIGKILLed when it renames the new policy
    over permissions.json: the registry has withdrawn network already."""
    import plugins

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        real = os.replace

        def replace(src: Any, dst: Any) -> None:
            if str(dst).endswith("/permissions.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)

        os.replace = replace  # type: ignore[assignment]
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os._exit(plugins.main(["--data", str(data), "policy", "--block", "network"]))
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("verb", ["list", "grant", "disable"])
def test_a_policy_block_killed_after_the_withdrawal_is_finished_by_the_next_command(
    granted: Path, capsys: Any, verb: str
) -> None:
    import plugins
    from core.audit import read_audit

    data = granted
    status = _killed_at_policy_rename(data)
    assert os.WIFSIGNALED(status)
    record = json.loads((data / "registry.json").read_text())["plugins"]["acme.echo"]
    assert record["granted"] == [] and not (data / "permissions.json").exists()  # half done
    argv = {"list": ["list"], "grant": ["grant", "acme.echo", "network"]}.get(
        verb, ["disable", "acme.echo"]
    )
    code = plugins.main(["--data", str(data), *argv])
    assert code == (4 if verb == "grant" else 0), capsys.readouterr().err  # grant: blocked now
    assert json.loads((data / "permissions.json").read_text())["blocked"] == ["network"]
    record = json.loads((data / "registry.json").read_text())["plugins"]["acme.echo"]
    assert record["granted"] == [] and record["enabled"] is False
    actions = [(r["action"], r["id"]) for r in read_audit(data / "audit.log")]
    assert actions[-3:] == [("policy", None), ("revoke", "acme.echo"), ("disable", "acme.echo")]
    assert not list(data.glob("*.txn")) and not list(data.glob(".permissions.json.*"))


def test_a_policy_block_failing_before_the_withdrawal_changes_nothing(
    granted: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while the registry is being withdrawn: exit 1, registry and policy unchanged,
    nothing committed in the audit log, nothing left for the next command to finish."""
    import errno

    import plugins
    from core.audit import read_audit
    from core.registry import PluginRegistry

    data = granted
    before = (data / "registry.json").read_bytes(), read_audit(data / "audit.log")

    def full(self: Any, blocked: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(data / "registry.json"))

    monkeypatch.setattr(PluginRegistry, "enforce_blocked", full)
    code = plugins.main(["--data", str(data), "policy", "--block", "network"])
    assert code == 1 and "registry.json" in capsys.readouterr().err
    monkeypatch.undo()
    assert plugins.main(["--data", str(data), "list"]) == 0
    assert ((data / "registry.json").read_bytes(), read_audit(data / "audit.log")) == before
    assert not (data / "permissions.json").exists()
    assert not list(data.glob("*.txn")) and not list(data.glob(".permissions.json.*"))


# -- 10. an unrecorded policy outcome is settled by the next command, whatever it is -----------


@pytest.mark.parametrize("verb", ["list", "grant", "disable"])
def test_a_policy_change_whose_commit_line_failed_is_recorded_by_the_next_command(
    granted: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, verb: str
) -> None:
    import errno

    import core.txn as txn
    import plugins
    from core.audit import read_audit

    data = granted
    real = txn.append_audit

    def no_commit(path: Path, record: Any) -> None:
        if record.get("action") == "commit":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, record)

    monkeypatch.setattr(txn, "append_audit", no_commit)
    assert plugins.main(["--data", str(data), "policy", "--block", "io"]) == 0
    monkeypatch.undo()
    assert (data / "permissions.json.txn").exists()
    blocks = [r for r in read_audit(data / "audit.log") if r["action"] == "policy"]
    assert blocks == []  # not counted yet
    argv = {"list": ["list"], "grant": ["grant", "acme.echo", "network"]}.get(
        verb, ["disable", "acme.echo"]
    )
    assert plugins.main(["--data", str(data), *argv]) == 0, capsys.readouterr().err
    assert not (data / "permissions.json.txn").exists()
    blocks = [r["blocked"] for r in read_audit(data / "audit.log") if r["action"] == "policy"]
    assert blocks == [["io"]]


# -- minor: temp files of killed writers are removed by the next command ------------------------


def test_temp_files_left_by_killed_writers_are_removed_by_the_next_command(
    granted: Path, capsys: Any
) -> None:
    import plugins

    data = granted
    left = [
        ".registry.json.abcd1234.tmp",
        ".registry.json.txn.abcd1234.tmp",
        ".registry.json.bak.tmp-99999",
        ".permissions.json.abcd1234.tmp",
    ]
    for name in left:
        (data / name).write_text("half")
    assert plugins.main(["--data", str(data), "disable", "acme.echo"]) == 0
    assert plugins.main(["--data", str(data), "policy", "--allow", "io"]) == 0
    assert [n for n in left if (data / n).exists()] == [], capsys.readouterr().err


def test_a_policy_block_whose_final_rename_fails_is_done_and_finished_by_the_next_command(
    granted: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The registry has withdrawn network (the change stands): exit 0 with a warning, and
    the next command writes permissions.json."""
    import errno

    import plugins
    from core.audit import read_audit

    data = granted
    real = os.replace

    def replace(src: Any, dst: Any) -> None:
        if str(dst).endswith("/permissions.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code = plugins.main(["--data", str(data), "policy", "--block", "network"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 0, err
    assert "the next command finishes the change" in err + caplog.text
    assert json.loads((data / "registry.json").read_text())["plugins"]["acme.echo"]["granted"] == []
    assert plugins.main(["--data", str(data), "list"]) == 0
    assert json.loads((data / "permissions.json").read_text())["blocked"] == ["network"]
    actions = [(r["action"], r["id"]) for r in read_audit(data / "audit.log")]
    assert actions[-3:] == [("policy", None), ("revoke", "acme.echo"), ("disable", "acme.echo")]
    assert not list(data.glob("*.txn")) and not list(data.glob(".permissions.json.*"))
