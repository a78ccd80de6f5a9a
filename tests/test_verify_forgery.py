"""verify judges by the tree-v1 digest: a file name forging digest lines (the old
"kind:hash<TAB>path<LF>" format) does not make a changed copy pass."""

from __future__ import annotations

import hashlib

from aurora.exitcodes import ExitCode
from aurora_testing import Env


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
