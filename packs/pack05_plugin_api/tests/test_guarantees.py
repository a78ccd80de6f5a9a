"""The state guarantees of issue 9, one test (or family) each, through the operator CLI.

Evidence is read from disk (file bytes, directory listings, audit.log), not from the
command's own report. ``test_faults.py`` sweeps the same promises over every write.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plugins
import pytest
from core import service
from core.audit import read_audit, read_audit_raw
from core.errors import PluginError
from core.loader import PluginLoader
from core.registry import PluginRegistry

from pack05_testlib import make_manifest, make_tar, tar_file, write_package

PACK_ROOT = Path(__file__).resolve().parent.parent
LONG_ID = "a" * 5000


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = plugins.main(list(argv))
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err


def snapshot(data: Path) -> dict[str, bytes | str]:
    """Every state file's bytes and every package path: what 'nothing changed' compares."""
    out: dict[str, bytes | str] = {}
    for name in ("registry.json", "registry.json.bak", "permissions.json"):
        path = data / name
        out[name] = path.read_bytes() if path.is_file() else "-"
    packages = data / "packages"
    out["packages"] = (
        "\n".join(sorted(str(p.relative_to(packages)) for p in packages.rglob("*")))
        if packages.is_dir()
        else "-"
    )
    out["audit"] = json.dumps(read_audit(data / "audit.log"))
    return out


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "plugins"


@pytest.fixture
def staged(data: Path, tmp_path: Path) -> Path:
    """acme.echo 1.0.0 and 2.0.0 (request network and io; network granted), and
    acme.other (requests nothing, enabled), acme.third (requests nothing, disabled)."""
    loader = PluginLoader(data)
    perms = ["network", "io"]
    loader.stage_package(write_package(tmp_path / "v1", make_manifest(permissions=perms)))
    loader.stage_package(
        write_package(
            tmp_path / "v2", make_manifest(version="2.0.0", permissions=perms), {"main.py": "2"}
        )
    )
    other = make_manifest(id="acme.other", permissions=None)
    loader.stage_package(write_package(tmp_path / "o", other))
    third = make_manifest(id="acme.third", permissions=None)
    loader.stage_package(write_package(tmp_path / "t", third))
    loader.registry.grant("acme.echo", ["network", "io"])
    loader.registry.revoke("acme.echo", ["io"])
    loader.registry.enable("acme.other")
    return data


CHANGES = [
    pytest.param(["enable", "acme.third"], id="enable"),
    pytest.param(["disable", "acme.other"], id="disable"),
    pytest.param(["grant", "acme.echo", "io"], id="grant"),
    pytest.param(["revoke", "acme.echo", "network"], id="revoke"),
    pytest.param(["rollback", "acme.echo"], id="rollback"),
    pytest.param(["remove", "acme.echo", "--version", "2.0.0"], id="remove-version"),
    pytest.param(["remove", "acme.other"], id="remove"),
    pytest.param(["policy", "--block", "network"], id="policy"),
    pytest.param(["stage", "NEW"], id="stage"),
]


def _argv(argv: list[str], tmp_path: Path) -> list[str]:
    if argv == ["stage", "NEW"]:
        return ["stage", str(write_package(tmp_path / "new", make_manifest(id="acme.new")))]
    return argv


# -- 1. no change without its audit record ----------------------------------------------------


@pytest.fixture
def immutable_audit(staged: Path) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("chattr +i needs root and e2fsprogs")
    log = staged / "audit.log"
    if subprocess.run(["chattr", "+i", str(log)], capture_output=True).returncode:
        pytest.skip("this filesystem has no immutable flag")
    yield log
    subprocess.run(["chattr", "-i", str(log)], check=True)


@pytest.mark.parametrize("argv", CHANGES)
def test_an_immutable_audit_log_refuses_every_change_and_changes_nothing(
    capsys: pytest.CaptureFixture[str],
    staged: Path,
    immutable_audit: Path,
    tmp_path: Path,
    argv: list[str],
) -> None:
    before = snapshot(staged)
    code, err = cli(capsys, *_argv(argv, tmp_path), "--data", str(staged))
    assert code == 1
    assert "audit.log" in err
    assert snapshot(staged) == before
    assert not (staged / "registry.json.txn").exists()
    assert sorted(os.listdir(staged / "staging")) == []


