"""Plugin protocol: call round trip through the supervisor's channel, against a bare echo.

Side by side in one run: (1) the floor, a bare socketpair JSON-line echo between two
Python processes; (2) a no-op ``aurora.call`` from the supervisor's end
(``launcher.channel.Channel``, non-blocking, driven by a select loop as the
supervisor drives it) to a plugin process served by the SDK (``aurora_common.sdk``),
and back; (3) throughput with 8 calls kept in flight. The operator's leg
(``aurora plugin call`` to the supervisor) is not built yet and not measured.
"""

from __future__ import annotations

import json
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "packs" / "pack01_common"), str(ROOT / "packs" / "pack04_launcher")]

from launcher.channel import Channel, FunctionSpec, Outcome  # noqa: E402

ROUNDS = 2000
WARMUP = 200
THROUGHPUT_CALLS = 4000
IN_FLIGHT = 8

ECHO_CHILD = """
import json, os, socket, sys
s = socket.socket(fileno=int(sys.argv[1]))
r = s.makefile("rb")
for line in r:
    msg = json.loads(line)
    s.sendall(json.dumps(msg).encode() + b"\\n")
"""

SDK_CHILD = """
import sys
sys.path.insert(0, sys.argv[2])
from aurora_common.sdk import Plugin
plugin = Plugin()
@plugin.function("noop")
def noop(args, ctx):
    return None
plugin.serve(int(sys.argv[1]))
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_echo() -> list[float]:
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-I", "-c", ECHO_CHILD, str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    reader = ours.makefile("rb")
    times: list[float] = []
    for i in range(ROUNDS + WARMUP):
        started = time.perf_counter()
        ours.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "result": None}).encode() + b"\n")
        json.loads(reader.readline())
        if i >= WARMUP:
            times.append(time.perf_counter() - started)
    reader.close()
    ours.close()
    child.wait(5)
    return times


def _drive(channel: Channel, until: Callable[[], bool]) -> None:
    while not until():
        wr = [channel] if channel.wants_write else []
        readable, writable, _ = select.select([channel], wr, [], 1.0)
        if readable:
            channel.on_readable(time.monotonic())
        if writable:
            channel.on_writable()
        channel.tick(time.monotonic())
        if channel.state == "closed":
            raise RuntimeError(f"channel closed: {channel.reason}")


def sdk_plugin() -> tuple[Channel, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair()
    sdk_root = str(ROOT / "packs" / "pack01_common")
    argv = [sys.executable, "-I", "-c", SDK_CHILD, str(theirs.fileno()), sdk_root]
    child = subprocess.Popen(argv, pass_fds=[theirs.fileno()])
    theirs.close()
    channel = Channel("bench.noop", ours, {"noop": FunctionSpec()})
    _drive(channel, lambda: channel.state == "ready")
    return channel, child


def channel_round_trips(channel: Channel) -> list[float]:
    times: list[float] = []
    for i in range(ROUNDS + WARMUP):
        got: list[Outcome] = []
        started = time.perf_counter()
        channel.call("noop", None, 5, time.monotonic(), got.append)
        _drive(channel, lambda got=got: bool(got))
        if got[0].kind != "result":
            raise RuntimeError(got[0].message)
        if i >= WARMUP:
            times.append(time.perf_counter() - started)
    return times


def throughput(channel: Channel) -> float:
    done: list[Outcome] = []
    sent = 0
    started = time.perf_counter()
    while len(done) < THROUGHPUT_CALLS:
        while sent - len(done) < IN_FLIGHT and sent < THROUGHPUT_CALLS:
            channel.call("noop", None, 5, time.monotonic(), done.append)
            sent += 1
        target = len(done) + 1
        _drive(channel, lambda target=target: len(done) >= target)
    took = time.perf_counter() - started
    if any(o.kind != "result" for o in done):
        raise RuntimeError("a call failed")
    return THROUGHPUT_CALLS / took


def main() -> int:
    floor = bare_echo()
    channel, child = sdk_plugin()
    try:
        calls = channel_round_trips(channel)
        rate = throughput(channel)
        floor_rate = 1 / statistics.median(floor)
    finally:
        channel.close("bench over")
        child.wait(5)
    fm, fp = statistics.median(floor) * 1e6, _percentile(floor, 0.99) * 1e6
    cm, cp = statistics.median(calls) * 1e6, _percentile(calls, 0.99) * 1e6
    print("## Plugin protocol: call round trip\n")
    print(
        f"{ROUNDS} round trips each (after {WARMUP} warm-up), in one run: the floor is a bare "
        "JSON-line echo over a socketpair between two Python processes; the call is a no-op "
        "`aurora.call` from the supervisor's channel (`launcher/channel.py`, select loop) to "
        "an SDK plugin process and back, framed, classified and bounded on both ends. The "
        "operator's leg to the supervisor is not built yet.\n"
    )
    print("| what | median µs | p99 µs | ratio to floor (median) |")
    print("|---|---:|---:|---:|")
    print(f"| bare socketpair JSON echo (floor) | {fm:.1f} | {fp:.1f} | 1.00x |")
    print(f"| channel → SDK plugin → channel | {cm:.1f} | {cp:.1f} | {cm / fm:.2f}x |")
    print()
    print(
        f"Throughput with {IN_FLIGHT} calls in flight: {rate:,.0f} calls/s "
        f"(one caller at a time on the floor: {floor_rate:,.0f} round trips/s)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
