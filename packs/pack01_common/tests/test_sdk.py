"""The plugin SDK against a scripted host on the other end of a socket pair."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aurora_common import protocol as p
from aurora_common.sdk import CallFailed, Context, NotConnected, Plugin


class Host:
    """The supervisor's end, reduced to reading and writing messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = p.Decoder()
        self.inbox: list[Any] = []
        sock.settimeout(5)

    def read(self) -> Any:
        while not self.inbox:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("plugin closed the connection")
            self.inbox += self.decoder.feed(chunk)
        return self.inbox.pop(0)

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(p.encode(message))

    def handshake(self) -> dict[str, Any]:
        hello = self.read()
        self.send(p.result(hello["id"], {"protocol": p.PROTOCOL, "limits": {"max_in_flight": 4}}))
        return hello

    def answers(self, count: int) -> dict[Any, Any]:
        out = {}
        while len(out) < count:
            msg = self.read()
            out[msg["id"]] = msg
        return out


@pytest.fixture
def served() -> Iterator[tuple[Plugin, Host, threading.Thread]]:
    plugin = Plugin()

    @plugin.function("echo")
    def echo(args: Any, ctx: Context) -> Any:
        return args

    @plugin.function("slow")
    def slow(args: Any, ctx: Context) -> Any:
        ctx.cancelled.wait(args["seconds"])
        return {"cancelled": ctx.cancelled.is_set()}

    @plugin.function("boom")
    def boom(args: Any, ctx: Context) -> Any:
        raise RuntimeError("it broke")

    @plugin.function("unsendable")
    def unsendable(args: Any, ctx: Context) -> Any:
        if args == "circular":
            circular: dict[str, Any] = {}
            circular["self"] = circular
            return circular
        return {"nan": float("nan"), "object": object()}[args]

    state = {"ok": True}

    @plugin.health
    def health() -> tuple[bool, str]:
        return state["ok"], "fine" if state["ok"] else "stuck"

    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=plugin.serve, args=(theirs.detach(),), daemon=True)
    thread.start()
    host = Host(ours)
    plugin.state = state  # type: ignore[attr-defined]
    yield plugin, host, thread
    ours.close()
    thread.join(5)
    assert not thread.is_alive(), "serve() did not return after the host hung up"


def test_handshake_names_versions_functions_and_health(served: Any) -> None:
    _plugin, host, _ = served
    hello = host.handshake()
    assert hello["method"] == "aurora.hello"
    assert hello["params"] == {
        "protocols": [p.PROTOCOL],
        "functions": ["boom", "echo", "slow", "unsendable"],
        "health": True,
    }


def test_calls_health_and_errors_each_get_their_answer(served: Any) -> None:
    plugin, host, _ = served
    host.handshake()
    host.send(
        p.request(1, "aurora.call", {"function": "echo", "args": {"a": [1]}, "deadline_ms": 1000})
    )
    host.send(p.request(2, "aurora.call", {"function": "boom", "args": None, "deadline_ms": 1000}))
    host.send(p.request(3, "aurora.call", {"function": "nope", "args": None, "deadline_ms": 1000}))
    host.send(p.request(4, "aurora.health", {}))
    host.send(p.request(5, "aurora.frobnicate", {}))
    got = host.answers(5)
    assert got[1]["result"] == {"value": {"a": [1]}}
    assert got[2]["error"]["code"] == p.PLUGIN_ERROR
    assert "it broke" in got[2]["error"]["message"]
    assert got[3]["error"]["code"] == p.METHOD_NOT_FOUND
    assert got[4]["result"] == {"status": "serving", "message": "fine"}
    assert got[5]["error"]["code"] == p.METHOD_NOT_FOUND
    plugin.state["ok"] = False
    host.send(p.request(6, "aurora.health", {}))
    assert host.read()["result"] == {"status": "not-serving", "message": "stuck"}


def test_a_result_that_is_not_json_is_a_plugin_error_and_serving_goes_on(served: Any) -> None:
    _plugin, host, _ = served
    host.handshake()
    for i, kind in enumerate(("circular", "nan", "object"), 1):
        host.send(p.request(i, "aurora.call", {"function": "unsendable", "args": kind}))
    got = host.answers(3)
    for i in (1, 2, 3):
        assert got[i]["error"]["code"] == p.PLUGIN_ERROR
        assert "result is not JSON" in got[i]["error"]["message"]
    host.send(p.request(4, "aurora.call", {"function": "echo", "args": "still here"}))
    assert host.read()["result"] == {"value": "still here"}


def test_calls_run_concurrently_and_cancel_reaches_the_function(served: Any) -> None:
    _plugin, host, _ = served
    host.handshake()
    started = time.monotonic()
    for i in (1, 2, 3):
        host.send(
            p.request(
                i,
                "aurora.call",
                {"function": "slow", "args": {"seconds": 1.0}, "deadline_ms": 5000},
            )
        )
    host.send(
        p.request(
            4, "aurora.call", {"function": "slow", "args": {"seconds": 30}, "deadline_ms": 100}
        )
    )
    host.send(p.notification("aurora.cancel", {"id": 4}))
    got = host.answers(4)
    assert got[4]["result"] == {"value": {"cancelled": True}}
    assert all(got[i]["result"] == {"value": {"cancelled": False}} for i in (1, 2, 3))
    assert time.monotonic() - started < 2.5, "three 1 s calls ran one after another"


