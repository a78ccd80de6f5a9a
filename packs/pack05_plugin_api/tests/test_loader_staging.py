"""Staging that succeeds: formats, idempotence, replace, versions, removal, crash leftovers."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from core.audit import read_audit
from core.errors import RegistryError, StagingError
from core.loader import PluginLoader

from pack05_testlib import (
    make_manifest,
    make_tar,
    make_zip,
    manifest_bytes,
    tar_file,
    write_package,
)

REG = stat.S_IFREG | 0o644


@pytest.fixture
def loader(plugins_dir: Path) -> PluginLoader:
    return PluginLoader(plugins_dir, actor="tester")


def _tree(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", p.read_bytes(), p.stat().st_mode & 0o777)
    return out


def test_stage_directory(loader: PluginLoader, package_factory: Any) -> None:
    src = package_factory(files={"main.py": "print(1)\n", "lib/util.py": "X = 1\n"})
    os.chmod(src / "main.py", 0o755)
    os.symlink("lib/util.py", src / "alias.py")  # a link inside the package is fine
    result = loader.stage_package(src)
    assert result["ok"] is True and result["id"] == "acme.echo" and result["version"] == "1.0.0"
    assert result["changed"] is True and result["missing"] == ["network"]
    from aurora_common.digest import tree_digest as shared_tree_digest

    target = loader.packages_dir / "acme.echo" / "1.0.0"
    assert Path(result["path"]) == target
    assert _tree(target) == _tree(src)
    assert (target / "main.py").stat().st_mode & 0o777 == 0o755
    record = loader.registry.get("acme.echo")
    version = record["versions"]["1.0.0"]
    assert version["digest"] == result["digest"] == shared_tree_digest(target)
    assert {f["path"] for f in version["files"]} == {
        "manifest.json",
        "main.py",
        "lib/util.py",
        "alias.py",
    }
    assert record["enabled"] is False  # staged means disabled
    assert loader.verify("acme.echo") == []
    assert list(loader.staging_dir.iterdir()) == []
    schema = json.loads(
        (Path(__file__).parent.parent / "schemas" / "plugin-registry-v1.json").read_text()
    )
    jsonschema.validate(json.loads(loader.registry.path.read_text()), schema)
    files = {f["path"]: f for f in version["files"]}
    assert files["alias.py"] == {"path": "alias.py", "link": "lib/util.py"}
    assert files["main.py"]["size"] == len("print(1)\n") and len(files["main.py"]["sha256"]) == 64


def test_zip_tar_and_directory_of_the_same_content_have_the_same_digest(
    loader: PluginLoader, tmp_path: Path
) -> None:
    manifest = manifest_bytes()
    src = write_package(tmp_path / "d", make_manifest(), {"main.py": "print(1)\n"})
    zip_path = make_zip(
        tmp_path / "p.zip", [("manifest.json", manifest, REG), ("main.py", b"print(1)\n", REG)]
    )
    # archives often wrap the package in one top directory
    tar_path = make_tar(
        tmp_path / "p.tar.gz",
        [tar_file("top/manifest.json", manifest), tar_file("top/main.py", b"print(1)\n")],
    )
    digests = set()
    for path in (src, zip_path, tar_path):
        result = loader.stage_package(path)
        digests.add(result["digest"])
    assert len(digests) == 1
    assert json.loads((src / "manifest.json").read_text())["id"] == "acme.echo"


def test_tar_with_internal_links_is_staged(loader: PluginLoader, tmp_path: Path) -> None:
    link = tarfile.TarInfo("alias.py")
    link.type, link.linkname = tarfile.SYMTYPE, "main.py"
    hard = tarfile.TarInfo("copy.py")
    hard.type, hard.linkname = tarfile.LNKTYPE, "main.py"
    path = make_tar(
        tmp_path / "p.tgz",
        [
            tar_file("manifest.json", manifest_bytes()),
            tar_file("main.py", b"x"),
            (link, None),
            (hard, None),
        ],
    )
    result = loader.stage_package(path)
    target = Path(result["path"])
    assert os.readlink(target / "alias.py") == "main.py"
    assert (target / "copy.py").read_bytes() == b"x"
    assert loader.verify("acme.echo") == []


def test_yaml_manifest_package(loader: PluginLoader, tmp_path: Path) -> None:
    pkg = tmp_path / "y"
    pkg.mkdir()
    (pkg / "manifest.yaml").write_text(
        "id: acme.yaml\nname: Y\nversion: '2.0'\nentrypoint: bin/run.py\npermissions: [io]\n"
    )
    (pkg / "bin").mkdir()
    (pkg / "bin" / "run.py").write_text("print(2)\n")
    assert loader.stage_package(pkg)["id"] == "acme.yaml"


def test_restaging_identical_content_changes_nothing(
    loader: PluginLoader, package_factory: Any
) -> None:
    src = package_factory()
    loader.stage_package(src)
    before = os.stat(loader.registry.path)
    audit = read_audit(loader.registry.audit_path)
    result = loader.stage_package(src)
    assert result["ok"] is True and result["changed"] is False
    after = os.stat(loader.registry.path)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert read_audit(loader.registry.audit_path) == audit


def test_different_content_same_version_needs_replace(
    loader: PluginLoader, package_factory: Any
) -> None:
    src = package_factory(files={"main.py": "print('v1')\n"})
    first = loader.stage_package(src)
    (src / "main.py").write_text("print('v2')\n")
    with pytest.raises(StagingError, match="already staged with different content"):
        loader.stage_package(src)
    target = Path(first["path"])
    assert (target / "main.py").read_text() == "print('v1')\n"
    assert loader.registry.get("acme.echo")["versions"]["1.0.0"]["digest"] == first["digest"]
    second = loader.stage_package(src, replace=True)
    assert second["digest"] != first["digest"]
    # the new content sits beside the old until the registry names it; then the old goes
    assert Path(second["path"]) == target.with_name(
        "1.0.0~" + second["digest"].rpartition(":")[2][:16]
    )
    assert (Path(second["path"]) / "main.py").read_text() == "print('v2')\n"
    assert not target.exists()
    assert loader.registry.get("acme.echo")["versions"]["1.0.0"]["path"] == (
        "packages/acme.echo/" + Path(second["path"]).name
    )
    assert loader.verify("acme.echo") == []
    # replacing again goes back to the plain name
    (src / "main.py").write_text("print('v3')\n")
    third = loader.stage_package(src, replace=True)
    assert Path(third["path"]) == target and (target / "main.py").read_text() == "print('v3')\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["1.0.0"]
    assert loader.verify("acme.echo") == []


def test_versions_side_by_side_then_remove(loader: PluginLoader, package_factory: Any) -> None:
    for v in ("1.0.0", "1.1.0"):
        loader.stage_package(package_factory(make_manifest(version=v)))
    assert sorted(p.name for p in (loader.packages_dir / "acme.echo").iterdir()) == [
        "1.0.0",
        "1.1.0",
    ]
    assert loader.registry.get("acme.echo")["active_version"] == "1.1.0"
    assert loader.remove("acme.echo", "1.1.0") is True
    assert sorted(p.name for p in (loader.packages_dir / "acme.echo").iterdir()) == ["1.0.0"]
    assert loader.remove("acme.echo") is True
    assert not (loader.packages_dir / "acme.echo").exists()
    assert loader.registry.get("acme.echo") is None
    assert loader.remove("acme.echo") is False


def test_the_same_version_spelled_differently_is_refused(
    loader: PluginLoader, package_factory: Any
) -> None:
    loader.stage_package(package_factory(make_manifest(version="1.0.0")))
    with pytest.raises(StagingError, match=r"same version as the staged 1\.0\.0"):
        loader.stage_package(package_factory(make_manifest(version="1.0")))
    assert not (loader.packages_dir / "acme.echo" / "1.0").exists()


def test_verify_detects_tampering(loader: PluginLoader, package_factory: Any) -> None:
    result = loader.stage_package(package_factory())
    (Path(result["path"]) / "main.py").write_text("print('evil')\n")
    problems = loader.verify("acme.echo")
    assert len(problems) == 1 and "content differs" in problems[0]
    shutil.rmtree(result["path"])
    assert "missing" in loader.verify("acme.echo")[0]
    assert loader.verify("acme.nope") == ["acme.nope: not registered"]


def test_registry_failure_leaves_no_directory_and_no_entry(
    loader: PluginLoader, package_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise RegistryError("disk full")

    monkeypatch.setattr(loader.registry, "register_version", fail)
    with pytest.raises(RegistryError, match="disk full"):
        loader.stage_package(package_factory())
    assert list(loader.packages_dir.iterdir()) == []
    assert list(loader.staging_dir.iterdir()) == []
    assert loader.registry.get("acme.echo") is None


def test_failed_replace_keeps_the_previous_copy_registered(
    loader: PluginLoader, package_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = package_factory(files={"main.py": "v1"})
    first = loader.stage_package(src)
    (src / "main.py").write_text("v2")

    def fail(*args: object, **kwargs: object) -> None:
        raise RegistryError("disk full")

    monkeypatch.setattr(loader.registry, "register_version", fail)
    with pytest.raises(RegistryError):
        loader.stage_package(src, replace=True)
    assert (Path(first["path"]) / "main.py").read_text() == "v1"
    monkeypatch.undo()
    assert loader.verify("acme.echo") == []


def test_leftovers_of_a_killed_stager_are_cleaned(
    loader: PluginLoader, package_factory: Any
) -> None:
    # what a SIGKILL leaves: a temp dir in staging/ and an unregistered copy in packages/
    (loader.staging_dir / "stage-dead" / "tree").mkdir(parents=True)
    leftover = loader.packages_dir / "acme.echo" / "1.0.0"
    leftover.mkdir(parents=True)
    (leftover / "half.py").write_text("partial")
    result = loader.stage_package(package_factory())
    assert list(loader.staging_dir.iterdir()) == []
    assert not (leftover / "half.py").exists()
    assert loader.verify("acme.echo") == [] and result["changed"] is True


def test_missing_staged_directory_is_restored_on_restage(
    loader: PluginLoader, package_factory: Any
) -> None:
    src = package_factory()
    result = loader.stage_package(src)
    shutil.rmtree(result["path"])
    assert loader.stage_package(src)["ok"] is True
    assert loader.verify("acme.echo") == []


def test_source_file_swapped_during_staging_is_refused(
    loader: PluginLoader, package_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = package_factory(files={"main.py": "print(1)\n"})
    real_walk = loader._walk

    def walk_then_swap(root: Path, source: str) -> Any:
        entries = real_walk(root, source)
        (src / "main.py").unlink()
        (src / "main.py").write_text("print('swapped in after the checks')\n")
        return entries

    monkeypatch.setattr(loader, "_walk", walk_then_swap)
    with pytest.raises(StagingError, match="changed while staging"):
        loader.stage_package(src)


def test_importing_and_constructing_create_nothing(tmp_path: Path) -> None:
    PluginLoader(tmp_path / "plugins")
    assert not (tmp_path / "plugins").exists()


def _replace_and_die(plugins_dir: Path, src: Path, when: str) -> None:
    """In a child: replace the staged copy, dying (like SIGKILL: no cleanup) at ``when``."""
    import core.registry as registry_module

    real_change = registry_module.PluginRegistry._change

    def change_then_die(self: Any, change: Any) -> Any:
        if when == "before-registry-write":
            os._exit(9)
        result = real_change(self, change)
        os._exit(9)
        return result  # never reached

    registry_module.PluginRegistry._change = change_then_die  # type: ignore[method-assign]
    PluginLoader(plugins_dir).stage_package(src, replace=True)


@pytest.mark.parametrize("when", ["before-registry-write", "after-registry-write"])
def test_replace_killed_mid_way_keeps_the_registry_and_the_files_in_step(
    loader: PluginLoader, package_factory: Any, when: str
) -> None:
    import multiprocessing

    src = package_factory(files={"main.py": "v1"})
    first = loader.stage_package(src)
    (src / "main.py").write_text("v2")
    child = multiprocessing.get_context("fork").Process(
        target=_replace_and_die, args=(loader.plugins_dir, src, when)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 9
    entry = loader.registry.get("acme.echo")["versions"]["1.0.0"]
    # Either way the registered directory holds exactly the registered digest.
    assert loader.verify("acme.echo") == []
    id_dir = loader.packages_dir / "acme.echo"
    if when == "before-registry-write":
        assert entry["digest"] == first["digest"]
        assert (loader.plugins_dir / entry["path"] / "main.py").read_text() == "v1"
    else:
        assert entry["digest"] != first["digest"]
        assert (loader.plugins_dir / entry["path"] / "main.py").read_text() == "v2"
    assert len(list(id_dir.iterdir())) == 2  # the unregistered copy is still there
    # The next staging of the plugin removes the leftover.
    assert loader.stage_package(src, replace=True)["ok"] is True
    entry = loader.registry.get("acme.echo")["versions"]["1.0.0"]
    assert [p.name for p in id_dir.iterdir()] == [Path(entry["path"]).name]
    assert loader.verify("acme.echo") == []


def test_a_failure_after_the_registry_write_keeps_the_registered_directory(
    loader: PluginLoader, package_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.registry as registry_module

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module, "append_audit", disk_full)
    with pytest.raises(OSError, match="No space"):
        loader.stage_package(package_factory())
    monkeypatch.undo()
    assert loader.registry.get("acme.echo") is not None  # the registry write had happened
    assert loader.verify("acme.echo") == []


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("packages/acme.echo/../../etc", id="dotdot"),
        pytest.param("/etc/passwd", id="absolute"),
        pytest.param("packages/acme.other/1.0.0", id="other-plugin"),
        pytest.param("packages/acme.echo/2.0.0", id="other-version"),
        pytest.param("packages/acme.echo/1.0.0/sub", id="nested"),
    ],
)
def test_register_refuses_a_path_outside_the_version_directory(
    loader: PluginLoader, path: str
) -> None:
    with pytest.raises(RegistryError, match=r"path: expected packages/acme\.echo/1\.0\.0"):
        loader.registry.register_version(make_manifest(), ["main.py"], path=path)
    assert loader.registry.get("acme.echo") is None


def test_a_hand_edited_registry_path_is_never_used_as_a_target(
    loader: PluginLoader, package_factory: Any
) -> None:
    src = package_factory(files={"main.py": "v1"})
    loader.stage_package(src)
    doc = json.loads(loader.registry.path.read_text())
    outside = loader.plugins_dir.parent / "outside"
    outside.mkdir()
    doc["plugins"]["acme.echo"]["versions"]["1.0.0"]["path"] = "packages/acme.echo/../../outside"
    loader.registry.path.write_text(json.dumps(doc))
    (src / "main.py").write_text("v2")
    result = loader.stage_package(src, replace=True)
    assert list(outside.iterdir()) == []
    assert loader.verify("acme.echo") == [] and Path(result["path"]).parent.name == "acme.echo"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("path", "packages/acme.echo/..", id="path-dotdot"),
        pytest.param("path", "packages/acme.echo/../../outside", id="path-escape"),
        pytest.param("version", "..", id="version-dotdot"),
    ],
)
def test_remove_never_deletes_what_a_hand_edited_registry_points_at(
    loader: PluginLoader, package_factory: Any, field: str, value: str
) -> None:
    loader.stage_package(package_factory(files={"main.py": "v1"}))
    loader.stage_package(package_factory(make_manifest(id="acme.other"), name="other"))
    loader.stage_package(package_factory(make_manifest(version="2.0"), name="v2"))
    outside = loader.plugins_dir.parent / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    doc = json.loads(loader.registry.path.read_text())
    versions = doc["plugins"]["acme.echo"]["versions"]
    if field == "path":
        versions["1.0.0"]["path"] = value
        victim = "1.0.0"
    else:
        versions[value] = versions.pop("1.0.0")
        victim = value
    loader.registry.path.write_text(json.dumps(doc))
    assert loader.remove("acme.echo", victim) is True
    assert (outside / "keep").exists()
    assert loader.verify("acme.other") == [] and loader.verify("acme.echo", "2.0") == []
