"""Per-plugin resource limits: the defaults and the operator's settings.

The operator's settings live in ``$AURORA_PACK_DATA/limits.json`` (atomic write
under ``limits.lock``, every change audited, like degraded.json) and apply at the
plugin's next start. CPU, memory and processes go into pack03's policy; disk bytes
and inodes size the plugin's data filesystem image (``launcher/diskimage.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import audit
from launcher.errors import ConfigError, LauncherError
from launcher.fsutil import atomic_write_json, locked
from launcher.sandbox import Limits

SCHEMA = "aurora-launcher-limits-v1"
GIB = 1024**3


@dataclass(frozen=True)
class PluginLimits:
    """Everything bounded per plugin (all its processes together)."""

    disk_bytes: int = GIB  # its data directory's filesystem
    inodes: int = 100_000
    cpu_cores: float = 1.0
    memory_bytes: int = 512 * 1024 * 1024
    processes: int = 64

    def policy_limits(self, base: Limits) -> Limits:
        """pack03's policy limits with these settings in."""
        return dataclasses.replace(
            base,
            cpu_cores=self.cpu_cores,
            memory_bytes=self.memory_bytes,
            processes=self.processes,
        )


#: Setting name (limits.json, ``limits set --<name>``) -> field.
SETTINGS = {
    "disk": "disk_bytes",
    "inodes": "inodes",
    "cpu": "cpu_cores",
    "memory": "memory_bytes",
    "processes": "processes",
}
_MINIMUM: dict[str, float] = {
    "disk_bytes": 16 * 1024 * 1024,  # the smallest ext4 image worth making
    "inodes": 64,
    "cpu_cores": 0.01,
    "memory_bytes": 16 * 1024 * 1024,
    "processes": 1,
}
_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}  # fmt: skip


def parse_size(text: str) -> int:
    """``512MiB``, ``2GiB``, ``1G``, ``4096``: bytes. Raises ConfigError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|)\s*", text.lower())
    unit = m.group(2).rstrip("b") if m else ""
    unit = unit + "b" if unit.endswith("i") else unit
    if m is None or unit not in _UNITS:
        raise ConfigError(f"{text!r}: expected a size such as 512MiB, 2GiB or 1000000")
    return int(float(m.group(1)) * _UNITS[unit])


def _check(field: str, value: object) -> str | None:
    want_float = field == "cpu_cores"
    ok_type = isinstance(value, (int, float)) if want_float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type:
        return f"expected {'a number' if want_float else 'an integer'}, found {value!r}"
    assert isinstance(value, (int, float))
    if not math.isfinite(value) or value < _MINIMUM[field]:
        return f"expected at least {_MINIMUM[field]:g}, found {value!r}"
    return None


def read_settings(path: Path) -> dict[str, dict[str, Any]]:
    """``{plugin id: {field: value}}``: what the operator set (absent file: nothing).

    Raises LauncherError naming the file and every bad value.
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise LauncherError(f"{path}: unreadable limits file ({exc})") from exc
    plugins = doc.get("plugins") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(plugins, dict):
        raise LauncherError(f"{path}: not a {SCHEMA} file")
    problems = []
    for plugin_id, rec in plugins.items():
        if not isinstance(rec, dict):
            problems.append(f"plugins.{plugin_id}: expected an object")
            continue
        for field, value in rec.items():
            if field not in _MINIMUM:
                problems.append(f"plugins.{plugin_id}.{field}: unknown limit")
            elif (why := _check(field, value)) is not None:
                problems.append(f"plugins.{plugin_id}.{field}: {why}")
    if problems:
        raise LauncherError(f"{path}: " + "; ".join(problems))
    return plugins


def for_plugin(settings: dict[str, dict[str, Any]], plugin_id: str) -> PluginLimits:
    """The defaults with the operator's settings for ``plugin_id`` applied."""
    return dataclasses.replace(PluginLimits(), **settings.get(plugin_id, {}))


def set_limits(
    path: Path, lock: Path, audit_log: Path, plugin_id: str, changes: dict[str, Any]
) -> PluginLimits:
    """Record ``changes`` (field -> value) for ``plugin_id``; the limits now in force.

    Raises ConfigError for a bad value (nothing recorded). Audited before it is written.
    """
    problems = [f"{f}: {why}" for f, v in changes.items() if (why := _check(f, v)) is not None]
    if problems:
        raise ConfigError(f"{plugin_id}: " + "; ".join(problems))
    with locked(lock):
        settings = read_settings(path)
        rec = dict(settings.get(plugin_id, {}), **changes)
        audit.append(audit_log, {"action": "set-limits", "plugin": plugin_id, "limits": changes,
                                 "changed": rec != settings.get(plugin_id, {})})  # fmt: skip
        settings[plugin_id] = rec
        atomic_write_json(path, {"schema": SCHEMA, "plugins": settings})
    return for_plugin(settings, plugin_id)
