"""A plugin's log: the pipe its stdout/stderr write to, drained by the supervisor.

The plugin only ever holds the write end of a pipe; the supervisor reads the other
end without blocking, a bounded amount per pass, and writes ``logs/plugins/<id>.log``
itself. Every plugin line is written as ``| <line>``; the launcher's own lines are
``[launcher <time>] ...``, so a plugin cannot forge one; a log record the plugin sends
over the protocol (``aurora.log``) is ``[<level> <time>] <message> <fields as JSON>``,
its control characters escaped, so it stays on one line. Past ``rate`` bytes per
second the rest is read and dropped, and the count is recorded in the log; past
``rotate_bytes`` the file is renamed to ``<id>.log.1`` (one old file kept). A file
opened in the middle of a plugin line (after a rotation or a write failure) goes on
with ``| `` first, so no plugin byte ever starts a line unprefixed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
from pathlib import Path
from typing import Any

#: A plugin line in the log file starts with this; a launcher line never does.
PLUGIN_PREFIX = b"| "
#: Largest read from one plugin's pipe in one pass of the loop.
CHUNK = 64 * 1024
#: Bytes per second written to the log before the rest is dropped.
RATE = 1024 * 1024
#: The log is rotated to ``.1`` past this size (at most two files of it per plugin).
ROTATE_BYTES = 5 * 1024 * 1024
#: Bigger pipe buffer than the default 64 KiB, so a burst waits for the next pass.
_PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = 1031


def launcher_line(text: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"[launcher {stamp}] {text}\n".encode()


def one_line(text: str, limit: int = 1000) -> str:
    """A plugin's text made safe for one line of a log, a status field or a terminal:
    every character that is not printable (newline, ESC, U+2028, bidi overrides...)
    escaped as ``\\xNN``/``\\uNNNN``, at most ``limit`` characters of it."""
    return "".join(c if c.isprintable() else _escape(c) for c in str(text)[:limit])


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


#: Bytes of plugin output written escaped to its log: C0 controls but tab and newline,
#: and DEL (a carriage return or ESC in the file would let `cat` show a forged line).
_RAW_CONTROLS = re.compile(b"[\x00-\x08\x0b-\x1f\x7f]")


def record_line(level: str, text: str, fields: dict[str, Any]) -> bytes:
    """One protocol log record as a line: level kept, nothing of it can break the line."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    extra = ""
    if fields:
        extra = " " + json.dumps(fields, ensure_ascii=True, sort_keys=True, default=str)
    return f"[{level} {stamp}] {one_line(text, len(text))}{extra}\n".encode(errors="replace")


def _escape_bytes(data: bytes) -> bytes:
    return _RAW_CONTROLS.sub(lambda m: b"\\x%02x" % m.group()[0], data)