def _crash_in_child(data: Path, argv: list[str], when: str) -> int:
    """Run the CLI in a forked child that dies (SIGKILL) at ``when``; return its status."""
    import core.txn as txn

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        real_write, real_append = txn.atomic_write, txn.append_audit

        def write(path: Any, blob: bytes, **kw: Any) -> Any:
            if when == "before-change" and not str(path).endswith(".txn"):
                os.kill(os.getpid(), 9)
            return real_write(path, blob, **kw)

        def append(path: Any, record: Any) -> None:
            if when == "before-outcome":
                os.kill(os.getpid(), 9)
            real_append(path, record)

        txn.atomic_write = write  # type: ignore[assignment]
        txn.append_audit = append  # type: ignore[assignment]
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os._exit(plugins.main([*argv, "--data", str(data)]))
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("argv", [a for a in CHANGES if a.id not in ("stage",)])
def test_a_crash_between_change_and_outcome_is_recorded_by_the_next_command(
    capsys: pytest.CaptureFixture[str], staged: Path, argv: Any
) -> None:
    argv = list(argv)
    before = snapshot(staged)
    status = _crash_in_child(staged, argv, "before-outcome")
    assert os.WIFSIGNALED(status)
    assert (staged / "registry.json.txn").exists() or (staged / "permissions.json.txn").exists()
    assert snapshot(staged)["audit"] == before["audit"]  # not confirmed yet
    code, _ = cli(capsys, "list", "--data", str(staged))  # the next command
    assert code == 0
    after = snapshot(staged)
    assert after["audit"] != before["audit"]  # the change took effect: now it counts
    assert not list(staged.glob("*.txn"))
    raw = read_audit_raw(staged / "audit.log")
    assert raw[-1]["action"] == "commit" and raw[-1]["recovered"] is True


def test_a_crash_after_the_intent_records_an_abort_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], staged: Path
) -> None:
    before = snapshot(staged)
    status = _crash_in_child(staged, ["disable", "acme.other"], "before-change")
    assert os.WIFSIGNALED(status)
    code, _ = cli(capsys, "list", "--data", str(staged))
    assert code == 0
    assert snapshot(staged) == before  # not changed, and the log says so
    raw = read_audit_raw(staged / "audit.log")
    aborted = [r["txn"] for r in raw if r["action"] == "abort"]
    assert len(aborted) == 1
    assert [r["action"] for r in raw if r.get("txn") == aborted[0]] == ["disable", "abort"]


# -- 2. a wrong-shape registry or policy is never trusted -------------------------------------


def _edit_record(data: Path, edit: Any) -> None:
    doc = json.loads((data / "registry.json").read_text())
    edit(doc["plugins"]["acme.echo"], doc)
    (data / "registry.json").write_text(json.dumps(doc))


WRONG_RECORDS = [
    pytest.param(lambda r, d: r.pop("enabled"), "enabled: missing", id="no-enabled"),
    pytest.param(lambda r, d: r.update(granted="network"), "granted", id="granted-string"),
    pytest.param(lambda r, d: r.update(active_version=None), "active_version", id="null-active"),
    pytest.param(lambda r, d: r.update(colour="red"), "colour: unknown key", id="unknown-key"),
    pytest.param(lambda r, d: r.update(versions={}), "versions", id="no-versions"),
    pytest.param(lambda r, d: r.update(enabled="yes"), "enabled: expected", id="enabled-string"),
    pytest.param(lambda r, d: r["versions"]["1.0.0"].pop("path"), r"\.path: missing", id="no-path"),
    pytest.param(
        lambda r, d: r["versions"]["1.0.0"].update(digest=3), "digest", id="digest-number"
    ),
    pytest.param(
        lambda r, d: r["versions"]["1.0.0"]["manifest"].update(id="acme.evil"),
        "manifest",
        id="manifest-other-id",
    ),
    pytest.param(lambda r, d: d.update(extra=1), "unknown top-level", id="top-level-key"),
    pytest.param(
        lambda r, d: d["plugins"].update({"../x": r}), "not a valid plugin id", id="bad-id-key"
    ),
]


