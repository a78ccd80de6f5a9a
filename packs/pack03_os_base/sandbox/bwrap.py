"""bubblewrap backend: the command line that builds the plugin's whole world from the policy."""

from __future__ import annotations

import fnmatch
import os

TYPE_CHECKING = False  # typing (and shutil) cost start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from sandbox.confine import Run

_SEARCH = ("/usr/local/bin", "/usr/bin", "/bin")


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

    Always ``--cap-drop ALL``: a root process inside keeps uid 0 but no capability,
    so it cannot remount, setns or raise limits. Mounts: the system read-only, the
    data dir read-write, a fresh /proc and a minimal /dev.
    """
    pol = run.policy
    args = ["--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--cap-drop", "ALL"]  # fmt: skip
    if "network" not in pol.granted:
        args.append("--unshare-net")
    if "fs-write" in pol.granted:
        # /sys stays read-only: for uid 0 it is the host's configuration (cgroups too).
        args += ["--bind", "/", "/", "--ro-bind", "/sys", "/sys"]
    elif "fs-read" in pol.granted:
        args += ["--ro-bind", "/", "/"]
    else:
        for path in system:
            args += _bind_keep_symlink(path)
        args += ["--tmpfs", "/tmp"]  # private; binds below may land inside it
        bound = [*system, *prefixes, *pol.read_paths]
        for path in [*prefixes, *pol.read_paths]:
            args += ["--ro-bind-try", path, path]
        for path in (run.executable, os.path.realpath(run.executable)):
            if not any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound):
                args += ["--ro-bind-try", path, path]
                bound.append(path)
    args += ["--bind", pol.data_dir, pol.data_dir, "--proc", "/proc", "--dev", "/dev"]
    for cap, patterns in devices.items():
        if cap in pol.granted:
            for name in sorted(os.listdir("/dev")):
                if any(fnmatch.fnmatch(name, p) for p in patterns):
                    args += ["--dev-bind-try", f"/dev/{name}", f"/dev/{name}"]
    args += ["--chdir", pol.data_dir, "--"]
    return args


def _bind_keep_symlink(path: str) -> list[str]:
    # /bin -> usr/bin on merged-/usr systems: recreate the link, do not bind twice.
    if os.path.islink(path) and os.path.dirname(path) == "/":
        return ["--symlink", os.readlink(path), path]
    return ["--ro-bind-try", path, path]