class PluginLog:
    """The read end of one run's output pipe and the log file it is copied to."""

    def __init__(self, path: Path, rate: int = RATE, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.path = path
        self.rate = rate
        self.rotate_bytes = rotate_bytes
        self.fd = -1  # read end; -1 once closed
        self.error: str | None = None  # the last write failure (ENOSPC, EFBIG, EIO...)
        self._file = -1
        self._at_line_start = True
        self._window = 0.0  # start (monotonic) of the current one-second window
        self._window_bytes = 0
        self._dropped = 0  # bytes dropped since the last "dropped" note

    # --- setup ----------------------------------------------------------------

    def open_pipe(self) -> int:
        """Create the pipe; return its write end (the caller hands it on, then closes it)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(r, False)
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, _F_SETPIPE_SZ, _PIPE_SIZE)
        try:
            self._open_file()
        except OSError:
            os.close(r)
            os.close(w)
            raise
        self.fd = r
        return w

    def _open_file(self) -> None:
        """Open (append) the log, rotating it first when it is over the bound."""
        try:
            if self.path.stat().st_size > self.rotate_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, 0o600)
        try:
            self._resume_line(fd)
        except OSError:
            os.close(fd)
            raise
        self._file = fd

    def _resume_line(self, fd: int) -> None:
        """Opened in the middle of a plugin line: start it again as a framed line.

        A fresh file (after a rotation, or reopened after a write failure) must never
        begin with raw plugin bytes: the rest of the line goes on as ``| ...``, on a line
        of its own when the file has text already.
        """
        if self._at_line_start:
            return
        head = (b"\n" if os.fstat(fd).st_size else b"") + PLUGIN_PREFIX
        view = memoryview(head)
        while view:
            view = view[os.write(fd, view) :]

    # --- writing --------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        """Write to the file; a failure is kept in ``error`` (the caller goes on)."""
        try:
            if self._file < 0:
                self._open_file()
            view = memoryview(data)
            while view:
                view = view[os.write(self._file, view) :]
            return True
        except OSError as exc:
            self.error = f"{self.path}: {exc.strerror or exc}"
            # Where the file's text stopped is unknown now: reopen (and re-frame) next time.
            if self._file >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._file)
                self._file = -1
            return False

    def mark(self, text: str) -> None:
        """A launcher line, on a line of its own (plugin text in it cannot break it)."""
        self._note_dropped()
        head = b"" if self._at_line_start else b"\n"
        if self._write(head + launcher_line(one_line(text, 4000))):
            self._at_line_start = True

    def record(self, level: str, text: str, fields: dict[str, Any]) -> None:
        """A log record from the protocol, on a line of its own, within the byte rate."""
        line = record_line(level, text, fields)
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._window_bytes = now, 0
            self._note_dropped()
        if self._window_bytes + len(line) > self.rate:
            self._dropped += len(line)
            return
        self._window_bytes += len(line)
        head = b"" if self._at_line_start else b"\n"
        if self._write(head + line):
            self._at_line_start = True

    def _note_dropped(self) -> None:
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            head = b"" if self._at_line_start else b"\n"
            note = f"{dropped} bytes dropped (output above {self.rate} bytes/s)"
            if self._write(head + launcher_line(note)):
                self._at_line_start = True

    def _frame(self, data: bytes) -> bytes:
        """Prefix every plugin line (also a continued partial one) with PLUGIN_PREFIX."""
        out = bytearray()
        parts = data.split(b"\n")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last and not part:
                break
            if self._at_line_start:
                out += PLUGIN_PREFIX
            out += _escape_bytes(part)
            if last:
                self._at_line_start = False
            else:
                out += b"\n"
                self._at_line_start = True
        return bytes(out)

    # --- reading --------------------------------------------------------------

    def over_rate(self, now: float | None = None) -> bool:
        """True while this second's budget is spent (its fd is not waited on then)."""
        now = time.monotonic() if now is None else now
        return now - self._window < 1.0 and self._window_bytes >= self.rate

    def drain(self, limit: int = CHUNK) -> int:
        """Read what the pipe has, at most ``limit`` bytes; return the bytes read.

        Within the rate the bytes go to the file; beyond it they are dropped and
        counted. Never blocks.
        """
        total = 0
        while self.fd >= 0 and total < limit:
            try:
                data = os.read(self.fd, min(CHUNK, limit - total))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                break
            if not data:
                break
            total += len(data)
            self._take(data)
        self._rotate_if_big()
        return total

    def _take(self, data: bytes) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self._window, self._window_bytes = now, 0
            self._note_dropped()
        room = max(0, self.rate - self._window_bytes)
        kept, lost = data[:room], data[room:]
        self._window_bytes += len(kept)
        if kept and not self._write(self._frame(kept)):
            self._dropped += len(kept)
        self._dropped += len(lost)

    def _rotate_if_big(self) -> None:
        if self._file < 0:
            return
        try:
            if os.fstat(self._file).st_size <= self.rotate_bytes:
                return
            os.close(self._file)
            self._file = -1
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._open_file()
        except OSError as exc:
            self.error = f"{self.path}: cannot rotate: {exc.strerror or exc}"

    def close(self, last_mark: str | None = None, final_drain: int = 4 * CHUNK) -> None:
        """Drain what is left (bounded), note drops and ``last_mark``, close everything."""
        if self.fd >= 0:
            self.drain(final_drain)
            os.close(self.fd)
            self.fd = -1
        self._note_dropped()
        if last_mark is not None:
            self.mark(last_mark)
        if self._file >= 0:
            with contextlib.suppress(OSError):
                os.close(self._file)
            self._file = -1


def plugin_text(line: str) -> str | None:
    """The plugin's own text of a log line, or None for a launcher line."""
    prefix = PLUGIN_PREFIX.decode()
    return line[len(prefix) :] if line.startswith(prefix) else None
