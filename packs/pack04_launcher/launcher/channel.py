"""The supervisor's end of one plugin run's protocol connection (aurora-plugin-protocol-v1).

Non-blocking and driven by the supervisor's loop: ``on_readable`` when the
socket is readable, ``on_writable`` while ``wants_write``, ``tick`` for every
deadline. Everything the plugin sends is bounded (message size, bytes per
read, messages per second, calls in flight, handshake time) and validated;
a breach closes the channel with a reason for the operator and never raises
into the caller. Callers get exactly one ``Outcome`` per call.
"""

from __future__ import annotations

import errno
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aurora_common import fnschema
from aurora_common import protocol as p

from launcher.pluginlog import one_line

log = logging.getLogger(__name__)

_CLOSED = "the plugin closed its protocol connection"
#: Bytes asked of one recv: a larger buffer is allocated (and mapped, and unmapped)
#: at every read however little arrives; Limits.read_bytes is read in such steps.
_RECV_BYTES = 64 * 1024
_SEND_FLAGS = int(socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)  # an enum's | costs a call
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_LOG_MESSAGE = 4096
MAX_LOG_FIELDS_BYTES = 8192


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = p.DEFAULT_MAX_MESSAGE_BYTES
    max_in_flight: int = 16
    handshake_s: float = 10.0
    #: Messages a plugin may send per second on its own (answers to our calls are not
    #: counted: max_in_flight bounds them), averaged over ``burst`` messages.
    rate: float = 500.0
    burst: int = 1000
    read_bytes: int = 256 * 1024  # per on_readable: one plugin never holds the loop
    #: Bytes per second a plugin may send, all messages counted (big messages within the
    #: message rate would still keep a core busy decoding), averaged over ``byte_burst``.
    byte_rate: float = 4 * 1024 * 1024
    byte_burst: int = 16 * 1024 * 1024
    max_unsent_bytes: int = 4 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """How a call ended: ``result``, ``plugin-error``, ``timeout``, ``not-running``,
    ``refused`` or ``invalid`` (the arguments do not match the function's schema)."""

    kind: str
    value: Any = None
    message: str = ""


Reply = Callable[[Outcome], None]


@dataclass
class FunctionSpec:
    """A function as the manifest declares it: JSON Schemas of its parameters and result
    (``aurora_common.fnschema``: nothing retrieved, no regular expression, bounded time)."""

    parameters: Mapping[str, Any] | None = None
    result: Mapping[str, Any] | None = None
    _validators: dict[str, fnschema.Validator] = field(default_factory=dict, repr=False)

    def problem(self, which: str, value: Any) -> str | None:
        """The first way ``value`` breaks the ``parameters``/``result`` schema, or None."""
        schema = self.parameters if which == "parameters" else self.result
        if schema is None:
            return None
        validator = self._validators.get(which)
        if validator is None:
            validator = fnschema.Validator(dict(schema))
            self._validators[which] = validator
        return validator.first_problem(value)


@dataclass
class _Call:
    function: str
    deadline: float
    reply: Reply


