"""Call a plugin's function through the launcher: the client library of Aurora.

``call(socket_path, plugin, function, args, timeout)`` connects to the launcher's
API socket (pack04 README, "Calls"), sends one request and waits for its one
outcome. Every way a call can end is an outcome, never an exception, each with
its exit code for command lines (``EXIT_CODES``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Any

from aurora_common import protocol as p
from aurora_common.unixaddr import unix_address

#: Outcome kind -> exit status of ``aurora plugin call`` (the shared exit-code table).
EXIT_CODES = {
    "result": 0,
    "plugin-error": 1,
    "invalid": 2,
    "refused": 4,
    "not-running": 7,
    "timeout": 124,
}
#: Time the launcher gets beyond the call's own timeout to send the outcome.
GRACE_S = 2.0


@dataclass(frozen=True)
class CallOutcome:
    kind: str  # a key of EXIT_CODES
    value: Any = None
    message: str = ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.kind, 1)

    def to_json(self) -> dict[str, Any]:
        if self.kind == "result":
            return {"outcome": "result", "value": self.value}
        return {"outcome": self.kind, "message": self.message}


def call(
    socket_path: str, plugin: str, function: str, args: Any = None, timeout: float = 30.0
) -> CallOutcome:
    """Call ``plugin``'s ``function`` with ``args``; block until its outcome."""
    deadline = time.monotonic() + timeout + GRACE_S
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(min(5.0, timeout + GRACE_S))
        try:
            with unix_address(socket_path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            return CallOutcome(
                "not-running", message=f"the launcher is not running ({socket_path})"
            )
        except PermissionError:
            return CallOutcome(
                "refused", message=f"{socket_path}: only the operator may call plugins"
            )
        request = {"plugin": plugin, "function": function, "args": args, "timeout": timeout}
        try:
            frame = p.encode(request)
        except (TypeError, ValueError) as exc:
            return CallOutcome("invalid", message=f"args are not JSON: {exc}")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(frame)  # turned away at once: its reason waits to be read below
        decoder = p.Decoder()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return CallOutcome("timeout", message=f"no answer from the launcher in {timeout} s")
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                return CallOutcome("not-running", message="the launcher closed the connection")
            for doc in decoder.feed(chunk):
                return _outcome(doc)
    except TimeoutError:
        return CallOutcome("timeout", message=f"no answer from the launcher in {timeout} s")
    except p.FramingError as exc:
        return CallOutcome("plugin-error", message=f"the launcher's answer is malformed: {exc}")
    except OSError as exc:
        return CallOutcome("not-running", message=f"{socket_path}: {exc.strerror or exc}")
    finally:
        sock.close()


def _outcome(doc: Any) -> CallOutcome:
    if not isinstance(doc, dict) or doc.get("outcome") not in EXIT_CODES:
        return CallOutcome("plugin-error", message="the launcher's answer is malformed")
    if doc["outcome"] == "result":
        return CallOutcome("result", value=doc.get("value"))
    return CallOutcome(doc["outcome"], message=str(doc.get("message", ""))[:2000])
