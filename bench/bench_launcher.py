"""Supervisor cost: the pack04 launcher's CPU and memory with 50 idle plugins running.

Starts ``python -m launcher.service`` (default settings: registry poll 1 s,
heartbeat 2 s) on a temp registry of 50 idle Python plugins, each run in the
pack03 sandbox (the source tree's, or the test-only passthrough when pack03 is
absent: said in the output). Once all run, it samples every second for 20 s the
CPU time and RSS of the supervisor and of the 50 plugins (the baseline, measured
side by side), and the supervisor with no plugin at all. Prints one Markdown
section on stdout; progress on stderr; everything in a temp dir.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK04 = REPO / "packs" / "pack04_launcher"
PACK03 = REPO / "packs" / "pack03_os_base"
PASSTHROUGH = PACK04 / "tests" / "passthrough_sandbox"
N_PLUGINS = 50
WINDOW_S = 20
TICK = os.sysconf("SC_CLK_TCK")
IDLE_PLUGIN = "import time\nwhile True:\n    time.sleep(3600)\n"


def _say(msg: str) -> None:
    print(f"bench_launcher: {msg}", file=sys.stderr, flush=True)


def _cpu_ns(pid: int) -> int | None:
    """CPU time of ``pid`` in ns (schedstat: ns resolution, single-threaded processes)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // TICK  # utime + stime


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _write_registry(plugins_dir: Path, n: int) -> None:
    doc: dict[str, object] = {"schema": "aurora-plugin-registry-v1", "plugins": {}}
    plugins: dict[str, object] = {}
    for i in range(n):
        pid = f"bench.idle{i:02d}"
        rel = f"packages/{pid}/1.0.0"
        (plugins_dir / rel).mkdir(parents=True)
        (plugins_dir / rel / "main.py").write_text(IDLE_PLUGIN)
        manifest = {"id": pid, "name": pid, "version": "1.0.0", "entrypoint": "main.py"}
        manifest["permissions"] = []
        plugins[pid] = {
            "enabled": True,
            "active_version": "1.0.0",
            "granted": [],
            "versions": {"1.0.0": {"path": rel, "manifest": manifest, "digest": None}},
        }
    doc["plugins"] = plugins
    (plugins_dir / "registry.json").write_text(json.dumps(doc))


