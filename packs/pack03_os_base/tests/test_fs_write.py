"""fs-write stays a grant to write files, not to hand out the plugin's uid or the host disk.

Attacks fsw_setuid_disk / fs_outside of the adversary run: a setuid binary planted on the
host, and host disk filled through world-writable directories outside the quota.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import Sandbox

PYTHON = sys.executable

#: Every route to a setuid/setgid bit; prints {route: "ok" | errno name} as JSON.
SETID_ROUTES = r"""
import ctypes, errno, json, os, stat, sys
d = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
out = {}
def attempt(name, fn):
    try:
        rc = fn()
        if isinstance(rc, int) and rc < 0:
            raise OSError(ctypes.get_errno(), "")
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
p = lambda n: os.path.join(d, n)
open(p("f"), "w").close()
attempt("chmod", lambda: os.chmod(p("f"), 0o4755))
attempt("chmod-sgid", lambda: os.chmod(p("f"), 0o2755))
fd = os.open(p("f"), os.O_RDONLY)
attempt("fchmod", lambda: os.fchmod(fd, 0o6755))
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
attempt("fchmodat", lambda: os.chmod("f", 0o4755, dir_fd=dfd))
attempt("fchmodat2", lambda: libc.syscall(452, dfd, b"f", 0o4755, 0))
attempt("openat", lambda: os.open(p("o"), os.O_CREAT | os.O_WRONLY, 0o4755))
attempt("open", lambda: libc.syscall(2, p("o2").encode(), os.O_CREAT | os.O_WRONLY, 0o4755))
attempt("creat", lambda: libc.creat(p("c").encode(), 0o6755))
attempt("mkdir", lambda: os.mkdir(p("m"), 0o2755))
attempt("mkdirat", lambda: os.mkdir("m2", 0o4755, dir_fd=dfd))
attempt("mknod", lambda: libc.syscall(133, p("n").encode(), stat.S_IFREG | 0o4755, 0))
attempt("mknodat", lambda: os.mknod("n2", stat.S_IFREG | 0o2755, dir_fd=dfd))
how = (ctypes.c_uint64 * 3)(os.O_CREAT | os.O_WRONLY, 0o4755, 0)
attempt("openat2", lambda: libc.syscall(437, dfd, p("o3").encode(), how, 24))
attempt("chmod-plain", lambda: os.chmod(p("f"), 0o755))
attempt("open-plain", lambda: os.open(p("plain"), os.O_CREAT | os.O_WRONLY, 0o644))
print(json.dumps(out))
"""


def _setid_files(root: Path) -> list[str]:
    return [
        f"{entry}: {oct(entry.lstat().st_mode)}"
        for entry in root.rglob("*")
        if entry.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    ]


def test_no_setuid_or_setgid_bit_by_any_route_even_with_fs_write(
    sandbox: Sandbox, plugin_owned_dir: Path
) -> None:
    res = sandbox.run([PYTHON, "-I", "-c", SETID_ROUTES, str(plugin_owned_dir)], ["fs-write"])
    out = res.outcome
    assert _setid_files(plugin_owned_dir) == []  # the host's view of what it made
    assert out.pop("openat2") == "ENOSYS", out
    assert out.pop("chmod-plain") == "ok" and out.pop("open-plain") == "ok", out
    assert set(out.values()) == {"EPERM"}, out
    assert (plugin_owned_dir / "plain").stat().st_uid != 0  # written by the plugin, on the host


#: Fill each shared directory given; prints {dir: [bytes written, errno name or "ok"]}.
FILL_SHARED = r"""
import errno, json, os, sys
name, out = sys.argv[1], {}
for d in sys.argv[2:]:
    written, result = 0, "ok"
    try:
        for i in range(3):  # files of 8 MiB (under the test's RLIMIT_FSIZE)
            with open(os.path.join(d, f"{name}.{i}"), "wb") as fh:
                for _ in range(8):
                    fh.write(b"x" * (1 << 20)); fh.flush(); written += 1 << 20
    except OSError as exc:
        result = errno.errorcode.get(exc.errno, str(exc.errno))
    out[d] = [written, result]
print(json.dumps(out))
"""


def test_world_writable_host_dirs_are_private_and_bounded_with_fs_write(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    shared = [d for d in ("/var/tmp", "/run/lock") if Path(d).is_dir()]
    assert shared, "no world-writable host dir to test with"
    name = f"aurora-fsw-{os.getpid()}-{tmp_path.name}"
    try:
        res = sandbox.run([PYTHON, "-I", "-c", FILL_SHARED, name, *shared], ["fs-write"])
        out = res.outcome
        for d in shared:
            left = sorted(str(p) for p in Path(d).glob(name + ".*"))
            assert left == [], f"on the host: {left}"
            written, result = out[d]
            assert result == "ENOSPC" and written < 24 << 20, out  # bounded, in memory
            assert written >= 8 << 20, out  # usable, though
    finally:
        for d in shared:
            for p in Path(d).glob(name + ".*"):
                p.unlink()
