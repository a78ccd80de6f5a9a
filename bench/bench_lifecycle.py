"""pack05 lifecycle: start to healthy, stop, health check cost, inbox pickup delay."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "packs" / "pack05_plugin_api"
INSTALLER = REPO / "installer" / "aurora_installer.py"
POLL = 1.0  # the service's default poll interval
ROUNDS = 7
HEALTH_ROUNDS = 60
PICKUPS = 7


def log(msg: str) -> None:
    print(f"bench_lifecycle: {msg}", file=sys.stderr)


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


class Lifecycle:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.plugins = base / "data" / "plugins"
        self.env = {
            **os.environ,
            "AURORA_PACK_DATA": str(base / "data"),
            "AURORA_PACK_RUN": str(base / "run"),
            "AURORA_PACK_LOGS": str(base / "logs"),
            "PYTHON": sys.executable,
            "AURORA_PACK05_POLL_SECONDS": str(POLL),
        }

    def script(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PACK / name), *args],
            env=self.env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def must(self, name: str, *args: str) -> str:
        proc = self.script(name, *args)
        if proc.returncode != 0:
            raise SystemExit(f"{name} {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc.stdout

    def start_to_healthy(self) -> float:
        began = time.perf_counter()
        self.must("start.sh")
        while self.script("health_check.sh").returncode != 0:
            if time.perf_counter() - began > 30:
                raise SystemExit("service never became healthy")
        return time.perf_counter() - began

    def registered(self, plugin_id: str) -> bool:
        try:
            doc = json.loads((self.plugins / "registry.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return plugin_id in doc.get("plugins", {})

    def kill_leftover(self) -> None:
        try:
            pid = json.loads((self.base / "run" / "service.pid").read_text())["pid"]
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


class Installed:
    """pack05 installed (with its dependencies) on a temporary AURORA_HOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "AURORA_PACK05_POLL_SECONDS": str(POLL)}
        self.env.pop("AURORA_HOME", None)

    def must(self, *argv: str) -> None:
        proc = subprocess.run(
            [sys.executable, str(INSTALLER), *argv, "--home", str(self.home)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise SystemExit(f"aurora_installer.py {' '.join(argv)} failed: {proc.stderr}")

    def kill_leftover(self) -> None:
        try:
            pidfile = self.home / "run" / "pack05_plugin_api" / "service.pid"
            os.killpg(json.loads(pidfile.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def make_plugin(where: Path, plugin_id: str) -> Path:
    where.mkdir(parents=True)
    manifest = {"id": plugin_id, "name": "Bench", "version": "1.0.0", "entrypoint": "main.py"}
    (where / "manifest.json").write_text(json.dumps(manifest))
    (where / "main.py").write_text("print('hello')\n")
    return where


STAGE_ONLY = """
import sys, time
sys.path.insert(0, sys.argv[1])
from core.loader import PluginLoader
loader = PluginLoader(sys.argv[2])
times = []
for src in sys.argv[3:]:
    began = time.perf_counter()
    loader.stage_package(src)
    times.append(time.perf_counter() - began)
print(" ".join(str(t) for t in times))
"""


def staging_times(base: Path, n: int) -> list[float]:
    """The loader alone, in one warm process: what the service does per item."""
    srcs = [str(make_plugin(base / "stage-src" / f"p{i}", f"bench.stage{i}")) for i in range(n)]
    out = subprocess.run(
        [sys.executable, "-c", STAGE_ONLY, str(PACK), str(base / "stage-plugins"), *srcs],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [float(t) for t in out.split()]


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    lc = Lifecycle(base)
    inst = Installed(base / "home")
    try:
        lc.must("install.sh", "--install")
        inst.must("install", "--pack", "pack05_plugin_api", "--with-deps", "--approve")
        floor = [0.0] * HEALTH_ROUNDS
        health = [0.0] * HEALTH_ROUNDS
        starts, stops, inst_starts, inst_stops = [], [], [], []
        log(f"start -> healthy and stop, scripts and installer alternating, {ROUNDS} rounds")
        for _ in range(ROUNDS):
            starts.append(lc.start_to_healthy())
            stops.append(timed(lambda: lc.must("stop.sh")))
            inst_starts.append(timed(lambda: inst.must("start", "--pack", "pack05_plugin_api")))
            inst_stops.append(timed(lambda: inst.must("stop", "--pack", "pack05_plugin_api")))
        lc.must("start.sh")
        log(f"health_check.sh vs {sys.executable} -c pass, {HEALTH_ROUNDS} rounds each")
        for i in range(HEALTH_ROUNDS):  # interleaved, so both see the same machine load
            floor[i] = timed(
                lambda: subprocess.run([sys.executable, "-c", "pass"], check=True, env=lc.env)
            )
            health[i] = timed(lambda: lc.must("health_check.sh"))
        log(f"inbox drop -> registered, {PICKUPS} drops, poll interval {POLL:g} s")
        pickups = []
        for i in range(PICKUPS):
            src = make_plugin(base / "src" / f"p{i}", f"bench.p{i}")
            time.sleep(0.137 * i % POLL)  # spread the drops over the poll cycle
            began = time.perf_counter()
            os.rename(src, lc.plugins / "inbox" / f"p{i}")
            while not lc.registered(f"bench.p{i}"):
                if time.perf_counter() - began > 30:
                    raise SystemExit("a dropped plugin was never registered")
                time.sleep(0.005)
            pickups.append(time.perf_counter() - began)
        lc.must("stop.sh")
        staging = staging_times(base, PICKUPS)
    finally:
        lc.kill_leftover()
        inst.kill_leftover()
        shutil.rmtree(base, ignore_errors=True)

    med = statistics.median
    floor_m, health_m = med(floor), med(health)
    pickup_target = POLL + med(staging)
    rows = [
        ("start.sh until health_check.sh says OK", med(starts), floor_m),
        ("stop.sh (TERM, wait, confirmed gone)", med(stops), floor_m),
        ("health_check.sh", health_m, floor_m),
    ]
    print("## pack05 lifecycle (start, stop, health, inbox pickup)\n")
    print(
        "Real processes on a temporary `AURORA_PACK_*` environment, scripts of the source "
        f"tree, `PYTHON={Path(sys.executable).name}`. Medians of {ROUNDS} start/stop rounds, "
        f"{HEALTH_ROUNDS} interleaved health checks and {PICKUPS} inbox drops (poll interval "
        f"{POLL:g} s, the default; drops spread over the poll cycle). The floor is a bare "
        "`$PYTHON -c pass` measured in the same loop as the health check.\n"
    )
    print("| what | median | baseline | ratio |")
    print("|---|---:|---:|---:|")
    for what, value, base_value in rows:
        print(
            f"| {what} | {value * 1000:.1f} ms | interpreter floor {base_value * 1000:.1f} ms "
            f"| {value / base_value:.2f}x |"
        )
    for what, value, base_value in (
        ("`aurora_installer.py start` (start.sh, health polling) until healthy",
         med(inst_starts), med(starts)),
        ("`aurora_installer.py stop` (stop.sh, state recorded)", med(inst_stops), med(stops)),
    ):  # fmt: skip
        print(
            f"| {what} | {value * 1000:.1f} ms | the script alone {base_value * 1000:.1f} ms "
            f"| {value / base_value:.2f}x |"
        )
    print(
        f"| inbox drop until registered | {med(pickups) * 1000:.0f} ms | poll interval + "
        f"staging ({POLL * 1000:.0f} + {med(staging) * 1000:.0f} ms) "
        f"| {med(pickups) / pickup_target:.2f}x |"
    )
    print(
        f"\nTargets: health check within 2x of the floor (measured "
        f"{health_m / floor_m:.2f}x); inbox pickup under poll interval plus staging "
        f"(measured {med(pickups) / pickup_target:.2f}x, max "
        f"{max(pickups) * 1000:.0f} ms). Pickup = up to one interval until a scan sees "
        "the entry, a settle period (0.25 s) proving it complete, then staging."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
