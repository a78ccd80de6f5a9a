"""What one sandboxed run may do: the policy file pack04 writes, parsed and validated."""

from __future__ import annotations

import json
import os
import re

from sandbox import CAPABILITIES
from sandbox.errors import PolicyError

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from typing import Any

#: Keys of the "limits" object, each a positive integer (absent means "not limited").
LIMIT_KEYS = (
    "cpu_seconds", "memory_bytes", "open_files", "file_size_bytes", "processes", "cpu_cores",
)  # fmt: skip
_MIN_LIMITS = {"open_files": 4, "memory_bytes": 16 * 1024 * 1024}
_KEYS = (
    "plugin_id", "granted", "data_dir", "read_paths", "limits", "allow_degraded", "uid", "gid",
    "sdk_dir",
)  # fmt: skip
#: Host ids a plugin may run as: never root (0), never `nobody` (65534, shared by host
#: daemons), never the kernel's "no id" (4294967295).
ID_MAX = 4294967294
NOBODY = 65534
#: Largest `cpu_cores` accepted (cpu.max quota in microseconds must stay sane).
CPU_CORES_MAX = 1024
# The id names a cgroup directory: no separators, no dot-dot, bounded length.
_PLUGIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# A data directory must not be one of the places the system itself lives.
_SYSTEM_DIRS = frozenset(
    ["/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/root",
     "/run", "/sbin", "/sys", "/usr", "/var", "/tmp", "/home"]
)  # fmt: skip


