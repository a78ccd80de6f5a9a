"""The run report: one JSON document, replaced atomically (temp file, rename)."""

from __future__ import annotations

import contextlib
import json
import os

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block anyway
if TYPE_CHECKING:
    from typing import Any


def write_report(path: str, document: dict[str, Any]) -> None:
    """Replace `path` with `document`; a reader sees the old or the new file, never half.

    No fsync, on purpose: a report describes processes and cgroups of this boot
    only (like a file under /run), and a power loss that could lose it ends them
    too. Its readers need atomicity, not durability, and the report is written
    on the fork server's hot path, before the plugin's start is acknowledged.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
