"""Start-up overhead of the pack03 sandbox: sandboxed `python -I -c pass` against the bare one."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "packs" / "pack03_os_base" / "sandbox" / "launch.py"
ROUNDS = 30
TARGET = 1.3
BARE = "bare `python -I -c pass`"
PLAIN_BWRAP = "plain `bwrap --unshare-all --cap-drop ALL --ro-bind / /`"
#: The host uid/gid the benchmark's plugins run as (never root: pack03 policy).
PLUGIN_UID = 60999


def _policy_doc(tmp: Path, plugin_id: str) -> dict[str, object]:
    return {
        "plugin_id": plugin_id,
        "granted": [],
        "data_dir": str(tmp / plugin_id),
        "read_paths": [],
        "limits": {
            "cpu_seconds": 60,
            "memory_bytes": 512 * 1024 * 1024,
            "open_files": 256,
            "file_size_bytes": 64 * 1024 * 1024,
            "processes": 32,
            "cpu_cores": 1,
        },
        "allow_degraded": False,
        "uid": PLUGIN_UID,
        "gid": PLUGIN_UID,
    }


def _policy(tmp: Path, plugin_id: str) -> Path:
    path = tmp / f"{plugin_id}.json"
    path.write_text(json.dumps(_policy_doc(tmp, plugin_id)))
    return path


class _Served:
    """One run through the fork server (the protocol of docs/contracts.md, inline)."""

    def __init__(self, sock: Path, request: dict[str, object]) -> None:
        self.sock = sock
        self.request = json.dumps(request).encode()

    def __call__(self) -> tuple[float, int]:
        null = os.open(os.devnull, os.O_RDWR)
        started = time.perf_counter()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.connect(str(self.sock))
            socket.send_fds(conn, [self.request], [null, null, null])
            os.close(null)
            events = []
            while msg := conn.recv(1 << 20):
                events.append(json.loads(msg))
        took = time.perf_counter() - started
        last = events[-1] if events else {}
        if last.get("event") != "exited" or last.get("returncode") != 0:
            raise SystemExit(f"bench_sandbox: server run failed: {events!r}")
        return took, int(last["pid"])


def _start_server(py: str, sock: Path) -> subprocess.Popen[bytes]:
    root = str(sock.parent)  # the server serves us, its parent; its roots: our tmp dir
    proc = subprocess.Popen(
        [
            py,
            str(LAUNCH),
            "--serve",
            str(sock),
            "--spares",
            "1",
            "--data-root",
            root,
            "--packages-root",
            root,
            "--report-root",
            root,
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("bench_sandbox: the fork server did not start")
        time.sleep(0.02)
    return proc


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _time(cmd: list[str] | _Served) -> tuple[float, int]:
    if isinstance(cmd, _Served):
        return cmd()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate()
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"bench_sandbox: {cmd[:4]}... exited {proc.returncode}: {err!r}")
    return took, proc.pid


def main() -> int:
    py = sys.executable
    pass_cmd = [py, "-I", "-c", "pass"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as tmp_name:
        tmp = Path(tmp_name)
        sock = tmp / "server.sock"
        server = _start_server(py, sock)
        try:
            times, last_pid = _measure(py, pass_cmd, tmp, sock)
        finally:
            _stop_server(server)
        for name, pid in last_pid.items():  # remove the last one-shot runs' (empty) cgroups
            if "one-shot" in name:
                subprocess.run([py, str(LAUNCH), "--kill-tree", "--pid", str(pid), "--grace",
                                "0"], capture_output=True, check=False)  # fmt: skip
    load_after = os.getloadavg()
    print(_section(times, load_before, load_after))
    return 0


def _measure(
    py: str, pass_cmd: list[str], tmp: Path, sock: Path
) -> tuple[dict[str, list[float]], dict[str, int]]:
    def served(plugin_id: str, backend: str, argv: list[str]) -> _Served:
        doc = {"policy": _policy_doc(tmp, plugin_id), "argv": argv, "backend": backend}
        return _Served(sock, doc)

    def one_shot(plugin_id: str, backend: str, argv: list[str]) -> list[str]:
        policy = str(_policy(tmp, plugin_id))
        return [py, str(LAUNCH), "--policy", policy, "--backend", backend, "--", *argv]

    variants: dict[str, list[str] | _Served] = {
        BARE: pass_cmd,
        "one-shot `launch.py`, native": one_shot("bench.native", "native", pass_cmd),
        "server (`--serve`), native": served("bench.srv-native", "native", pass_cmd),
        "one-shot, native, exec /bin/true": one_shot("bench.true", "native", ["/bin/true"]),
        "server, native, exec /bin/true": served("bench.srv-true", "native", ["/bin/true"]),
    }
    bwrap = shutil.which("bwrap")
    if bwrap:
        variants[PLAIN_BWRAP] = [bwrap, "--unshare-all", "--cap-drop", "ALL", "--ro-bind", "/",
                                 "/", *pass_cmd]  # fmt: skip
        variants["one-shot `launch.py`, bwrap"] = one_shot("bench.bwrap", "bwrap", pass_cmd)
        variants["server (`--serve`), bwrap"] = served("bench.srv-bwrap", "bwrap", pass_cmd)
    times: dict[str, list[float]] = {name: [] for name in variants}
    last_pid: dict[str, int] = {}
    for cmd in variants.values():  # warm-up: page cache, .pyc files
        _time(cmd)
    for i in range(ROUNDS):  # round-robin, so load drifts hit every variant alike
        print(f"bench_sandbox: round {i + 1}/{ROUNDS}", file=sys.stderr)
        for name, cmd in variants.items():
            took, pid = _time(cmd)
            times[name].append(took)
            last_pid[name] = pid
    return times, last_pid


def _section(
    times: dict[str, list[float]], load_before: tuple[float, ...], load_after: tuple[float, ...]
) -> str:
    bare = statistics.median(times[BARE])
    rows = [
        f"| {name} | {statistics.median(ts) * 1000:.1f} | {statistics.median(ts) / bare:.2f}x |"
        for name, ts in times.items()
    ]
    one_shot = statistics.median(times["one-shot `launch.py`, native"]) / bare
    served = statistics.median(times["server (`--serve`), native"]) / bare
    plain = statistics.median(times[PLAIN_BWRAP]) / bare if PLAIN_BWRAP in times else None
    versus = (
        f" Plain bwrap (namespaces only, no uid switch, no seccomp/Landlock/cgroups): "
        f"{plain:.2f}x; the server (native) is "
        f"{'at or below' if served <= plain else 'above'} it."
        if plain is not None
        else ""
    )

    def verdict(ratio: float) -> str:
        return f"**{'met' if ratio <= TARGET else 'NOT met'}** ({ratio:.2f}x)"

    return (
        "## Sandbox start-up overhead (pack03)\n\n"
        f"Wall time to start and finish `python -I -c pass`, bare and sandboxed with a full "
        f"policy (no capability granted, every limit set), median of {ROUNDS} runs each, "
        "variants interleaved. *One-shot*: `launch.py --policy` is itself a Python process "
        "that applies the layers (cgroup, namespaces, rlimits, capabilities, seccomp, "
        "Landlock, own uid, PID/mount/UTS namespaces) and then execs the command: two "
        "interpreter start-ups, its imports, and "
        "moving a process into a new cgroup costs the kernel an RCU grace period (about "
        "10 ms here). *Server*: `launch.py --serve` forks a spare ahead, already in cgroups of "
        "its own; per request the spare applies the same layers and execs (timed from connect "
        "to the `exited` event).\n\n"
        "| command | median ms | vs bare |\n|---|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"Target: sandboxed at most {TARGET}x the bare interpreter. Server (native): "
        f"{verdict(served)}; one-shot (native): {verdict(one_shot)}.{versus} "
        f"Euid {os.geteuid()}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} cores)."
    )


if __name__ == "__main__":
    raise SystemExit(main())
