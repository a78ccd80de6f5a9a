"""The protocol's framing and message shapes against hostile and random input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aurora_common import protocol as p

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), max_size=5),
    st.integers(1, 64),
)
def test_any_split_of_a_stream_decodes_to_the_same_messages(
    messages: list[dict[str, Any]], chunk: int
) -> None:
    stream = b"".join(p.encode(m) for m in messages)
    decoder = p.Decoder()
    out: list[Any] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == messages
    assert decoder.pending == 0


@given(st.binary(max_size=300))
def test_garbage_is_a_framing_error_or_waits_never_another_exception(data: bytes) -> None:
    decoder = p.Decoder(max_message_bytes=1000)
    try:
        decoder.feed(data)
    except p.FramingError:
        return
    assert decoder.pending <= p.MAX_HEADER_BYTES + 1000


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param(b"Content-Length: 2000000\r\n\r\n", "exceeds", id="too-large"),
        pytest.param(b"Content-Length: -1\r\n\r\n", "not a decimal", id="negative"),
        pytest.param(b"Content-Length: 012\r\n\r\n", "not a decimal", id="leading-zero"),
        pytest.param(b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", "twice", id="twice"),
        pytest.param(b"X-Evil: 1\r\nContent-Length: 2\r\n\r\n{}", "unknown header", id="header"),
        pytest.param(
            b"Content-Type: text/html\r\nContent-Length: 2\r\n\r\n{}",
            "Content-Type",
            id="content-type",
        ),
        pytest.param(b"\r\n\r\n", "malformed header", id="empty-header"),
        pytest.param(b"A" * (p.MAX_HEADER_BYTES + 1), "longer than", id="endless-header"),
        pytest.param(b"Content-Length: 2\r\n\r\n\xff\xfe", "not UTF-8", id="not-utf8"),
        pytest.param(b"Content-Length: 3\r\n\r\nNaN", "not JSON", id="nan"),
        pytest.param(b"Content-Length: 5000\r\n\r\n" + b"[" * 5000, "not JSON", id="deep"),
    ],
)
def test_hostile_frames_are_refused_with_the_reason(data: bytes, problem: str) -> None:
    with pytest.raises(p.FramingError, match=problem):
        p.Decoder(max_message_bytes=10_000 if b"[" in data else 1 << 20).feed(data)


def test_a_large_announced_message_is_refused_before_its_content_arrives() -> None:
    decoder = p.Decoder(max_message_bytes=100)
    with pytest.raises(p.FramingError, match="exceeds 100"):
        decoder.feed(b"Content-Length: 101\r\n\r\n")


def test_encode_refuses_values_that_are_not_json() -> None:
    with pytest.raises(ValueError):
        p.encode({"x": float("nan")})
    with pytest.raises(TypeError):
        p.encode({"x": object()})
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(RecursionError):
        p.encode(circular)


@given(
    st.dictionaries(
        st.text(max_size=8),
        json_values | st.floats(allow_nan=False, allow_infinity=False),
        max_size=5,
    )
)
def test_encode_is_what_json_dumps_writes_compactly(message: dict[str, Any]) -> None:
    body = p.encode(message).partition(b"\r\n\r\n")[2]
    expected = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    assert body.decode("utf-8") == expected


@pytest.mark.parametrize(
    ("obj", "kind"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "aurora.call", "params": {}}, p.Request),
        ({"jsonrpc": "2.0", "method": "aurora.log", "params": {"level": "info"}}, p.Notification),
        ({"jsonrpc": "2.0", "id": "a", "result": None}, p.Response),
        ({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "x"}}, p.Response),
    ],
)
def test_classify_accepts_the_four_shapes(obj: dict[str, Any], kind: type) -> None:
    assert isinstance(p.classify(obj), kind)


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param([], id="array"),
        pytest.param({"id": 1, "method": "m"}, id="no-jsonrpc"),
        pytest.param({"jsonrpc": "2.0", "id": True, "method": "m"}, id="bool-id"),
        pytest.param({"jsonrpc": "2.0", "id": 2**60, "method": "m"}, id="huge-id"),
        pytest.param({"jsonrpc": "2.0", "id": "x" * 65, "method": "m"}, id="long-id"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "m", "params": []}, id="list-params"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": ""}, id="empty-method"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": "m", "extra": 1}, id="extra"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}, id="both"),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": ""}}, id="bad-error"
        ),
        pytest.param({"jsonrpc": "2.0", "id": None, "result": 1}, id="null-id-result"),
    ],
)
def test_classify_refuses_wrong_shapes_as_invalid_request(obj: Any) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        p.classify(obj)
    assert caught.value.code == p.INVALID_REQUEST


def test_encoded_messages_are_compact_utf8_with_the_exact_length() -> None:
    frame = p.encode({"text": "é"})
    header, _, body = frame.partition(b"\r\n\r\n")
    assert header == b"Content-Length: %d" % len(body)
    assert json.loads(body) == {"text": "é"}
