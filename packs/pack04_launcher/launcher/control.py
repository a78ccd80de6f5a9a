"""Operator requests to the running service: hold a plugin stopped, start it again.

The CLI writes ``$AURORA_PACK_RUN/control.json`` under a lock; the service
re-reads it when it changes. ``held`` plugins are kept stopped (even if enabled
in the registry) until ``start``; each ``start`` bumps a counter that tells the
service to clear a failed plugin's back-off and start it now.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import LauncherError
from launcher.fsutil import atomic_write_json, locked

SCHEMA = "aurora-launcher-control-v1"


@dataclass
class Control:
    held: set[str] = field(default_factory=set)
    starts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"schema": SCHEMA, "held": sorted(self.held), "starts": dict(self.starts)}


def read_control(path: Path) -> Control:
    """The current requests; an absent file means none."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return Control()
    except (OSError, ValueError) as exc:
        raise LauncherError(f"{path}: unreadable control file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LauncherError(f"{path}: not a {SCHEMA} file")
    held = doc.get("held", [])
    starts = doc.get("starts", {})
    return Control(
        held={h for h in held if isinstance(h, str)} if isinstance(held, list) else set(),
        starts=(
            {k: v for k, v in starts.items() if isinstance(v, int)}
            if isinstance(starts, dict)
            else {}
        ),
    )


def request(path: Path, lock: Path, plugin_id: str, *, start: bool) -> Control:
    """Record ``start`` (un-hold, restart now) or stop (hold) for ``plugin_id``."""
    with locked(lock):
        ctl = read_control(path)
        if start:
            ctl.held.discard(plugin_id)
            ctl.starts[plugin_id] = ctl.starts.get(plugin_id, 0) + 1
        else:
            ctl.held.add(plugin_id)
        atomic_write_json(path, ctl.to_json())
        return ctl
