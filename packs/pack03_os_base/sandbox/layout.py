"""The launcher's own layout, and the check every fork-server request must pass against it.

A request comes from the supervisor, but the server must not trust it further than
the layout it was started with: a plugin's data dir strictly beneath the data root,
its read paths beneath the packages root (or a system/interpreter path the launcher
adds itself), the report beneath the report root. Paths are taken as written: no
``..`` component, and no symlink in the part below the root (``lstat`` per
component), so a path cannot be steered elsewhere by a link a plugin planted.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from typing import Any


class Layout:
    """The three roots a server serves (each absolute, existing, normalised), and the one
    SDK directory a request may make readable (None: none may)."""

    def __init__(
        self, data_root: str, packages_root: str, report_root: str, sdk_root: str | None = None
    ) -> None:
        self.data_root = data_root
        self.packages_root = packages_root
        self.report_root = report_root
        self.sdk_root = sdk_root


def check_root(flag: str, value: str) -> tuple[str, str | None]:
    """A root given on the command line: (normalised path, problem or None)."""
    if not os.path.isabs(value) or "\0" in value:
        return value, f"{flag} {value!r}: expected an absolute path"
    if ".." in value.split("/"):
        return value, f"{flag} {value!r}: no '..' allowed"
    path = os.path.normpath(value)
    if not os.path.isdir(path):
        return path, f"{flag} {path!r}: not an existing directory"
    if path == "/":
        return path, f"{flag} '/': the whole filesystem is not a root"
    return path, None


def _below(path: str, root: str) -> str | None:
    """The part of `path` below `root` ('' when equal), or None when not beneath it."""
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _symlink_below(root: str, rest: str) -> str | None:
    """The first component below `root` that is a symlink (or not a directory where a
    directory must be), or None. Missing components end the walk (they will be made)."""
    current = root
    parts = [p for p in rest.split("/") if p]
    for i, part in enumerate(parts):
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{current}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return f"{current} is a symlink (no symlink below the root)"
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return f"{current} is not a directory"
    return None


def check_path(
    raw: object, where: str, root: str, root_flag: str, strict: bool, problems: list[str]
) -> None:
    """Append a problem unless `raw` lies beneath `root` (strictly when `strict`)."""
    if not isinstance(raw, str) or not os.path.isabs(raw) or "\0" in raw:
        return  # the policy/request parser names this one
    if ".." in raw.split("/"):
        problems.append(f"{where}: {raw!r} contains '..'")
        return
    path = os.path.normpath(raw)
    rest = _below(path, root)
    if rest is None or (strict and not rest):
        how = "strictly beneath" if strict else "beneath"
        problems.append(f"{where}: {path!r} is not {how} {root_flag} {root!r}")
        return
    link = _symlink_below(root, rest)
    if link is not None:
        problems.append(f"{where}: {link} ({root_flag} {root})")


def check_request(
    layout: Layout, policy: Any, report: object, system_paths: frozenset[str]
) -> list[str]:
    """Every problem of a request against the layout (an empty list: it may run)."""
    problems: list[str] = []
    if not isinstance(policy, dict):
        return problems
    if "data_dir" in policy:
        check_path(policy["data_dir"], "policy.data_dir", layout.data_root, "--data-root",
                   True, problems)  # fmt: skip
    paths = policy.get("read_paths", [])
    if isinstance(paths, list):
        for i, item in enumerate(paths):
            if (
                isinstance(item, str)
                and os.path.normpath(item) in system_paths
                and (".." not in item.split("/"))
            ):
                continue
            check_path(item, f"policy.read_paths[{i}]", layout.packages_root,
                       "--packages-root", False, problems)  # fmt: skip
    if report is not None:
        check_path(report, "report", layout.report_root, "--report-root", True, problems)
    sdk = policy.get("sdk_dir")
    if isinstance(sdk, str):  # exactly the server's own: a request never picks a host dir
        if layout.sdk_root is None:
            problems.append(f"policy.sdk_dir: {sdk!r} given, but the server was started "
                            "without --sdk-root (no SDK may be offered)")  # fmt: skip
        elif ".." in sdk.split("/") or os.path.normpath(sdk) != layout.sdk_root:
            problems.append(f"policy.sdk_dir: {sdk!r} is not the server's --sdk-root "
                            f"{layout.sdk_root!r}")  # fmt: skip
    for key in ("uid", "gid"):
        if policy.get(key) == 0:
            problems.append(f"policy.{key}: 0 is root: the server never runs a plugin as root")
    return problems


def check_socket_dir(path: str) -> str | None:
    """The socket's directory must be mode 0700 and owned by this uid (None: it is)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"socket directory {directory}: {exc.strerror}"
    problems = []
    if st.st_uid != os.geteuid():
        problems.append(f"owned by uid {st.st_uid}, not the server's uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        problems.append(f"mode {stat.S_IMODE(st.st_mode):04o}, not 0700")
    if problems:
        return f"socket directory {directory}: " + " and ".join(problems)
    return None


__all__ = ["Layout", "check_path", "check_request", "check_root", "check_socket_dir"]
