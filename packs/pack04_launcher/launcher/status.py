"""The service's status file: heartbeat, and one record per supervised plugin.

Written atomically by the service (``$AURORA_PACK_RUN/status.json``) and read
by the CLI and the health check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError

SCHEMA = "aurora-launcher-status-v1"

#: Plugin states, as written in the status file.
RUNNING = "running"
BACKOFF = "backoff"  # crashed, waiting to be restarted
FAILED = "failed"  # crashed more than the restart limit allows
REFUSED = "refused"  # the sandbox refused to start it (exit 125)
EXITED = "exited"  # exited with status 0: not restarted
HELD = "held"  # stopped by the operator (`stop <id>`)
BLOCKED = "blocked"  # cannot run: no sandbox, invalid registry entry
STOPPED = "stopped"  # just stopped by the launcher
DISABLED = "disabled"  # in the registry, not enabled
IDLE = "idle"  # an on-call plugin not running now: started at its next call
STOPPING = "stopping"  # TERM sent; KILL at the end of the grace period
STATES = (
    RUNNING, BACKOFF, FAILED, REFUSED, EXITED, HELD, BLOCKED, STOPPED, DISABLED, IDLE, STOPPING
)  # fmt: skip


def read_status(path: Path) -> dict[str, Any] | None:
    """The last status the service wrote, or None if there is none."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LauncherError(f"{path}: unreadable status file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise LauncherError(f"{path}: not a {SCHEMA} file")
    return doc
