"""The command line and policy handed to pack03's sandbox (docs/contracts.md).

pack03 applies every confinement layer in its own process and then execs the
plugin; the launcher only writes the policy and reads back the report.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from launcher.registry import PluginEntry

#: Exit status of launch.py when it refuses to start a plugin.
SANDBOX_REFUSED = 125


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every plugin process (rlimits, cgroup)."""

    cpu_seconds: int = 3600
    memory_bytes: int = 512 * 1024 * 1024
    open_files: int = 256
    file_size_bytes: int = 64 * 1024 * 1024
    processes: int = 64
    cpu_cores: float = 1.0  # CPU bandwidth of the whole plugin (cgroup cpu.max)


def plugin_argv(python: str, entrypoint: Path) -> list[str]:
    """How the entrypoint is run: ``python -I`` for a .py file, else the file itself."""
    if entrypoint.suffix == ".py":
        return [python, "-I", str(entrypoint)]
    return [str(entrypoint)]


def standby_argv(python: str, sdk_root: Path, entrypoint: Path) -> list[str] | None:
    """An on-call plugin's standby run (``aurora_common.standby``): its interpreter and
    the SDK started ahead, its code run at the first call; None for a non-Python one."""
    if entrypoint.suffix != ".py":
        return None
    return [python, "-I", str(sdk_root / "aurora_common" / "standby.py"), str(entrypoint)]


def policy(
    entry: PluginEntry, data_dir: Path, limits: Limits, uid: int, sdk_dir: Path | None = None
) -> dict[str, Any]:
    """The sandbox policy for ``entry``: exactly its granted capabilities, run as ``uid``
    (and the gid of the same number); ``sdk_dir`` readable for a protocol plugin."""
    assert entry.package_dir is not None
    extra: dict[str, Any] = {"sdk_dir": str(sdk_dir)} if sdk_dir is not None else {}
    return {
        **extra,
        "plugin_id": entry.id,
        "uid": uid,
        "gid": uid,
        "granted": list(entry.granted),
        "data_dir": str(data_dir),
        "read_paths": [str(entry.package_dir)],
        "limits": asdict(limits),
        "allow_degraded": entry.allow_degraded,
    }


@dataclass(frozen=True)
class SandboxCommand:
    """``$PYTHON <pack03 root>/sandbox/launch.py`` and how to call it."""

    python: str
    root: Path

    @property
    def launch(self) -> Path:
        return self.root / "sandbox" / "launch.py"

    @property
    def interpreter(self) -> list[str]:
        """``python -I -S launch.py``: the launcher needs no site, no .pth, no PYTHON* (7 ms)."""
        return [self.python, "-I", "-S", str(self.launch)]

    def argv(
        self,
        policy_file: Path,
        report_file: Path,
        command: list[str],
        protocol_fd: int | None = None,
    ) -> list[str]:
        proto = ["--protocol-fd", str(protocol_fd)] if protocol_fd is not None else []
        return [
            *self.interpreter,
            "--policy",
            str(policy_file),
            "--report",
            str(report_file),
            *proto,
            "--",
            *command,
        ]

    def kill_tree_argv(self, report_file: Path, grace: float) -> list[str]:
        """pack03's whole-tree kill of one run, found through its report's cgroups."""
        return [
            *self.interpreter,
            "--kill-tree",
            "--report",
            str(report_file),
            "--grace",
            f"{grace:g}",
        ]


def report_cgroups(report: dict[str, Any] | None) -> list[str]:
    """The cgroup directories the sandbox put this run in (empty if none)."""
    cgroup = report.get("cgroup") if report else None
    dirs = cgroup.get("dirs") if isinstance(cgroup, dict) else None
    return [d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else []


def report_degraded(report: dict[str, Any] | None) -> list[str]:
    """What the sandbox could not enforce and ran anyway (allow_degraded); empty if none."""
    items = report.get("degraded") if report else None
    return [d for d in items if isinstance(d, str)] if isinstance(items, list) else []


def read_report(path: Path) -> dict[str, Any] | None:
    """The sandbox's report for one run, or None if it wrote none (yet)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def active_layers(report: dict[str, Any] | None) -> list[str]:
    """Names of the layers the report says are active.

    Accepts ``"layers"`` as a list of names, a list of ``{"name", "active"}``
    objects, or an object mapping names to booleans or ``{"active": bool}``.
    """
    if not report:
        return []
    layers = report.get("layers")
    names: list[str] = []
    if isinstance(layers, list):
        for item in layers:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, dict) and item.get("active", True) and "name" in item:
                names.append(str(item["name"]))
    elif isinstance(layers, dict):
        for name, value in layers.items():
            active = value.get("active", False) if isinstance(value, dict) else bool(value)
            if active:
                names.append(str(name))
    return names
