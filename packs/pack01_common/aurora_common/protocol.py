"""aurora-plugin-protocol-v1 on the wire: framing and message shapes.

One implementation for both ends (the supervisor and the plugin SDK), standard
library only. The format is docs/plugin-protocol-v1.md; every limit here is a
defence against a hostile peer, checked before the bytes it guards are kept.

Every plugin imports this at its start: it imports only ``json`` (no ``typing``,
no ``dataclasses``, which cost more than the rest of the SDK together).
"""

from __future__ import annotations

import json
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROTOCOL = "aurora-plugin-protocol-v1"
SUPPORTED = (PROTOCOL,)
MAX_HEADER_BYTES = 1024
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
CONTENT_TYPES = ("application/vscode-jsonrpc; charset=utf-8", "application/json")
FD_VARIABLE = "AURORA_PLUGIN_PROTOCOL_FD"

# JSON-RPC 2.0 codes, then the protocol's own (docs: "Error codes").
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PLUGIN_ERROR = -32000
NO_COMMON_VERSION = -32001
DEADLINE_EXCEEDED = -32002
REFUSED = -32003
NOT_RUNNING = -32004
OVERLOADED = -32005

_TERMINATOR = b"\r\n\r\n"
#: ``Content-Length: N`` alone, N without leading zeros: what encode writes.
_PLAIN_LENGTH = re.compile(rb"Content-Length: (0|[1-9][0-9]*)")
_PLAIN_FRAME = re.compile(rb"Content-Length: (0|[1-9][0-9]*)\r\n\r\n")


class FramingError(ValueError):
    """The byte stream breaks the framing rules; the connection must be closed."""


class ProtocolError(Exception):
    """A message is well framed but not acceptable; answerable with ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(message: dict[str, Any]) -> bytes:
    """Frame one message: ``Content-Length`` header, blank line, compact UTF-8 JSON.

    A value that is not JSON raises TypeError (a type), ValueError (NaN, infinity) or
    RecursionError (nested too deep, or circular)."""
    if _C_ENCODE is not None:
        data = "".join(_C_ENCODE(message, 0)).encode("utf-8")
    else:
        data = _ENCODER.encode(message).encode("utf-8")
    return b"Content-Length: %d\r\n\r\n" % len(data) + data


class Decoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get whole messages back.

    Never holds more than one header part (``MAX_HEADER_BYTES``) plus one
    content part (``max_message_bytes``): a peer announcing a larger message is
    refused from its header, before its content is read.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._length: int | None = None

    def feed(self, data: bytes) -> list[Any]:
        """The whole messages ``data`` completes; ``FramingError`` if it breaks the rules."""
        if self._length is None and not self._buffer:
            return self._feed_whole(data)
        return self._feed(data)

    def _feed_whole(self, data: bytes) -> list[Any]:
        """The common case, nothing kept from before: whole messages with the plain
        header taken straight from ``data``; the rest goes the general way."""
        messages: list[Any] = []
        pos, size = 0, len(data)
        while pos < size:
            plain = _PLAIN_FRAME.match(data, pos)
            if plain is None or plain.end() - pos > MAX_HEADER_BYTES:
                break  # another header, or too long: _feed decides
            length = int(plain.group(1))
            if length > self.max_message_bytes:
                raise FramingError(f"Content-Length {length} exceeds {self.max_message_bytes}")
            start = plain.end()
            if start + length > size:
                break  # not all there yet: kept by _feed
            messages.append(_parse_json(data[start : start + length]))
            pos = start + length
        if pos < size:
            messages += self._feed(data[pos:])
        return messages

    def _feed(self, data: bytes) -> list[Any]:
        self._buffer += data
        messages: list[Any] = []
        while True:
            if self._length is None:
                end = self._buffer.find(_TERMINATOR)
                if end < 0:
                    if len(self._buffer) > MAX_HEADER_BYTES:
                        raise FramingError(f"header part longer than {MAX_HEADER_BYTES} bytes")
                    return messages
                if end + len(_TERMINATOR) > MAX_HEADER_BYTES:
                    raise FramingError(f"header part longer than {MAX_HEADER_BYTES} bytes")
                header = bytes(self._buffer[:end])
                # The header every sender here writes, parsed as _content_length would.
                fast = _PLAIN_LENGTH.fullmatch(header)
                if fast is not None:
                    length = int(fast.group(1))
                    if length > self.max_message_bytes:
                        raise FramingError(
                            f"Content-Length {length} exceeds {self.max_message_bytes}"
                        )
                    self._length = length
                else:
                    self._length = self._content_length(header)
                del self._buffer[: end + len(_TERMINATOR)]
            if len(self._buffer) < self._length:
                return messages
            body = bytes(self._buffer[: self._length])
            del self._buffer[: self._length]
            self._length = None
            messages.append(_parse_json(body))

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole message."""
        return len(self._buffer)

    def _content_length(self, header: bytes) -> int:
        try:
            text = header.decode("ascii")
        except UnicodeDecodeError:
            raise FramingError("header part is not ASCII") from None
        length: int | None = None
        for line in text.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                raise FramingError(f"malformed header line {line[:60]!r}")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                if length is not None:
                    raise FramingError("Content-Length given twice")
                if not value.isdigit() or (len(value) > 1 and value[0] == "0"):
                    raise FramingError(f"Content-Length {value[:30]!r} is not a decimal number")
                length = int(value)
                if length > self.max_message_bytes:
                    raise FramingError(f"Content-Length {length} exceeds {self.max_message_bytes}")
            elif name == "content-type":
                if value.lower() not in CONTENT_TYPES:
                    raise FramingError(f"unsupported Content-Type {value[:60]!r}")
            else:
                raise FramingError(f"unknown header {name[:60]!r}")
        if length is None:
            raise FramingError("no Content-Length header")
        return length


