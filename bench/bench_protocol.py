"""Plugin protocol: call round trips against a bare echo, and the first call of an on-call plugin.

Side by side in one run: (1) the floor, a bare socketpair JSON-line echo between two
Python processes, and the same through a bare relay process that only passes bytes on
(what any path with a process in the middle costs at least), with the CPU each process
spends per round trip; (2) the channel leg alone: a no-op ``aurora.call`` from the
supervisor's end (``launcher.channel.Channel``, select loop) to an SDK plugin and back;
(3) the whole path: ``aurora_common.calls.call()`` (what ``aurora plugin call`` does)
to a real launcher service (``python -m launcher.service``), which passes it to a
no-op SDK plugin in pack03's sandbox (fork server) and back, sequentially and with 8
concurrent callers; (4) the first call to a stopped ``on-call`` plugin (the launcher
starts it in the sandbox, it says hello, answers) against a bare ``python -I -c pass``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "packs" / "pack01_common"), str(ROOT / "packs" / "pack04_launcher")]

from aurora_common.calls import Client, call  # noqa: E402
from aurora_common.digest import tree_digest  # noqa: E402
from launcher.channel import Channel, FunctionSpec, Outcome  # noqa: E402

PACK04 = ROOT / "packs" / "pack04_launcher"
PACK03 = ROOT / "packs" / "pack03_os_base"
SERVICE_CALLS = 1000
CONCURRENT_CALLERS = 8
CONCURRENT_CALLS_EACH = 250
FIRST_CALLS = 10

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

#: The least a path through a supervisor process can cost: a relay that passes each line
#: on unread (blocking, no loop, no checks) between the caller and the echo.
RELAY_CHILD = """
import socket, sys
caller = socket.socket(fileno=int(sys.argv[1]))
echo = socket.socket(fileno=int(sys.argv[2]))
while True:
    data = caller.recv(65536)
    if not data:
        break
    echo.sendall(data)
    caller.sendall(echo.recv(65536))
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


def cpu_ns(pid: int) -> int:
    """CPU time the threads of a process have used, ns (an ended thread's is lost)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # the thread ended
            total += int(stat.read_text().split()[0])
    return total


def bare_echo(relayed: bool = False) -> tuple[list[float], dict[str, float]]:
    """Round trip times of the echo (through the relay when ``relayed``), and the CPU per
    round trip (µs) of each process: the caller (this one), the relay, the echo."""
    ours, theirs = socket.socketpair()
    far, near = socket.socketpair() if relayed else (theirs, None)
    echo = subprocess.Popen(
        [sys.executable, "-I", "-c", ECHO_CHILD, str(far.fileno())], pass_fds=[far.fileno()]
    )
    far.close()
    procs = {"echo": echo}
    if near is not None:
        argv = [sys.executable, "-I", "-c", RELAY_CHILD, str(theirs.fileno()), str(near.fileno())]
        procs["relay"] = subprocess.Popen(argv, pass_fds=[theirs.fileno(), near.fileno()])
        theirs.close()
        near.close()
    reader = ours.makefile("rb")
    times: list[float] = []
    for i in range(ROUNDS + WARMUP):
        if i == WARMUP:
            before = {name: cpu_ns(proc.pid) for name, proc in procs.items()}
            mine = time.process_time_ns()
        started = time.perf_counter()
        ours.sendall(json.dumps({"jsonrpc": "2.0", "id": i, "result": None}).encode() + b"\n")
        json.loads(reader.readline())
        if i >= WARMUP:
            times.append(time.perf_counter() - started)
    cpu = {name: (cpu_ns(proc.pid) - before[name]) / ROUNDS / 1e3 for name, proc in procs.items()}
    cpu["caller"] = (time.process_time_ns() - mine) / ROUNDS / 1e3
    reader.close()
    ours.close()
    for proc in procs.values():
        proc.wait(5)
    return times, cpu


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


SDK_PLUGIN = """
import os, sys
sys.path.insert(0, os.environ["AURORA_PLUGIN_SDK"])
from aurora_common.sdk import Plugin
plugin = Plugin()
@plugin.function("noop")
def noop(args, ctx):
    return None
