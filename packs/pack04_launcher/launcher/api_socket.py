"""The operator's door into plugin calls: a Unix socket the supervisor serves.

``aurora plugin call`` and Aurora's client library (``aurora_common.calls``)
connect, send a framed request ``{"plugin", "function", "args", "timeout"}``
and get one framed answer ``{"outcome", "value" | "message"}``; a connection may
go on with the next request after each answer (one at a time, in order). Only peers whose
uid the operator allows (root by default) are served: the kernel's
``SO_PEERCRED`` says who connected. The socket is mode 0600 in a directory only
root can enter. Non-blocking and bounded like the plugin channels.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aurora_common import protocol as p
from aurora_common.unixaddr import unix_address

from launcher.channel import Outcome
from launcher.protocol_host import OPERATOR, ProtocolHost

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = p.DEFAULT_MAX_MESSAGE_BYTES
MAX_CLIENTS = 64
#: Of them, at most this many per uid other than root: an allowed caller cannot take
#: every slot and lock the operator out.
MAX_CLIENTS_PER_UID = 16
#: Answers a client has not read yet, at most (bytes); and how long they may wait.
MAX_UNSENT_BYTES = 4 * 1024 * 1024
UNREAD_DEADLINE_S = 5.0
REQUEST_DEADLINE_S = 5.0  # a client must have sent its first request by then
IDLE_DEADLINE_S = 60.0  # and each next one within this after an answer
MAX_QUEUED = 16  # requests a client sent ahead of their answers
MAX_TIMEOUT_S = 300.0
_NOSIGNAL = int(socket.MSG_NOSIGNAL)


@dataclass
class _Client:
    sock: socket.socket
    uid: int
    opened: float
    decoder: p.Decoder = field(default_factory=lambda: p.Decoder(MAX_REQUEST_BYTES))
    unsent: bytearray = field(default_factory=bytearray)
    asked: bool = False  # a request of it is being answered
    done: bool = False  # closed, or closing once its answer is sent
    answered: int = 0
    queued: list[Any] = field(default_factory=list)  # requests read ahead of their turn
    unsent_since: float = 0.0  # monotonic: since when an answer waits to be read


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


_REQUEST_KEYS = frozenset(("plugin", "function", "args", "timeout"))


def parse_request(obj: Any) -> tuple[str, str, Any, float] | str:
    """``(plugin, function, args, timeout)`` or the problem with the request."""
    if not isinstance(obj, dict):
        return "a request is a JSON object"
    if not obj.keys() <= _REQUEST_KEYS:
        return f"unknown key {sorted(set(obj) - _REQUEST_KEYS)[0]!r}"
    plugin, function, timeout = obj.get("plugin"), obj.get("function"), obj.get("timeout", 30)
    if not isinstance(plugin, str) or not 0 < len(plugin) <= 128:
        return "plugin: expected a plugin id"
    if not isinstance(function, str) or not 0 < len(function) <= 64:
        return "function: expected a function name"
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):
        return f"timeout: expected seconds in (0, {MAX_TIMEOUT_S:g}]"
    return plugin, function, obj.get("args"), float(timeout)


class ApiServer:
    """Accepts callers, passes each request to the ProtocolHost, writes the outcome back."""

    def __init__(self, path: Path, host: ProtocolHost, allowed_uids: Iterable[int] = (0,)) -> None:
        self.path = path
        self.host = host
        self.allowed_uids = frozenset(allowed_uids)
        self._listener: socket.socket | None = None
        self._clients: dict[int, _Client] = {}
        self.refused = 0  # peers turned away (not an allowed uid, too many clients)

    def open(self, mode: int = 0o600) -> None:
        """Bind under a temporary name, set its mode, then rename into place (no moment
        with a wider mode). 0666 only when uids besides root are allowed: SO_PEERCRED
        still turns away every other caller."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        try:
            with unix_address(tmp) as address:
                listener.bind(address)
            os.chmod(tmp, mode)
            listener.listen(16)
            os.replace(tmp, self.path)
        except OSError:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        listener.setblocking(False)
        self._listener = listener

    def close(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    # -- the loop ----------------------------------------------------------------

    def read_fds(self) -> list[int]:
        # A client is read only with nothing of its own left to send it: one that does
        # not read its answers sends no more requests (its answers cannot pile up).
        fds = [c.sock.fileno() for c in self._clients.values() if not c.asked and not c.unsent]
        return fds + ([self._listener.fileno()] if self._listener is not None else [])

    def write_fds(self) -> list[int]:
        return [c.sock.fileno() for c in self._clients.values() if c.unsent]

    def on_ready(self, fd: int, readable: bool, writable: bool, now: float) -> None:
        if self._listener is not None and fd == self._listener.fileno():
            self._accept(now)
            return
        client = self._clients.get(fd)
        if client is None:
            return
        if readable and not client.asked:
            self._read(client, now)
        if writable and client.unsent:
            self._flush(client)

    def tick(self, now: float) -> None:
        for client in list(self._clients.values()):
            limit = IDLE_DEADLINE_S if client.answered else REQUEST_DEADLINE_S
            if client.unsent and now - client.unsent_since > UNREAD_DEADLINE_S:
                log.warning("api socket: dropped a caller (uid %d) that does not read its "
                            "answers", client.uid)  # fmt: skip
                self._drop(client)
            elif not client.asked and not client.unsent and now - client.opened > limit:
                self._drop(client)

    def _accept(self, now: float) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again at the next pass
                log.warning("api socket: accept failed: %s", exc.strerror or exc)
                return
            sock.setblocking(False)
            uid = _peer_uid(sock)
            same = sum(1 for c in self._clients.values() if c.uid == uid)
            if uid == 0:  # the operator's own MAX_CLIENTS, whatever the others hold
                full = same >= MAX_CLIENTS
            else:
                full = same >= MAX_CLIENTS_PER_UID or len(self._clients) >= MAX_CLIENTS
            if uid not in self.allowed_uids or full:
                self.refused += 1
                why = "not allowed" if uid not in self.allowed_uids else "too many callers"
                log.warning("api socket: refused a caller with uid %d (%s)", uid, why)
                self._reply_and_close(sock, Outcome("refused", message=f"uid {uid}: {why}"))
                continue
            client = _Client(sock, uid, now)
            self._clients[sock.fileno()] = client
            self._read(client, now)  # the request is usually there already

    def _read(self, client: _Client, now: float) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        try:
            messages = client.decoder.feed(data)
        except p.FramingError as exc:
            self._answer(client, Outcome("invalid", message=f"request: {exc}"), last=True)
            return
        client.queued += messages
        if len(client.queued) > MAX_QUEUED:
            why = f"request: more than {MAX_QUEUED} requests sent ahead of their answers"
            self._answer(client, Outcome("refused", message=why), last=True)
            return
        self._next(client, now)

    def _next(self, client: _Client, now: float) -> None:
        """Start the client's next request, if it sent one, none is being answered and it
        has read the answers before."""
        if client.asked or client.done or not client.queued or client.unsent:
            return
        client.asked = True
        parsed = parse_request(client.queued.pop(0))
        if isinstance(parsed, str):
            self._answer(client, Outcome("invalid", message=f"request: {parsed}"), last=True)
            return
        plugin, function, args, timeout = parsed
        caller = OPERATOR if client.uid == 0 else f"uid {client.uid}"
        self.host.call(plugin, function, args, timeout, now, lambda o: self._answer(client, o),
                       caller=caller)  # fmt: skip

    def _answer(self, client: _Client, outcome: Outcome, *, last: bool = False) -> None:
        """The outcome of the request being answered; ``last``: then close (a broken one)."""
        if client.done or (not client.asked and not last):
            return
        client.asked, client.done = False, last
        client.answered += 1
        client.opened = time.monotonic()  # its idle time counts from its last answer
        try:
            frame = p.encode(_outcome_doc(outcome))
        except (TypeError, ValueError, RecursionError) as exc:  # never: the channel checked it
            why = f"the answer cannot be sent as JSON: {type(exc).__name__}"
            frame = p.encode(_outcome_doc(Outcome("plugin-error", message=why)))
        if len(client.unsent) + len(frame) > MAX_UNSENT_BYTES:
            self._drop(client)  # it does not read what it asked for
            return
        if not client.unsent:
            client.unsent_since = time.monotonic()
        client.unsent += frame
        self._flush(client)
        if not client.done and client.sock.fileno() >= 0:
            self._next(client, client.opened)

    def _flush(self, client: _Client) -> None:
        while client.unsent:
            try:
                sent = client.sock.send(client.unsent, _NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    self._drop(client)
                return
            del client.unsent[:sent]
        if client.done and not client.unsent:
            self._drop(client)
        elif not client.unsent and client.queued:  # it read them: its next request
            self._next(client, time.monotonic())

    def _reply_and_close(self, sock: socket.socket, outcome: Outcome) -> None:
        with contextlib.suppress(OSError):
            sock.send(p.encode(_outcome_doc(outcome)), socket.MSG_NOSIGNAL | socket.MSG_DONTWAIT)
        sock.close()

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        client.done = True
        client.sock.close()


def _outcome_doc(outcome: Outcome) -> dict[str, Any]:
    if outcome.kind == "result":
        return {"outcome": "result", "value": outcome.value}
    return {"outcome": outcome.kind, "message": outcome.message}
