"""The plugin protocol through the supervisor: every call outcome, health, on-call, hostile peers.

Real processes: the supervisor's loop (as the service runs it) in a thread, plugins
started through a sandbox with their protocol connection, callers on the API socket
(``aurora_common.calls``). The passthrough sandbox tests the supervisor's own logic;
``test_protocol_sandbox.py`` runs the same paths through pack03.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aurora_common.calls import EXIT_CODES, CallOutcome, call
from launcher import status
from launcher.paths import Paths
from launcher.supervisor import Supervisor
from launcher_testing import (
    PASSTHROUGH_ROOT,
    FakeRegistry,
    LoopThread,
    real_sandbox_root,
    wait_until,
)

SDK_HEAD = """
import os, sys, time
sys.path.insert(0, os.environ["AURORA_PLUGIN_SDK"])
from aurora_common.sdk import Plugin
plugin = Plugin()
DATA = os.environ["AURORA_PLUGIN_DATA"]
"""

SERVER = (
    SDK_HEAD
    + """
stuck = []
open(os.path.join(DATA, "starts"), "a").write("x")

@plugin.function("echo")
def echo(args, ctx):
    plugin.log("info", "echo\\ncalled", n=1)
    return args

@plugin.function("fail")
def fail(args, ctx):
    raise RuntimeError("it broke")

@plugin.function("slow")
def slow(args, ctx):
    cancelled = ctx.cancelled.wait(args["seconds"])
    open(os.path.join(DATA, "cancelled"), "w").write(str(cancelled))
    return {}

@plugin.function("crash")
def crash(args, ctx):
    os._exit(9)

@plugin.function("bad-result")
def bad_result(args, ctx):
    return "not an object"

@plugin.function("stick")
def stick(args, ctx):
    stuck.append(1)
    return {}

@plugin.health
def health():
    while stuck:  # a deadlock: the health check never answers
        time.sleep(1)
    return True, "all good"