plugin.serve()
"""


class Service:
    """A launcher service on a throw-away home, running two SDK plugins in pack03."""

    def __init__(self, *flags: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="aurora-bench-protocol-"))
        plugins = self.base / "pack05" / "plugins"
        doc: dict[str, Any] = {"schema": "aurora-plugin-registry-v1", "plugins": {}}
        for pid, extra in (
            ("bench.noop", {}),
            ("bench.lazy", {"activation": "on-call", "idle_seconds": 1}),
        ):
            rel = f"packages/{pid}/1.0.0"
            pkg = plugins / rel
            pkg.mkdir(parents=True)
            (pkg / "main.py").write_text(SDK_PLUGIN)
            manifest = {"id": pid, "name": pid, "version": "1.0.0", "entrypoint": "main.py",
                        "permissions": [], "functions": {"noop": {}}, **extra}  # fmt: skip
            (pkg / "manifest.json").write_text(json.dumps(manifest))
            doc["plugins"][pid] = {
                "enabled": True,
                "active_version": "1.0.0",
                "granted": [],
                "versions": {
                    "1.0.0": {"path": rel, "manifest": manifest, "digest": tree_digest(pkg)}
                },
            }
        (plugins / "registry.json").write_text(json.dumps(doc))
        self.run = self.base / "run"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHON": sys.executable,
            "AURORA_PACK_ROOT": str(PACK04),
            "AURORA_PACK_DATA": str(self.base / "data"),
            "AURORA_UID_CLAIMS": str(self.base / "uid-claims"),  # not the host's /var/lib/aurora
            "AURORA_PACK_RUN": str(self.run),
            "AURORA_PACK_LOGS": str(self.base / "logs"),
            "AURORA_PLUGIN_REGISTRY": str(plugins / "registry.json"),
            "AURORA_SANDBOX_ROOT": str(PACK03),
        }
        argv = [sys.executable, "-m", "launcher.service", "--no-disk-images", "--log-level",
                "WARNING", *flags]  # fmt: skip
        self.proc = subprocess.Popen(argv, cwd=PACK04, env=env, stdin=subprocess.DEVNULL)
        self.socket = str(self.run / "api" / "calls.sock")
        deadline = time.monotonic() + 30
        while call(self.socket, "bench.noop", "noop", None, 5).kind != "result":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the launcher service did not start bench.noop")
            time.sleep(0.05)

    def pid(self, plugin_id: str) -> int:
        """The plugin's host pid, from the status file (0 if not known)."""
        try:
            pid = json.loads((self.run / "status.json").read_text())["plugins"][plugin_id]["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return pid if isinstance(pid, int) else 0

    def state(self, plugin_id: str) -> str | None:
        try:
            doc = json.loads((self.run / "status.json").read_text())
        except (OSError, ValueError):
            return None
        state = doc.get("plugins", {}).get(plugin_id, {}).get("state")
        return state if isinstance(state, str) else None

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.base, ignore_errors=True)


def service_round_trips(svc: Service, one: Callable[[], Any]) -> list[float]:
    times: list[float] = []
    for i in range(SERVICE_CALLS + WARMUP):
        started = time.perf_counter()
        outcome = one()
        if outcome.kind != "result":
            raise RuntimeError(outcome.message)
        if i >= WARMUP:
            times.append(time.perf_counter() - started)
    return times


