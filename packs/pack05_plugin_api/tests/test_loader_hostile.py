"""Every refusal of the loader, one hostile package each (core/loader.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from core.errors import ManifestError, StagingError
from core.loader import PluginLoader

from pack05_testlib import (
    make_tar,
    make_zip,
    manifest_bytes,
    tar_file,
    tar_special,
    write_package,
)

REG = stat.S_IFREG | 0o644
LNK = stat.S_IFLNK | 0o777
MAIN = b"print('hi')\n"

# A builder makes a package under the given dir and returns its path.
Builder = Callable[[Path], Path]


def _dir(files: dict[str, str | bytes] | None = None, **manifest: object) -> Builder:
    def build(tmp: Path) -> Path:
        from pack05_testlib import make_manifest

        return write_package(tmp / "pkg", make_manifest(**manifest), files)

    return build


def _dir_symlink_absolute(tmp: Path) -> Path:
    pkg = _dir()(tmp)
    os.symlink("/etc/passwd", pkg / "passwd")
    return pkg


def _dir_symlink_escape(tmp: Path) -> Path:
    (tmp / "outside.txt").write_text("secret")
    pkg = _dir()(tmp)
    (pkg / "sub").mkdir()
    os.symlink("../../outside.txt", pkg / "sub" / "link")
    return pkg


def _dir_hardlink_out(tmp: Path) -> Path:
    (tmp / "outside.txt").write_text("secret")
    pkg = _dir()(tmp)
    os.link(tmp / "outside.txt", pkg / "data.txt")
    return pkg


def _dir_fifo(tmp: Path) -> Path:
    pkg = _dir()(tmp)
    os.mkfifo(pkg / "pipe")
    return pkg


def _dir_socket(tmp: Path) -> Iterator[Path]:
    pkg = _dir()(tmp)
    cwd = os.getcwd()
    os.chdir(pkg)  # AF_UNIX paths are short: bind by relative name
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
    try:
        yield pkg
    finally:
        sock.close()


def _dir_device(tmp: Path) -> Path:
    pkg = _dir()(tmp)
    try:
        os.mknod(pkg / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device file needs root (tar-device and zip-device cover it)")
    return pkg


def _dir_control_char_name(tmp: Path) -> Path:
    return _dir({"main.py": "x", "evil\nname": "x"})(tmp)


def _dir_non_utf8_name(tmp: Path) -> Path:
    pkg = _dir()(tmp)
    fd = os.open(os.fsencode(pkg) + b"/bad\xffname", os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    return pkg


def _tar(members: list) -> Builder:  # type: ignore[type-arg]
    def build(tmp: Path) -> Path:
        base = [tar_file("manifest.json", manifest_bytes()), tar_file("main.py", MAIN)]
        return make_tar(tmp / "pkg.tar.gz", base + members)

    return build


def _zip(members: list[tuple[str, bytes, int]]) -> Builder:
    def build(tmp: Path) -> Path:
        base = [("manifest.json", manifest_bytes(), REG), ("main.py", MAIN, REG)]
        return make_zip(tmp / "pkg.zip", base + members)

    return build


def _too_many_dirs(tmp: Path) -> Path:
    pkg = _dir()(tmp)
    for i in range(6):
        (pkg / f"d{i}").mkdir()
    return pkg


def _too_many(kind: str) -> Builder:
    files = {f"f{i}.txt": "x" for i in range(6)}

    def build(tmp: Path) -> Path:
        if kind == "dir":
            return _dir(files)(tmp)
        if kind == "zip":
            return _zip([(n, b"x", REG) for n in files])(tmp)
        return _tar([tar_file(n, b"x") for n in files])(tmp)

    return build


def _too_large(kind: str) -> Builder:
    big = b"x" * 5000

    def build(tmp: Path) -> Path:
        if kind == "dir":
            return _dir({"main.py": "x", "big.bin": big})(tmp)
        if kind == "zip":
            return _zip([("big.bin", big, REG)])(tmp)
        return _tar([tar_file("big.bin", big)])(tmp)

    return build


def _entrypoint_is_a_dir(tmp: Path) -> Path:
    pkg = _dir({"lib/x.py": "x"}, entrypoint="lib")(tmp)
    return pkg


def _several_manifests(tmp: Path) -> Path:
    pkg = _dir()(tmp)
    (pkg / "manifest.yaml").write_text("id: acme.echo\n")
    return pkg


def _manifest_symlink(tmp: Path) -> Path:
    pkg = tmp / "pkg"
    pkg.mkdir()
    (pkg / "real.json").write_bytes(manifest_bytes())
    (pkg / "main.py").write_bytes(MAIN)
    os.symlink("real.json", pkg / "manifest.json")
    return pkg


def _no_manifest(tmp: Path) -> Path:
    pkg = _dir()(tmp)
    (pkg / "manifest.json").unlink()
    return pkg


def _not_an_archive(tmp: Path) -> Path:
    path = tmp / "pkg.rar"
    path.write_bytes(b"Rar!")
    return path


def _corrupt_zip(tmp: Path) -> Path:
    path = tmp / "pkg.zip"
    path.write_bytes(b"PK\x03\x04 this is not really a zip")
    return path


HOSTILE = [
    pytest.param(_dir_symlink_absolute, StagingError, "is absolute", id="dir-symlink-absolute"),
    pytest.param(
        _dir_symlink_escape, StagingError, "leads out of the package", id="dir-symlink-escape"
    ),
    pytest.param(_dir_hardlink_out, StagingError, "hard link leading out", id="dir-hardlink-out"),
    pytest.param(_dir_fifo, StagingError, "is a FIFO", id="dir-fifo"),
    pytest.param(_dir_socket, StagingError, "is a socket", id="dir-socket"),
    pytest.param(_dir_device, StagingError, "is a device file", id="dir-device"),
    pytest.param(
        _dir_control_char_name, StagingError, "control characters", id="dir-control-char-name"
    ),
    pytest.param(_dir_non_utf8_name, StagingError, "not valid UTF-8", id="dir-non-utf8-name"),
    pytest.param(_tar([tar_file("/etc/evil", b"x")]), StagingError, "absolute", id="tar-absolute"),
    pytest.param(_tar([tar_file("../evil", b"x")]), StagingError, "escapes", id="tar-dotdot"),
    pytest.param(
        _tar([tar_file("a/../../evil", b"x")]), StagingError, "escapes", id="tar-dotdot-inside"
    ),
    pytest.param(
        _tar([tar_special("passwd", tarfile.SYMTYPE, "/etc/passwd")]),
        StagingError,
        "refused archive member",
        id="tar-symlink-absolute",
    ),
    pytest.param(
        _tar([tar_special("up", tarfile.SYMTYPE, "../../..")]),
        StagingError,
        "refused archive member",
        id="tar-symlink-escape",
    ),
    pytest.param(
        _tar([tar_special("shadow", tarfile.LNKTYPE, "/etc/shadow")]),
        StagingError,
        "refused archive member",
        id="tar-hardlink-absolute",
    ),
    pytest.param(
        _tar([tar_special("up", tarfile.LNKTYPE, "../outside")]),
        StagingError,
        "refused archive member",
        id="tar-hardlink-escape",
    ),
    pytest.param(
        _tar([tar_special("null", tarfile.CHRTYPE)]),
        StagingError,
        "refused archive member",
        id="tar-device",
    ),
    pytest.param(
        _tar([tar_special("pipe", tarfile.FIFOTYPE)]),
        StagingError,
        "refused archive member",
        id="tar-fifo",
    ),
    pytest.param(_zip([("/evil", b"x", REG)]), StagingError, "absolute", id="zip-absolute"),
    pytest.param(_zip([("../evil", b"x", REG)]), StagingError, "escapes", id="zip-dotdot"),
    pytest.param(_zip([("C:/evil", b"x", REG)]), StagingError, "absolute", id="zip-drive"),
    pytest.param(_zip([("a\\..\\evil", b"x", REG)]), StagingError, "absolute", id="zip-backslash"),
    pytest.param(
        _zip([("up", b"../../outside", LNK)]), StagingError, "leads out", id="zip-symlink-escape"
    ),
    pytest.param(
        _zip([("l1", b".", LNK), ("l1/l2", b"..", LNK)]),
        StagingError,
        "through a symlink",
        id="zip-write-through-symlink",
    ),
    pytest.param(
        _zip([("null", b"", stat.S_IFCHR | 0o600)]), StagingError, "device file", id="zip-device"
    ),
    pytest.param(_zip([("pipe", b"", stat.S_IFIFO | 0o600)]), StagingError, "FIFO", id="zip-fifo"),
    pytest.param(
        _zip([("sock", b"", stat.S_IFSOCK | 0o600)]), StagingError, "socket", id="zip-socket"
    ),
    pytest.param(
        _zip([("main.py", b"again", REG)]), StagingError, "duplicate member", id="zip-duplicate"
    ),
    pytest.param(
        _tar([tar_file("main.py", b"again")]), StagingError, "duplicate member", id="tar-duplicate"
    ),
    pytest.param(  # a second manifest would decide the id: not what a reviewer reads first
        _tar([tar_file("./manifest.json", manifest_bytes(id="acme.other"))]),
        StagingError,
        "duplicate member",
        id="tar-duplicate-manifest",
    ),
    pytest.param(_too_many("dir"), StagingError, "more than 5 files", id="dir-too-many-files"),
    pytest.param(_too_many_dirs, StagingError, "more than 5 files", id="dir-too-many-dirs"),
    pytest.param(_too_many("zip"), StagingError, "more than 5 files", id="zip-too-many-files"),
    pytest.param(_too_many("tar"), StagingError, "more than 5 files", id="tar-too-many-files"),
    pytest.param(_too_large("dir"), StagingError, "larger than 4096 bytes", id="dir-too-large"),
    pytest.param(_too_large("zip"), StagingError, "larger than 4096 bytes", id="zip-too-large"),
    pytest.param(_too_large("tar"), StagingError, "larger than 4096 bytes", id="tar-too-large"),
    pytest.param(_dir({}), StagingError, "'main.py' does not exist", id="missing-entrypoint"),
    pytest.param(
        _dir(entrypoint="../outside.py"), ManifestError, "entrypoint", id="entrypoint-outside"
    ),
    pytest.param(
        _dir(entrypoint="/usr/bin/python3"), ManifestError, "entrypoint", id="entrypoint-absolute"
    ),
    pytest.param(_entrypoint_is_a_dir, StagingError, "not a regular file", id="entrypoint-dir"),
    pytest.param(_dir(id="../../evil"), ManifestError, "id:", id="hostile-id-dotdot"),
    pytest.param(_dir(id="acme/evil"), ManifestError, "id:", id="hostile-id-slash"),
    pytest.param(_dir(id=".acme.x"), ManifestError, "id:", id="hostile-id-leading-dot"),
    pytest.param(_dir(version=".."), ManifestError, "version:", id="hostile-version-dotdot"),
    pytest.param(_dir(version="1/../../x"), ManifestError, "version:", id="hostile-version-slash"),
    pytest.param(
        _dir({"main.py": "x"}, name=None), ManifestError, "name: missing", id="bad-manifest"
    ),
    pytest.param(_no_manifest, StagingError, "no manifest", id="no-manifest"),
    pytest.param(_several_manifests, StagingError, "several manifests", id="several-manifests"),
    pytest.param(_manifest_symlink, StagingError, "not a regular file", id="manifest-symlink"),
    pytest.param(_not_an_archive, StagingError, "expected a directory", id="unknown-format"),
    pytest.param(_corrupt_zip, StagingError, "not a readable zip", id="corrupt-zip"),
]


@pytest.fixture(params=[pytest.param(case.values, id=case.id) for case in HOSTILE])
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, type, str]]:
    build, error, match = request.param
    src = tmp_path / "src"
    src.mkdir()
    made = build(src)
    if isinstance(made, Path):
        yield made, error, match
    else:  # a generator builder that must clean up (the socket)
        yield next(made), error, match
        next(made, None)


def test_hostile_package_is_refused_and_leaves_nothing(
    hostile: tuple[Path, type, str], plugins_dir: Path
) -> None:
    path, error, match = hostile
    loader = PluginLoader(plugins_dir, max_files=5, max_bytes=4096)
    with pytest.raises(error) as info:
        loader.stage_package(path)
    assert match in str(info.value)
    if isinstance(info.value, StagingError):
        assert info.value.reason and str(path) in str(info.value)
    # Nothing left behind: no package directory, no registry entry, no temp directory.
    for leftover in ("packages", "staging"):
        where = plugins_dir / leftover
        assert not where.exists() or list(where.iterdir()) == []
    registry = plugins_dir / "registry.json"
    assert not registry.exists() or json.loads(registry.read_text())["plugins"] == {}
    # And nothing escaped: the members named "evil" are written nowhere (the source and the
    # plugins directory are both under tmp_path, so any escape from staging lands here).
    src = plugins_dir.parent / "src"
    assert [p for p in plugins_dir.parent.rglob("evil") if src not in p.parents] == []


def test_missing_path_is_refused(plugins_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(StagingError, match="does not exist"):
        PluginLoader(plugins_dir).stage_package(tmp_path / "nope")


@pytest.mark.parametrize("archive", [False, True], ids=["directory", "tar.gz"])
def test_a_malformed_manifest_is_reported_at_the_operators_path(
    tmp_path: Path, plugins_dir: Path, archive: bool
) -> None:
    pkg = tmp_path / "badplug"
    pkg.mkdir()
    (pkg / "manifest.yaml").write_text("id: acme.x\nname: [unclosed\n")
    src = pkg
    if archive:
        src = tmp_path / "badplug.tar.gz"
        with tarfile.open(src, "w:gz") as tar:
            tar.add(pkg, arcname="badplug")
    with pytest.raises(ManifestError) as info:
        PluginLoader(plugins_dir).stage_package(src)
    expected = f"{src}/badplug/manifest.yaml" if archive else f"{pkg}/manifest.yaml"
    assert str(info.value).startswith(f"{expected}: invalid manifest: line 3, column 1")
    assert not (plugins_dir / "registry.json").exists()