plugin.serve()
"""
)

OBJECT = {"type": "object"}
SERVER_API = {
    "functions": {
        "echo": {"parameters": {"type": "object", "required": ["text"]}, "result": OBJECT},
        "fail": {},
        "slow": {"parameters": {"type": "object", "required": ["seconds"]}},
        "crash": {},
        "bad-result": {"result": OBJECT},
        "stick": {},
    },
    "health": {"interval_s": 0.2, "timeout_s": 0.3, "failures": 2},
}


@pytest.fixture(params=["passthrough", "pack03-fork-server", "pack03-one-shot"])
def loop(
    request: pytest.FixtureRequest, paths: Paths, make_supervisor: Callable[..., Supervisor]
) -> Iterator[Callable[..., LoopThread]]:
    """The supervisor's loop on the passthrough sandbox (its own logic), and through
    pack03 as installed: the fork server, and one-shot ``launch.py``."""
    started: list[LoopThread] = []
    root = PASSTHROUGH_ROOT if request.param == "passthrough" else real_sandbox_root()
    if root != PASSTHROUGH_ROOT and os.geteuid() != 0:
        pytest.skip("pack03 runs plugins under their own uid: needs root")
    fork_server = request.param == "pack03-fork-server"

    def _start(**settings: Any) -> LoopThread:
        settings.setdefault("max_restarts", 5)
        settings.setdefault("fork_server", fork_server)
        thread = LoopThread(make_supervisor(sandbox_root=root, **settings))
        if fork_server:
            assert thread.sup.server is not None, thread.sup.server_error
        started.append(thread)
        return thread

    yield _start
    for thread in started:
        thread.stop()


def _call(paths: Paths, plugin: str, function: str, args: Any = None, timeout: float = 10.0):
    return call(str(paths.api_socket), plugin, function, args, timeout)


def _ready(paths: Paths, plugin: str) -> CallOutcome:
    """Call echo until the plugin has completed its handshake (it is starting)."""

    def attempt() -> CallOutcome | None:
        outcome = _call(paths, plugin, "echo", {"text": "ping"}, 5.0)
        return outcome if outcome.kind == "result" else None

    return wait_until(attempt, what=f"{plugin} answers")


def test_every_call_outcome_has_its_kind_and_exit_code(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    fake_registry.add("acme.plain", "import time\nwhile True: time.sleep(1)")
    fake_registry.add("acme.off", SERVER, manifest_extra=SERVER_API, enabled=False)
    thread = loop()
    assert _ready(paths, "acme.server").value == {"text": "ping"}
    layers = wait_until(lambda: thread.sup.status_doc()["acme.server"]["layers"])
    if thread.sup.slots["acme.server"].sandbox.root != PASSTHROUGH_ROOT:  # type: ignore[union-attr]
        assert {"protocol", "user", "seccomp", "mount-namespace"} <= set(layers), layers

    outcomes = {
        "result": _call(paths, "acme.server", "echo", {"text": "hi"}),
        "plugin-error": _call(paths, "acme.server", "fail", {}),
        "invalid": _call(paths, "acme.server", "echo", {"no-text": 1}),
        "refused": _call(paths, "acme.server", "no-such-function", {}),
        "not-running": _call(paths, "acme.off", "echo", {"text": "x"}),
        "timeout": _call(paths, "acme.server", "slow", {"seconds": 30}, timeout=0.5),
    }
    for kind, outcome in outcomes.items():
        assert outcome.kind == kind, (kind, outcome)
        assert outcome.exit_code == EXIT_CODES[kind]
    assert outcomes["result"].value == {"text": "hi"}
    assert "it broke" in outcomes["plugin-error"].message
    assert "text" in outcomes["invalid"].message
    assert "not enabled" in outcomes["not-running"].message
    # The deadline travelled: the plugin was told to cancel.
    cancelled = paths.plugin_data("acme.server") / "cancelled"
    wait_until(lambda: cancelled.is_file() and cancelled.read_text() == "True", what="cancel")
    # A result that breaks its declared schema is the plugin's error, never passed on.
    bad = _call(paths, "acme.server", "bad-result", {})
    assert bad.kind == "plugin-error" and "schema" in bad.message
    # A plugin without the protocol says so.
    plain = _call(paths, "acme.plain", "echo", {})
    assert plain.kind == "not-running" and "protocol" in plain.message
    unknown = _call(paths, "acme.nobody", "echo", {})
    assert unknown.kind == "not-running" and "registry" in unknown.message


def test_several_calls_in_flight_and_a_crash_mid_call(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    loop()
    _ready(paths, "acme.server")
    results: dict[int, CallOutcome] = {}

    def one(i: int) -> None:
        results[i] = _call(paths, "acme.server", "echo", {"text": str(i)})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert {i: o.value for i, o in results.items()} == {i: {"text": str(i)} for i in range(8)}

    # A call in flight when the plugin dies gets a clear not-running, then the
    # supervisor restarts it and later calls are answered again.
    slow: list[CallOutcome] = []
    waiter = threading.Thread(
        target=lambda: slow.append(_call(paths, "acme.server", "slow", {"seconds": 20}))
    )
    waiter.start()
    time.sleep(0.3)
    crashed = _call(paths, "acme.server", "crash", {})
    waiter.join(20)
    assert crashed.kind == "not-running", crashed
    assert slow and slow[0].kind == "not-running", slow
    assert _ready(paths, "acme.server").kind == "result"
    assert (paths.plugin_data("acme.server") / "starts").read_text() == "xx"


def test_a_deadlocked_plugin_becomes_unhealthy_and_is_restarted(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    thread = loop()
    _ready(paths, "acme.server")
    sup = thread.sup
    wait_until(lambda: sup.status_doc()["acme.server"]["health"] == "healthy", what="healthy")
    assert sup.status_doc()["acme.server"]["health_message"] == "all good"
    assert _call(paths, "acme.server", "stick", {}).kind == "result"
    wait_until(
        lambda: (paths.plugin_data("acme.server") / "starts").read_text() == "xx",
        what="a restart after the health check stopped answering",
    )
    log_text = paths.plugin_log("acme.server").read_text()
    assert "unhealthy" in log_text or "unhealthy" in str(sup.slots["acme.server"].reason)
    assert _ready(paths, "acme.server").kind == "result"


def test_log_records_land_in_the_plugin_log_with_their_level(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    loop()
    _ready(paths, "acme.server")
    lines = wait_until(
        lambda: [
            line
            for line in paths.plugin_log("acme.server").read_text().splitlines()
            if line.startswith("[info ")
        ],
        what="a log record",
    )
    # The message's newline is escaped: a record is always one line.
    assert any("echo\\x0acalled" in line for line in lines), lines


ON_CALL = (
    SDK_HEAD
    + """
