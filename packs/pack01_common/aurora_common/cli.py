"""Command-line conventions shared by every Aurora command line (aurora, installer, packs).

One exit-code table, one JSON envelope, one error line, ``--json`` anywhere, a closed
stdout handled quietly, progress only on a terminal, and help epilogs with examples.
Standard library only: every pack's CLI imports it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from enum import IntEnum
from typing import Any, TextIO

__all__ = [
    "EXIT_MEANINGS",
    "Exit",
    "Progress",
    "damage_is_one_line",
    "emit",
    "emit_json",
    "envelope",
    "epilog",
    "error_line",
    "error_object",
    "exit_table",
    "internal_error",
    "pop_flag",
    "prog_name",
    "run_main",
]


class Exit(IntEnum):
    """What an exit status means, in every Aurora command line."""

    OK = 0
    FAILED = 1  # the operation ran and failed (a script, a check, a plugin, an I/O error)
    USAGE = 2  # bad arguments or invalid input (manifest, package, capability name)
    NOT_FOUND = 3  # unknown pack, plugin, version or path; a pack not installed in the home
    REFUSED = 4  # refused by state or policy (dependencies, grants, hashes, running)
    BUSY = 5  # someone else holds it: the installer lock, a plugin the service runs
    APPROVAL = 6  # operator approval required (no terminal, no --approve) or denied
    NOT_RUNNING = 7  # the service the command talks to is not running
    TIMEOUT = 124  # a deadline given on the command line passed (as timeout(1))
    INTERRUPTED = 130  # Ctrl-C (SIGINT), as shells report it


EXIT_MEANINGS: dict[Exit, str] = {
    Exit.OK: "done",
    Exit.FAILED: "the operation ran and failed",
    Exit.USAGE: "bad arguments or invalid input",
    Exit.NOT_FOUND: "not found (pack, plugin, version, path; pack not installed)",
    Exit.REFUSED: "refused by state or policy",
    Exit.BUSY: "busy: a lock or the plugin is held by someone else",
    Exit.APPROVAL: "operator approval required or denied",
    Exit.NOT_RUNNING: "the service is not running",
    Exit.TIMEOUT: "a --timeout passed",
    Exit.INTERRUPTED: "interrupted (Ctrl-C)",
}


def exit_table() -> str:
    """The table on one line, for --help: ``exit codes: 0 ok, 1 failed, ...``
    (README.md "Exit codes" says what each means)."""
    return "exit codes: " + ", ".join(f"{int(c)} {c.name.lower().replace('_', ' ')}" for c in Exit)


def epilog(examples: Sequence[str], *, codes: bool = True) -> str:
    """A help epilog: one example command a line, then (optionally) the exit-code table."""
    lines = ["example:" if len(examples) == 1 else "examples:"]
    lines += [f"  {e}" for e in examples]
    if codes:
        lines += ["", exit_table()]
    return "\n".join(lines)


def prog_name(default: str) -> str:
    """The name a CLI reports itself by: ``$AURORA_PROG`` when ``aurora`` runs it."""
    return os.environ.get("AURORA_PROG") or default


# -- arguments ---------------------------------------------------------------------------


def pop_flag(argv: Sequence[str], flag: str) -> tuple[bool, list[str]]:
    """Remove every ``flag`` before a ``--`` from ``argv``: a global flag may stand
    before or after the verb (``--json list`` and ``list --json`` are the same)."""
    out: list[str] = []
    found = False
    for i, arg in enumerate(argv):
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg == flag:
            found = True
        else:
            out.append(arg)
    return found, out


# -- output ------------------------------------------------------------------------------


def _silence(stream: TextIO) -> None:
    """The reader went away: later writes to this stream go to /dev/null."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def emit(
    text: str, stream: TextIO | None = None, end: str = "\n", *, warn: bool = True
) -> OSError | None:
    """Write one message and flush it; a stream that cannot take it stops nothing.

    A closed reader (``| head -1``) ends quietly; any other failure (a full disk
    behind stdout, a closed stream) is returned, and said once on stderr when
    ``warn``: the work is done or failed already and the exit status says which.
    Later writes to that stream go to /dev/null (never Python's status 120)."""
    target = sys.stdout if stream is None else stream
    try:
        target.write(text + end)
        target.flush()
    except BrokenPipeError:
        _silence(target)
    except (OSError, ValueError) as exc:
        _silence(target)
        error = exc if isinstance(exc, OSError) else OSError(errno.EBADF, str(exc))
        if warn and target is sys.stdout:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(
                    f"{prog_name(os.path.basename(sys.argv[0]) or 'aurora')}: warning: "
                    f"cannot write to stdout ({exc}); "
                    "the exit status says how the command ended\n"
                )
        return error
    return None