@pytest.mark.parametrize(("edit", "message"), WRONG_RECORDS)
def test_a_wrong_shape_registry_is_an_error_naming_file_and_record_and_is_kept(
    capsys: pytest.CaptureFixture[str], staged: Path, tmp_path: Path, edit: Any, message: str
) -> None:
    _edit_record(staged, edit)
    before = snapshot(staged)
    for argv in (
        ["list"],
        ["show", "acme.echo"],
        ["show", "acme.other"],
        ["enable", "acme.echo"],
        ["grant", "acme.echo", "io"],
        ["remove", "acme.other"],
        ["stage", str(write_package(tmp_path / "n", make_manifest(id="acme.new")))],
    ):
        code, err = cli(capsys, *argv, "--data", str(staged))
        assert code == 1, argv
        assert str(staged / "registry.json") in err
        assert "wrong shape" in err or "unknown top-level" in err
        assert __import__("re").search(message, err), err
        assert snapshot(staged) == before, argv  # the .bak still holds the last good copy


WRONG_POLICIES = [
    pytest.param({"allowed": "network"}, id="allowed-string"),
    pytest.param({"blocked": ["network", "network"]}, id="duplicate"),
    pytest.param({"blocked": ["netwrk"]}, id="unknown-capability"),
    pytest.param({"allowed": [], "extra": 1}, id="unknown-key"),
    pytest.param({"schema": "other"}, id="other-schema"),
    pytest.param([], id="not-an-object"),
]


@pytest.mark.parametrize("doc", WRONG_POLICIES)
def test_a_wrong_shape_policy_is_an_error_and_is_never_written_over(
    capsys: pytest.CaptureFixture[str], staged: Path, doc: Any
) -> None:
    (staged / "permissions.json").write_text(json.dumps(doc))
    before = snapshot(staged)
    for argv in (["policy"], ["policy", "--allow", "io"], ["grant", "acme.echo", "io"]):
        code, err = cli(capsys, *argv, "--data", str(staged))
        assert code == 1 and str(staged / "permissions.json") in err, argv
        assert snapshot(staged) == before


# -- 3. bounded, non-blocking reads ----------------------------------------------------------


def _make_special(path: Path, kind: str, tmp_path: Path) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        good = tmp_path / "elsewhere.json"
        good.write_text("{}")
        path.symlink_to(good)
    elif kind == "device":
        os.mknod(path, 0o600 | 0o020000, os.makedev(1, 3))  # a /dev/null character device
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(65 * 2**20)  # sparse: costs no disk


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink", "device", "huge"])
@pytest.mark.parametrize("name", ["registry.json", "permissions.json"])
def test_a_special_file_in_place_of_a_state_file_is_an_error_never_a_hang(
    staged: Path, tmp_path: Path, kind: str, name: str
) -> None:
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    _make_special(staged / name, kind, tmp_path)
    argv = ["list"] if name == "registry.json" else ["policy", "--allow", "io"]
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(PACK_ROOT / "plugins.py"), *argv, "--data", str(staged)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - started < 20
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(staged / name) in proc.stderr
    what = {"fifo": "FIFO", "directory": "directory", "symlink": "symlink"}
    what |= {"device": "device", "huge": "exceeds the limit"}
    assert what[kind] in proc.stderr