class Policy:
    """A validated policy: absolute paths, known capabilities, positive limits."""

    def __init__(
        self,
        plugin_id: str,
        granted: frozenset[str],
        data_dir: str,
        read_paths: tuple[str, ...] = (),
        limits: dict[str, int | float] | None = None,
        allow_degraded: bool = False,
        uid: int = -1,
        gid: int = -1,
        sdk_dir: str | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.granted = granted
        self.data_dir = data_dir
        self.read_paths = read_paths
        self.limits: dict[str, int | float] = dict(limits or {})
        self.allow_degraded = allow_degraded
        self.uid = uid
        self.gid = gid
        self.sdk_dir = sdk_dir  # the plugin SDK, readable inside (None: not offered)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def denied(self) -> list[str]:
        """Capabilities the sandbox must enforce (everything not granted), sorted."""
        return [c for c in CAPABILITIES if c not in self.granted]

    def to_json(self) -> dict[str, Any]:
        return {
            "plugin_id": self.plugin_id,
            "granted": sorted(self.granted),
            "data_dir": self.data_dir,
            "read_paths": list(self.read_paths),
            "limits": dict(self.limits),
            "allow_degraded": self.allow_degraded,
            "uid": self.uid,
            "gid": self.gid,
            "sdk_dir": self.sdk_dir,
        }


def policy_from_json(doc: dict[str, Any]) -> Policy:
    """Rebuild a policy from ``Policy.to_json()`` output, without validating it again.

    Only for a document this process family produced from a validated policy (the
    server hands its children the policy it checked); anything else: parse_policy.
    """
    return Policy(
        plugin_id=doc["plugin_id"],
        granted=frozenset(doc["granted"]),
        data_dir=doc["data_dir"],
        read_paths=tuple(doc["read_paths"]),
        limits=dict(doc["limits"]),
        allow_degraded=bool(doc["allow_degraded"]),
        uid=int(doc["uid"]),
        gid=int(doc["gid"]),
        sdk_dir=doc.get("sdk_dir"),
    )


def load_policy(path: str) -> Policy:
    """Read and validate a policy file; raise PolicyError naming every problem."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except OSError as exc:
        raise PolicyError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(path, [f"not valid JSON: {exc}"]) from None
    return parse_policy(raw, source=path)


def parse_policy(raw: object, source: str = "policy") -> Policy:
    """Validate a decoded policy document; every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise PolicyError(source, [f"expected a JSON object, found {_kind(raw)}"])
    for key in raw:
        if key not in _KEYS:
            problems.append(f"{key}: unknown key (known: {', '.join(_KEYS)})")
    plugin_id = _plugin_id(raw, problems)
    granted = _granted(raw, problems)
    data_dir = _data_dir(raw, problems)
    read_paths = _read_paths(raw, problems)
    limits = _limits(raw, problems)
    uid = _host_id(raw, "uid", problems)
    gid = _host_id(raw, "gid", problems)
    sdk_dir = _sdk_dir(raw, problems)
    allow_degraded = raw.get("allow_degraded", False)
    if not isinstance(allow_degraded, bool):
        problems.append(f"allow_degraded: expected true or false, found {_kind(allow_degraded)}")
    if problems:
        raise PolicyError(source, problems)
    return Policy(
        plugin_id=plugin_id,
        granted=frozenset(granted),
        data_dir=data_dir,
        read_paths=tuple(read_paths),
        limits=limits,
        allow_degraded=bool(allow_degraded),
        uid=uid,
        gid=gid,
        sdk_dir=sdk_dir,
    )


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    return "an array" if isinstance(value, list) else "an object"


def _plugin_id(raw: dict[str, Any], problems: list[str]) -> str:
    value = raw.get("plugin_id")
    if value is None:
        problems.append("plugin_id: missing (a string such as 'acme.echo')")
        return ""
    if not isinstance(value, str) or not _PLUGIN_ID.fullmatch(value):
        problems.append(
            f"plugin_id: expected letters, digits, '.', '_' or '-' (at most 128, starting "
            f"with a letter or digit), found {_kind(value)}"
        )
        return ""
    return value


def _granted(raw: dict[str, Any], problems: list[str]) -> list[str]:
    value = raw.get("granted", [])
    if not isinstance(value, list):
        problems.append(f"granted: expected a list of capabilities, found {_kind(value)}")
        return []
    seen: list[str] = []
    for i, cap in enumerate(value):
        if not isinstance(cap, str) or cap not in CAPABILITIES:
            problems.append(
                f"granted[{i}]: unknown capability {cap!r} (known: {', '.join(CAPABILITIES)})"
            )
        elif cap in seen:
            problems.append(f"granted[{i}]: {cap!r} listed twice")
        else:
            seen.append(cap)
    return seen


def _abs_path(value: object, where: str, problems: list[str]) -> str | None:
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: expected an absolute path, found {_kind(value)}")
        return None
    if "\0" in value or not os.path.isabs(value):
        problems.append(f"{where}: expected an absolute path, found {value!r}")
        return None
    return os.path.normpath(value)


def _data_dir(raw: dict[str, Any], problems: list[str]) -> str:
    if "data_dir" not in raw:
        problems.append("data_dir: missing (the plugin's writable directory, absolute)")
        return ""
    path = _abs_path(raw["data_dir"], "data_dir", problems)
    if path is None:
        return ""
    real = os.path.realpath(path)
    if real in _SYSTEM_DIRS or real.startswith(("/proc/", "/sys/", "/dev/")):
        problems.append(f"data_dir: {path!r} is a system directory, not a plugin's data")
        return ""
    if os.path.lexists(path) and not os.path.isdir(path):
        problems.append(f"data_dir: {path!r} exists and is not a directory")
    return path


def _read_paths(raw: dict[str, Any], problems: list[str]) -> list[str]:
    value = raw.get("read_paths", [])
    if not isinstance(value, list):
        problems.append(f"read_paths: expected a list of absolute paths, found {_kind(value)}")
        return []
    paths: list[str] = []
    for i, item in enumerate(value):
        path = _abs_path(item, f"read_paths[{i}]", problems)
        if path is None:
            continue
        if not os.path.exists(path):
            problems.append(f"read_paths[{i}]: {path!r} does not exist")
            continue
        paths.append(path)
    return paths


def _sdk_dir(raw: dict[str, Any], problems: list[str]) -> str | None:
    """`sdk_dir`: the plugin SDK directory made readable inside, or null/absent (none)."""
    value = raw.get("sdk_dir")
    if value is None:
        return None
    path = _abs_path(value, "sdk_dir", problems)
    if path is None:
        return None
    if ".." in value.split("/"):
        problems.append(f"sdk_dir: {value!r} contains '..'")
        return None
    if path == "/":
        problems.append("sdk_dir: '/' would make the whole filesystem readable")
        return None
    if not os.path.isdir(path):
        problems.append(f"sdk_dir: {path!r} is not an existing directory")
        return None
    return path


def _host_id(raw: dict[str, Any], key: str, problems: list[str]) -> int:
    """`uid`/`gid`: the host id the plugin runs as; required, never root nor nobody."""
    what = "user" if key == "uid" else "group"
    if key not in raw:
        problems.append(f"{key}: missing (the host {what} id the plugin runs as, 1..{ID_MAX})")
        return -1
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{key}: expected an integer 1..{ID_MAX}, found {_kind(value)}")
        return -1
    if value == 0:
        problems.append(f"{key}: 0 is root: a plugin never runs as root")
        return -1
    if value == NOBODY:
        problems.append(f"{key}: {NOBODY} is 'nobody', shared by host daemons: not a plugin's")
        return -1
    if not 1 <= value <= ID_MAX:
        problems.append(f"{key}: expected an integer 1..{ID_MAX}, found {_kind(value)}")
        return -1
    return value


def _cpu_cores(amount: object, problems: list[str]) -> float | None:
    if (
        isinstance(amount, bool)
        or not isinstance(amount, (int, float))
        or not 0.01 <= amount <= CPU_CORES_MAX
    ):
        problems.append(
            f"limits.cpu_cores: expected a number of cores 0.01..{CPU_CORES_MAX} "
            f"(e.g. 1 or 0.5), found {_kind(amount)}"
        )
        return None
    return amount


def _limits(raw: dict[str, Any], problems: list[str]) -> dict[str, int | float]:
    value = raw.get("limits", {})
    if not isinstance(value, dict):
        problems.append(f"limits: expected an object, found {_kind(value)}")
        return {}
    limits: dict[str, int | float] = {}
    for key, amount in value.items():
        if key not in LIMIT_KEYS:
            problems.append(f"limits.{key}: unknown limit (known: {', '.join(LIMIT_KEYS)})")
            continue
        if key == "cpu_cores":
            cores = _cpu_cores(amount, problems)
            if cores is not None:
                limits[key] = cores
            continue
        minimum = _MIN_LIMITS.get(key, 1)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < minimum:
            problems.append(
                f"limits.{key}: expected an integer >= {minimum}, found {_kind(amount)}"
            )
            continue
        limits[key] = amount
    return limits