def error_object(
    message: str,
    *,
    kind: str | None = None,
    place: str | None = None,
    problems: Sequence[str] = (),
    **details: Any,
) -> dict[str, Any]:
    """The envelope's ``error``: ``message`` always; ``kind`` (the error's class),
    ``place`` (file, option or record it is about) and ``problems`` (every issue,
    each with its place) when known; tool-specific details beside them."""
    error: dict[str, Any] = {"message": message, "kind": kind, "place": place}
    error["problems"] = list(problems)
    error.update(details)
    return error


def envelope(
    command: str | None,
    code: int,
    result: Any = None,
    error: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The one JSON document a ``--json`` command prints, success or failure:
    ``{"ok", "exit", "command", "result", "error"}`` (+ a tool's own extra keys)."""
    doc: dict[str, Any] = {
        "ok": code == Exit.OK,
        "exit": int(code),
        "command": command,
        "result": result,
        "error": error,
    }
    doc.update(extra)
    return doc


def emit_json(doc: dict[str, Any]) -> None:
    """Print the envelope on stdout (and nothing else goes there with --json)."""
    emit(json.dumps(doc, indent=2, sort_keys=True))


def error_line(prog: str, message: str, place: str | None = None) -> str:
    """``<prog>: error: <what>`` (``: <where>`` appended when not named already)."""
    line = f"{prog}: error: {message}"
    if place and place not in message:
        line += f": {place}"
    return line


class Progress:
    """Progress for a long operation, on stderr, only when stderr is a terminal and
    the output is not JSON. A line is rewritten in place, at most every ``interval``
    seconds; ``done`` ends it."""

    def __init__(
        self, *, as_json: bool, stream: TextIO | None = None, interval: float = 0.1
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        try:
            tty = self._stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = tty and not as_json
        self._shown = False
        self._interval = interval
        self._last = -interval

    def update(self, text: str) -> None:
        now = time.monotonic()
        if self.enabled and now - self._last >= self._interval:
            emit(f"\r\x1b[K{text}", self._stream, end="")
            self._shown = True
            self._last = now

    def done(self) -> None:
        if self.enabled and self._shown:
            emit("\r\x1b[K", self._stream, end="")
            self._shown = False


#: Set to any value to see the traceback of an internal error.
DEBUG_ENV = "AURORA_DEBUG"


def internal_error(exc: BaseException) -> None:
    """Say on stderr, in one error line, that ``exc`` escaped: where, and how to see more."""
    if os.environ.get(DEBUG_ENV):
        import traceback

        traceback.print_exception(exc)
    where = exc.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    place = f" at {where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
    message = (
        f"internal error: {type(exc).__name__}: {exc}{place} (a bug, or a damaged "
        f"installation: `aurora pack verify`; {DEBUG_ENV}=1 shows the traceback)"
    )
    emit(error_line(prog_name(sys.argv[0].rsplit("/", 1)[-1]), message), sys.stderr)


@contextlib.contextmanager
def damage_is_one_line(module: str) -> Iterator[None]:
    """Around a program's imports: an installed copy that fails to import (a damaged or
    edited file) ends the program with ``internal_error``'s one line, exit 1. Imported as
    a module (tests, other code) the exception propagates unchanged."""
    try:
        yield
    except Exception as exc:
        if module != "__main__":
            raise
        internal_error(exc)
        raise SystemExit(Exit.FAILED) from None


def run_main(main: Callable[[], int]) -> int:
    """Run a CLI's ``main`` as a program: a reader that closed stdout ends it quietly
    (no traceback, no "Broken pipe" error), with the command's own status where it got
    one; Ctrl-C outside a handler is exit 130 without a traceback."""
    try:
        code = main()
    except BrokenPipeError:
        _silence(sys.stdout)
        return Exit.FAILED
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except Exception as exc:  # a bug, or a damaged installed copy: one line, not a traceback
        internal_error(exc)
        return Exit.FAILED
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence(sys.stdout)
    return code