def test_log_records_and_calls_out_go_to_the_host(served: Any) -> None:
    plugin, host, _ = served
    host.handshake()
    plugin.log("warning", "disk nearly full", used=0.93)
    assert host.read() == p.notification(
        "aurora.log", {"level": "warning", "message": "disk nearly full", "fields": {"used": 0.93}}
    )
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(plugin.call("acme.b", "echo", [1])))
    caller.start()
    out = host.read()
    assert out["method"] == "aurora.call"
    assert out["params"] == {
        "plugin": "acme.b",
        "function": "echo",
        "args": [1],
        "timeout_ms": 10000,
    }
    host.send(p.result(out["id"], {"value": "pong"}))
    caller.join(5)
    assert answers == ["pong"]
    failures: list[Exception] = []

    def refused() -> None:
        try:
            plugin.call("acme.c", "secret")
        except CallFailed as exc:
            failures.append(exc)

    caller = threading.Thread(target=refused)
    caller.start()
    out = host.read()
    host.send(p.error(out["id"], p.REFUSED, "not granted: acme.c/secret"))
    caller.join(5)
    assert [f.code for f in failures] == [p.REFUSED]  # type: ignore[attr-defined]


def test_garbage_from_the_host_gets_an_invalid_request_answer(served: Any) -> None:
    _plugin, host, _ = served
    host.handshake()
    host.send({"jsonrpc": "1.0", "id": 9, "method": "x"})
    answer = host.read()
    assert answer["id"] == 9 and answer["error"]["code"] == p.INVALID_REQUEST


def test_serve_without_a_connection_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(p.FD_VARIABLE, raising=False)
    with pytest.raises(NotConnected, match=p.FD_VARIABLE):
        Plugin().serve()


def _serve(plugin: Plugin) -> tuple[Host, threading.Thread, socket.socket]:
    ours, theirs = socket.socketpair()
    thread = threading.Thread(target=plugin.serve, args=(theirs.detach(),), daemon=True)
    thread.start()
    host = Host(ours)
    host.handshake()
    return host, thread, ours


def test_with_every_worker_busy_calls_queue_and_a_cancel_still_arrives() -> None:
    plugin = Plugin(workers=1)

    @plugin.function("slow")
    def slow(args: Any, ctx: Context) -> Any:
        ctx.cancelled.wait(args["seconds"])
        return {"cancelled": ctx.cancelled.is_set()}

    host, thread, ours = _serve(plugin)
    try:
        host.send(p.request(1, "aurora.call", {"function": "slow", "args": {"seconds": 30}}))
        host.send(p.request(2, "aurora.call", {"function": "slow", "args": {"seconds": 0}}))
        time.sleep(0.2)  # call 1 runs on the one worker; call 2 waits for it
        host.send(p.notification("aurora.cancel", {"id": 1}))
        started = time.monotonic()
        got = host.answers(2)
        assert got[1]["result"] == {"value": {"cancelled": True}}
        assert got[2]["result"] == {"value": {"cancelled": False}}
        assert time.monotonic() - started < 5, "the cancel was not read while the worker ran"
    finally:
        ours.close()
        thread.join(5)
    assert not thread.is_alive()


def test_a_function_that_calls_out_gets_its_answer_while_it_runs() -> None:
    plugin = Plugin(workers=2)

    @plugin.function("relay")
    def relay(args: Any, ctx: Context) -> Any:
        return plugin.call("acme.b", "echo", args, timeout=5)

    host, thread, ours = _serve(plugin)
    try:
        host.send(p.request(1, "aurora.call", {"function": "relay", "args": [7]}))
        out = host.read()  # the call out, sent by the thread that read call 1
        assert out["method"] == "aurora.call" and out["params"]["args"] == [7]
        host.send(p.result(out["id"], {"value": "pong"}))
        assert host.read() == p.result(1, {"value": "pong"})
    finally:
        ours.close()
        thread.join(5)
    assert not thread.is_alive()


def test_a_bug_while_reading_ends_serve_rather_than_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugin = Plugin()

    def broken(obj: Any) -> None:
        raise KeyError("a bug")

    host, thread, ours = _serve(plugin)
    monkeypatch.setattr(plugin, "_dispatch", broken)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the bug's traceback
    try:
        host.send(p.notification("aurora.cancel", {"id": 1}))
        thread.join(5)
        assert not thread.is_alive(), "serve() hung after its reader failed"
    finally:
        ours.close()


def test_a_burst_in_one_write_runs_workers_at_once_and_never_more() -> None:
    plugin = Plugin(workers=3)
    lock = threading.Lock()
    running = {"now": 0, "most": 0}
    all_three = threading.Barrier(3, timeout=5)

    @plugin.function("meet")
    def meet(args: Any, ctx: Context) -> Any:
        with lock:
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        try:
            if args["wait"]:
                all_three.wait()  # only passes if three calls run at the same time
            return args["n"]
        finally:
            with lock:
                running["now"] -= 1

    host, thread, ours = _serve(plugin)
    try:
        # One write, one chunk: every call is read at once and the rest queue; the
        # queued ones must each be started (by the doorbell), in order of arrival.
        burst = b"".join(
            p.encode(
                p.request(n, "aurora.call", {"function": "meet", "args": {"n": n, "wait": n <= 3}})
            )
            for n in range(1, 21)
        )
        ours.sendall(burst)
        got = host.answers(20)
        assert {n: got[n]["result"] for n in got} == {n: {"value": n} for n in range(1, 21)}
        assert running["most"] == 3
    finally:
        ours.close()
        thread.join(5)
    assert not thread.is_alive()