@pytest.mark.parametrize("kind", ["fifo", "symlink", "device"])
def test_a_special_file_as_manifest_is_refused_without_hanging(tmp_path: Path, kind: str) -> None:
    if kind == "device" and os.geteuid() != 0:
        pytest.skip("mknod needs root")
    pkg = write_package(tmp_path / "pkg", make_manifest())
    _make_special(pkg / "manifest.json", kind, tmp_path)
    proc = subprocess.run(
        [sys.executable, str(PACK_ROOT / "plugins.py"), "validate", str(pkg / "manifest.json")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "manifest.json" in proc.stderr


# -- 4. deleting operations are tracked --------------------------------------------------------


def _kill_remove_at(data: Path, argv: list[str], when: str) -> None:
    import core.loader as loader_module
    import core.registry as registry_module

    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        if when == "after-rename":
            registry_module.PluginRegistry.unregister = (  # type: ignore[method-assign]
                lambda *a, **k: os.kill(os.getpid(), 9)
            )
        else:
            real = loader_module.shutil.rmtree

            def rmtree(path: Any, *a: Any, **k: Any) -> None:
                if "/del~" in str(path):  # the tomb, renamed to be deleted
                    os.kill(os.getpid(), 9)
                real(path, *a, **k)

            loader_module.shutil.rmtree = rmtree  # type: ignore[assignment]
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
        os._exit(plugins.main([*argv, "--data", str(data)]))
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)


@pytest.mark.parametrize("version", [None, "2.0.0"])
def test_a_remove_killed_before_unregistering_is_rolled_back_by_the_next_command(
    capsys: pytest.CaptureFixture[str], staged: Path, version: str | None
) -> None:
    before = snapshot(staged)
    argv = ["remove", "acme.echo"] + (["--version", version] if version else [])
    _kill_remove_at(staged, argv, "after-rename")
    assert any(n.startswith("rm~") for n in os.listdir(staged / "staging"))  # pending
    assert cli(capsys, "list", "--data", str(staged))[0] == 0
    assert snapshot(staged) == before
    loader = PluginLoader(staged)
    assert loader.verify("acme.echo", "1.0.0") == [] and loader.verify("acme.echo", "2.0.0") == []
    assert os.listdir(staged / "staging") == []


@pytest.mark.parametrize("version", [None, "2.0.0"])
def test_a_remove_killed_while_deleting_is_finished_by_the_next_command(
    capsys: pytest.CaptureFixture[str], staged: Path, version: str | None
) -> None:
    argv = ["remove", "acme.echo"] + (["--version", version] if version else [])
    _kill_remove_at(staged, argv, "while-deleting")
    record = PluginRegistry(staged).get("acme.echo")
    assert record is None if version is None else "2.0.0" not in record["versions"]
    assert cli(capsys, "enable", "acme.other", "--data", str(staged))[0] == 0
    assert os.listdir(staged / "staging") == []
    left = sorted(os.listdir(staged / "packages" / "acme.echo")) if version else None
    assert left == (["1.0.0"] if version else None)
    assert (staged / "packages" / "acme.echo").exists() == bool(version)
    assert "unregister" in [e["action"] for e in read_audit(staged / "audit.log")]


# -- 5. archives and hostile packages: exit 2 with the place, bounded ---------------------------


def _tar_gz_with_header(path: Path, kind: bytes, size: int) -> Path:
    """A .tar.gz whose first member is a metadata header declaring ``size`` bytes; only a
    little of it is actually present (the archive stays small)."""
    info = tarfile.TarInfo("././@LongLink")
    info.type = kind
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    with gzip.open(path, "wb") as f:
        f.write(header)
        f.write(b"x" * (1 << 20))
    return path


def _run_limited(argv: list[str], limit: int = 1 << 30) -> subprocess.CompletedProcess[str]:
    """plugins.py under an address-space limit, so memory use is judged from outside."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, str(PACK_ROOT / "plugins.py"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
    )


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_huge_tar_metadata_header_is_refused_before_it_is_read(
    tmp_path: Path, data: Path, kind: bytes
) -> None:
    archive = _tar_gz_with_header(tmp_path / "bomb.tar.gz", kind, 3 * 2**30)
    started = time.monotonic()
    proc = _run_limited(["stage", str(archive), "--data", str(data)])
    assert time.monotonic() - started < 20
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "metadata header" in proc.stderr
    assert str(archive) in proc.stderr


def _good_tar_gz(tmp_path: Path) -> bytes:
    archive = make_tar(
        tmp_path / "good.tar.gz",
        [
            tar_file("pkg/manifest.json", json.dumps(make_manifest()).encode()),
            tar_file("pkg/main.py", b"print(1)\n" * 100),
        ],
    )
    return archive.read_bytes()


@pytest.mark.parametrize("where", ["crc", "length"])
def test_a_tar_gz_with_a_wrong_gzip_trailer_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: Path, where: str
) -> None:
    blob = bytearray(_good_tar_gz(tmp_path))
    crc, length = struct.unpack("<II", blob[-8:])
    blob[-8:] = (
        struct.pack("<II", crc ^ 1, length)
        if where == "crc"
        else struct.pack("<II", crc, length + 1)
    )
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(blob))
    code, err = cli(capsys, "stage", str(bad), "--data", str(data))
    assert code == 2 and str(bad) in err
    assert PluginRegistry(data).list() == {}
    assert not (data / "packages" / "acme.echo").exists()


def test_a_tar_gz_with_many_members_or_bytes_is_refused(tmp_path: Path, data: Path) -> None:
    members = [tar_file("pkg/manifest.json", json.dumps(make_manifest()).encode())]
    members += [tar_file(f"pkg/f{i}", b"") for i in range(30)]
    archive = make_tar(tmp_path / "many.tar.gz", members)
    with pytest.raises(PluginError, match="more than 20 files"):
        PluginLoader(data, max_files=20).stage_package(archive)
    big = make_tar(
        tmp_path / "big.tar.gz",
        [
            tar_file("pkg/manifest.json", json.dumps(make_manifest()).encode()),
            tar_file("pkg/main.py", b"\0" * 200_000),
        ],
    )
    with pytest.raises(PluginError, match="larger than 100000 bytes"):
        PluginLoader(data, max_bytes=100_000).stage_package(big)


def _zip(path: Path, method: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("pkg/manifest.json", json.dumps(make_manifest()))
        zf.writestr("pkg/main.py", "print('hello')\n" * 200)
    return path


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_zip_with_a_corrupt_member_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: Path, method: int
) -> None:
    archive = _zip(tmp_path / "pkg.zip", method)
    blob = bytearray(archive.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(blob))) as zf:
        info = zf.getinfo("pkg/main.py")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 2, start + 12):
        blob[i] ^= 0x55  # damage the data: a CRC error (stored) or a deflate error
    archive.write_bytes(bytes(blob))
    code, err = cli(capsys, "stage", str(archive), "--data", str(data))
    assert code == 2, err
    assert "pkg/main.py" in err and str(archive) in err
    assert PluginRegistry(data).list() == {}


HOSTILE_MANIFESTS = [
    pytest.param(
        "a: &a [x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "aliases",
        id="alias-bomb",
    ),
    pytest.param("x: " + "[" * 20_000 + "]" * 20_000 + "\n", "deeper", id="deep-nesting"),
    pytest.param("id: acme.echo\n" + "k: v\n" * 20_000, "exceeds the limit", id="too-large"),
]


@pytest.mark.parametrize(("text", "message"), HOSTILE_MANIFESTS)
def test_a_hostile_yaml_manifest_is_refused_fast_and_bounded(
    tmp_path: Path, data: Path, text: str, message: str
) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "manifest.yaml").write_text(text)
    (pkg / "main.py").write_text("x")
    started = time.monotonic()
    proc = _run_limited(["stage", str(pkg), "--data", str(data)], limit=1 << 30)
    assert time.monotonic() - started < 20
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr and "manifest.yaml" in proc.stderr


def test_a_symlink_loop_and_a_non_utf8_name_are_invalid_packages(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: Path
) -> None:
    loop = write_package(tmp_path / "loop", make_manifest(entrypoint="a/main.py"), {})
    os.symlink("b", loop / "a")
    os.symlink("a", loop / "b")
    code, err = cli(capsys, "stage", str(loop), "--data", str(data))
    # found as the links are resolved (adv8 F9), before the entrypoint is looked at
    assert code == 2 and "symlink 'a' -> 'b': more than 40 links to follow (a loop)" in err
    odd = write_package(tmp_path / "odd", make_manifest())
    (odd / os.fsdecode(b"bad-\xff")).write_text("x")
    code, err = cli(capsys, "stage", str(odd), "--data", str(data))
    assert code == 2 and "UTF-8" in err
    assert PluginRegistry(data).list() == {}


# -- 6. a full disk is an I/O failure ----------------------------------------------------------


def test_a_full_disk_while_staging_is_exit_1_naming_the_file_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str], small_fs: Any, tmp_path: Path
) -> None:
    fs = small_fs(size=1 << 20)
    data = fs.root / "plugins"
    PluginLoader(data).stage_package(write_package(tmp_path / "a", make_manifest(id="acme.a")))
    before = snapshot(data)
    pkg = write_package(tmp_path / "b", make_manifest(id="acme.b"), {"main.py": b"\0" * 600_000})
    fs.fill(free=300_000)
    code, err = cli(capsys, "stage", str(pkg), "--data", str(data))
    assert code == 1 and "No space left on device" in err
    assert str(data / "staging") in err  # the file being written is named
    assert snapshot(data) == before
    assert os.listdir(data / "staging") == []


def test_the_inbox_keeps_an_item_it_cannot_stage_for_lack_of_space_and_retries_it(
    small_fs: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import health

    fs = small_fs(size=1 << 20)
    plugins_dir = fs.root / "plugins"
    run = tmp_path / "run"
    run.mkdir()
    paths = health.Paths(str(PACK_ROOT), str(tmp_path / "d"), str(run), str(tmp_path / "logs"))
    svc = service.InboxService(
        plugins_dir,
        paths,
        PluginLoader(plugins_dir),
        interval=0.05,
        settle=0.0,
        is_refusal=lambda exc: isinstance(exc, PluginError),
    )
    svc.prepare()
    monkeypatch.setattr(service, "IO_RETRY_SECONDS", 0.0)
    pkg = write_package(tmp_path / "b", make_manifest(id="acme.b"), {"main.py": b"\0" * 300_000})
    archive = tmp_path / "acme.b.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(pkg, arcname="acme.b")
    shutil.copy(archive, plugins_dir / "inbox" / "acme.b.tar.gz")
    fs.fill(free=100_000)
    svc.scan_once()
    svc.scan_once()
    assert os.listdir(plugins_dir / "inbox") == ["acme.b.tar.gz"]  # kept, not quarantined
    assert [n for n in os.listdir(plugins_dir / "quarantine")] == []
    assert svc.last_error is not None and "No space" in svc.last_error["reason"]
    fs.unfill()
    time.sleep(0.1)  # the retry delay (the poll interval here)
    svc.scan_once()
    svc.scan_once()
    assert list(PluginRegistry(plugins_dir).list()) == ["acme.b"]
    assert os.listdir(plugins_dir / "inbox") == []


def test_remove_works_on_a_full_disk(
    capsys: pytest.CaptureFixture[str], small_fs: Any, tmp_path: Path
) -> None:
    fs = small_fs(size=2 << 20)
    data = fs.root / "plugins"
    loader = PluginLoader(data)
    for name in ("a", "b"):
        src = write_package(tmp_path / name, make_manifest(id=f"acme.{name}"))
        loader.stage_package(src)
    assert (data / "space.reserve").exists()
    fs.fill(free=0)
    fs.fill(inodes=0)
    assert fs.available() == (0, 0)
    code, err = cli(capsys, "grant", "acme.b", "network", "--data", str(data))
    assert code == 1 and "No space left on device" in err  # a full disk refuses a change
    code, err = cli(capsys, "remove", "acme.a", "--data", str(data))
    assert code == 0, err
    assert list(PluginRegistry(data).list()) == ["acme.b"]
    assert not (data / "packages" / "acme.a").exists()
    assert [e["action"] for e in read_audit(data / "audit.log")][-1] == "unregister"
    assert not list(data.glob("*.txn"))


# -- 7. ids too long for a file name are "not found" -------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["show", LONG_ID],
        ["show", LONG_ID, "--verify"],
        ["enable", LONG_ID],
        ["disable", LONG_ID],
        ["remove", LONG_ID],
        ["remove", LONG_ID, "--version", "1.0.0"],
        ["grant", LONG_ID, "network"],
        ["revoke", LONG_ID, "network"],
        ["rollback", LONG_ID],
    ],
)
@pytest.mark.parametrize("populated", [False, True])
def test_a_5000_character_id_is_not_found(
    capsys: pytest.CaptureFixture[str], data: Path, staged: Path, argv: list[str], populated: bool
) -> None:
    where = staged if populated else data.parent / "empty"
    code, err = cli(capsys, *argv, "--data", str(where))
    assert code == 3, err
    assert len(err) < 400  # the message shortens the id


# -- 8. where plugins.py finds the data --------------------------------------------------------


def _state(home: Path, installed: bool) -> None:
    home.mkdir(parents=True, exist_ok=True)
    record = {"active_version": "0.1.0" if installed else None}
    (home / "state.json").write_text(json.dumps({"packs": {"pack05_plugin_api": record}}))


def test_aurora_home_with_pack05_installed_is_where_the_data_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    _state(home, installed=True)
    monkeypatch.delenv("AURORA_PACK_DATA")
    monkeypatch.setenv("AURORA_HOME", str(home))
    pkg = write_package(tmp_path / "pkg", make_manifest())
    assert cli(capsys, "stage", str(pkg))[0] == 0
    expected = home / "data" / "pack05_plugin_api" / "plugins"
    assert list(PluginRegistry(expected).list()) == ["acme.echo"]


@pytest.mark.parametrize("state", ["not-installed", "no-state"])
def test_aurora_home_without_pack05_installed_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    home = tmp_path / "home"
    if state == "not-installed":
        _state(home, installed=False)
    else:
        home.mkdir()
    monkeypatch.delenv("AURORA_PACK_DATA")
    monkeypatch.setenv("AURORA_HOME", str(home))
    code, err = cli(capsys, "list")
    assert code == 1
    assert "pack05_plugin_api is not installed" in err and str(home) in err
    assert sorted(os.listdir(home)) == (["state.json"] if state == "not-installed" else [])
    assert not (PACK_ROOT / "data").exists() or "plugins" not in os.listdir(PACK_ROOT / "data")
