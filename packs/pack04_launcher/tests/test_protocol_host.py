"""Calls through the operator's socket, the protocol host and SDK plugins, as the loop runs them."""

from __future__ import annotations

import queue
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
from aurora_common.calls import EXIT_CODES, call
from aurora_common.sdk import Context, Plugin
from launcher.api_socket import ApiServer
from launcher.channel import FunctionSpec
from launcher.protocol_host import HealthPolicy, ProtocolHost, call_grant

SPECS = {
    "echo": FunctionSpec({"type": "object"}, None),
    "fail": FunctionSpec(None, None),
    "slow": FunctionSpec(None, None),
    "ask": FunctionSpec(None, None),
}


class Loop:
    """The supervisor's loop reduced to the protocol host and the API socket."""

    def __init__(self, sock_path: Path, allowed: tuple[int, ...] = (0,)) -> None:
        self.grants: dict[str, set[str]] = {}
        self.logs: list[tuple[str, str, str, dict[str, Any]]] = []
        self.restarts: list[tuple[str, str]] = []
        self.host = ProtocolHost(
            lambda pid: self.grants.get(pid, set()), on_log=lambda *rec: self.logs.append(rec)
        )
        self.api = ApiServer(sock_path, self.host, allowed_uids=allowed)
        self.api.open()
        self.jobs: queue.Queue[Callable[[], None]] = queue.Queue()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def do(self, job: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            job()
            done.set()

        self.jobs.put(run)
        assert done.wait(5)

    def _run(self) -> None:
        while not self.stopping:
            while not self.jobs.empty():
                self.jobs.get()()
            now = time.monotonic()
            self.restarts += self.host.tick(now)
            self.api.tick(now)
            channels = {c.fileno(): c for c in self.host.channels()}
            reads = list(channels) + self.api.read_fds()
            writes = [fd for fd, c in channels.items() if c.wants_write] + self.api.write_fds()
            readable, writable, _ = select.select(reads, writes, [], 0.02)
            now = time.monotonic()
            for fd in set(readable) | set(writable):
                if fd in channels:
                    if fd in readable:
                        channels[fd].on_readable(now)
                    if fd in writable:
                        channels[fd].on_writable()
                else:
                    self.api.on_ready(fd, fd in readable, fd in writable, now)

    def start_plugin(
        self,
        plugin_id: str,
        plugin: Plugin,
        health: HealthPolicy | None = None,
    ) -> threading.Thread:
        ours, theirs = socket.socketpair()
        thread = threading.Thread(target=plugin.serve, args=(theirs.detach(),), daemon=True)
        thread.start()
        self.do(lambda: self.host.attach(plugin_id, ours, SPECS, health, time.monotonic()))
        return thread

    def close(self) -> None:
        self.do(lambda: self.host.close("test over"))
        self.stopping = True
        self.thread.join(5)
        self.api.close()


def make_plugin(name: str = "a") -> Plugin:
    plugin = Plugin()

    @plugin.function("echo")
    def echo(args: Any, ctx: Context) -> Any:
        plugin.log("warning", f"echo from {name}", n=1)
        return {"from": name, "args": args}

    @plugin.function("fail")
    def fail(args: Any, ctx: Context) -> Any:
        raise RuntimeError("no can do")

    @plugin.function("slow")
    def slow(args: Any, ctx: Context) -> Any:
        ctx.cancelled.wait(30)
        return None

    @plugin.function("ask")
    def ask(args: Any, ctx: Context) -> Any:
        return plugin.call(args["plugin"], args["function"], {"q": 1}, timeout=2)

    return plugin


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    lp = Loop(tmp_path / "api.sock")
    yield lp
    lp.close()


def test_every_outcome_of_an_operator_call_has_its_exit_code(loop: Loop) -> None:
    loop.start_plugin("acme.a", make_plugin())
    sock = str(loop.api.path)
    ok = call(sock, "acme.a", "echo", {"x": 1}, timeout=5)
    assert (ok.kind, ok.value, ok.exit_code) == ("result", {"from": "a", "args": {"x": 1}}, 0)
    outcomes = {
        "plugin-error": call(sock, "acme.a", "fail", None, timeout=5),
        "invalid": call(sock, "acme.a", "echo", [1, 2], timeout=5),
        "refused": call(sock, "acme.a", "nope", None, timeout=5),
        "not-running": call(sock, "acme.zzz", "echo", {}, timeout=5),
        "timeout": call(sock, "acme.a", "slow", None, timeout=0.3),
    }
    for kind, outcome in outcomes.items():
        assert outcome.kind == kind, (kind, outcome)
        assert outcome.exit_code == EXIT_CODES[kind]
    assert "no can do" in outcomes["plugin-error"].message
    assert loop.logs[0][:3] == ("acme.a", "warning", "echo from a")


def test_a_caller_whose_uid_is_not_allowed_is_refused(tmp_path: Path) -> None:
    lp = Loop(tmp_path / "api.sock", allowed=(4_000_000,))
    try:
        lp.start_plugin("acme.a", make_plugin())
        outcome = call(str(lp.api.path), "acme.a", "echo", {}, timeout=5)
        assert outcome.kind == "refused" and "not allowed" in outcome.message
        assert lp.api.refused == 1
    finally:
        lp.close()


def test_no_launcher_is_not_running(tmp_path: Path) -> None:
    outcome = call(str(tmp_path / "absent.sock"), "acme.a", "echo", {}, timeout=1)
    assert outcome.kind == "not-running" and outcome.exit_code == 7


def test_calls_between_plugins_need_a_grant(loop: Loop) -> None:
    loop.start_plugin("acme.a", make_plugin("a"))
    loop.start_plugin("acme.b", make_plugin("b"))
    sock = str(loop.api.path)
    asked = {"plugin": "acme.b", "function": "echo"}
    refused = call(sock, "acme.a", "ask", asked, timeout=5)
    assert refused.kind == "plugin-error" and "not granted acme.b/echo" in refused.message
    loop.grants["acme.a"] = {call_grant("acme.b", "echo")}
    granted = call(sock, "acme.a", "ask", asked, timeout=5)
    assert granted.kind == "result" and granted.value == {"from": "b", "args": {"q": 1}}
    loop.grants["acme.a"] = set()  # revoked
    assert call(sock, "acme.a", "ask", asked, timeout=5).kind == "plugin-error"


def test_a_call_during_a_restart_waits_for_the_new_run(loop: Loop) -> None:
    loop.start_plugin("acme.a", make_plugin("first"))
    sock = str(loop.api.path)
    assert call(sock, "acme.a", "echo", {}, timeout=5).value["from"] == "first"
    loop.do(lambda: loop.host.detach("acme.a", "crashed", restarting=True))
    results: list[Any] = []
    caller = threading.Thread(target=lambda: results.append(call(sock, "acme.a", "echo", {}, 5)))
    caller.start()
    time.sleep(0.3)  # the call is waiting: nothing runs acme.a
    assert not results
    loop.start_plugin("acme.a", make_plugin("second"))
    caller.join(5)
    assert results[0].kind == "result" and results[0].value["from"] == "second"


def test_a_deadlocked_plugin_turns_unhealthy_and_is_reported_for_restart(loop: Loop) -> None:
    plugin = make_plugin()
    stuck = threading.Event()

    @plugin.health
    def health() -> bool:
        stuck.wait(10)  # deadlocked: never answers in time
        return True

    loop.start_plugin("acme.a", plugin, HealthPolicy(interval_s=0.1, timeout_s=0.1, failures=2))
    end = time.monotonic() + 5
    while not loop.restarts and time.monotonic() < end:
        time.sleep(0.05)
    status: dict[str, Any] = {}
    loop.do(lambda: status.update(loop.host.status("acme.a")))
    stuck.set()
    assert loop.restarts and loop.restarts[0][0] == "acme.a"
    assert loop.restarts[0][1].startswith("unhealthy")
    assert status["health"] == "unhealthy"
