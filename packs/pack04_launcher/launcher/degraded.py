"""The operator's per-plugin permission to run degraded (denials the host cannot enforce).

pack03 refuses to start a plugin when a capability it was not granted cannot be
denied by any active layer, unless the policy says ``allow_degraded``. pack05's
registry has no field for that decision, so it lives here:
``$AURORA_PACK_DATA/degraded.json`` (written atomically under
``degraded.lock``), every change appended to ``$AURORA_PACK_DATA/audit.log``.
Absent means nobody is allowed: degraded mode is never implied.
"""

from __future__ import annotations

import json
from pathlib import Path

from launcher import audit as audit_log
from launcher.errors import LauncherError
from launcher.fsutil import atomic_write_json, locked

SCHEMA = "aurora-launcher-degraded-v1"


def read_allowed(path: Path) -> set[str]:
    """Plugin ids the operator allowed to run degraded; an absent file means none.

    Raises LauncherError naming the file when it exists but cannot be used.
    """
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise LauncherError(f"{path}: unreadable degraded-mode file ({exc})") from exc
    allowed = doc.get("allowed") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LauncherError(f"{path}: not a {SCHEMA} file")
    if not isinstance(allowed, list) or not all(isinstance(a, str) for a in allowed):
        raise LauncherError(f"{path}: allowed: expected a list of plugin ids, found {allowed!r}")
    return set(allowed)


def set_allowed(path: Path, lock: Path, audit: Path, plugin_id: str, allow: bool) -> bool:
    """Allow (or deny again) degraded mode for ``plugin_id``; True when it changed.

    The audit line is written first: a change is never in force unrecorded.
    """
    with locked(lock):
        allowed = read_allowed(path)
        changed = (plugin_id in allowed) != allow
        audit_log.append(
            audit,
            {
                "action": "allow-degraded" if allow else "deny-degraded",
                "plugin": plugin_id,
                "changed": changed,
            },
        )
        if changed:
            allowed = allowed | {plugin_id} if allow else allowed - {plugin_id}
            atomic_write_json(path, {"schema": SCHEMA, "allowed": sorted(allowed)})
        return changed
