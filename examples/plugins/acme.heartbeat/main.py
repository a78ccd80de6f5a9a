"""acme.heartbeat: prove a plugin is alive, from inside the sandbox.

Every INTERVAL seconds it replaces ``status.json`` in its data directory (the
only place it may write without ``fs-write``) and prints one line to stdout,
which the launcher keeps in the plugin's log. SIGTERM ends it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

INTERVAL = 5.0


def data_dir() -> Path:
    """The launcher passes it in AURORA_PLUGIN_DATA and starts us there."""
    return Path(os.environ.get("AURORA_PLUGIN_DATA") or os.getcwd())


def write_status(path: Path, beats: int) -> None:
    """Replace status.json atomically: a reader never sees half a line."""
    doc = {"plugin": "acme.heartbeat", "pid": os.getpid(), "beats": beats, "at": time.time()}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def main() -> int:
    stop = False

    def _on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_term)
    status = data_dir() / "status.json"
    print(f"acme.heartbeat: started, pid {os.getpid()}, writing {status}", flush=True)
    beats = 0
    while not stop:
        beats += 1
        write_status(status, beats)
        print(f"acme.heartbeat: beat {beats}", flush=True)
        deadline = time.monotonic() + INTERVAL
        while not stop and time.monotonic() < deadline:
            time.sleep(0.2)
    print(f"acme.heartbeat: stopping after {beats} beat(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
