"""bubblewrap backend: the command line that builds the plugin's whole world from the policy."""

from __future__ import annotations

import fnmatch
import os

from sandbox import shared_dirs

TYPE_CHECKING = False  # typing (and shutil) cost start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from sandbox.confine import Run

_SEARCH = ("/usr/local/bin", "/usr/bin", "/bin")
#: util-linux's setpriv: switches to the plugin's uid/gid inside the sandbox.
SETPRIV = "/usr/bin/setpriv"


def setpriv_argv(uid: int, gid: int) -> list[str]:
    """The command prefix that runs ARGV as uid:gid, no group, no capability at all."""
    return [SETPRIV, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--"]  # fmt: skip


def traversable(path: str, uid: int, gid: int) -> bool:
    """Whether `uid` (group `gid`, no other group) can reach `path` on the host."""
    current = "/"
    for part in [p for p in path.split("/") if p][:-1]:
        current = os.path.join(current, part)
        try:
            st = os.stat(current)
        except OSError:
            return False
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return False
    return True


def find() -> str | None:
    """Path of the bwrap executable, or None."""
    for d in _SEARCH:
        path = os.path.join(d, "bwrap")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def arguments(
    run: Run, prefixes: list[str], devices: dict[str, tuple[str, ...]], system: tuple[str, ...]
) -> list[str]:
    """bwrap options for this run, ending with "--" (the command goes after it).

    Every capability dropped but the three ``setpriv`` needs to switch to the plugin's
    uid/gid and empty the bounding set (the command goes after ``setpriv_argv``).
    Mounts: the system read-only, the data dir read-write, a fresh /proc, a minimal
    /dev, a private /tmp.
    """
    pol = run.policy
    args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--hostname", "aurora-sandbox", "--unshare-cgroup-try", "--cap-drop", "ALL",
            "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
            "--cap-add", "CAP_DAC_READ_SEARCH"]  # fmt: skip
    if "network" not in pol.granted:
        args.append("--unshare-net")
    needed = [*prefixes, *pol.read_paths, pol.data_dir, *([pol.sdk_dir] if pol.sdk_dir else [])]
    for path in (run.executable, os.path.realpath(run.executable)):
        if not any(path == b or path.startswith(b.rstrip("/") + "/") for b in [*system, *needed]):
            needed.append(path)
    made: list[str] = ["/tmp"]  # tmpfs dirs: bwrap copies host modes into dirs it makes there
    if pol.granted & {"fs-read", "fs-write"}:
        # /sys stays read-only: it is the host's configuration (cgroups too).
        rw = "fs-write" in pol.granted
        args += ["--bind" if rw else "--ro-bind", "/", "/", "--ro-bind", "/sys", "/sys",
                 "--tmpfs", "/tmp"]  # fmt: skip
        for name in sorted(os.listdir("/")):
            top = "/" + name
            if name in ("dev", "proc", "sys", "tmp") or os.path.islink(top):
                continue
            below = [n for n in needed if n == top or n.startswith(top + "/")]
            if any(not traversable(n, pol.uid, pol.gid) for n in below):
                args += ["--tmpfs", top]  # only the needed binds below it
                made.append(top)
        if rw:  # the host's world-writable dirs: private and bounded (shared_dirs)
            for path, mode in shared_dirs.find().items():
                if any(path.startswith(m + "/") for m in made):
                    continue  # below a top-level tmpfs already: not the host's there
                args += ["--perms", f"{mode:o}", "--size", str(shared_dirs.SIZE), "--tmpfs", path]
                made.append(path)
    else:
        for path in system:
            args += _bind_keep_symlink(path)
        args += ["--tmpfs", "/tmp"]  # private; binds below may land inside it
        made.append("/")
    done: set[str] = set()
    base = bool(pol.granted & {"fs-read", "fs-write"})
    for path in sorted(needed, key=lambda p: p.count("/")):
        hidden = any(path.startswith(m.rstrip("/") + "/") for m in made if m != "/")
        # The SDK stays read-only over a read-write host root (fs-write): it is shared.
        sdk_over_rw = path == pol.sdk_dir and "fs-write" in pol.granted
        if (base and not hidden and not sdk_over_rw
                and (path != pol.data_dir or "fs-write" in pol.granted)):  # fmt: skip
            continue  # visible as it is through the bound host root
        args += _dirs_above(path, made, [*system, *needed], done)
        flag = ("--bind" if path == pol.data_dir
                else "--ro-bind" if path == pol.sdk_dir else "--ro-bind-try")  # fmt: skip
        args += [flag, path, path]
    args += ["--proc", "/proc", *_masked_proc(), *_minimal_dev()]
    for cap, patterns in devices.items():
        if cap in pol.granted:
            for name in sorted(os.listdir("/dev")):
                if any(fnmatch.fnmatch(name, p) for p in patterns):
                    args += ["--dev-bind-try", f"/dev/{name}", f"/dev/{name}"]
    args += ["--chdir", pol.data_dir, "--"]
    return args