def _parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FramingError(f"content is not UTF-8 (byte {exc.start})") from None
    try:
        try:
            obj, end = _SCAN(text, 0)  # what decode() does, less its whitespace steps
        except StopIteration:
            end = -1  # leading whitespace, or not JSON: decode() tells which
        if end != len(text):  # trailing whitespace, extra data: likewise
            obj = _DECODER.decode(text)
        return obj
    except (ValueError, RecursionError) as exc:
        raise FramingError(f"content is not JSON: {str(exc)[:80]}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one out of a double's range (``1e999``) is refused, as
    it could not be sent on (``encode`` refuses infinities)."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:30]} is out of range")
    return value


# Built once: json.dumps/json.loads with options build a new encoder/decoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]  # (set in __init__) what decode() runs


def _c_encoder() -> Any:
    """_ENCODER's own C encoder, made once: JSONEncoder.encode makes a new one per call,
    which is half its cost for a message. Without circular-reference markers (they would
    be shared by the SDK's threads): a circular value ends in RecursionError."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    separators = (":", ",")
    sort_keys = skipkeys = allow_nan = False
    return make(
        None,
        _ENCODER.default,
        json.encoder.encode_basestring,
        None,
        *separators,
        sort_keys,
        skipkeys,
        allow_nan,
    )


_C_ENCODE = _c_encoder()


class _Message:
    """A decoded message: compared and shown by its fields."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, f) == getattr(other, f) for f in self.__slots__
        )

    def __hash__(self) -> int:
        return hash(tuple(repr(getattr(self, f)) for f in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Request(_Message):
    __slots__ = ("id", "method", "params")

    def __init__(self, id: int | str, method: str, params: dict[str, Any]) -> None:
        self.id, self.method, self.params = id, method, params


class Notification(_Message):
    __slots__ = ("method", "params")

    def __init__(self, method: str, params: dict[str, Any]) -> None:
        self.method, self.params = method, params


class Response(_Message):
    __slots__ = ("error", "id", "result")

    def __init__(
        self,
        id: int | str | None,
        result: Any = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        self.id, self.result, self.error = id, result, error


Message = Request | Notification | Response
_MAX_ID_CHARS = 64
_REQUEST_MEMBERS = frozenset(("jsonrpc", "id", "method", "params"))
_RESPONSE_MEMBERS = frozenset(("jsonrpc", "id", "result", "error"))


def classify(obj: Any) -> Message:
    """Check the JSON-RPC 2.0 shape of a decoded message; ``ProtocolError`` if wrong."""
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_REQUEST, "a message must be a JSON object")
    if obj.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, 'jsonrpc must be "2.0"')
    if "method" in obj:
        if not obj.keys() <= _REQUEST_MEMBERS:
            unknown = set(obj) - _REQUEST_MEMBERS
            raise ProtocolError(INVALID_REQUEST, f"unknown member {sorted(unknown)[0]!r}")
        method = obj["method"]
        if not isinstance(method, str) or not 0 < len(method) <= 64:
            raise ProtocolError(INVALID_REQUEST, "method must be a string of 1 to 64 characters")
        params = obj.get("params", {})
        if not isinstance(params, dict):
            raise ProtocolError(INVALID_REQUEST, "params must be an object")
        if "id" not in obj:
            return Notification(method, params)
        return Request(_check_id(obj["id"]), method, params)
    if not obj.keys() <= _RESPONSE_MEMBERS:
        unknown = set(obj) - _RESPONSE_MEMBERS
        raise ProtocolError(INVALID_REQUEST, f"unknown member {sorted(unknown)[0]!r}")
    if ("result" in obj) == ("error" in obj):
        raise ProtocolError(INVALID_REQUEST, "a response has exactly one of result and error")
    if "error" in obj and obj.get("id") is None:
        msg_id: int | str | None = None  # an answer to a message whose id was unreadable
    else:
        msg_id = _check_id(obj.get("id"))
    if "error" in obj:
        error = obj["error"]
        if (
            not isinstance(error, dict)
            or not isinstance(error.get("code"), int)
            or isinstance(error.get("code"), bool)
            or not isinstance(error.get("message"), str)
        ):
            raise ProtocolError(INVALID_REQUEST, "error must be {code: int, message: str}")
        return Response(msg_id, error=error)
    return Response(msg_id, result=obj["result"])


def _check_id(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ProtocolError(INVALID_REQUEST, "id must be an integer or a string")
    if isinstance(value, str) and len(value) > _MAX_ID_CHARS:
        raise ProtocolError(INVALID_REQUEST, f"id longer than {_MAX_ID_CHARS} characters")
    if isinstance(value, int) and not -(2**53) < value < 2**53:
        raise ProtocolError(INVALID_REQUEST, "id out of range")
    return value


def request(msg_id: int | str, method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def result(msg_id: int | str, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "result": value}


def error(msg_id: int | str | None, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}
