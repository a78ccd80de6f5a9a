"""The supervisor's protocol channel against the SDK and against hostile plugins."""

from __future__ import annotations

import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "pack01_common"))
from aurora_common import protocol as p
from aurora_common.sdk import Context, Plugin
from launcher.channel import Channel, FunctionSpec, Limits, Outcome

SPECS = {
    "echo": FunctionSpec({"type": "object", "required": ["text"]}, {"type": "object"}),
    "sleep": FunctionSpec(None, None),
    "liar": FunctionSpec(None, {"type": "integer"}),
}


def pump(channel: Channel, until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the supervisor's side of the loop for one channel until ``until()``."""
    end = time.monotonic() + timeout
    while not until():
        now = time.monotonic()
        assert now < end, "condition not reached in time"
        channel.tick(now)
        if channel.state == "closed":
            if until():
                return
            continue
        wr = [channel] if channel.wants_write else []
        readable, writable, _ = select.select([channel], wr, [], 0.02)
        if readable:
            channel.on_readable(time.monotonic())
        if writable:
            channel.on_writable()


def pump_for(channel: Channel, seconds: float) -> None:
    end = time.monotonic() + seconds
    pump(channel, lambda: time.monotonic() >= end or channel.state == "closed", seconds + 1)


class Outcomes:
    def __init__(self) -> None:
        self.got: list[Outcome] = []

    def __call__(self, outcome: Outcome) -> None:
        self.got.append(outcome)


@pytest.fixture
def sdk_plugin() -> Iterator[tuple[Channel, list[tuple[str, str, dict[str, Any]]]]]:
    plugin = Plugin()

    @plugin.function("echo")
    def echo(args: Any, ctx: Context) -> Any:
        return {"echo": args["text"]}

    @plugin.function("sleep")
    def sleep(args: Any, ctx: Context) -> Any:
        ctx.cancelled.wait(args)
        plugin.log("info", "woke", cancelled=ctx.cancelled.is_set())
        return None

    @plugin.function("liar")
    def liar(args: Any, ctx: Context) -> Any:
        return "not an integer"

    host, ours = socket.socketpair()
    thread = threading.Thread(target=plugin.serve, args=(ours.detach(),), daemon=True)
    thread.start()
    logs: list[tuple[str, str, dict[str, Any]]] = []
    channel = Channel("acme.sdk", host, SPECS, on_log=lambda *rec: logs.append(rec))
    pump(channel, lambda: channel.state == "ready")
    yield channel, logs
    channel.close("test over")
    thread.join(5)
    assert not thread.is_alive()


def test_sdk_plugin_handshakes_and_every_outcome_has_its_kind(sdk_plugin: Any) -> None:
    channel, logs = sdk_plugin
    assert channel.offered == ["echo", "liar", "sleep"]
    out = Outcomes()
    now = time.monotonic()
    channel.call("echo", {"text": "hi"}, 5, now, out)
    channel.call("echo", {"wrong": 1}, 5, now, out)  # invalid: never reaches the plugin
    channel.call("liar", None, 5, now, out)  # result breaks its schema
    channel.call("missing", None, 5, now, out)
    channel.call("sleep", 30, 0.2, now, out)  # deadline passes: cancelled in the plugin
    pump(channel, lambda: len(out.got) == 5)
    kinds = sorted(o.kind for o in out.got)
    assert kinds == ["invalid", "plugin-error", "refused", "result", "timeout"]
    assert next(o for o in out.got if o.kind == "result").value == {"echo": "hi"}
    assert "(top)" in next(o for o in out.got if o.kind == "plugin-error").message
    pump(channel, lambda: bool(logs))
    assert logs == [("info", "woke", {"cancelled": True})]


def test_several_calls_are_in_flight_at_once(sdk_plugin: Any) -> None:
    channel, _ = sdk_plugin
    out = Outcomes()
    started = time.monotonic()
    for _ in range(4):
        channel.call("sleep", 0.5, 5, started, out)
    pump(channel, lambda: len(out.got) == 4)
    assert all(o.kind == "result" for o in out.got)
    assert time.monotonic() - started < 1.5


def test_health_is_asked_and_missing_answers_count_as_failures(sdk_plugin: Any) -> None:
    channel, _ = sdk_plugin
    channel.check_health(time.monotonic(), 2)
    pump(channel, lambda: channel.health_status != "starting")
    assert channel.health_status == "healthy"


class Hostile:
    """A plugin end scripted byte by byte."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.host, self.plugin = socket.socketpair()
        self.channel = Channel("acme.bad", self.host, SPECS, limits=limits)

    def send(self, data: bytes) -> None:
        self.plugin.sendall(data)

    def hello(self, **params: Any) -> None:
        params.setdefault("protocols", [p.PROTOCOL])
        params.setdefault("functions", ["echo"])
        self.send(p.encode(p.request(0, "aurora.hello", params)))

    def close(self) -> None:
        self.plugin.close()
        self.channel.close("test over")


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    h = Hostile()
    yield h
    h.close()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", "malformed header", id="garbage"),
        pytest.param(b"Content-Length: 99999999\r\n\r\n", "exceeds", id="oversized"),
        pytest.param(p.encode(p.notification("aurora.log", {})), "first message", id="no-hello"),
        pytest.param(p.encode({"jsonrpc": "2.0", "id": 0}), "handshake", id="bad-shape"),
    ],
)
def test_malformed_first_messages_close_with_a_reason(
    hostile: Hostile, data: bytes, reason: str
) -> None:
    hostile.send(data)
    pump(hostile.channel, lambda: hostile.channel.state == "closed")
    assert reason in (hostile.channel.reason or "")


def test_version_mismatch_and_undeclared_functions_are_refused(hostile: Hostile) -> None:
    hostile.hello(protocols=["aurora-plugin-protocol-v9"])
    pump(hostile.channel, lambda: hostile.channel.state == "closed")
    assert "no common protocol version" in (hostile.channel.reason or "")
    other = Hostile()
    try:
        other.hello(functions=["echo", "steal"])
        pump(other.channel, lambda: other.channel.state == "closed")
        assert "'steal' is not declared" in (other.channel.reason or "")
    finally:
        other.close()


def test_a_plugin_that_never_says_hello_times_out() -> None:
    h = Hostile(Limits(handshake_s=0.2))
    try:
        pump(h.channel, lambda: h.channel.state == "closed")
        assert "did not complete the protocol handshake" in (h.channel.reason or "")
    finally:
        h.close()


def test_a_flood_closes_the_channel_and_fails_calls_in_flight() -> None:
    h = Hostile(Limits(rate=50, burst=20))
    try:
        h.hello()
        pump(h.channel, lambda: h.channel.state == "ready")
        out = Outcomes()
        h.channel.call("echo", {"text": "x"}, 30, time.monotonic(), out)
        log = p.encode(p.notification("aurora.log", {"level": "info", "message": "x"}))
        h.send(log * 200)
        pump(h.channel, lambda: h.channel.state == "closed")
        assert "flood" in (h.channel.reason or "")
        assert [o.kind for o in out.got] == ["not-running"]
    finally:
        h.close()


def test_answers_to_our_own_calls_are_not_counted_as_a_flood() -> None:
    plugin = Plugin()
    plugin.function("sleep")(lambda args, ctx: None)
    host, ours = socket.socketpair()
    thread = threading.Thread(target=plugin.serve, args=(ours.detach(),), daemon=True)
    thread.start()
    channel = Channel("acme.busy", host, SPECS, limits=Limits(rate=5, burst=5))
    try:
        pump(channel, lambda: channel.state == "ready")
        out = Outcomes()
        for n in range(1, 61):  # far more answers than the rate allows unsolicited messages
            channel.call("sleep", None, 5, time.monotonic(), out)
            pump(channel, lambda n=n: len(out.got) == n or channel.state == "closed")
        assert channel.state == "ready", channel.reason
        assert [o.kind for o in out.got] == ["result"] * 60
    finally:
        channel.close("test over")
        thread.join(5)


def test_a_plugin_that_crashes_mid_call_gives_the_caller_a_clear_error(hostile: Hostile) -> None:
    hostile.hello()
    pump(hostile.channel, lambda: hostile.channel.state == "ready")
    out = Outcomes()
    hostile.channel.call("echo", {"text": "x"}, 30, time.monotonic(), out)
    hostile.plugin.close()
    pump(hostile.channel, lambda: bool(out.got))
    assert out.got[0].kind == "not-running"
    assert "closed its protocol connection" in out.got[0].message


def test_calls_out_are_refused_without_a_router_and_unknown_methods_answered(
    hostile: Hostile,
) -> None:
    hostile.hello()
    pump(hostile.channel, lambda: hostile.channel.state == "ready")
    hostile.send(
        p.encode(
            p.request(7, "aurora.call", {"plugin": "acme.x", "function": "f", "timeout_ms": 100})
        )
    )
    hostile.send(p.encode(p.request(8, "aurora.shell", {})))
    decoder = p.Decoder()
    got: dict[Any, Any] = {}
    hostile.plugin.setblocking(False)
    end = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < end:  # the hello answer, then the two errors
        pump_for(hostile.channel, 0.05)
        try:
            for msg in decoder.feed(hostile.plugin.recv(65536)):
                got[msg["id"]] = msg
        except BlockingIOError:
            pass
    assert got[7]["error"]["code"] == p.REFUSED
    assert got[8]["error"]["code"] == p.METHOD_NOT_FOUND