open(os.path.join(DATA, "starts"), "a").write("x")

@plugin.function("echo")
def echo(args, ctx):
    return args

plugin.serve()
"""
)


@pytest.mark.parametrize("standby", [True, False], ids=["standby", "cold"])
def test_an_on_call_plugin_starts_at_its_first_call_and_stops_when_idle(
    standby: bool, loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    api = {"functions": {"echo": {}}, "activation": "on-call", "idle_seconds": 1}
    fake_registry.add("acme.lazy", ON_CALL, manifest_extra=api)
    thread = loop(standby=standby)
    sup = thread.sup

    def idle() -> dict[str, Any] | None:
        doc = sup.status_doc().get("acme.lazy", {})
        return doc if doc.get("state") == status.IDLE and doc["standby"] is standby else None

    doc = wait_until(idle, what="idle" + (", standing by" if standby else ""))
    assert (doc["pid"] is not None) is standby
    starts = paths.plugin_data("acme.lazy") / "starts"
    assert not starts.exists()  # standing by, none of the plugin's code has run
    assert _call(paths, "acme.lazy", "echo", {"n": 1}).value == {"n": 1}
    assert starts.read_text() == "x"
    running = sup.status_doc()["acme.lazy"]
    assert running["state"] == status.RUNNING and not running["standby"]
    # Stopped after its idle time, then (standby) a new interpreter waits for the next call.
    wait_until(lambda: (d := idle()) and d["pid"] != running["pid"], what="the idle stop")
    assert "s without calls" in paths.plugin_log("acme.lazy").read_text()
    assert starts.read_text() == "x"  # a new standby runs no plugin code either
    assert _call(paths, "acme.lazy", "echo", {"n": 2}).value == {"n": 2}
    assert starts.read_text() == "xx"


CALLER = (
    SDK_HEAD
    + """
from aurora_common.sdk import CallFailed

@plugin.function("relay")
def relay(args, ctx):
    try:
        return {"value": plugin.call(args["plugin"], args["function"], args["args"], timeout=5)}
    except CallFailed as exc:
        return {"failed": exc.code, "message": exc.message}