#: Host-wide /proc files a fresh procfs shows (host memory, load, pressure, every loop
#: device's I/O, kernel symbols, boot id): the native backend's Landlock keeps the plugin
#: to its own /proc/<pid>; here each is covered by /dev/null (an empty file).
_PROC_HOST_WIDE = ("meminfo", "loadavg", "stat", "vmstat", "zoneinfo", "diskstats",
                   "partitions", "swaps", "kallsyms", "interrupts", "softirqs",
                   "schedstat", "timer_list", "sys/kernel/random/boot_id")  # fmt: skip


def _masked_proc() -> list[str]:
    # Only what this kernel has: bwrap cannot bind onto a /proc file that does not exist.
    return [a for name in _PROC_HOST_WIDE if os.path.exists(f"/proc/{name}")
            for a in ("--ro-bind", "/dev/null", f"/proc/{name}")]  # fmt: skip


_DEVICES = ("null", "zero", "full", "random", "urandom")
_DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
              "stderr": "/proc/self/fd/2"}  # fmt: skip


def _minimal_dev() -> list[str]:
    """The native backend's /dev: five nodes, the fd links and a private /dev/shm. Not
    bwrap's --dev, whose /dev/ptmx takes pseudo-terminals from the budget all devpts
    instances share (kernel.pty.max): a plugin could exhaust every container's."""
    args = ["--perms", "0755", "--tmpfs", "/dev"]
    for name in _DEVICES:
        args += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    for name, target in _DEV_LINKS.items():
        args += ["--symlink", target, f"/dev/{name}"]
    return [*args, "--perms", "1777", "--size", str(16 << 20), "--tmpfs", "/dev/shm"]


def _dirs_above(path: str, made: list[str], bound: list[str], done: set[str]) -> list[str]:
    """``--perms 0755 --dir`` for each ancestor of `path` bwrap would make inside a tmpfs
    (it would copy the host's mode: a 0700 root dir would lock the plugin's uid out)."""
    out: list[str] = []
    parts = [p for p in path.split("/") if p][:-1]
    current = ""
    for part in parts:
        current += "/" + part
        inside = any(current.startswith(m.rstrip("/") + "/") for m in made)
        covered = any(current == b or current.startswith(b.rstrip("/") + "/")
                      for b in bound if b != path)  # fmt: skip
        if inside and not covered and current not in done:
            out += ["--perms", "0755", "--dir", current]
            done.add(current)
    return out


def _bind_keep_symlink(path: str) -> list[str]:
    # /bin -> usr/bin on merged-/usr systems: recreate the link, do not bind twice.
    if os.path.islink(path) and os.path.dirname(path) == "/":
        return ["--symlink", os.readlink(path), path]
    return ["--ro-bind-try", path, path]
