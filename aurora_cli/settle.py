"""After `aurora plugin disable` or `remove`: wait until the launcher has stopped the plugin.

pack05 changes the registry; pack04's launcher acts on it at its next poll and stops the
plugin's processes within its grace period. The front door waits for that, so that a
plugin the command reports disabled (or removed) no longer runs when it returns. Without
a running launcher there is nothing to wait for.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from aurora_common import cli as conventions

from aurora_cli.delegate import capture_child, pack_cli_env
from aurora_cli.home import installed

#: Verbs after which the plugin must not run, and where its id is in their arguments.
STOPPING_VERBS = ("disable", "remove")
#: Launcher states in which a plugin's processes may still run (launcher/status.py).
ACTIVE = ("running", "stopping", "backoff")
#: The launcher's registry poll (1 s) plus its stop grace (5 s, then KILL), with room.
WAIT_SECONDS = 15.0


def plugin_of(args: list[str]) -> str | None:
    """The plugin id of `disable ID` / `remove ID`, else None."""
    words = [a for a in args if not a.startswith("-")]
    return words[1] if len(words) >= 2 and words[0] in STOPPING_VERBS else None


def wait_until_stopped(home: Path, plugin_id: str, timeout: float = WAIT_SECONDS) -> None:
    launcher = installed(home, "pack04_launcher")
    if launcher is None:
        return
    argv = [sys.executable, str(launcher.root / "launcher_cli.py"), "list", "--json"]
    env = pack_cli_env(launcher, "aurora launcher")
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        code, out, _ = capture_child(argv, env)
        if code != 0:
            return  # the service is not running (7): nothing runs the plugin
        try:
            state = (json.loads(out)["result"]["plugins"].get(plugin_id) or {}).get("state")
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if state not in ACTIVE:
            return
        time.sleep(0.2)
    line = f"warning: the launcher still shows {plugin_id} {state} after {timeout:g} s"
    conventions.emit(f"aurora plugin: {line}", sys.stderr)
