"""acme.portwatch: is each local TCP port listed by the operator accepting connections?

Reads ``ports.json`` from its data directory at every round (so an edit takes
effect without a restart): ``{"ports": [8080, 5432], "interval": 5}``. No file
means no port to check: it idles and says so. Between rounds it looks at the
file's (inode, mtime, size) every 0.2 s and starts the next round at once when
that changes, so an edit is seen within a fraction of a second, not only after
``interval``. Each round it tries a TCP connect
to ``127.0.0.1:<port>`` and replaces ``status.json`` in its data directory;
a change of a port's state is also printed to its log. It needs the ``network``
capability: without it the sandbox denies sockets and every port is reported
unreachable with the reason. SIGTERM ends it cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
DEFAULT_INTERVAL = 5.0
MIN_INTERVAL = 0.2
CONNECT_TIMEOUT = 1.0
WATCH_EVERY = 0.2  # how often ports.json is looked at between rounds, s


def data_dir() -> Path:
    """The launcher passes it in AURORA_PLUGIN_DATA and starts us there."""
    return Path(os.environ.get("AURORA_PLUGIN_DATA") or os.getcwd())


def read_config(path: Path) -> tuple[list[int], float, str | None]:
    """(ports, interval, problem); a missing file is no port, not a problem."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return [], DEFAULT_INTERVAL, None
    except (OSError, ValueError) as exc:
        return [], DEFAULT_INTERVAL, f"{path}: unreadable ({exc})"
    problems: list[str] = []
    ports = doc.get("ports", []) if isinstance(doc, dict) else None
    if not isinstance(ports, list):
        problems.append(f"ports: expected a list of port numbers, found {ports!r}")
        ports = []
    good = []
    for i, port in enumerate(ports):
        if isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535:
            good.append(port)
        else:
            problems.append(f"ports[{i}]: expected a port number 1-65535, found {port!r}")
    interval = doc.get("interval", DEFAULT_INTERVAL) if isinstance(doc, dict) else None
    if not isinstance(interval, (int, float)) or isinstance(interval, bool):
        problems.append(f"interval: expected seconds, found {interval!r}")
        interval = DEFAULT_INTERVAL
    interval = max(float(interval), MIN_INTERVAL)
    return good, interval, (f"{path}: " + "; ".join(problems)) if problems else None


def config_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells an edited ports.json apart: (inode, mtime, size); None when absent.

    The inode catches an atomic replace even within one mtime tick."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def check(port: int) -> dict[str, Any]:
    """One TCP connect to HOST:port: reachable, or why not."""
    started = time.monotonic()
    try:
        with socket.create_connection((HOST, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        # Refused: nothing listens. EPERM/EACCES/ENETUNREACH: the sandbox denies the network.
        reason = f"{type(exc).__name__}: {exc.strerror or exc}"
        return {"port": port, "reachable": False, "error": reason, "ms": None}
    ms = round((time.monotonic() - started) * 1000, 2)
    return {"port": port, "reachable": True, "error": None, "ms": ms}


def write_status(path: Path, doc: dict[str, Any]) -> None:
    """Replace status.json atomically: a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
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
    here = data_dir()
    config, status = here / "ports.json", here / "status.json"
    print(f"acme.portwatch: started, pid {os.getpid()}, ports from {config}", flush=True)
    last: dict[int, bool] = {}
    last_problem: str | None = None
    rounds = 0
    while not stop:
        rounds += 1
        # Stamped before reading: an edit made while this round runs starts another.
        seen = config_stamp(config)
        ports, interval, problem = read_config(config)
        if problem != last_problem and problem is not None:
            print(f"acme.portwatch: {problem}", flush=True)
        last_problem = problem
        results = [check(p) for p in ports]
        for r in results:
            if last.get(r["port"]) != r["reachable"]:
                state = "reachable" if r["reachable"] else f"unreachable ({r['error']})"
                print(f"acme.portwatch: {HOST}:{r['port']} {state}", flush=True)
        last = {r["port"]: r["reachable"] for r in results}
        write_status(
            status,
            {
                "plugin": "acme.portwatch",
                "pid": os.getpid(),
                "at": time.time(),
                "rounds": rounds,
                "config": str(config),
                "config_error": problem,
                "host": HOST,
                "ports": results,
                "note": None if ports else f"no port configured: list them in {config}",
            },
        )
        deadline = time.monotonic() + interval
        while not stop and time.monotonic() < deadline:
            time.sleep(min(WATCH_EVERY, max(0.0, deadline - time.monotonic())))
            if config_stamp(config) != seen:
                break  # ports.json changed: check again now
    print(f"acme.portwatch: stopping after {rounds} round(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