def service_throughput(svc: Service) -> float:
    failed: list[str] = []

    def caller() -> None:
        with Client(svc.socket) as client:
            for _ in range(CONCURRENT_CALLS_EACH):
                outcome = client.call("bench.noop", "noop", None, 10)
                if outcome.kind != "result":
                    failed.append(outcome.message)

    threads = [threading.Thread(target=caller) for _ in range(CONCURRENT_CALLERS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    if failed:
        raise RuntimeError(failed[0])
    return CONCURRENT_CALLERS * CONCURRENT_CALLS_EACH / took


def first_calls(svc: Service) -> tuple[list[float], list[float]]:
    """First call to the stopped on-call plugin, each after its idle stop; a bare
    interpreter start measured beside each."""
    firsts: list[float] = []
    bare: list[float] = []
    for _ in range(FIRST_CALLS):
        deadline = time.monotonic() + 30
        while svc.state("bench.lazy") != "idle":
            if time.monotonic() > deadline:
                raise RuntimeError(f"bench.lazy never went idle ({svc.state('bench.lazy')})")
            time.sleep(0.05)
        time.sleep(0.3)  # the fork server has made its spare again
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        outcome = call(svc.socket, "bench.lazy", "noop", None, 10)
        firsts.append(time.perf_counter() - started)
        if outcome.kind != "result":
            raise RuntimeError(outcome.message)
    return firsts, bare


def main() -> int:
    floor, floor_cpu = bare_echo()
    relay, relay_cpu = bare_echo(relayed=True)
    channel, child = sdk_plugin()
    try:
        calls = channel_round_trips(channel)
        rate = throughput(channel)
        floor_rate = 1 / statistics.median(floor)
    finally:
        channel.close("bench over")
        child.wait(5)
    whole: list[float] = []
    kept: list[float] = []
    firsts: list[float] = []
    bare: list[float] = []
    colds: list[float] = []
    cold_bare: list[float] = []
    svc_rate = 0.0
    kept_cpu: dict[str, float] = {}
    if os.geteuid() == 0:  # the sandbox runs plugins under their own uid
        svc = Service()
        try:
            whole = service_round_trips(
                svc, lambda: call(svc.socket, "bench.noop", "noop", None, 5)
            )
            with Client(svc.socket) as client:
                pids = {"launcher": svc.proc.pid, "plugin": svc.pid("bench.noop")}
                before = {name: cpu_ns(pid) for name, pid in pids.items()}
                mine = time.process_time_ns()
                kept = service_round_trips(svc, lambda: client.call("bench.noop", "noop", None, 5))
                n = SERVICE_CALLS + WARMUP
                kept_cpu = {name: (cpu_ns(pid) - before[name]) / n / 1e3
                            for name, pid in pids.items()}  # fmt: skip
                kept_cpu["caller"] = (time.process_time_ns() - mine) / n / 1e3
            svc_rate = service_throughput(svc)
            firsts, bare = first_calls(svc)
        finally:
            svc.close()
        cold = Service("--no-standby")
        try:
            colds, cold_bare = first_calls(cold)
        finally:
            cold.close()
    fm, fp = statistics.median(floor) * 1e6, _percentile(floor, 0.99) * 1e6
    cm, cp = statistics.median(calls) * 1e6, _percentile(calls, 0.99) * 1e6
    print("## Plugin protocol: call round trip\n")
    print(
        f"{ROUNDS} round trips each (after {WARMUP} warm-up), in one run: the floor is a bare "
        "JSON-line echo over a socketpair between two Python processes; the channel leg is a "
        "no-op `aurora.call` from the supervisor's channel (`launcher/channel.py`, select "
        "loop) to an SDK plugin process and back; the whole path is "
        "`aurora_common.calls.call()` (a new connection per call, as `aurora plugin call` "
        "makes) to a running launcher service, which passes it to a no-op SDK plugin in "
        f"pack03's sandbox and back ({SERVICE_CALLS} calls).\n"
    )
    print("| what | median µs | p99 µs | ratio to floor (median) |")
    print("|---|---:|---:|---:|")
    print(f"| bare socketpair JSON echo (floor) | {fm:.1f} | {fp:.1f} | 1.00x |")
    rm, rp = statistics.median(relay) * 1e6, _percentile(relay, 0.99) * 1e6
    print(f"| bare relay: caller → a Python process passing bytes on → echo (4 wake-ups, "
          f"the least through any middle process) | {rm:.1f} | {rp:.1f} | "
          f"{rm / fm:.2f}x |")  # fmt: skip
    print(f"| channel → SDK plugin → channel | {cm:.1f} | {cp:.1f} | {cm / fm:.2f}x |")
    if whole:
        wm, wp = statistics.median(whole) * 1e6, _percentile(whole, 0.99) * 1e6
        print(f"| operator → launcher → sandboxed plugin → back, a connection per call "
              f"(`aurora plugin call`) | {wm:.1f} | {wp:.1f} | {wm / fm:.2f}x |")  # fmt: skip
        km, kp = statistics.median(kept) * 1e6, _percentile(kept, 0.99) * 1e6
        print(f"| the same on one kept connection (`calls.Client`) | {km:.1f} | {kp:.1f} | "
              f"{km / fm:.2f}x |")  # fmt: skip
    if kept_cpu:
        print()
        print("CPU per round trip (µs, `/proc/<pid>/schedstat`; the caller's own process "
              "time): the path is serial, so its time is about the sum of these.\n")  # fmt: skip
        print("| path | caller | middle | far end | sum |")
        print("|---|---:|---:|---:|---:|")
        for name, cpu, middle, far in (
            ("floor (echo)", floor_cpu, None, "echo"),
            ("bare relay", relay_cpu, "relay", "echo"),
            ("kept connection (launcher, SDK plugin)", kept_cpu, "launcher", "plugin"),
        ):
            mid = cpu.get(middle, 0.0) if middle else 0.0
            total = cpu["caller"] + mid + cpu[far]
            shown = f"{mid:.1f}" if middle else "-"
            print(f"| {name} | {cpu['caller']:.1f} | {shown} | {cpu[far]:.1f} | {total:.1f} |")
    print()
    print(
        f"Throughput, channel leg with {IN_FLIGHT} calls in flight: {rate:,.0f} calls/s "
        f"(one caller at a time on the floor: {floor_rate:,.0f} round trips/s)."
    )
    if whole:
        print(
            f"Whole path with {CONCURRENT_CALLERS} concurrent callers (threads of one "
            f"process, a `Client` each): {svc_rate:,.0f} calls/s."
        )
        f_med, b_med = statistics.median(firsts) * 1e3, statistics.median(bare) * 1e3
        print()
        print("| first call to a stopped on-call plugin | median ms | max ms | ratio |")
        print("|---|---:|---:|---:|")
        print(f"| bare `python -I -c pass` (baseline) | {b_med:.1f} | "
              f"{max(bare) * 1e3:.1f} | 1.00x |")  # fmt: skip
        print(f"| `call()` → the launcher wakes its standby → it runs the plugin → hello → "
              f"answer | {f_med:.1f} | {max(firsts) * 1e3:.1f} | "
              f"{f_med / b_med:.2f}x |")  # fmt: skip
        c_med, cb_med = statistics.median(colds) * 1e3, statistics.median(cold_bare) * 1e3
        print(f"| the same started cold (`--no-standby`): sandbox, interpreter, SDK, plugin | "
              f"{c_med:.1f} | {max(colds) * 1e3:.1f} | {c_med / cb_med:.2f}x |")  # fmt: skip
        print()
        whole_ratio = statistics.median(whole) * 1e6 / fm
        print(
            f"Targets: the whole path at most 3x the floor: {whole_ratio:.2f}x, "
            f"{'met' if whole_ratio <= 3 else '**NOT met**'} (the bare relay, a middle "
            f"process that only passes bytes on, is {rm / fm:.2f}x; the whole path is "
            f"{statistics.median(whole) * 1e6 / rm:.2f}x the relay, the kept connection "
            f"{statistics.median(kept) * 1e6 / rm:.2f}x); the first call to a stopped "
            f"on-call plugin at most 1.5x a bare interpreter start: {f_med / b_med:.2f}x, "
            f"{'met' if f_med / b_med <= 1.5 else '**NOT met**'}"
            f"{' (faster than the bare start)' if f_med < b_med else ''}.\n"
        )
        print(f"{FIRST_CALLS} first calls, each after the plugin's idle stop (1 s), a bare "
              "start measured beside each (the cold row's ratio is to its own bare starts). "
              "Standby: while an on-call plugin is idle, the launcher keeps its interpreter "
              "started in its sandbox with the SDK imported and none of the plugin's code run "
              "(`aurora_common/standby.py`). Service run with `--no-disk-images` (no data "
              "image to mount).")  # fmt: skip
    else:
        print("\n(not root: the whole path through the sandbox was not measured)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
