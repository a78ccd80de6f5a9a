"""Every message the SDK and a host exchange matches schemas/plugin-protocol-v1.json."""

from __future__ import annotations

import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aurora_common import protocol as p
from aurora_common.sdk import CallFailed, Context, Plugin

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[3] / "schemas" / "plugin-protocol-v1.json").read_text()
)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def matches(message: Any) -> int:
    """How many of the schema's message kinds this message is (valid: exactly one)."""
    kinds = SCHEMA["oneOf"]
    resolver_base = {**SCHEMA}
    count = 0
    for kind in kinds:
        sub = {**resolver_base, "oneOf": [kind]}
        if jsonschema.Draft202012Validator(sub).is_valid(message):
            count += 1
    return count


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_a_whole_conversation_matches_the_schema() -> None:
    plugin = Plugin()

    @plugin.function("echo")
    def echo(args: Any, ctx: Context) -> Any:
        plugin.log("info", "echoing", size=len(args))
        if args == "boom":
            raise ValueError("boom")
        return args

    @plugin.health
    def health() -> bool:
        return True

    host, ours = socket.socketpair()
    host.settimeout(5)
    thread = threading.Thread(target=plugin.serve, args=(ours.detach(),), daemon=True)
    thread.start()
    decoder = p.Decoder()
    seen: list[Any] = []
    inbox: list[Any] = []

    def read() -> Any:
        while not inbox:
            inbox.extend(decoder.feed(host.recv(65536)))
        seen.append(inbox[0])
        return inbox.pop(0)

    def send(message: dict[str, Any]) -> None:
        seen.append(message)
        host.sendall(p.encode(message))

    hello = read()
    send(p.result(hello["id"], {"protocol": p.PROTOCOL, "limits": {"max_in_flight": 4}}))
    send(p.request(1, "aurora.call", {"function": "echo", "args": "hi", "deadline_ms": 500}))
    send(p.request(2, "aurora.call", {"function": "echo", "args": "boom", "deadline_ms": 500}))
    send(p.request(3, "aurora.health", {}))
    send(p.notification("aurora.cancel", {"id": 2}))
    for _ in range(5):  # two log records, two call answers, one health answer
        read()
    refusals: list[CallFailed] = []

    def call_out() -> None:
        try:
            plugin.call("acme.other", "f", {"x": 1})
        except CallFailed as exc:
            refusals.append(exc)

    caller = threading.Thread(target=call_out)
    caller.start()
    out = read()
    send(p.error(out["id"], p.REFUSED, "not granted: acme.other/f"))
    caller.join(5)
    host.close()
    thread.join(5)
    assert [r.code for r in refusals] == [p.REFUSED]
    assert len(seen) == 13  # hello + answer, 3 requests, cancel, 5 answers, call out + refusal
    for message in seen:
        assert matches(message) == 1, message


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            {"jsonrpc": "2.0", "id": 0, "method": "aurora.hello", "params": {}},
            id="hello-without-protocols",
        ),
        pytest.param(
            {
                "jsonrpc": "2.0",
                "method": "aurora.log",
                "params": {"level": "fatal", "message": "x"},
            },
            id="unknown-level",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "aurora.call", "params": {"function": "f"}},
            id="call-without-deadline",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}},
            id="unknown-error-code",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "aurora.health", "params": {}, "extra": 1},
            id="extra-member",
        ),
    ],
)
def test_wrong_messages_match_no_kind(message: Any) -> None:
    assert matches(message) == 0
    assert not VALIDATOR.is_valid(message)
