"""The errors of the primitives: refused input versus failed I/O.

``InputRefused`` means the input itself is unacceptable (too large, not a regular
file, malformed, over a limit): a caller reports it as bad input. Failed I/O
(ENOSPC, EACCES, ...) stays an ``OSError`` whose ``filename`` names the file, so a
caller can still tell ENOSPC from EACCES by ``errno``.
"""

from __future__ import annotations

import os


class InputRefused(ValueError):
    """The input is refused; the message names the file (or place) and the reason.

    ``problems`` lists the details (e.g. ``line 3, column 7: ...``) without the place.
    """

    def __init__(self, message: str, where: str = "", problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.where = where
        self.problems = list(problems or [])


def named_oserror(exc: OSError, action: str, path: str | os.PathLike[str]) -> OSError:
    """A copy of ``exc`` (same errno, same subclass) whose message names ``path``.

    ``str()`` of the result reads ``[Errno 28] cannot write: No space left on
    device: '/home/x/state.json'``.
    """
    reason = exc.strerror or str(exc)
    if exc.errno is None:
        return OSError(f"cannot {action} {os.fspath(path)}: {reason}")
    return OSError(exc.errno, f"cannot {action}: {reason}", os.fspath(path))
