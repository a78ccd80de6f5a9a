"""The operator audit log: one JSON line per decision the launcher acts on."""

from __future__ import annotations

import json
import os
import pwd
import time
from pathlib import Path


def who() -> str:
    """The user making the change, as ``name (uid N)``."""
    uid = os.getuid()
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def append(path: Path, record: dict[str, object]) -> None:
    """Append ``record`` (with ``at`` and ``by`` added) and fsync it, mode 0600."""
    line = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "by": who(), **record}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
