"""Call a plugin's function through the launcher: the client library of Aurora.

``call(socket_path, plugin, function, args, timeout)`` connects to the launcher's
API socket (pack04 README, "Plugin API"), sends one request and waits for its one
outcome; ``Client`` keeps the connection for the next calls. Every way a call
can end is an outcome, never an exception, each with its exit code for command
lines (``EXIT_CODES``).
"""

from __future__ import annotations

import select
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


class Client:
    """A connection to the launcher's API socket for several calls, one at a time.

    ``call`` connects on first use and again after the launcher closed the
    connection (between calls: a restart, an idle close); a connection lost during a
    call is that call's outcome, never retried (the function may have run).
    """

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._decoder = p.Decoder()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _connect(self, timeout: float) -> CallOutcome | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            with unix_address(self.socket_path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return CallOutcome(
                "not-running", message=f"the launcher is not running ({self.socket_path})"
            )
        except PermissionError:
            sock.close()
            return CallOutcome(
                "refused", message=f"{self.socket_path}: only the operator may call plugins"
            )
        except OSError:
            sock.close()
            raise
        self._sock, self._decoder = sock, p.Decoder()
        return None

    def call(
        self, plugin: str, function: str, args: Any = None, timeout: float = 30.0
    ) -> CallOutcome:
        """Call ``plugin``'s ``function`` with ``args``; block until its outcome."""
        request = {"plugin": plugin, "function": function, "args": args, "timeout": timeout}
        try:
            frame = p.encode(request)
        except (TypeError, ValueError, RecursionError) as exc:
            return CallOutcome("invalid", message=f"args are not JSON: {type(exc).__name__}")
        deadline = time.monotonic() + timeout + GRACE_S
        try:
            if self._sock is not None and _closed_by_peer(self._sock):
                self.close()  # the launcher ended this connection between calls
            if self._sock is None and (refusal := self._connect(min(5.0, timeout + GRACE_S))):
                return refusal
            assert self._sock is not None
            try:  # noqa: SIM105 - contextlib.suppress costs every call an object
                self._sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                pass  # turned away at once: the reason is read below
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.close()  # its late answer must not be taken for the next call's
                    return CallOutcome(
                        "timeout", message=f"no answer from the launcher in {timeout} s"
                    )
                self._sock.settimeout(left)
                chunk = self._sock.recv(65536)
                if not chunk:
                    self.close()
                    return CallOutcome("not-running", message="the launcher closed the connection")
                for doc in self._decoder.feed(chunk):
                    return _outcome(doc)
        except TimeoutError:
            self.close()
            return CallOutcome("timeout", message=f"no answer from the launcher in {timeout} s")
        except p.FramingError as exc:
            self.close()
            return CallOutcome("plugin-error", message=f"the launcher's answer is malformed: {exc}")
        except OSError as exc:
            self.close()
            return CallOutcome("not-running", message=f"{self.socket_path}: {exc.strerror or exc}")


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when the other end closed (EOF or an error waits): a new connection is needed."""
    if not select.select([sock], [], [], 0)[0]:
        return False  # the usual case, in one system call and no exception
    sock.settimeout(0.0)  # with a timeout set, recv would first wait that long
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def call(
    socket_path: str, plugin: str, function: str, args: Any = None, timeout: float = 30.0
) -> CallOutcome:
    """One call on a connection of its own (``aurora plugin call``); see ``Client``."""
    with Client(socket_path) as client:
        return client.call(plugin, function, args, timeout)


def _outcome(doc: Any) -> CallOutcome:
    if not isinstance(doc, dict) or doc.get("outcome") not in EXIT_CODES:
        return CallOutcome("plugin-error", message="the launcher's answer is malformed")
    if doc["outcome"] == "result":
        return CallOutcome("result", value=doc.get("value"))
    return CallOutcome(doc["outcome"], message=str(doc.get("message", ""))[:2000])