def _status(run: Path) -> dict[str, object]:
    try:
        doc = json.loads((run / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _measure(base: Path, n: int, sandbox_root: Path) -> dict[str, float]:
    """Run a service with ``n`` plugins; sample WINDOW_S seconds; stop it."""
    plugins_dir = base / "plugins"
    plugins_dir.mkdir(parents=True)
    _write_registry(plugins_dir, n)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AURORA_PACK_DATA": str(base / "data"),
        "AURORA_PACK_RUN": str(base / "run"),
        "AURORA_PACK_LOGS": str(base / "logs"),
        "AURORA_PLUGIN_REGISTRY": str(plugins_dir / "registry.json"),
        "AURORA_SANDBOX_ROOT": str(sandbox_root),
    }
    started = time.monotonic()
    with open(base / "service.log", "ab") as log:
        svc = subprocess.Popen(
            [sys.executable, "-m", "launcher.service"],
            cwd=PACK04,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    try:
        pids: list[int] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            plugins = _status(base / "run").get("plugins", {})
            assert isinstance(plugins, dict)
            pids = [p["pid"] for p in plugins.values() if p.get("state") == "running"]
            if len(pids) == n:
                break
            if svc.poll() is not None:
                raise RuntimeError(f"service exited {svc.returncode}: see {base}/service.log")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"only {len(pids)} of {n} plugins running after 90 s")
        all_running_s = time.monotonic() - started
        _say(f"{n} plugin(s) running after {all_running_s:.1f}s; sampling {WINDOW_S}s")
        time.sleep(2.0)  # let start-up settle
        sup_cpu: list[float] = []
        plug_cpu: list[float] = []
        sup_rss: list[int] = []
        plug_rss: list[int] = []
        prev_sup = _cpu_ns(svc.pid) or 0
        prev_plug = sum(_cpu_ns(p) or 0 for p in pids)
        prev_t = time.monotonic()
        for _ in range(WINDOW_S):
            time.sleep(1.0)
            now = time.monotonic()
            cur_sup = _cpu_ns(svc.pid) or 0
            cur_plug = sum(_cpu_ns(p) or 0 for p in pids)
            dt = now - prev_t
            sup_cpu.append(100.0 * (cur_sup - prev_sup) / 1e9 / dt)
            plug_cpu.append(100.0 * (cur_plug - prev_plug) / 1e9 / dt)
            sup_rss.append(_rss_kib(svc.pid))
            plug_rss.append(sum(_rss_kib(p) for p in pids))
            prev_sup, prev_plug, prev_t = cur_sup, cur_plug, now
        return {
            "startup_s": all_running_s,
            "sup_cpu": statistics.median(sup_cpu),
            "sup_cpu_total_s": sum(sup_cpu) / 100.0,
            "plug_cpu": statistics.median(plug_cpu),
            "plug_cpu_total_s": sum(plug_cpu) / 100.0,
            "sup_rss_mib": statistics.median(sup_rss) / 1024,
            "plug_rss_mib": statistics.median(plug_rss) / 1024,
        }
    finally:
        svc.send_signal(signal.SIGTERM)
        try:
            svc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(svc.pid, signal.SIGKILL)
            svc.wait()


def main() -> int:
    real = (PACK03 / "sandbox" / "launch.py").is_file()
    sandbox_root = PACK03 if real else PASSTHROUGH
    _say(f"sandbox: {'pack03 (real)' if real else 'TEST-ONLY passthrough (pack03 absent)'}")
    with tempfile.TemporaryDirectory(prefix="bench-launcher-") as tmp:
        _say("supervisor with 0 plugins")
        empty = _measure(Path(tmp) / "empty", 0, sandbox_root)
        _say(f"supervisor with {N_PLUGINS} idle plugins")
        full = _measure(Path(tmp) / "full", N_PLUGINS, sandbox_root)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}" if b > 0 else "n/a (the idle plugins used no measurable CPU)"

    rows = [
        ("supervisor, 0 plugins", empty["sup_cpu"], empty["sup_cpu_total_s"], empty["sup_rss_mib"]),
        (
            f"supervisor, {N_PLUGINS} plugins",
            full["sup_cpu"],
            full["sup_cpu_total_s"],
            full["sup_rss_mib"],
        ),
        (
            f"baseline: the {N_PLUGINS} plugins themselves (sum)",
            full["plug_cpu"],
            full["plug_cpu_total_s"],
            full["plug_rss_mib"],
        ),
    ]
    sandbox_name = "pack03 sandbox" if real else "TEST-ONLY passthrough sandbox (pack03 absent)"
    out = [
        "## Launcher: supervisor cost with 50 idle plugins",
        "",
        f"`python -m launcher.service` (default settings: registry poll 1 s, heartbeat 2 s) "
        f"supervising {N_PLUGINS} idle Python plugins (`time.sleep` loop) run in the "
        f"{sandbox_name}. After all are running and 2 s of settling, CPU (from "
        f"/proc/<pid>/schedstat, ns) and RSS are sampled every second for {WINDOW_S} s; "
        "the medians are shown. "
        "The baseline is the plugins' own cost, measured side by side in the same run.",
        "",
        "| process | CPU % of one core (median, 1 s samples) | CPU s in window | RSS MiB |",
        "|---|---:|---:|---:|",
    ]
    out += [f"| {n} | {c:.3f} | {t:.3f} | {r:.1f} |" for n, c, t, r in rows]
    out += [
        "",
        f"- Ratio supervisor / plugins: CPU seconds "
        f"{ratio(full['sup_cpu_total_s'], full['plug_cpu_total_s'])}, RSS "
        f"{ratio(full['sup_rss_mib'], full['plug_rss_mib'])}.",
        f"- Supervisor with {N_PLUGINS} plugins / with 0: CPU seconds "
        f"{ratio(full['sup_cpu_total_s'], empty['sup_cpu_total_s'])}, RSS "
        f"{ratio(full['sup_rss_mib'], empty['sup_rss_mib'])}.",
        f"- Time from service start to all {N_PLUGINS} plugins running: {full['startup_s']:.1f} s.",
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
