"""atomic, journal, bounded, lock and identity, judged by what is on disk and in /proc."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aurora_common import atomic, bounded, identity, journal
from aurora_common.errors import InputRefused
from aurora_common.lock import FileLock, LockBusy, LockUnsafe, holder_of, private_dir


def test_atomic_replace_leaves_no_temp_and_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic.replace_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]
    with pytest.raises(ValueError):
        atomic.replace_json(target, {"a": float("nan")})
    assert json.loads(target.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_replace_error_names_target_and_keeps_errno(tmp_path: Path) -> None:
    missing_parent = tmp_path / "file"
    missing_parent.write_text("x")
    with pytest.raises(OSError) as info:
        atomic.replace_bytes(missing_parent / "inner.json", b"{}", parents=True)
    assert "inner.json" in str(info.value)
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)


def test_temp_names_are_recognised_and_removed(tmp_path: Path) -> None:
    (tmp_path / ".manifest.yaml.ab12_xyz.tmp").write_text("half")
    (tmp_path / "manifest.yaml").write_text("whole")
    assert atomic.is_temp_name(".manifest.yaml.ab12_xyz.tmp")
    assert not atomic.is_temp_name("manifest.yaml")
    removed = atomic.remove_temps(tmp_path, "manifest.yaml")
    assert [p.name for p in removed] == [".manifest.yaml.ab12_xyz.tmp"]
    assert os.listdir(tmp_path) == ["manifest.yaml"]


def test_journal_appends_whole_records_and_separates_a_cut_one(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    journal.append_record(log, {"event": "a"})
    with open(log, "ab") as fh:
        fh.write(b'{"event": "cut')  # a power loss mid-record
    journal.append_record(log, {"event": "b"})
    records, problems = journal.read_records(log)
    assert [r["event"] for r in records] == ["a", "b"]
    assert len(problems) == 1 and "line 2" in problems[0]


def test_journal_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.log"
    os.mkfifo(fifo)
    with pytest.raises(InputRefused, match="a FIFO"):
        journal.read_records(fifo)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: os.mkfifo(p), "a FIFO"),
        (lambda p: p.mkdir(), "a directory"),
        (lambda p: os.symlink("/etc/hostname", p), "a symlink"),
    ],
)
def test_bounded_read_refuses_what_is_not_a_regular_file(tmp_path: Path, make, kind) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "registry.json"
    make(path)
    with pytest.raises(InputRefused, match=f"registry.json: is {kind}"):
        bounded.read_bytes(path, 100)


def test_bounded_read_refuses_a_device_and_a_large_file(tmp_path: Path) -> None:
    with pytest.raises(InputRefused, match="character device"):
        bounded.read_bytes(Path("/dev/zero"), 100)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    with pytest.raises(InputRefused, match="exceeds the limit of 100"):
        bounded.read_bytes(big, 100)
    assert bounded.read_bytes(big, 101) == b"x" * 101


def test_lock_names_its_holder_from_proc_locks_even_with_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "installer.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time; fd=os.open(sys.argv[1],os.O_RDWR|os.O_CREAT);"
            "fcntl.flock(fd,fcntl.LOCK_EX); print('locked',flush=True); time.sleep(30)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert path.read_bytes() == b""  # the holder wrote nothing
        assert holder_of(path) == holder.pid
        with pytest.raises(LockBusy, match=f"pid {holder.pid} holds"):
            FileLock(path, wait=0.1).acquire()
    finally:
        holder.kill()
        holder.wait()
    with FileLock(path, wait=1) as lock:
        assert lock.held and path.read_text().strip() == str(os.getpid())
    assert path.exists()  # never deleted


def test_identity_matches_only_the_same_live_process(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        ident = identity.of_pid(child.pid)
        assert ident is not None
        pidfile = tmp_path / "service.pid"
        identity.write_pidfile(pidfile, ident)
        assert identity.verify_pidfile(pidfile) == ident
        assert not identity.matches(
            identity.ProcessIdentity(child.pid, ident.start_time + 1, ident.boot_id, ident.exe)
        )
        assert not identity.matches(
            identity.ProcessIdentity(child.pid, ident.start_time, "other-boot", ident.exe)
        )
    finally:
        child.kill()
        child.wait()
    assert identity.verify_pidfile(pidfile) is None
    pidfile.write_text('{"pid": "12", "start_time": 1, "boot_id": "", "exe": ""}')
    with pytest.raises(InputRefused, match="pid: expected a positive integer"):
        identity.read_pidfile(pidfile)


def test_journal_undoes_a_short_write_and_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "audit.log"
    journal.append_record(log, {"event": "first"})
    before = log.read_bytes()
    real_write = os.write

    cut = {"armed": False}

    def short_then_full(fd: int, data: bytes) -> int:
        if cut["armed"]:  # the rest of the record: the disk is full now
            raise OSError(errno.ENOSPC, "No space left on device")
        if b'"second"' in bytes(data):
            cut["armed"] = True
            return real_write(fd, bytes(data[:10]))  # the disk had room for 10 bytes
        return real_write(fd, data)

    monkeypatch.setattr(journal.os, "write", short_then_full)
    with pytest.raises(OSError) as info:
        journal.append_record(log, {"event": "second"})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(log)
    assert log.read_bytes() == before  # the cut record was taken back
    journal.append_record(log, {"event": "third"})
    records, problems = journal.read_records(log)
    assert [r["event"] for r in records] == ["first", "third"] and problems == []


def test_process_identity_behaves_as_the_frozen_dataclass_it_was() -> None:
    import copy
    import dataclasses
    import pickle

    a = identity.ProcessIdentity(12, 34, "boot", "/bin/x")
    b = identity.ProcessIdentity(pid=12, start_time=34, boot_id="boot", exe="/bin/x")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != identity.ProcessIdentity(12, 35, "boot", "/bin/x")
    assert a != (12, 34, "boot", "/bin/x") and a != a.as_dict()
    assert repr(a) == "ProcessIdentity(pid=12, start_time=34, boot_id='boot', exe='/bin/x')"
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'pid'"):
        a.pid = 13
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot delete field 'exe'"):
        del a.exe
    assert pickle.loads(pickle.dumps(a)) == a and copy.copy(a) == a and copy.deepcopy(a) == a
    match a:
        case identity.ProcessIdentity(pid, start, boot, exe):
            assert (pid, start, boot, exe) == (12, 34, "boot", "/bin/x")
    assert identity.ProcessIdentity.from_dict(a.as_dict(), "here") == a


def test_reading_identity_and_bounded_imports_nothing_dear() -> None:
    """pack05's health check reads pidfiles through these in a process per check."""
    program = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from aurora_common import bounded, errors, identity; "
        "print(' '.join(sorted({'typing', 'dataclasses', 'pathlib', 'tempfile', 'shutil', "
        "'json', 're', 'enum', 'inspect', 'aurora_common.atomic'} & set(sys.modules))))"
    )
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-S", "-c", program, root], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_a_lock_file_is_its_owners_alone(tmp_path: Path) -> None:
    """flock needs only a descriptor: a lock file another uid can open is one it can hold."""
    new, old = tmp_path / "new.lock", tmp_path / "old.lock"
    old.touch()
    os.chmod(old, 0o644)  # as an older release made it
    for path in (new, old):
        with FileLock(path, 0):
            assert os.stat(path).st_mode & 0o7777 == 0o600, path


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another uid")
def test_a_lock_file_another_uid_owns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.touch()
    os.chown(path, 65534, 65534)
    with pytest.raises(LockUnsafe, match="belongs to uid 65534"):
        FileLock(path, 0).acquire()
    assert os.stat(path).st_uid == 65534  # neither taken nor changed


def test_private_dir_makes_and_narrows(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "b")
    assert os.stat(made).st_mode & 0o777 == 0o700
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o755)
    private_dir(wide)
    assert os.stat(wide).st_mode & 0o777 == 0o700
    private_dir(wide, 0o711)  # never widened
    assert os.stat(wide).st_mode & 0o777 == 0o700