plugin.serve()
"""
)


def test_calls_between_plugins_only_as_granted(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    asks = {"functions": {"relay": {}}, "calls": ["acme.server/echo", "acme.server/fail"]}
    # Asks for echo and fail, granted echo only; a grant the manifest does not ask for
    # (stick) is not effective either.
    fake_registry.add(
        "acme.caller",
        CALLER,
        manifest_extra=asks,
        calls_granted=["call:acme.server/echo", "call:acme.server/stick"],
    )
    loop()
    _ready(paths, "acme.server")

    def relay(function: str, args: Any) -> Any:
        request = {"plugin": "acme.server", "function": function, "args": args}
        return wait_until(
            lambda: (
                (o := _call(paths, "acme.caller", "relay", request)).kind == "result" and o.value
            ),
            what="acme.caller answers",
        )

    assert relay("echo", {"text": "via"}) == {"value": {"text": "via"}}
    refused = relay("fail", {})
    assert refused["failed"] == -32003 and "not granted" in refused["message"]
    assert relay("stick", {})["failed"] == -32003
    # Revoked (the registry no longer lists it): refused from the next call on.
    fake_registry.set("acme.caller", granted=[])
    wait_until(lambda: relay("echo", {"text": "x"}).get("failed") == -32003, what="revoke")


HOSTILE = {
    # Never completes the handshake, but promised health: restarted, then failed.
    "silent": "import time\nwhile True: time.sleep(1)",
    # Garbage instead of a frame.
    "garbage": "import os\nos.write(3, b'GET / HTTP/1.1\\r\\n\\r\\n')\nimport time\ntime.sleep(60)",
    # A Content-Length far over the limit.
    "oversized": (
        "import os\nos.write(3, b'Content-Length: 999999999\\r\\n\\r\\n')\n"
        "import time\ntime.sleep(60)"
    ),
    # A flood of notifications after a valid hello.
    "flood": (
        "import json, os, time\n"
        "def send(o):\n"
        "    b = json.dumps(o).encode()\n"
        "    os.write(3, b'Content-Length: %d\\r\\n\\r\\n' % len(b) + b)\n"
        "send({'jsonrpc': '2.0', 'id': 0, 'method': 'aurora.hello',"
        " 'params': {'protocols': ['aurora-plugin-protocol-v1'], 'functions': []}})\n"
        "try:\n"
        "    while True:\n"
        "        send({'jsonrpc': '2.0', 'method': 'x.y', 'params': {}})\n"
        "except OSError:\n"
        "    time.sleep(60)\n"
    ),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_peer_ends_in_a_recorded_reason(
    kind: str, loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    api = {"functions": {"echo": {}}, "health": {"interval_s": 0.2, "timeout_s": 0.2}}
    fake_registry.add(f"acme.{kind}", HOSTILE[kind], manifest_extra=api)
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    thread = loop(max_restarts=1, handshake_s=1.0)
    sup = thread.sup

    def reason() -> str | None:
        doc = sup.status_doc().get(f"acme.{kind}", {})
        return doc.get("protocol_reason") or (
            doc.get("reason") if doc.get("state") in (status.BACKOFF, status.FAILED) else None
        )

    why = wait_until(reason, timeout=30, what=f"{kind}: a recorded reason")
    assert "protocol" in why or "handshake" in why, why
    # The supervisor goes on serving the others.
    assert _ready(paths, "acme.server").kind == "result"
    assert not thread.errors
    json.dumps(sup.status_doc())  # the status file can still be written


def _call_as(uid: int, paths: Paths) -> dict[str, Any]:
    """A call from a process of ``uid``: a fork of this one (python itself lies under
    root's 0700 home here) that drops to that uid; the outcome comes back on a pipe."""
    import os

    r, w = os.pipe()
    # The test's tmp dir lies under root's 0700 pytest dir: reach the run dir through a
    # descriptor opened before the switch, so only the launcher's own modes decide.
    run_fd = os.open(paths.run, os.O_PATH | os.O_DIRECTORY)
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sock = f"/proc/self/fd/{run_fd}/{paths.api_socket.relative_to(paths.run)}"
            o = call(sock, "acme.server", "echo", {"text": "u"}, 5)
            os.write(w, json.dumps({"kind": o.kind, "message": o.message}).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(run_fd)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    os.waitpid(child, 0)
    doc: dict[str, Any] = json.loads(data)
    return doc


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="needs root to run callers as other uids")  # fmt: skip
def test_only_root_and_the_uids_the_operator_allows_may_call(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    import os
    import stat

    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    thread = loop()
    _ready(paths, "acme.server")
    assert stat.S_IMODE(os.stat(paths.api_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(paths.api_socket).st_mode) == 0o600
    stranger = _call_as(54321, paths)
    assert stranger["kind"] == "refused", stranger
    thread.stop()
    thread.sup.close()
    # The operator allows uid 54321: it may call; anyone else still may not.
    thread = loop(api_callers=(54321,))
    _ready(paths, "acme.server")
    assert _call_as(54321, paths)["kind"] == "result"
    other = _call_as(54322, paths)
    assert other["kind"] == "refused" and "not allowed" in other["message"], other


def test_a_client_makes_many_calls_on_one_connection_and_survives_a_launcher_restart(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    from aurora_common.calls import Client

    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    thread = loop()
    _ready(paths, "acme.server")
    with Client(str(paths.api_socket)) as client:
        answers = [client.call("acme.server", "echo", {"text": str(i)}, 5) for i in range(20)]
        assert [a.value for a in answers] == [{"text": str(i)} for i in range(20)]
        # An invalid request is answered and the connection goes on.
        assert client.call("acme.server", "echo", {"x": 1}, 5).kind == "invalid"
        assert client.call("acme.server", "echo", {"text": "after"}, 5).value == {"text": "after"}
        # A timed-out call closes the connection: its late answer is never taken for the
        # next call's.
        assert client.call("acme.server", "slow", {"seconds": 1}, 0.3).kind == "timeout"
        assert client.call("acme.server", "echo", {"text": "next"}, 5).value == {"text": "next"}
        thread.stop()
        thread.sup.close()
        assert client.call("acme.server", "echo", {"text": "x"}, 5).kind == "not-running"
        loop()
        _ready(paths, "acme.server")
        assert client.call("acme.server", "echo", {"text": "back"}, 5).value == {"text": "back"}


def test_a_plugin_that_never_said_hello_and_runs_on_is_reported_at_once(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    # It never says hello and promised no health: it runs on (process supervision only),
    # and a call says why at once rather than waiting for its deadline.
    fake_registry.add("acme.silent", HOSTILE["silent"], manifest_extra={"functions": {"f": {}}})
    thread = loop(handshake_s=0.5)
    wait_until(
        lambda: thread.sup.status_doc().get("acme.silent", {}).get("protocol") == "closed",
        what="the protocol closed",
    )
    started = time.monotonic()
    outcome = _call(paths, "acme.silent", "f", {}, timeout=20)
    assert outcome.kind == "not-running" and "handshake" in outcome.message, outcome
    assert time.monotonic() - started < 5
    assert thread.sup.status_doc()["acme.silent"]["state"] == status.RUNNING


# --- found by an adversary (adv11): each attack, then what must hold ------------------

RAW = """
import json, os, signal, socket, sys, time
sock = socket.socket(fileno=3)
buf = b""
def send(o):
    b = json.dumps(o).encode()
    sock.sendall(b"Content-Length: %d\\r\\n\\r\\n" % len(b) + b)
def send_raw(text):
    b = text.encode()
    sock.sendall(b"Content-Length: %d\\r\\n\\r\\n" % len(b) + b)
def recv():
    global buf
    while b"\\r\\n\\r\\n" not in buf:
        buf += sock.recv(65536) or sys.exit(0)
    head, _, buf = buf.partition(b"\\r\\n\\r\\n")
    n = int(head.split(b":")[1])
    while len(buf) < n:
        buf += sock.recv(65536) or sys.exit(0)
    body, buf = buf[:n], buf[n:]
    return json.loads(body)
def hello(functions=("f",), protocols=("aurora-plugin-protocol-v1",)):
    send({"jsonrpc": "2.0", "id": 0, "method": "aurora.hello",
          "params": {"protocols": list(protocols), "functions": list(functions)}})
    return recv()
"""


def _other_call_ms(paths: Paths) -> float:
    started = time.monotonic()
    assert _call(paths, "acme.server", "echo", {"text": "x"}, 10).kind == "result"
    return (time.monotonic() - started) * 1000


def test_an_answer_out_of_json_range_is_a_clear_outcome_not_a_lost_reply(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = RAW + (
        "hello()\n"
        "while True:\n"
        "    m = recv()\n"
        "    if m.get('method') == 'aurora.call':\n"
        '        send_raw(\'{"jsonrpc": "2.0", "id": %d, "result": {"value": 1e999}}\''
        " % m['id'])\n"
    )
    fake_registry.add("acme.inf", code, manifest_extra={"functions": {"f": {}}})
    thread = loop()
    wait_until(lambda: thread.sup.status_doc().get("acme.inf", {}).get("protocol") == "ready")
    started = time.monotonic()
    outcome = _call(paths, "acme.inf", "f", {}, timeout=20)
    assert outcome.kind in ("plugin-error", "not-running"), outcome
    assert "range" in outcome.message, outcome
    assert time.monotonic() - started < 5
    assert not thread.errors


def test_health_answers_of_not_serving_make_it_unhealthy_and_restarted(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = RAW + (
        "open(os.path.join(os.environ['AURORA_PLUGIN_DATA'], 'starts'), 'a').write('x')\n"
        "hello()\n"
        "while True:\n"
        "    m = recv()\n"
        "    if m.get('method') == 'aurora.health':\n"
        "        send({'jsonrpc': '2.0', 'id': m['id'],"
        " 'result': {'status': 'not-serving', 'message': 'disk gone'}})\n"
    )
    api = {"functions": {"f": {}}, "health": {"interval_s": 0.1, "timeout_s": 1, "failures": 2}}
    fake_registry.add("acme.sick", code, manifest_extra=api)
    loop()
    starts = paths.plugin_data("acme.sick") / "starts"
    wait_until(lambda: starts.is_file() and len(starts.read_text()) >= 2, what="a restart")
    assert "unhealthy: disk gone" in paths.plugin_log("acme.sick").read_text()


def test_closing_its_connection_does_not_escape_its_health_checks(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = RAW + (
        "open(os.path.join(os.environ['AURORA_PLUGIN_DATA'], 'starts'), 'a').write('x')\n"
        "hello()\n"
        "sock.shutdown(socket.SHUT_RDWR)\n"
        "time.sleep(60)\n"
    )
    api = {"functions": {"f": {}}, "health": {"interval_s": 0.2, "timeout_s": 0.2}}
    fake_registry.add("acme.quiet", code, manifest_extra=api)
    loop()
    starts = paths.plugin_data("acme.quiet") / "starts"
    wait_until(lambda: starts.is_file() and len(starts.read_text()) >= 2, what="a restart")
    assert "unhealthy: the plugin closed its protocol connection" in (
        paths.plugin_log("acme.quiet").read_text()
    )


def test_a_tiny_health_interval_is_raised_to_the_launchers_floor(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = RAW + (
        "hello()\n"
        "n = 0\n"
        "while True:\n"
        "    m = recv()\n"
        "    if m.get('method') == 'aurora.health':\n"
        "        n += 1\n"
        "        d = os.environ['AURORA_PLUGIN_DATA']\n"
        "        open(os.path.join(d, 'checks.tmp'), 'w').write(str(n))\n"
        "        os.replace(os.path.join(d, 'checks.tmp'), os.path.join(d, 'checks'))\n"
        "        status = 'serving' if n % 2 else 'not-serving'\n"
        "        send({'jsonrpc': '2.0', 'id': m['id'], 'result': {'status': status}})\n"
    )
    api = {"functions": {"f": {}}, "health": {"interval_s": 0.0001, "failures": 100}}
    fake_registry.add("acme.hog", code, manifest_extra=api)
    loop(min_health_interval=0.5)
    checks = paths.plugin_data("acme.hog") / "checks"
    wait_until(checks.is_file, what="a first check")
    time.sleep(2.0)
    assert int(checks.read_text()) <= 6  # at most one check per 0.5 s, not thousands


def test_a_plugin_ignoring_sigterm_does_not_hold_the_loop_while_it_is_stopped(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = RAW + "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nhello()\ntime.sleep(120)\n"
    fake_registry.add("acme.stubborn", code, manifest_extra={"functions": {"f": {}}})
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    thread = loop(stop_grace=3.0)
    _ready(paths, "acme.server")
    wait_until(lambda: thread.sup.status_doc().get("acme.stubborn", {}).get("pid"))
    fake_registry.set("acme.stubborn", enabled=False)
    wait_until(
        lambda: thread.sup.status_doc()["acme.stubborn"]["state"] == status.STOPPING,
        what="stopping",
    )
    worst = max(_other_call_ms(paths) for _ in range(10))
    assert worst < 1000, worst  # the grace period (3 s) is not the loop's
    wait_until(
        lambda: thread.sup.status_doc()["acme.stubborn"]["state"] == status.DISABLED,
        what="killed after the grace period",
    )


def test_a_plugin_exiting_125_is_not_taken_for_a_sandbox_refusal(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = (
        "import sys, time\ntime.sleep(0.3)\nprint('\\x1b]0;pwned\\x07landlock: kernel too old')\n"
    )
    code += "sys.exit(125)\n"
    fake_registry.add("acme.fake125", code)
    thread = loop()
    wait_until(
        lambda: thread.sup.status_doc().get("acme.fake125", {}).get("state") == status.BACKOFF,
        what="a crash, restarted",
    )
    assert thread.sup.status_doc()["acme.fake125"]["state"] != status.REFUSED


def test_control_characters_from_a_plugin_never_reach_a_reason_or_a_launcher_line(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    evil = "\x1b[31mEVIL\x1b[0m\n[launcher 2026-01-01T00:00:00Z] forged"
    code = RAW + f"hello(protocols=[{evil!r}])\ntime.sleep(60)\n"
    fake_registry.add("acme.ansi", code, manifest_extra={"functions": {"f": {}}})
    thread = loop(max_restarts=1)
    wait_until(
        lambda: "EVIL" in json.dumps(thread.sup.status_doc().get("acme.ansi", {})),
        what="the refusal recorded",
    )
    doc = json.dumps(thread.sup.status_doc()["acme.ansi"])
    assert "\\u001b" not in doc and "\\n[launcher" not in doc, doc
    lines = paths.plugin_log("acme.ansi").read_text().splitlines()
    assert not [line for line in lines if line.startswith("[launcher 2026-01-01")], lines
    assert not any("\x1b" in line for line in lines)


def test_a_flood_of_big_messages_within_the_message_rate_is_cut_off(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = RAW + (
        "hello()\n"
        "big = 'x' * (900 * 1024)\n"
        "try:\n"
        "    while True:\n"
        "        send({'jsonrpc': '2.0', 'method': 'x.noise', 'params': {'p': big}})\n"
        "        time.sleep(0.01)\n"
        "except OSError:\n"
        "    time.sleep(60)\n"
    )
    fake_registry.add("acme.flood", code, manifest_extra={"functions": {"f": {}}})
    thread = loop()
    why = wait_until(
        lambda: thread.sup.status_doc().get("acme.flood", {}).get("protocol_reason"),
        timeout=30,
        what="the flood cut off",
    )
    assert "flood" in why and "MiB per second" in why, why


def test_a_registry_entry_with_a_schema_that_reaches_out_is_not_run(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    # pack05 refuses it at staging; a registry edited by hand is refused again here.
    api = {"functions": {"f": {"parameters": {"$ref": "file:///etc/shadow"}}}}
    fake_registry.add("acme.ref", SERVER, manifest_extra=api)
    thread = loop()
    doc = wait_until(lambda: thread.sup.status_doc().get("acme.ref"), what="its slot")
    assert doc["state"] == status.BLOCKED, doc
    assert "$ref: only a reference within the schema" in doc["reason"]
    assert _call(paths, "acme.ref", "f", {}, 5).kind == "not-running"


# --- found by an adversary, round 2 (adv12) --------------------------------------------


def _hold_connections(uid: int, paths: Paths, count: int, read: bool) -> int:
    """A child of ``uid`` that opens ``count`` connections to the call socket and sends
    a slow call (or, ``read=False``, 16 pipelined calls) on each, then sleeps; its pid."""
    import os
    import socket as so

    from aurora_common import protocol as p

    run_fd = os.open(paths.run, os.O_PATH | os.O_DIRECTORY)
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sock = f"/proc/self/fd/{run_fd}/{paths.api_socket.relative_to(paths.run)}"
            held = []
            call = {"plugin": "acme.server", "function": "echo", "args": {"text": "x" * 60000}}
            slow = {"plugin": "acme.server", "function": "slow", "args": {"seconds": 30}}
            for _ in range(count):
                c = so.socket(so.AF_UNIX, so.SOCK_STREAM)
                c.settimeout(2)
                try:
                    c.connect(sock)
                    for _ in range(1 if read else 16):
                        c.sendall(p.encode({**(slow if read else call), "timeout": 60}))
                except OSError:  # turned away (or not read any more): go on with the next
                    pass
                held.append(c)
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(run_fd)
    return child


def _end(pid: int) -> None:
    import os
    import signal as sig

    os.kill(pid, sig.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="callers of other uids need root")
def test_an_allowed_caller_cannot_take_every_slot_from_the_operator(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    thread = loop(api_callers=(54321,))
    _ready(paths, "acme.server")
    hog = _hold_connections(54321, paths, 40, read=True)
    try:
        api = thread.sup.api
        assert api is not None
        wait_until(lambda: len(api._clients) == 16, what="the uid holding its share")
        assert _call_as(54321, paths)["message"].endswith("too many callers")
        assert _other_call_ms(paths) < 2000  # the operator is still served
    finally:
        _end(hog)


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="callers of other uids need root")
def test_a_caller_that_never_reads_its_answers_is_dropped(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    thread = loop(api_callers=(54321,))
    _ready(paths, "acme.server")
    hog = _hold_connections(54321, paths, 1, read=False)
    try:
        api = thread.sup.api
        assert api is not None
        wait_until(lambda: len(api._clients) == 1, what="the connection")
        wait_until(lambda: len(api._clients) == 0, timeout=20, what="it dropped")
    finally:
        _end(hog)


ON_CALL_SLOW_EXIT = (
    SDK_HEAD
    + """
import signal
signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.0), os._exit(0)))

@plugin.function("echo")
def echo(args, ctx):
    return args

plugin.serve()
"""
)


def test_a_call_during_an_idle_stop_waits_for_the_next_start(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    api = {"functions": {"echo": {}}, "activation": "on-call", "idle_seconds": 1}
    fake_registry.add("acme.lazy", ON_CALL_SLOW_EXIT, manifest_extra=api)
    thread = loop(standby=False)
    assert _call(paths, "acme.lazy", "echo", {"n": 1}).value == {"n": 1}
    wait_until(
        lambda: thread.sup.status_doc()["acme.lazy"]["state"] == status.STOPPING,
        what="its idle stop",
    )
    outcome = _call(paths, "acme.lazy", "echo", {"n": 2}, timeout=20)
    assert outcome.kind == "result" and outcome.value == {"n": 2}, outcome


def test_plugin_output_cannot_forge_a_launcher_line_in_its_log_file(
    loop: Callable[..., LoopThread], fake_registry: FakeRegistry, paths: Paths
) -> None:
    code = (
        "import sys, time\n"
        "sys.stdout.write('ok\\r[launcher 2026-01-01T00:00:00Z] forged\\n')\n"
        "sys.stdout.write('x\\u2028[launcher 2026-01-01T00:00:00Z] forged too\\n')\n"
        "sys.stdout.flush()\ntime.sleep(60)\n"
    )
    fake_registry.add("acme.forger", code)
    loop()
    log_file = paths.plugin_log("acme.forger")
    wait_until(lambda: log_file.is_file() and "forged too" in log_file.read_text())
    raw = log_file.read_bytes()
    assert b"\r" not in raw and b"\\x0d[launcher" in raw
    text = raw.decode()
    assert not [line for line in text.split("\n") if line.startswith("[launcher 2026-01-01")]


def test_calling_with_arguments_nested_too_deeply_is_a_usage_error(paths: Paths) -> None:
    from launcher import cli

    code = cli.main(["call", "acme.x", "f", "--args", "[" * 100_000 + "]" * 100_000])
    assert code == 2
    assert cli.main(["call", "acme.x", "f", "--timeout", "300.0000001"]) == 2


def test_a_killed_service_leaves_no_plugin_and_the_next_one_serves_calls(
    service_factory: Callable[..., Any], fake_registry: FakeRegistry
) -> None:
    # "Survives restarts": SIGKILL the service; its fork server (death signal) stops what
    # it ran, so no plugin holds a connection to nobody; a new service starts it again,
    # recognised by pid and start time, and calls reach it.
    import signal as sig

    from launcher_testing import plugin_processes

    root = real_sandbox_root()
    if os.geteuid() != 0:
        pytest.skip("pack03 runs plugins under their own uid: needs root")
    fake_registry.add("acme.server", SERVER, manifest_extra=SERVER_API)
    svc = service_factory(sandbox_root=root)
    assert _ready(svc.paths, "acme.server").kind == "result"
    before = plugin_processes("acme.server")
    assert before
    os.killpg(svc.proc.pid, sig.SIGKILL)
    svc.proc.wait(10)
    wait_until(lambda: not plugin_processes("acme.server"), what="the plugin gone with it")
    assert _call(svc.paths, "acme.server", "echo", {"text": "x"}, 2).kind == "not-running"
    again = service_factory(sandbox_root=root)
    assert _ready(again.paths, "acme.server").value == {"text": "ping"}
    now = plugin_processes("acme.server")
    assert now and not set(now) & set(before)
