"""Durable append of one JSON-lines record: the whole record or nothing.

A record is one JSON object on one line (``json.dumps`` never writes a newline
inside). ``append_record`` opens the file ``O_APPEND``, writes the line with one
``write`` (retried for the rest on a short write), and fsyncs. When a write fails
or falls short, the file is truncated back to where this record began (only if
nothing was appended after it), so no cut record is glued to the next one; the
error names the file. A file whose last line was cut by a power loss gets a
newline before the next record, so the cut line stays a line of its own, which
``read_records`` reports instead of failing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from aurora_common.bounded import read_bytes
from aurora_common.errors import InputRefused, named_oserror

MAX_RECORD = 1 << 20


def encode_record(record: dict[str, Any]) -> bytes:
    """The record as its line: key-sorted compact JSON plus ``\\n``."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)
    data = (line + "\n").encode("utf-8")
    if len(data) > MAX_RECORD:
        raise InputRefused(f"journal record of {len(data)} bytes exceeds {MAX_RECORD}")
    return data


def _ends_with_newline(fd: int, size: int) -> bool:
    return size == 0 or os.pread(fd, 1, size - 1) == b"\n"


def append_record(path: Path, record: dict[str, Any], mode: int = 0o600) -> None:
    """Append ``record`` to ``path`` durably (created if missing).

    Raises OSError naming ``path`` (errno kept, e.g. ENOSPC) when the record could
    not be written whole; the file then holds what it held before.
    """
    data = encode_record(record)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode
        )
    except OSError as exc:
        raise named_oserror(exc, "open the journal", path) from exc
    try:
        # One appender at a time: the check for a missing final newline and the write
        # must see the same end of file (two processes raced into an empty line).
        fcntl.flock(fd, fcntl.LOCK_EX)
        _append(fd, path, data)
    finally:
        os.close(fd)


def _append(fd: int, path: Path, data: bytes) -> None:
    start = os.fstat(fd).st_size
    if not _ends_with_newline(fd, start):
        data = b"\n" + data
    written = 0
    try:
        while written < len(data):
            n = os.write(fd, data[written:])
            if n <= 0:
                raise OSError(28, "short write")
            written += n
        os.fsync(fd)
    except OSError as exc:
        _undo(fd, start, written)
        raise named_oserror(exc, "append to", path) from exc


def _undo(fd: int, start: int, written: int) -> None:
    """Cut a partial record back off, unless another appender wrote after it."""
    with contextlib.suppress(OSError):
        if written and os.fstat(fd).st_size == start + written:
            os.ftruncate(fd, start)
        os.fsync(fd)


def read_records(path: Path, limit: int = 64 << 20) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a journal and the problems (lines that are not one JSON object).

    A missing file has no records. Raises InputRefused when the file is larger
    than ``limit`` or not a regular file.
    """
    try:
        data = read_bytes(path, limit)
    except FileNotFoundError:
        return [], []
    records: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw:
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{path}: line {number}: not a JSON record ({exc})")
            continue
        if isinstance(value, dict):
            records.append(value)
        else:
            problems.append(f"{path}: line {number}: not a JSON object")
    return records, problems