class Channel:
    """One run's connection; ``state`` is ``handshake``, ``ready`` or ``closed``."""

    def __init__(
        self,
        plugin_id: str,
        sock: socket.socket,
        functions: Mapping[str, FunctionSpec],
        *,
        now: float | None = None,
        limits: Limits | None = None,
        on_log: Callable[[str, str, dict[str, Any]], None] | None = None,
        on_call_out: Callable[[str, str, Any, float, Reply], None] | None = None,
    ) -> None:
        self.plugin_id = plugin_id
        self.sock = sock
        sock.setblocking(False)
        self.functions = dict(functions)
        self.limits = limits or Limits()
        self.on_log = on_log
        self.on_call_out = on_call_out
        self.state = "handshake"
        self.reason: str | None = None
        self.offered: list[str] = []
        self.health_status = "starting"
        self.health_message = ""
        self.health_failures = 0
        started = time.monotonic() if now is None else now
        self._handshake_deadline = started + self.limits.handshake_s
        self._decoder = p.Decoder(self.limits.max_message_bytes)
        self._unsent = bytearray()
        self._calls: dict[int, _Call] = {}
        self._health: tuple[int, float] | None = None  # (request id, deadline)
        self._incoming: set[int | str] = set()  # the plugin's calls out still unanswered
        self._next_id = 1
        self._allowance = float(self.limits.burst)
        self._allowance_at = started
        self._bytes_allowance = float(self.limits.byte_burst)
        self._bytes_at = started

    # -- the loop's side ------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def in_flight(self) -> int:
        """Calls into the plugin not answered yet, and its calls out not answered yet."""
        return len(self._calls) + len(self._incoming)

    @property
    def wants_write(self) -> bool:
        return bool(self._unsent) and self.state != "closed"

    def on_readable(self, now: float) -> None:
        if self.state == "closed":
            return
        limit = self.limits.read_bytes
        asked = min(_RECV_BYTES, limit)
        try:
            data = self.sock.recv(asked)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self.close(_CLOSED)
            return
        lost: OSError | None = None
        while len(data) == asked and len(data) < limit:  # a full read: more may wait
            asked = len(data) + min(_RECV_BYTES, limit - len(data))
            try:
                more = self.sock.recv(asked - len(data))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                lost = exc  # after the messages already read
                break
            if not more:
                break  # the end: the next on_readable sees it
            data += more
        if not self._take_bytes(len(data), now):
            rate = self.limits.byte_rate / (1024 * 1024)
            self.close(f"protocol: flood: more than {rate:g} MiB per second")
            return
        try:
            messages = self._decoder.feed(data)
        except p.FramingError as exc:
            self.close(f"protocol: {exc}")
            return
        for obj in messages:
            if self.state == "closed":
                return
            if not self._answers_us(obj) and not self._take_token(now):
                self.close(f"protocol: flood: more than {self.limits.rate:g} messages per second")
                return
            try:
                self._handle(obj, now)
            except Exception as exc:  # a bug of ours must not become the supervisor's
                log.exception("%s: handling a protocol message failed", self.plugin_id)
                self.close(f"protocol: internal error handling a message ({type(exc).__name__})")
                return
        if lost is not None and self.state != "closed":
            self._lost(lost)

    def on_writable(self) -> None:
        self._flush()

    def tick(self, now: float) -> None:
        """Expire what is due: the handshake, calls past their deadline, a health check."""
        if self.state == "handshake" and now >= self._handshake_deadline:
            self.close(f"did not complete the protocol handshake in {self.limits.handshake_s:g} s")
            return
        for msg_id, call in list(self._calls.items()):
            if now >= call.deadline:
                del self._calls[msg_id]
                self._send(p.notification("aurora.cancel", {"id": msg_id}))
                call.reply(Outcome("timeout", message=f"{call.function}: deadline passed"))
        if self._health is not None and now >= self._health[1]:
            self._health = None
            self._health_result(False, "no answer to the health check in time")

    # -- what the supervisor asks ---------------------------------------------

    def call(self, function: str, args: Any, timeout: float, now: float, reply: Reply) -> None:
        """Call a function of the plugin; ``reply`` gets the one outcome."""
        spec = self.functions.get(function)
        if self.state != "ready":
            why = self.reason or "its protocol handshake is not complete"
            reply(Outcome("not-running", message=f"{self.plugin_id}: {why}"))
            return
        if spec is None or function not in self.offered:
            reply(Outcome("refused", message=f"{self.plugin_id} has no function {function!r}"))
            return
        problem = spec.problem("parameters", args)
        if problem is not None:
            reply(Outcome("invalid", message=f"arguments of {function}: {problem}"))
            return
        if len(self._calls) >= self.limits.max_in_flight:
            reply(Outcome("refused", message=f"{self.plugin_id}: too many calls in flight"))
            return
        msg_id = self._new_id()
        self._calls[msg_id] = _Call(function, now + timeout, reply)
        params = {"function": function, "args": args, "deadline_ms": int(timeout * 1000)}
        self._send(p.request(msg_id, "aurora.call", params))

    def check_health(self, now: float, timeout: float) -> None:
        """Ask the plugin how it is; no answer by ``timeout`` counts as a failure."""
        if self.state != "ready" or self._health is not None:
            return
        msg_id = self._new_id()
        self._health = (msg_id, now + timeout)
        self._send(p.request(msg_id, "aurora.health", {}))

    def close(self, reason: str) -> None:
        """End the channel: every call in flight gets ``not-running`` with the reason."""
        if self.state == "closed":
            return
        self.state = "closed"
        self.reason = one_line(reason)  # it may quote the plugin: shown to the operator
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.reply(Outcome("not-running", message=f"{self.plugin_id}: {reason}"))
        self._health = None
        self._unsent.clear()
        self.sock.close()

    # -- what the plugin sends -------------------------------------------------

    def _handle(self, obj: Any, now: float) -> None:
        try:
            message = p.classify(obj)
        except p.ProtocolError as exc:
            if self.state == "handshake":
                self.close(f"protocol: handshake: {exc.message}")
            else:
                msg_id = obj.get("id") if isinstance(obj, dict) else None
                self._send(
                    p.error(
                        msg_id if isinstance(msg_id, int | str) else None, exc.code, exc.message
                    )
                )
            return
        if self.state == "handshake":
            self._handshake(message)
        elif isinstance(message, p.Response):
            self._response(message)
        elif isinstance(message, p.Notification):
            if message.method == "aurora.log":
                self._log(message.params)
            # Unknown notifications are dropped, as JSON-RPC prescribes.
        elif message.method == "aurora.call":
            self._call_out(message, now)
        else:
            self._send(p.error(message.id, p.METHOD_NOT_FOUND, f"unknown method {message.method}"))

    def _handshake(self, message: p.Message) -> None:
        if not isinstance(message, p.Request) or message.method != "aurora.hello":
            self.close("protocol: the first message must be the aurora.hello request")
            return
        params = message.params
        protocols = params.get("protocols")
        functions = params.get("functions", [])
        if not isinstance(protocols, list) or not all(isinstance(v, str) for v in protocols):
            self._refuse(message.id, p.INVALID_PARAMS, "hello: protocols must be a list of strings")
            return
        if not isinstance(functions, list) or not all(isinstance(f, str) for f in functions):
            self._refuse(message.id, p.INVALID_PARAMS, "hello: functions must be a list of strings")
            return
        if p.PROTOCOL not in protocols:
            offered = ", ".join(v[:40] for v in protocols[:5]) or "none"
            self._refuse(
                message.id,
                p.NO_COMMON_VERSION,
                f"no common protocol version (plugin speaks {offered}; host speaks {p.PROTOCOL})",
                {"supported": list(p.SUPPORTED)},
            )
            return
        undeclared = sorted(set(functions) - set(self.functions))
        if undeclared:
            self._refuse(
                message.id,
                p.REFUSED,
                f"hello: function {undeclared[0][:64]!r} is not declared in the manifest",
            )
            return
        self.offered = sorted(set(functions))
        self.state = "ready"
        limits = {
            "max_message_bytes": self.limits.max_message_bytes,
            "max_in_flight": self.limits.max_in_flight,
        }
        self._send(p.result(message.id, {"protocol": p.PROTOCOL, "limits": limits}))

    def _refuse(self, msg_id: int | str, code: int, text: str, data: Any = None) -> None:
        self._send(p.error(msg_id, code, text, data))
        self._flush()
        self.close(f"protocol handshake refused: {text}")

    def _response(self, message: p.Response) -> None:
        if self._health is not None and message.id == self._health[0]:
            self._health = None
            result = message.result
            if message.error is None and isinstance(result, dict):
                text = str(result.get("message", ""))[:1000]
                self._health_result(result.get("status") == "serving", text)
            else:
                self._health_result(False, "the health check failed")
            return
        call = self._calls.pop(message.id, None) if isinstance(message.id, int) else None
        if call is None:
            return  # late (after a timeout) or never asked: dropped
        if message.error is not None:
            text = str(message.error.get("message", ""))[:1000]
            call.reply(Outcome("plugin-error", message=text))
            return
        result = message.result
        if not isinstance(result, dict) or "value" not in result:
            call.reply(Outcome("plugin-error", message="the result is not {value: ...}"))
            return
        problem = self.functions[call.function].problem("result", result["value"])
        if problem is not None:
            text = f"result of {call.function} does not match its schema: {problem}"
            call.reply(Outcome("plugin-error", message=text))
            return
        call.reply(Outcome("result", value=result["value"]))

    def _health_result(self, ok: bool, text: str) -> None:
        self.health_message = one_line(text)
        if ok:
            self.health_status, self.health_failures = "healthy", 0
        else:
            self.health_failures += 1
            self.health_status = "unhealthy"

    def _log(self, params: dict[str, Any]) -> None:
        level, text, fields = params.get("level"), params.get("message"), params.get("fields", {})
        if level not in LOG_LEVELS or not isinstance(text, str) or not isinstance(fields, dict):
            level, text, fields = "warning", "malformed aurora.log record dropped", {}
        elif len(json.dumps(fields, default=str)) > MAX_LOG_FIELDS_BYTES:
            fields = {"dropped": f"fields larger than {MAX_LOG_FIELDS_BYTES} bytes"}
        if self.on_log is not None:
            self.on_log(str(level), text[:MAX_LOG_MESSAGE], fields)

    def _call_out(self, message: p.Request, now: float) -> None:
        params = message.params
        target, function = params.get("plugin"), params.get("function")
        timeout_ms = params.get("timeout_ms", 10_000)
        if (
            not isinstance(target, str)
            or not isinstance(function, str)
            or isinstance(timeout_ms, bool)
            or not isinstance(timeout_ms, int)
            or timeout_ms <= 0
        ):
            text = "aurora.call needs plugin, function and timeout_ms > 0"
            self._send(p.error(message.id, p.INVALID_PARAMS, text))
            return
        if len(self._incoming) >= self.limits.max_in_flight or message.id in self._incoming:
            self._send(p.error(message.id, p.OVERLOADED, "too many calls in flight"))
            return
        if self.on_call_out is None:
            self._send(p.error(message.id, p.REFUSED, f"not granted: {target}/{function}"))
            return
        self._incoming.add(message.id)
        msg_id = message.id

        def reply(outcome: Outcome) -> None:
            self._incoming.discard(msg_id)
            if outcome.kind == "result":
                self._send(p.result(msg_id, {"value": outcome.value}))
            else:
                self._send(p.error(msg_id, _CODES[outcome.kind], outcome.message))

        self.on_call_out(target, function, params.get("args"), min(timeout_ms / 1000, 300), reply)

    # -- bytes out -------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self.state == "closed":
            return
        self._unsent += p.encode(message)
        if len(self._unsent) > self.limits.max_unsent_bytes:
            self.close("the plugin does not read its protocol connection")
            return
        self._flush()

    def _flush(self) -> None:
        while self._unsent and self.state != "closed":
            try:
                sent = self.sock.send(self._unsent, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return
                self._lost(exc)
                return
            del self._unsent[:sent]

    def _lost(self, exc: OSError) -> None:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            self.close(
                _CLOSED
            )  # it went away with our bytes unread: the same thing to the operator
        else:
            self.close(f"connection error: {exc.strerror or exc}")

    def _answers_us(self, obj: Any) -> bool:
        """An answer to a request of ours still in flight: bounded by us, not rate-limited."""
        if not isinstance(obj, dict) or "method" in obj:
            return False
        msg_id = obj.get("id")
        health = self._health is not None and msg_id == self._health[0]
        return health or (isinstance(msg_id, int) and msg_id in self._calls)

    def _take_bytes(self, count: int, now: float) -> bool:
        elapsed = max(0.0, now - self._bytes_at)
        self._bytes_at = now
        self._bytes_allowance = min(
            float(self.limits.byte_burst), self._bytes_allowance + elapsed * self.limits.byte_rate
        )
        self._bytes_allowance -= count
        return self._bytes_allowance >= 0

    def _take_token(self, now: float) -> bool:
        elapsed = max(0.0, now - self._allowance_at)
        self._allowance_at = now
        self._allowance = min(
            float(self.limits.burst), self._allowance + elapsed * self.limits.rate
        )
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        return True

    def _new_id(self) -> int:
        msg_id = self._next_id
        self._next_id += 1
        return msg_id


_CODES = {
    "plugin-error": p.PLUGIN_ERROR,
    "timeout": p.DEADLINE_EXCEEDED,
    "not-running": p.NOT_RUNNING,
    "refused": p.REFUSED,
    "invalid": p.INVALID_PARAMS,
}
