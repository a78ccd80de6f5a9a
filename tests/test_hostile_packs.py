"""One hostile pack in the packs directory (deep nesting, an alias bomb, a huge manifest,
a file name that is not UTF-8) is refused, bounded, with exit 2 and no traceback, and
never stops the commands on the other packs; a forged file name does not pass verify."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from aurora.exitcodes import ExitCode
from aurora_testing import Env


def _alias_bomb() -> str:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefghi", "bcdefghij", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _spoil(root: Path, kind: str) -> None:
    manifest = root / "manifest.yaml"
    if kind == "deep":
        manifest.write_text("x: " + "[" * 50000)
    elif kind == "alias":
        manifest.write_text(_alias_bomb())
    elif kind == "huge":
        with manifest.open("ab") as f:
            f.write(b"#")
            f.truncate(300 << 20)  # sparse: 300 MB to read, nothing to write
    elif kind == "not-utf8-name":
        (root / os.fsdecode(b"bad\xff\xfename")).write_text("x")


@pytest.mark.parametrize("kind", ["deep", "alias", "huge", "not-utf8-name"])
def test_a_hostile_pack_is_refused_and_others_still_work(env: Env, kind: str) -> None:
    env.make_pack("good", approval=False)
    _spoil(env.make_pack("evil", approval=False), kind)
    listed = env.cli("--json", "list", timeout=30)
    assert listed.code == ExitCode.OK, listed.err
    rows = {row["id"]: row for row in listed.json["result"]}
    assert rows["good"]["valid"] and not rows["evil"]["valid"]
    for command in ("validate", "stage"):
        refused = env.cli(command, "--pack", "evil", timeout=30)
        assert refused.code == ExitCode.USAGE, (command, refused.err)
        assert "Traceback" not in refused.err and "evil" in refused.err
    assert env.cli("install", "--pack", "good", timeout=30).code == ExitCode.OK
    assert env.active("good") == "1.0.0" and not (env.home / "staging/evil").exists()


def test_a_file_name_forging_digest_lines_does_not_pass_verify(env: Env) -> None:
    env.make_pack("alpha", approval=False, files={"x": "X\n", "y": "Y\n"})
    assert env.run("install", "--pack", "alpha").code == ExitCode.OK
    copy = env.home / "packs/alpha/1.0.0"
    sha_y = hashlib.sha256((copy / "y").read_bytes()).hexdigest()
    (copy / "y").unlink()
    (copy / "x").rename(copy / f"x\nfile:{sha_y}\ty")
    result = env.run("verify", "--pack", "alpha")
    assert result.code == ExitCode.FAILED, result.out
    assert "missing: x" in result.err and "missing: y" in result.err
