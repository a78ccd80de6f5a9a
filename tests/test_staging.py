"""Staging: artifact hash checks, and a staged copy found again (or staged anew) by install."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from aurora import IntegrityError
from aurora.audit import AuditLog
from aurora.home import Home
from aurora.manifest import load_manifest
from aurora.staging import check_artifacts, ensure_staged, stage
from aurora.state import State
from aurora_testing import Env, PackFactory


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_every_mismatched_artifact_is_reported_at_once(make_pack: PackFactory) -> None:
    root = make_pack(
        artifacts=[("a.py", "0" * 64), ("b.py", _sha("b\n")), ("c.py", "1" * 64)],
        files={"a.py": "a\n", "b.py": "b\n", "c.py": "c\n"},
    )
    manifest = load_manifest(root)
    with pytest.raises(IntegrityError) as caught:
        check_artifacts(manifest, lambda rel: _sha((root / rel).read_text()), require_hashes=False)
    a_sha, c_sha = _sha("a\n"), _sha("c\n")
    assert caught.value.problems == [
        f"pack.artifacts[0]: a.py sha256 is {a_sha}, the manifest pins {'0' * 64}",
        f"pack.artifacts[2]: c.py sha256 is {c_sha}, the manifest pins {'1' * 64}",
    ]


@pytest.mark.parametrize(
    ("require_hashes", "refused"),
    [pytest.param(False, False, id="warn"), pytest.param(True, True, id="require-hashes")],
)
def test_unpinned_artifacts_warn_or_refuse(
    make_pack: PackFactory, require_hashes: bool, refused: bool
) -> None:
    root = make_pack(artifacts=[("a.py", ""), ("b.py", "")], files={"a.py": "", "b.py": ""})
    manifest = load_manifest(root)
    unpinned = [
        "pack.artifacts[0]: a.py has no sha256 (run seal)",
        "pack.artifacts[1]: b.py has no sha256 (run seal)",
    ]
    if refused:
        with pytest.raises(IntegrityError, match="--require-hashes") as caught:
            check_artifacts(manifest, lambda rel: None, require_hashes=require_hashes)
        assert caught.value.problems == unpinned
    else:
        assert check_artifacts(manifest, lambda rel: None, require_hashes=False) == unpinned


def test_ensure_staged_restages_a_copy_that_vanished(
    make_pack: PackFactory, tmp_path: Path
) -> None:
    home = Home(tmp_path / "home")
    audit = AuditLog(home.audit)
    state = State.load(home.state)
    manifest = load_manifest(make_pack())
    first = stage(home, audit, state, manifest, require_hashes=False)
    staged, digest, staged_now = ensure_staged(home, audit, state, manifest)
    assert (staged.root, digest, staged_now) == (Path(first["path"]), first["digest"], False)
    shutil.rmtree(first["path"])
    staged, digest, staged_now = ensure_staged(home, audit, state, manifest)
    assert staged_now is True and digest == first["digest"]
    assert (staged.root / "manifest.yaml").is_file()


def test_dry_run_and_install_say_when_the_source_differs_from_the_staged_copy(env: Env) -> None:
    root = env.make_pack("alpha")
    assert env.run("stage", "--pack", "alpha").code == 0
    same = env.run("dry-run", "--pack", "alpha")
    assert same.code == 0 and "differs" not in same.err
    (root / "extra.txt").write_text("edited after stage\n")
    for command in (["dry-run"], ["install", "--approve"]):
        result = env.run(*command, "--pack", "alpha")
        assert result.code == 0, result.err
        assert "alpha 1.0.0: the source in " in result.err
        assert "differs from its staged copy" in result.err
        assert "run `stage --pack alpha` again" in result.err
    installed = env.home / "packs" / "alpha" / "1.0.0"
    assert not (installed / "extra.txt").exists()  # the staged copy was installed, as said
